from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import os
import random
import uuid
from pathlib import Path

import pytest
from chispa import assert_df_equality
from s3lake import aws
from s3lake.anonymize import job as anon
from s3lake.anonymize import rules, sources, writes
from s3lake.objects import results
from s3lake.objects.acl_grants import Acl
from s3lake.objects.at_most_once import once_client
from s3lake.objects.attributes import ObjectState
from s3lake.objects.buckets import BucketInfo, bucket_info
from s3lake_testbed.inventory import inventory_row, write_inventory
from s3lake_testbed.proxy import FaultPlan, S3Proxy
from s3lake_testbed.seed import count_versions, make_bucket, make_kms_key, object_state, writer

from jobs import anonymize as job

ROOT = Path(__file__).resolve().parents[1]
RICH_RULES = ROOT / "conf/anonymize/security-lake.json"
BLANK_RULES = ROOT / "conf/anonymize/file-contents.json"
ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
HMAC_KEY = "test-key"


def H(text: str) -> str:
    return hmac.new(HMAC_KEY.encode(), text.encode(), hashlib.sha256).hexdigest()


def jl(*records, **dumps) -> bytes:
    return b"".join(json.dumps(r, **dumps).encode() + b"\n" for r in records)


# One record per style: spaced ASCII (changed), untouched, compact already-clean, compact non-ASCII (changed).
ACTIONS_LINES = [
    b'{"id": 1, "file_contents": "c2VjcmV0", "user": {"email": "a@example.com", "name": "Ann Lee", '
    b'"phone": "+44 20 7946 0958"}, "source_ip": "10.1.2.3", "session_token": "tok", '
    b'"attachments": [{"name": "a.txt", "file_contents": "xx", "password": "pw"}, {"name": "b.txt"}], '
    b'"recipients": ["b@example.com", "c@example.com"], '
    b'"message": "mail a@example.com from 192.168.0.1 card 4111 1111 1111 1111"}\n',
    b'{"id": 2, "note": "no sensitive fields"}\n',
    b'{"id":3,"user":{"email":null},"file_contents":""}\n',
    '{"id":4,"file_contents":"données","user":{"name":"Zoë"}}\n'.encode(),
]
ACTIONS_EXPECTED = [
    json.dumps({"id": 1, "file_contents": "", "user": {"email": H("a@example.com"), "name": "*** ***",
                                                        "phone": "+## ## #### ##58"},
                "source_ip": H("10.1.2.3"),
                "attachments": [{"name": "a.txt", "file_contents": "", "password": None}, {"name": "b.txt"}],
                "recipients": [H("b@example.com"), H("c@example.com")],
                "message": f"mail {H('a@example.com')} from [IP] card [CARD]"}).encode() + b"\n",
    ACTIONS_LINES[1],
    ACTIONS_LINES[2],
    b'{"id":4,"file_contents":"","user":{"name":"***"}}\n',
]
SECRET_LINES = jl({"file_contents": "secret", "n": 1}, {"n": 2}, {"file_contents": "more", "n": 3})
BLANKED_LINES = jl({"file_contents": "", "n": 1}, {"n": 2}, {"file_contents": "", "n": 3})


def results_by_key(spark, path, run_id):
    return {r.key: r for r in results.read_run(spark, str(path), run_id).collect()}


def rewritten(before: dict, body: bytes, run_id: str, tags=(("PROCESSED", "true"),), versions: int = 1) -> dict:
    """What an object must look like after a rewrite: new bytes, marker, merged tags, one more version."""
    expected = dict(before)
    expected.update(
        metadata={**before["metadata"], writes.MARKER: run_id},
        tags=sorted(set(before["tags"]) | set(tags)),
        size=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
        versions=before["versions"] + versions,
    )
    return expected


def read_body(bucket: str, key: str) -> bytes:
    return aws.s3().get_object(Bucket=bucket, Key=key)["Body"].read()


def settings(run_id: str = "t", **kw) -> anon.Settings:
    ruleset = rules.load(str(kw.pop("rules_file", BLANK_RULES))).with_key(rules.Secret(HMAC_KEY.encode()))
    kw.setdefault("min_age", 0)
    return anon.Settings(run_id=run_id, rules=ruleset, **kw)


def process_one(bucket: str, key: str, s: anon.Settings):
    """The per-object function, called in this process (so a test can hook its clients)."""
    size = aws.s3().head_object(Bucket=bucket, Key=key)["ContentLength"]
    row = anon.process({"bucket": bucket, "key": key, "size": size}, s, bucket_info(bucket, True)[0])
    return dict(zip(results.FIELDS, row))


# --------------------------------------------------------------------------- one run over a rich bucket


@pytest.fixture(scope="module")
def lake(moto_server, spark, tmp_path_factory):
    """A versioned, ACL-enabled bucket with one object per behaviour, anonymized once via the job's main()."""
    s3 = aws.s3()
    bucket = make_bucket(f"anon-lake-{uuid.uuid4().hex[:10]}", versioned=True)
    kms = make_kms_key()
    owner = s3.get_bucket_acl(Bucket=bucket)["Owner"]["ID"]
    grants = dict(GrantFullControl=f'id="{owner}"', GrantRead=f'uri="{ALL_USERS}"')
    objs = {
        "actions": dict(Key="in/actions.json", Body=b"".join(ACTIONS_LINES), ContentType="application/x-ndjson"),
        "kms": dict(Key="in/kms.json", Body=SECRET_LINES, ServerSideEncryption="aws:kms", SSEKMSKeyId=kms,
                    BucketKeyEnabled=True, ContentType="application/x-ndjson", CacheControl="max-age=60",
                    ContentDisposition='attachment; filename="x.json"', ContentLanguage="en-GB",
                    Metadata={"team": "sec", "origin": "upload"}, StorageClass="STANDARD_IA",
                    Tagging="classification=internal&owner=data%20team", **grants),
        "gzip": dict(Key="in/gz/encoded.json", Body=gzip.compress(SECRET_LINES), ContentEncoding="gzip",
                     ContentType="application/json", ServerSideEncryption="AES256"),
        "gz_name": dict(Key="in/gz/by-name.json.gz", Body=gzip.compress(SECRET_LINES)),
        "unchanged": dict(Key="in/unchanged.json", Body=jl({"n": 1}, {"file_contents": ""}), Tagging="a=1"),
        "bad": dict(Key="in/bad.json", Body=b'{"file_contents": "x"}\n{"ok": 1}\n{"broken": \n{"n": 4}\n',
                    Tagging="a=1"),
        "processed": dict(Key="in/processed.json", Body=SECRET_LINES, Tagging="PROCESSED=true&x=y"),
        "ten_tags": dict(Key="in/ten-tags.json", Body=SECRET_LINES,
                         Tagging="&".join(f"k{i}=v" for i in range(10))),
        "empty": dict(Key="in/empty.json", Body=b""),
    }
    # The version each object had before the run (LastModified has one-second resolution: a fast run
    # rewrites within the second it was seeded, so the versions' order cannot come from it).
    versions = {role: s3.put_object(Bucket=bucket, **params)["VersionId"] for role, params in objs.items()}
    keys = {role: p["Key"] for role, p in objs.items()}
    before = {role: object_state(bucket, key) for role, key in keys.items()}
    out = tmp_path_factory.mktemp("anon-lake") / "results"
    saved = os.environ.get("S3LAKE_HMAC_KEY")
    os.environ["S3LAKE_HMAC_KEY"] = HMAC_KEY
    try:
        code = job.main(["--source", f"s3://{bucket}/in/", "--rules", str(RICH_RULES), "--results", str(out),
                         "--run-id", "lake", "--min-age", "0s", "--max-failures", "2"])
    finally:
        if saved is None:
            os.environ.pop("S3LAKE_HMAC_KEY")
        else:
            os.environ["S3LAKE_HMAC_KEY"] = saved
    return {"bucket": bucket, "kms": kms, "keys": keys, "before": before, "versions": versions, "results": out,
            "code": code}


@pytest.fixture(scope="module")
def lake_rows(lake, spark):
    return {role: results_by_key(spark, lake["results"], "lake")[key] for role, key in lake["keys"].items()}


def test_every_action_applies_to_nested_and_array_paths_and_untouched_lines_stay_byte_identical(lake, lake_rows):
    body = read_body(lake["bucket"], lake["keys"]["actions"])
    assert body.splitlines(keepends=True) == ACTIONS_EXPECTED
    row = lake_rows["actions"]
    assert (row["status"], row["records_changed"]) == (anon.ANONYMIZED, 2)
    # Per rule, the fields it changed (each array element counts) and the fields its path reached (an
    # empty or null value is reached, not changed; b.txt has no file_contents).
    assert json.loads(row["fields_changed"]) == {
        "attachments[].file_contents": 1, "attachments[].password": 1, "file_contents": 2, "message": 1,
        "recipients[]": 2, "session_token": 1, "source_ip": 1, "user.email": 1, "user.name": 2, "user.phone": 1}
    assert json.loads(row["fields_matched"]) == {
        "attachments[].file_contents": 1, "attachments[].password": 1, "file_contents": 3, "message": 1,
        "recipients[]": 2, "session_token": 1, "source_ip": 1, "user.email": 2, "user.name": 2, "user.phone": 1}
    after = object_state(lake["bucket"], lake["keys"]["actions"])
    assert after == rewritten(lake["before"]["actions"], body, "lake")


def test_rewrite_keeps_kms_key_grants_storage_class_headers_metadata_and_merges_tags(lake, lake_rows):
    body = read_body(lake["bucket"], lake["keys"]["kms"])
    assert body == BLANKED_LINES
    before = lake["before"]["kms"]
    after = object_state(lake["bucket"], lake["keys"]["kms"])
    assert after == rewritten(before, body, "lake")
    assert after["kms_key"] == lake["kms"] and after["storage_class"] == "STANDARD_IA"
    assert after["tags"] == [("PROCESSED", "true"), ("classification", "internal"), ("owner", "data team")]
    assert any(ALL_USERS in g for g in after["grants"])
    row = lake_rows["kms"]
    assert (row["encryption"], row["kms_key_id"], row["storage_class"]) == ("SSE-KMS", lake["kms"], "STANDARD_IA")
    assert row["requests"] == 4  # GET, GetObjectTagging, GetObjectAcl, PutObject
    assert (row["bytes_in"], row["bytes_out"]) == (len(SECRET_LINES), len(BLANKED_LINES))
    assert row["version_id"] == lake["versions"]["kms"] and row["new_version_id"] not in (None, row["version_id"])


@pytest.mark.parametrize("role", ["gzip", "gz_name"])
def test_gzip_objects_are_read_and_written_back_gzipped(lake, lake_rows, role):
    raw = read_body(lake["bucket"], lake["keys"][role])
    assert raw[:2] == b"\x1f\x8b" and gzip.decompress(raw) == BLANKED_LINES
    assert lake_rows[role]["status"] == anon.ANONYMIZED and lake_rows[role]["records_changed"] == 2
    after = object_state(lake["bucket"], lake["keys"][role])
    assert after == rewritten(lake["before"][role], raw, "lake")


def test_an_object_with_no_line_to_change_is_only_tagged(lake, lake_rows):
    before = lake["before"]["unchanged"]
    assert lake_rows["unchanged"]["status"] == anon.TAGGED and lake_rows["unchanged"]["records_changed"] == 0
    assert object_state(lake["bucket"], lake["keys"]["unchanged"]) == {
        **before, "tags": [("PROCESSED", "true"), ("a", "1")]}


def test_a_bad_line_fails_the_object_with_its_line_number_and_writes_nothing(lake, lake_rows):
    row = lake_rows["bad"]
    assert (row["status"], row["error_code"]) == (results.FAILED, "InvalidJSON")
    assert row["error_message"].startswith("line 3: not valid JSON")
    assert object_state(lake["bucket"], lake["keys"]["bad"]) == lake["before"]["bad"]


def test_processed_tagged_empty_and_ten_tag_objects_are_left_alone(lake, lake_rows):
    assert lake_rows["processed"]["status"] == anon.SKIPPED_PROCESSED
    assert lake_rows["empty"]["status"] == anon.SKIPPED_EMPTY and lake_rows["empty"]["requests"] == 0
    assert lake_rows["ten_tags"]["status"] == results.FAILED
    assert lake_rows["ten_tags"]["error_code"] == "TooManyTags"
    for role in ("processed", "empty", "ten_tags"):
        assert object_state(lake["bucket"], lake["keys"][role]) == lake["before"][role], role


def test_the_run_exits_by_max_failures_and_its_results_cover_every_object(lake, spark):
    assert lake["code"] == 0  # 2 FAILED (bad line, ten tags) == --max-failures 2
    frame = results.read_run(spark, str(lake["results"]), "lake")
    assert sorted(r.key for r in frame.collect()) == sorted(lake["keys"].values())
    assert {r.job for r in frame.collect()} == {"anonymize"}


def test_a_second_scheduled_run_changes_nothing_and_reports_objects_processed(lake, spark, tmp_path, capsys):
    keys = lake["keys"]
    between = {role: object_state(lake["bucket"], key) for role, key in keys.items()}
    os.environ["S3LAKE_HMAC_KEY"] = HMAC_KEY
    try:
        code = job.main(["--source", f"s3://{lake['bucket']}/in/", "--rules", str(RICH_RULES),
                         "--results", str(tmp_path / "r"), "--run-id", "next", "--min-age", "0s"])
    finally:
        os.environ.pop("S3LAKE_HMAC_KEY")
    assert code == 1  # the bad line and the ten tags still fail
    assert "anonymize run next" in capsys.readouterr().out
    got = {k: r.status for k, r in results_by_key(spark, tmp_path / "r", "next").items()}
    assert got == {
        keys["actions"]: anon.SKIPPED_PROCESSED, keys["kms"]: anon.SKIPPED_PROCESSED,
        keys["gzip"]: anon.SKIPPED_PROCESSED, keys["gz_name"]: anon.SKIPPED_PROCESSED,
        keys["unchanged"]: anon.SKIPPED_PROCESSED, keys["processed"]: anon.SKIPPED_PROCESSED,
        keys["bad"]: results.FAILED, keys["ten_tags"]: results.FAILED, keys["empty"]: anon.SKIPPED_EMPTY,
    }
    assert {role: object_state(lake["bucket"], key) for role, key in keys.items()} == between


# ------------------------------------------------------------------------------------ other run modes


def test_dry_run_writes_nothing_and_reports_records_and_fields(spark, moto_server, unique, tmp_path, s3):
    bucket = make_bucket(f"anon-dry-{unique}")
    s3.put_object(Bucket=bucket, Key="a.json", Body=SECRET_LINES)
    s3.put_object(Bucket=bucket, Key="b.json", Body=jl({"n": 1}))
    before = {k: object_state(bucket, k) for k in ("a.json", "b.json")}

    assert job.main(["--source", f"s3://{bucket}/", "--rules", str(BLANK_RULES), "--results", str(tmp_path / "r"),
                     "--run-id", "dry", "--min-age", "0", "--dry-run"]) == 0

    got = results_by_key(spark, tmp_path / "r", "dry")
    assert (got["a.json"].status, got["a.json"].records_changed) == (anon.WOULD_ANONYMIZE, 2)
    assert json.loads(got["a.json"].fields_changed) == {"file_contents": 2}
    assert got["a.json"].bytes_out == len(BLANKED_LINES)
    assert got["b.json"].status == anon.WOULD_TAG
    assert {k: object_state(bucket, k) for k in before} == before


def test_a_source_listing_lists_the_sub_folders_in_tasks_and_gives_every_object_once(spark, moto_server, unique,
                                                                                    tmp_path, s3):
    bucket = make_bucket(f"anon-src-{unique}", ownership="BucketOwnerEnforced")
    keys = ("in/a.json", "in/b c.json", "in/d=1/x.json", "in/d=1/y/z.json", "in/d=2/x.json", "other/x.json")
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=SECRET_LINES)
    before = {k: object_state(bucket, k) for k in keys}
    wanted = [k for k in keys if k.startswith("in/")]

    frame, counts = sources.source_candidates(spark, f"s3://{bucket}/in/")

    assert counts is None
    assert sources.list_level(f"s3://{bucket}/in/")[2] == ["in/d=1/", "in/d=2/"]  # what the tasks list
    expected = spark.createDataFrame([(bucket, k, len(SECRET_LINES)) for k in wanted],
                                     "bucket string, key string, size long")
    assert_df_equality(frame.select("bucket", "key", "size"), expected, ignore_row_order=True,
                       ignore_nullable=True)
    summary, _ = anon.run(spark, frame, settings("src"), str(tmp_path / "r"), bucket_counts=counts)

    got = results_by_key(spark, tmp_path / "r", "src")
    assert sorted(got) == wanted
    # ACLs disabled, so GET + conditional PUT only.
    assert {(r.status, r.requests) for r in got.values()} == {(anon.ANONYMIZED, 2)}
    assert summary["statuses"] == {anon.ANONYMIZED: len(wanted)}
    for key in wanted:
        assert object_state(bucket, key) == rewritten(before[key], BLANKED_LINES, "src", versions=0)  # unversioned
    assert object_state(bucket, "other/x.json") == before["other/x.json"]


def test_objects_younger_than_min_age_are_skipped_without_a_request(spark, moto_server, unique, tmp_path, s3):
    bucket = make_bucket(f"anon-young-{unique}")
    s3.put_object(Bucket=bucket, Key="new.json", Body=SECRET_LINES)
    before = object_state(bucket, "new.json")

    assert job.main(["--source", f"s3://{bucket}/", "--rules", str(BLANK_RULES), "--results", str(tmp_path / "r"),
                     "--run-id", "young", "--min-age", "1h"]) == 0

    row = results_by_key(spark, tmp_path / "r", "young")["new.json"]
    assert (row.status, row.requests) == (anon.SKIPPED_TOO_YOUNG, 0)
    assert object_state(bucket, "new.json") == before
    # The live object decides when the listing is stale: an object rewritten since the listing is too young.
    stale = {"bucket": bucket, "key": "new.json", "size": 10, "last_modified": None}
    got = anon.process(stale, settings(min_age=3600), bucket_info(bucket, True)[0])
    assert dict(zip(results.FIELDS, got))["status"] == anon.SKIPPED_TOO_YOUNG


def test_inventory_input_and_purge_noncurrent_leave_one_anonymized_version(spark, moto_server, unique, tmp_path, s3):
    bucket = make_bucket(f"anon-purge-{unique}", versioned=True)
    inv = make_bucket(f"anon-inv-{unique}")
    s3.put_object(Bucket=bucket, Key="p.json", Body=SECRET_LINES, Metadata={"m": "1"})
    delivery = write_inventory(inv, bucket, [inventory_row(s3, bucket, "p.json")])
    before = object_state(bucket, "p.json")

    assert job.main(["--inventory-manifest", delivery.manifest_url, "--rules", str(BLANK_RULES),
                     "--results", str(tmp_path / "r"), "--run-id", "purge", "--min-age", "0",
                     "--purge-noncurrent"]) == 0

    row = results_by_key(spark, tmp_path / "r", "purge")["p.json"]
    assert row.status == anon.ANONYMIZED and row.requests == 4  # GET, GetObjectAcl, PutObject, DeleteObject
    assert object_state(bucket, "p.json") == rewritten(before, BLANKED_LINES, "purge", versions=0)
    versions = s3.list_object_versions(Bucket=bucket, Prefix="p.json")["Versions"]
    assert [v["VersionId"] for v in versions] == [row.new_version_id]


def test_bad_rules_file_fails_before_any_object_is_read(moto_server, unique, tmp_path, capsys, s3):
    bad = tmp_path / "rules.json"
    bad.write_text('[{"path": "file_contents", "action": "shred"}]')
    args = ["--source", f"s3://no-such-bucket-{unique}/", "--results", str(tmp_path / "r")]

    assert job.main(["--rules", str(bad), *args]) == 2
    assert capsys.readouterr().err.strip() == (
        f"s3lake: error: rules file {bad}: rule 1: unknown action 'shred' "
        "(use one of blank, null, drop, hmac, mask, redact)")
    assert job.main(["--rules", str(RICH_RULES), *args]) == 2
    assert "no key was given" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------- conflicts, multipart, faults


def test_an_object_changed_between_read_and_write_is_a_conflict_and_keeps_the_other_write(moto_server, unique, s3,
                                                                                        hook):
    bucket = make_bucket(f"anon-conf-{unique}", versioned=True)
    s3.put_object(Bucket=bucket, Key="c.json", Body=SECRET_LINES)
    sent = []

    def overwrite_first(params, **_):
        sent.append(dict(params))
        if len(sent) == 1:
            aws.s3().put_object(Bucket=bucket, Key="c.json", Body=b'{"file_contents": "newer"}\n')

    hook(once_client(), "provide-client-params.s3.PutObject", overwrite_first)
    row = process_one(bucket, "c.json", settings("conflict"))

    assert (row["status"], row["error_code"]) == (anon.CONFLICT, "PreconditionFailed")
    assert sent[0]["IfMatch"] == f'"{hashlib.md5(SECRET_LINES).hexdigest()}"'
    expected = object_state(bucket, "c.json")
    assert read_body(bucket, "c.json") == b'{"file_contents": "newer"}\n'
    assert expected["versions"] == 2 and writes.MARKER not in expected["metadata"]


def test_a_lost_put_response_is_recognized_by_the_marker_and_not_written_twice(moto_server, unique, s3, monkeypatch):
    bucket = make_bucket(f"anon-lost-{unique}", versioned=True)
    s3.put_object(Bucket=bucket, Key="l.json", Body=SECRET_LINES)
    before = object_state(bucket, "l.json")
    plan = FaultPlan(seed=1, drop_after=1.0, operations=frozenset({"PutObject"}))
    with S3Proxy(moto_server, faults=plan) as url:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        row = process_one(bucket, "l.json", settings("lost"))
        monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)

    assert row["status"] == anon.ANONYMIZED
    assert object_state(bucket, "l.json") == rewritten(before, BLANKED_LINES, "lost")


def big_lines(lines: int = 12_000, secret: str = "s3cret") -> tuple[bytes, bytes]:
    """~11 MiB of JSON lines with a poorly compressible payload (input, expected output after blanking)."""
    rng = random.Random(7)
    payloads = [base64.b64encode(rng.getrandbits(675 * 8).to_bytes(675, "big")).decode() for _ in range(lines)]
    body = b"".join(json.dumps({"file_contents": secret, "payload": p}).encode() + b"\n" for p in payloads)
    out = b"".join(json.dumps({"file_contents": "", "payload": p}).encode() + b"\n" for p in payloads)
    return body, out


def test_a_large_object_streams_through_a_multipart_upload_keeping_every_attribute(moto_server, unique, s3, hook):
    bucket = make_bucket(f"anon-mp-{unique}", versioned=True)
    kms = make_kms_key()
    body, expected = big_lines()
    s3.put_object(Bucket=bucket, Key="big.json.gz", Body=gzip.compress(body, 1), ContentEncoding="gzip",
                  ServerSideEncryption="aws:kms", SSEKMSKeyId=kms, BucketKeyEnabled=True, Tagging="keep=me",
                  Metadata={"m": "1"}, StorageClass="STANDARD_IA", ContentType="application/x-ndjson",
                  GrantRead=f'uri="{ALL_USERS}"',
                  GrantFullControl=f'id="{s3.get_bucket_acl(Bucket=bucket)["Owner"]["ID"]}"')
    s3.put_object(Bucket=bucket, Key="plain.json", Body=body)
    before = object_state(bucket, "big.json.gz")
    etags = [s3.head_object(Bucket=bucket, Key=k)["ETag"] for k in ("big.json.gz", "plain.json")]
    creates, completes = [], []
    hook(once_client(), "provide-client-params.s3.CreateMultipartUpload",
         lambda params, **_: creates.append(params))
    hook(once_client(), "provide-client-params.s3.CompleteMultipartUpload",
         lambda params, **_: completes.append(dict(params)))

    row = process_one(bucket, "big.json.gz", settings("mp", part_size=5 * writes.MIB))
    plain = process_one(bucket, "plain.json", settings("mp", part_size=5 * writes.MIB))

    assert row["status"] == anon.ANONYMIZED and row["records_changed"] == 12_000
    raw = read_body(bucket, "big.json.gz")
    assert gzip.decompress(raw) == expected
    after = object_state(bucket, "big.json.gz")
    # moto drops BucketKeyEnabled on CreateMultipartUpload (it keeps it on PutObject): check what we send.
    assert creates[0]["BucketKeyEnabled"] is True and after.pop("bucket_key") is None
    assert after == {k: v for k, v in rewritten(before, raw, "mp").items() if k != "bucket_key"}
    assert plain["status"] == anon.ANONYMIZED and read_body(bucket, "plain.json") == expected
    # GET, GetObjectAcl, ListMultipartUploads, CreateMultipartUpload, 3 x UploadPart (5 + 5 + 1 MiB),
    # HEAD If-Match, Complete
    assert plain["requests"] == 9 and plain["bytes_out"] == len(expected)
    assert [c["IfMatch"] for c in completes] == etags  # moto ignores If-Match on Complete: check we send it
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_an_unchanged_large_object_aborts_its_upload_and_is_only_tagged(moto_server, unique, s3):
    bucket = make_bucket(f"anon-mpu-{unique}", versioned=True)
    _, clean = big_lines()
    s3.put_object(Bucket=bucket, Key="clean.json", Body=clean)
    before = object_state(bucket, "clean.json")

    row = process_one(bucket, "clean.json", settings("mpu", part_size=5 * writes.MIB))

    assert row["status"] == anon.TAGGED
    assert object_state(bucket, "clean.json") == {**before, "tags": [("PROCESSED", "true")]}
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_large_object_changed_during_the_upload_is_a_conflict_and_the_upload_is_aborted(moto_server, unique, s3,
                                                                                         hook):
    bucket = make_bucket(f"anon-mpc-{unique}", versioned=True)
    s3.put_object(Bucket=bucket, Key="big.json", Body=big_lines()[0])
    parts = []

    def overwrite_once(**_):
        parts.append(1)
        if len(parts) == 1:
            aws.s3(max_attempts=2).put_object(Bucket=bucket, Key="big.json", Body=b'{"file_contents": "new"}\n')

    hook(aws.s3(), "before-call.s3.UploadPart", overwrite_once)
    row = process_one(bucket, "big.json", settings("mpc", part_size=5 * writes.MIB))

    assert row["status"] == anon.CONFLICT
    assert read_body(bucket, "big.json") == b'{"file_contents": "new"}\n'
    assert count_versions(bucket, "big.json") == 2
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_write_requests_are_conditional_and_carry_every_attribute():
    state = ObjectState.from_head("b", "k", {
        "ETag": '"abc"', "ContentLength": 5, "ContentType": "application/json", "ContentEncoding": "gzip",
        "Metadata": {"m": "1"}, "StorageClass": "STANDARD_IA", "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "arn:aws:kms:us-east-1:1:key/x", "BucketKeyEnabled": True, "VersionId": "v1"})
    acl = Acl("owner", (("FULL_CONTROL", "id", "owner"), ("READ", "uri", ALL_USERS)))
    tags = [{"Key": "a b", "Value": "1"}, {"Key": "PROCESSED", "Value": "true"}]

    put = writes.put_request(state, "r1", acl, tags, b"body")
    complete = writes.complete_request(state, "up-1", [{"PartNumber": 1, "ETag": '"p1"'}])

    assert put == {
        "Bucket": "b", "Key": "k", "Body": b"body", "IfMatch": '"abc"', "ContentType": "application/json",
        "ContentEncoding": "gzip", "Metadata": {"m": "1", writes.MARKER: "r1"}, "StorageClass": "STANDARD_IA",
        "ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "arn:aws:kms:us-east-1:1:key/x",
        "BucketKeyEnabled": True, "Tagging": "a%20b=1&PROCESSED=true",
        "GrantFullControl": 'id="owner"', "GrantRead": f'uri="{ALL_USERS}"'}
    assert complete == {"Bucket": "b", "Key": "k", "UploadId": "up-1", "IfMatch": '"abc"',
                        "MultipartUpload": {"Parts": [{"PartNumber": 1, "ETag": '"p1"'}]}}
    create = writes.write_request(state, "r1", acl, tags, "CRC32")
    assert create["ChecksumAlgorithm"] == "CRC32" and "IfMatch" not in create and create["Tagging"] == put["Tagging"]


# ------------------------------------------------------------------ S3's contract (strict mode)


def test_an_unchanged_object_of_an_unversioned_bucket_is_tagged_only_if_it_was_not_overwritten(moto_server, unique,
                                                                                              s3, hook):
    bucket = make_bucket(f"anon-tagrace-{unique}")
    clean = jl({"n": 1})
    s3.put_object(Bucket=bucket, Key="t.json", Body=clean)
    newer = jl({"file_contents": "written after our read"})

    def overwrite(**_):
        aws.s3(max_attempts=2).put_object(Bucket=bucket, Key="t.json", Body=newer)

    hook(once_client(), "before-call.s3.CopyObject", overwrite)
    hook(aws.s3(), "before-call.s3.PutObjectTagging", overwrite)
    row = process_one(bucket, "t.json", settings("tagrace"))

    assert row["status"] == anon.CONFLICT
    assert read_body(bucket, "t.json") == newer
    state = object_state(bucket, "t.json")
    assert state["tags"] == [] and writes.MARKER not in state["metadata"]  # left for the next run to scan


def test_an_unchanged_object_of_an_unversioned_bucket_is_tagged_keeping_every_attribute(moto_server, unique, s3):
    bucket = make_bucket(f"anon-tagcopy-{unique}")
    kms = make_kms_key()
    s3.put_object(Bucket=bucket, Key="t.json", Body=jl({"n": 1}), ServerSideEncryption="aws:kms", SSEKMSKeyId=kms,
                  Tagging="keep=me", Metadata={"m": "1"}, ContentType="application/x-ndjson",
                  StorageClass="STANDARD_IA", GrantRead=f'uri="{ALL_USERS}"',
                  GrantFullControl=f'id="{s3.get_bucket_acl(Bucket=bucket)["Owner"]["ID"]}"')
    before = object_state(bucket, "t.json")

    row = process_one(bucket, "t.json", settings("tagcopy"))

    assert row["status"] == anon.TAGGED
    after = object_state(bucket, "t.json")
    # The copy re-sends BucketKeyEnabled=false (else the bucket's default would apply); moto echoes it, S3 omits it.
    assert after.pop("bucket_key") in (None, False) and before.pop("bucket_key") is None
    assert after == {**before, "tags": [("PROCESSED", "true"), ("keep", "me")],
                     "metadata": {"m": "1", writes.MARKER: "tagcopy"}}


def test_tag_copy_request_is_conditional_and_replaces_the_tags():
    state = ObjectState.from_head("b", "k", {"ETag": '"abc"', "ContentLength": 5, "Metadata": {"m": "1"}})
    params = writes.tag_copy_request(state, "r1", None, [{"Key": "PROCESSED", "Value": "true"}])

    assert params["CopySource"] == {"Bucket": "b", "Key": "k"}
    assert (params["CopySourceIfMatch"], params["IfMatch"]) == ('"abc"', '"abc"')
    assert (params["TaggingDirective"], params["Tagging"]) == ("REPLACE", "PROCESSED=true")
    assert params["MetadataDirective"] == "REPLACE" and params["Metadata"] == {"m": "1", writes.MARKER: "r1"}


def test_a_large_crc64nvme_object_keeps_a_full_object_checksum_that_s3_verifies(moto_server, unique, s3, hook):
    from awscrt import checksums

    bucket = make_bucket(f"anon-crc-{unique}", versioned=True)
    body, expected = big_lines()
    writer().put_object(Bucket=bucket, Key="c.json", Body=body)  # no client checksum: S3's default CRC64NVME
    creates, completes = [], []
    hook(once_client(), "provide-client-params.s3.CreateMultipartUpload", lambda params, **_: creates.append(params))
    hook(once_client(), "provide-client-params.s3.CompleteMultipartUpload",
         lambda params, **_: completes.append(dict(params)))

    row = process_one(bucket, "c.json", settings("crc", part_size=5 * writes.MIB))

    assert row["status"] == anon.ANONYMIZED and read_body(bucket, "c.json") == expected
    assert (creates[0]["ChecksumAlgorithm"], creates[0]["ChecksumType"]) == ("CRC64NVME", "FULL_OBJECT")
    crc = base64.b64encode(checksums.crc64nvme(expected).to_bytes(8, "big")).decode()
    assert (completes[0]["ChecksumType"], completes[0]["ChecksumCRC64NVME"]) == ("FULL_OBJECT", crc)


def test_a_small_object_keeps_its_checksum_algorithm(moto_server, unique, s3):
    bucket = make_bucket(f"anon-crcs-{unique}", versioned=True)
    s3.put_object(Bucket=bucket, Key="s.json", Body=SECRET_LINES, ChecksumAlgorithm="CRC32C")

    assert process_one(bucket, "s.json", settings("crcs"))["status"] == anon.ANONYMIZED

    head = s3.head_object(Bucket=bucket, Key="s.json", ChecksumMode="ENABLED")
    assert head.get("ChecksumCRC32C") and read_body(bucket, "s.json") == BLANKED_LINES


def test_sse_c_in_the_inventory_is_skipped_without_a_request():
    row = anon.process({"bucket": "no-such-bucket-anywhere", "key": "k", "size": 5, "encryption_status": "SSE-C"},
                       settings("ssec"), BucketInfo(acls_enabled=True, owner_id=None))
    got = dict(zip(results.FIELDS, row))

    assert (got["status"], got["requests"]) == (anon.SKIPPED_SSE_C, 0)


def test_metadata_that_the_marker_would_push_over_2_kb_is_its_own_status(moto_server, unique, s3):
    bucket = make_bucket(f"anon-meta-{unique}", versioned=True)
    s3.put_object(Bucket=bucket, Key="m.json", Body=SECRET_LINES, Metadata={"big": "x" * 2030})
    before = object_state(bucket, "m.json")

    row = process_one(bucket, "m.json", settings("meta"))

    assert row["status"] == anon.SKIPPED_METADATA_TOO_LARGE
    assert object_state(bucket, "m.json") == before


def test_sse_c_objects_are_skipped_from_the_inventory_or_from_s3s_400_never_failed(spark, moto_server, unique,
                                                                                  tmp_path, s3):
    bucket = make_bucket(f"anon-ssec-{unique}", versioned=True)
    inv = make_bucket(f"anon-inv-{unique}")
    for key in ("listed.json", "unlisted.json"):
        s3.put_object(Bucket=bucket, Key=key, Body=SECRET_LINES, SSECustomerAlgorithm="AES256",
                      SSECustomerKey="k" * 32)
    rows = [{"key": "listed.json", "size": 60, "encryption_status": "SSE-C"},
            {"key": "unlisted.json", "size": 60}]  # a report without EncryptionStatus: S3's 400 decides
    delivery = write_inventory(inv, bucket, rows)

    assert job.main(["--inventory-manifest", delivery.manifest_url, "--rules", str(BLANK_RULES), "--results",
                     str(tmp_path / "r"), "--run-id", "c", "--min-age", "0s"]) == 0

    got = results_by_key(spark, tmp_path / "r", "c")
    assert {k: (r.status, r.requests) for k, r in got.items()} == {
        "listed.json": (anon.SKIPPED_SSE_C, 0), "unlisted.json": (anon.SKIPPED_SSE_C, 1)}


def test_a_past_retain_until_date_is_dropped_and_the_legal_hold_kept_on_the_rewrite(moto_server, unique, s3):
    import time
    from datetime import datetime, timedelta, timezone

    bucket = f"anon-lock-{unique}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    until = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=2)
    s3.put_object(Bucket=bucket, Key="l.json", Body=SECRET_LINES, ObjectLockMode="GOVERNANCE",
                  ObjectLockRetainUntilDate=until, ObjectLockLegalHoldStatus="ON")
    time.sleep(max(0.0, (until - datetime.now(timezone.utc)).total_seconds()) + 1)

    row = process_one(bucket, "l.json", settings("lock"))

    assert row["status"] == anon.ANONYMIZED, row["error_message"]
    after = object_state(bucket, "l.json")
    assert (after["legal_hold"], after["object_lock_mode"], after["object_lock_retain_until"]) == ("ON", None, None)
    assert read_body(bucket, "l.json") == BLANKED_LINES


def test_rule_totals_read_as_a_table_and_a_run_that_scanned_nothing_says_so_in_one_line():
    totals = {"scanned_objects": 2, "unmatched": ["b.c"],
              "rules": {"a": {"matched": 5, "changed": 3}, "b.c": {"matched": 0, "changed": 0}}}
    assert anon.format_rule_totals(totals).splitlines() == [
        "  rules (fields reached / changed in 2 scanned objects):",
        "    a    5 / 3",
        "    b.c  0 / 0   <- matched no field"]
    assert anon.format_rule_totals({"scanned_objects": 0, "unmatched": [], "rules": {"a": {}}}) == (
        "  rules: no object was read through them in this run (nothing to count)")
