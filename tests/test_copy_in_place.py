from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from chispa import assert_df_equality
from s3lake import aws
from s3lake.objects import results
from s3lake.objects.acl_grants import Acl
from s3lake.objects.attributes import ObjectState
from s3lake.objects.buckets import BucketInfo
from s3lake.replication import copy_in_place as cip
from s3lake_testbed.inventory import inventory_row, write_inventory
from s3lake_testbed.replication import replicate_everything
from s3lake_testbed.scenarios import seed_rich_bucket
from s3lake_testbed.seed import make_bucket, object_state

from jobs import copy_in_place as job

ROOT = Path(__file__).resolve().parents[1]


def results_by_key(spark, path, run_id):
    return {r.key: r for r in results.read_run(spark, str(path), run_id).collect()}


def without_copy_effects(state, versions_added=1):
    """What an object must look like after a copy: the same, plus one version and the marker."""
    expected = dict(state)
    expected["versions"] = state["versions"] + versions_added
    return expected


@pytest.fixture
def rich(moto_server, unique):
    inv = make_bucket(f"cip-inv-{unique}")
    scenario = seed_rich_bucket(f"cip-src-{unique}", inventory_bucket=inv, table=f"cip_{unique}.inventory")
    replicate_everything(scenario.bucket)
    return scenario


def run_job(*args):
    return job.main([str(a) for a in args])


# ------------------------------------------------------------------------------- whole object state


def test_copy_keeps_kms_key_grants_tags_metadata_and_system_headers(spark, rich, tmp_path):
    before = {role: object_state(rich.bucket, key) for role, key in rich.keys.items()}

    assert run_job("--inventory-table", rich.delivery.table, "--results", tmp_path / "r", "--run-id", "r1") == 0

    got = results_by_key(spark, tmp_path / "r", "r1")
    for role, key in rich.keys.items():
        after = object_state(rich.bucket, key)
        if role == "archived":
            assert got[key].status == cip.SKIPPED_ARCHIVED
            assert after == before[role]
            continue
        assert got[key].status == cip.COPIED, (role, got[key].error_message)
        assert after.pop("metadata") == {**before[role]["metadata"], cip.MARKER: "r1"}
        expected = without_copy_effects(before[role])
        expected.pop("metadata")
        assert after == expected, role
        assert got[key].new_version_id is not None
    assert before["kms"]["kms_key"] == rich.kms_key and before["kms"]["bucket_key"] is True


def test_result_rows_describe_each_candidate(spark, rich, tmp_path):
    run_job("--inventory-table", rich.delivery.table, "--results", tmp_path / "r", "--run-id", "rows")
    got = results_by_key(spark, tmp_path / "r", "rows")

    assert set(got) == set(rich.keys.values())
    kms = got[rich.keys["kms"]]
    assert (kms.run_id, kms.job, kms.bucket, kms.encryption, kms.kms_key_id, kms.storage_class) == (
        "rows", "copy-in-place", rich.bucket, "SSE-KMS", rich.kms_key, "STANDARD_IA")
    assert kms.requests == 3  # HEAD + GetObjectAcl + CopyObject
    assert got[rich.keys["archived"]].requests == 1


def test_rerun_of_the_same_delivery_resumes_keeping_every_row_and_touching_nothing(spark, rich, tmp_path):
    run_job("--inventory-table", rich.delivery.table, "--results", tmp_path / "r")
    run_id = cip.default_run_id(f"{rich.bucket}/daily/2026-11-24T00-00Z")
    first = {k: r.asDict() for k, r in results_by_key(spark, tmp_path / "r", run_id).items()}
    between = {key: object_state(rich.bucket, key) for key in rich.keys.values()}

    assert run_job("--inventory-table", rich.delivery.table, "--results", tmp_path / "r") == 0

    assert {k: r.asDict() for k, r in results_by_key(spark, tmp_path / "r", run_id).items()} == first
    assert {s["status"] for k, s in first.items() if k != rich.keys["archived"]} == {cip.COPIED}
    assert {key: object_state(rich.bucket, key) for key in rich.keys.values()} == between


def test_objects_copied_whose_rows_were_lost_are_found_already_copied(spark, rich, tmp_path):
    run_job("--inventory-table", rich.delivery.table, "--results", tmp_path / "r")
    between = {key: object_state(rich.bucket, key) for key in rich.keys.values()}
    run_id = cip.default_run_id(f"{rich.bucket}/daily/2026-11-24T00-00Z")
    for part in (tmp_path / "r" / f"run_id={run_id}").glob("part-*"):
        part.unlink()  # as if the run had been killed before its tasks committed

    assert run_job("--inventory-table", rich.delivery.table, "--results", tmp_path / "r") == 0

    statuses = {k: r.status for k, r in results_by_key(spark, tmp_path / "r", run_id).items()}
    assert {s for k, s in statuses.items() if k != rich.keys["archived"]} == {cip.ALREADY_COPIED}
    assert {key: object_state(rich.bucket, key) for key in rich.keys.values()} == between


def test_a_results_table_is_registered_before_the_first_object_or_the_run_touches_nothing(spark, rich, tmp_path,
                                                                                       unique, capsys):
    from s3lake_testbed.seed import make_glue_database

    db = make_glue_database(f"cip_tables_{unique}")
    aws.glue().create_table(DatabaseName=db, TableInput={  # a table of another shape: registration must fail
        "Name": "copies", "PartitionKeys": [{"Name": "dt", "Type": "string"}],
        "StorageDescriptor": {"Columns": [{"Name": "key", "Type": "string"}], "Location": str(tmp_path / "x")}})
    before = {key: object_state(rich.bucket, key) for key in rich.keys.values()}

    code = run_job("--inventory-manifest", rich.delivery.manifest_url, "--results", tmp_path / "r",
                   "--run-id", "tbl", "--results-table", f"{db}.copies")

    assert code == 2
    assert f"--results-table {db}.copies: cannot register run tbl" in capsys.readouterr().err
    assert {key: object_state(rich.bucket, key) for key in rich.keys.values()} == before
    assert not (tmp_path / "r" / "run_id=tbl").exists()

    assert run_job("--inventory-manifest", rich.delivery.manifest_url, "--results", tmp_path / "r",
                   "--run-id", "tbl", "--results-table", f"{db}.results") == 0
    parts = aws.glue().get_partitions(DatabaseName=db, TableName="results")["Partitions"]
    assert [(p["Values"], p["StorageDescriptor"]["Location"]) for p in parts] == [
        (["tbl"], f"{tmp_path / 'r'}/run_id=tbl/")]


def test_dry_run_changes_nothing_and_reports_would_copy(spark, rich, tmp_path):
    before = {key: object_state(rich.bucket, key) for key in rich.keys.values()}

    assert run_job("--inventory-manifest", rich.delivery.manifest_url, "--results", tmp_path / "r",
                   "--run-id", "dry", "--dry-run") == 0

    statuses = {k: r.status for k, r in results_by_key(spark, tmp_path / "r", "dry").items()}
    assert statuses.pop(rich.keys["archived"]) == cip.SKIPPED_ARCHIVED
    assert set(statuses.values()) == {cip.WOULD_COPY}
    assert {key: object_state(rich.bucket, key) for key in rich.keys.values()} == before


def test_bucket_owner_enforced_bucket_sends_no_acl_and_uses_two_requests(spark, moto_server, unique, tmp_path):
    inv = make_bucket(f"cip-inv-{unique}")
    rich = seed_rich_bucket(f"cip-enf-{unique}", inventory_bucket=inv, ownership="BucketOwnerEnforced")
    replicate_everything(rich.bucket)
    before = {key: object_state(rich.bucket, key) for key in rich.keys.values()}

    assert run_job("--inventory-manifest", rich.delivery.manifest_url, "--results", tmp_path / "r",
                   "--run-id", "enf") == 0

    got = results_by_key(spark, tmp_path / "r", "enf")
    for key in rich.keys.values():
        if key == rich.keys["archived"]:
            continue
        assert got[key].status == cip.COPIED and got[key].requests == 2
        after = object_state(rich.bucket, key)
        assert after.pop("metadata") == {**before[key]["metadata"], cip.MARKER: "enf"}
        expected = without_copy_effects(before[key])
        expected.pop("metadata")
        assert after == expected


def test_multipart_copy_above_a_lowered_threshold_keeps_everything(spark, moto_server, unique, tmp_path, s3):
    bucket = replicate_everything(make_bucket(f"cip-mp-{unique}", versioned=True))
    inv = make_bucket(f"cip-inv-{unique}")
    body = bytes(range(256)) * (12 * 1024 * 1024 // 256 + 3)  # ~12 MiB, not a multiple of the part size
    s3.put_object(Bucket=bucket, Key="big/blob.bin", Body=body, Tagging="keep=me&x=y", ContentType="video/mp4",
                  Metadata={"m": "1"}, ServerSideEncryption="AES256", StorageClass="STANDARD_IA",
                  GrantRead='uri="http://acs.amazonaws.com/groups/global/AllUsers"',
                  GrantFullControl=f'id="{s3.get_bucket_acl(Bucket=bucket)["Owner"]["ID"]}"')
    delivery = write_inventory(inv, bucket, [inventory_row(s3, bucket, "big/blob.bin")])
    before = object_state(bucket, "big/blob.bin")

    assert run_job("--inventory-manifest", delivery.manifest_url, "--results", tmp_path / "r", "--run-id", "mp",
                   "--multipart-threshold", 5 * 1024 * 1024) == 0

    row = results_by_key(spark, tmp_path / "r", "mp")["big/blob.bin"]
    assert row.status == cip.COPIED
    # HEAD, GetObjectAcl, GetObjectTagging, ListMultipartUploads, Create, 3 parts, Complete
    assert row.requests == 2 + 1 + 1 + 1 + 3 + 1
    after = object_state(bucket, "big/blob.bin")
    assert after.pop("metadata") == {"m": "1", cip.MARKER: "mp"}
    expected = without_copy_effects(before)
    expected.pop("metadata")
    assert after == expected
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# -------------------------------------------------------------------------------- skips and failures


def test_missing_changed_and_archived_objects_are_skipped(spark, moto_server, unique, tmp_path, s3):
    bucket = replicate_everything(make_bucket(f"cip-skip-{unique}", versioned=True))
    inv = make_bucket(f"cip-inv-{unique}")
    for key in ("gone", "changed", "same"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    s3.put_object(Bucket=bucket, Key="frozen", Body=b"f", StorageClass="DEEP_ARCHIVE")
    rows = [inventory_row(s3, bucket, k) for k in ("gone", "changed", "same", "frozen")]
    rows.append({"key": "already-replicated", "replication_status": "COMPLETED", "size": 1})
    rows.append({"key": "old-version", "is_latest": False, "size": 1})
    rows.append({"key": "deleted", "is_delete_marker": True, "is_latest": True})
    delivery = write_inventory(inv, bucket, rows)
    s3.delete_object(Bucket=bucket, Key="gone")
    s3.put_object(Bucket=bucket, Key="changed", Body=b"new content")

    assert run_job("--inventory-manifest", delivery.manifest_url, "--results", tmp_path / "r", "--run-id", "s") == 0

    statuses = {k: r.status for k, r in results_by_key(spark, tmp_path / "r", "s").items()}
    assert statuses == {
        "gone": cip.MISSING,
        "changed": cip.SKIPPED_CHANGED,
        "same": cip.COPIED,
        "frozen": cip.SKIPPED_ARCHIVED,
    }


def test_statuses_option_selects_failed_only(spark, moto_server, unique, tmp_path, s3):
    bucket = make_bucket(f"cip-st-{unique}")
    inv = make_bucket(f"cip-inv-{unique}")
    for key in ("failed", "fresh"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    rows = [inventory_row(s3, bucket, "failed", replication_status="FAILED"), inventory_row(s3, bucket, "fresh")]
    delivery = write_inventory(inv, bucket, rows)

    run_job("--inventory-manifest", delivery.manifest_url, "--results", tmp_path / "r", "--run-id", "f",
            "--statuses", "FAILED", "--no-replication-check")  # an unversioned bucket: nothing replicates

    assert {k: r.status for k, r in results_by_key(spark, tmp_path / "r", "f").items()} == {"failed": cip.COPIED}


def test_select_candidates_keeps_latest_live_objects_with_wanted_statuses(spark):
    from s3lake import inventory

    def inv_row(key, status=None, latest=True, marker=False):
        values = {c: None for c in inventory.COLUMNS}
        values.update(bucket="b", key=key, replication_status=status, is_latest=latest, is_delete_marker=marker)
        return tuple(values[c] for c in inventory.COLUMNS)

    frame = spark.createDataFrame(
        [inv_row("none"), inv_row("failed", "FAILED"), inv_row("done", "COMPLETED"), inv_row("pending", "PENDING"),
         inv_row("old", latest=False), inv_row("dm", marker=True), inv_row("unversioned", latest=None)],
        inventory.SCHEMA,
    )

    got = cip.select_candidates(frame, cip.parse_statuses("none,FAILED")).select("key")

    expected = spark.createDataFrame([("none",), ("failed",), ("unversioned",)], "key string")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


# ------------------------------------------------------------------ requests moto does not enforce


def state(**overrides):
    base = dict(
        bucket="b", key="k", etag="abc", size=10, last_modified=None, version_id="v1", storage_class="STANDARD",
        metadata={"a": "1"}, headers={"ContentType": "text/plain"}, sse=None, kms_key_id=None,
        bucket_key_enabled=False, sse_customer_algorithm=None, replication_status=None, restore=None,
        archive_status=None, checksum_algorithm=None, object_lock={}, tag_count=0,
    )
    base.update(overrides)
    return ObjectState(**base)


def test_copy_request_copies_the_current_version_only_if_it_is_still_the_one_read():
    params = cip.copy_request(state(), "run-1", None)

    # Not the pinned version: its own ETag would make the condition always true.
    assert params["CopySource"] == {"Bucket": "b", "Key": "k"}
    assert params["CopySourceIfMatch"] == '"abc"' and params["IfMatch"] == '"abc"'
    assert params["MetadataDirective"] == "REPLACE" and params["TaggingDirective"] == "COPY"
    assert params["Metadata"] == {"a": "1", cip.MARKER: "run-1"}
    assert not any(k.startswith("Grant") for k in params)


def test_copy_request_carries_grants_kms_key_checksum_and_object_lock():
    acl = Acl("owner", (("FULL_CONTROL", "id", "owner"), ("READ", "uri", "http://acs/AllUsers"),
                        ("READ", "id", "other"), ("READ_ACP", "emailAddress", "a@b.c")))
    lock = {"ObjectLockMode": "GOVERNANCE", "ObjectLockRetainUntilDate": "2030-01-01T00:00:00Z",
            "ObjectLockLegalHoldStatus": "ON"}
    params = cip.copy_request(
        state(sse="aws:kms:dsse", kms_key_id="arn:key/1", bucket_key_enabled=True, checksum_algorithm="SHA256",
              object_lock=lock, storage_class="GLACIER_IR"),
        "r", acl,
    )

    assert params["GrantFullControl"] == 'id="owner"'
    assert params["GrantRead"] == 'uri="http://acs/AllUsers", id="other"'
    assert params["GrantReadACP"] == 'emailAddress="a@b.c"'
    assert (params["ServerSideEncryption"], params["SSEKMSKeyId"], params["BucketKeyEnabled"]) == (
        "aws:kms:dsse", "arn:key/1", True)
    assert params["ChecksumAlgorithm"] == "SHA256" and params["StorageClass"] == "GLACIER_IR"
    assert {k: params[k] for k in lock} == lock


@pytest.mark.parametrize(
    "algorithm,kind,expected",
    [
        ("CRC64NVME", "FULL_OBJECT", ("CRC64NVME", "FULL_OBJECT")),
        ("CRC32C", "COMPOSITE", ("CRC32C", "COMPOSITE")),
        ("CRC32", "FULL_OBJECT", ("CRC32", "FULL_OBJECT")),
        ("SHA256", "COMPOSITE", ("SHA256", "COMPOSITE")),
        ("SHA1", "FULL_OBJECT", ("SHA1", "COMPOSITE")),  # a single-part SHA1 object: SHA is composite-only
        (None, None, ("CRC64NVME", "FULL_OBJECT")),  # S3's default
    ],
)
def test_multipart_request_keeps_the_checksum_algorithm_and_type(algorithm, kind, expected):
    params = cip.multipart_request(state(checksum_algorithm=algorithm, checksum_type=kind), "r", None, [])

    assert (params["ChecksumAlgorithm"], params["ChecksumType"]) == expected


def test_multipart_complete_is_conditional_and_carries_the_source_full_object_checksum():
    parts = [{"PartNumber": 1, "ETag": '"p"', "ChecksumCRC64NVME": "AAAAAAAAAAE="}]
    full = cip.complete_request(state(checksum_algorithm="CRC64NVME", checksum_type="FULL_OBJECT",
                                      checksum_value="jSnVw/bqjr4="), "up", parts)
    composite = cip.complete_request(state(checksum_algorithm="SHA256", checksum_type="COMPOSITE",
                                           checksum_value="x-3"), "up", parts)

    assert full == {"Bucket": "b", "Key": "k", "UploadId": "up", "MultipartUpload": {"Parts": parts},
                    "IfMatch": '"abc"', "ChecksumType": "FULL_OBJECT", "ChecksumCRC64NVME": "jSnVw/bqjr4="}
    assert composite == {"Bucket": "b", "Key": "k", "UploadId": "up", "MultipartUpload": {"Parts": parts},
                         "IfMatch": '"abc"'}


def test_every_checksum_algorithm_of_the_service_model_is_read_with_its_type():
    import botocore.session

    model_algorithms = botocore.session.Session().get_service_model("s3").shape_for("ChecksumAlgorithm").enum
    assert {"CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"} <= set(model_algorithms)
    for algorithm in model_algorithms:
        got = ObjectState.from_head("b", "k", {"ETag": '"e"', f"Checksum{algorithm}": "dmFsdWU=",
                                               "ChecksumType": "FULL_OBJECT"})
        assert (got.checksum_algorithm, got.checksum_type, got.checksum_value) == (algorithm, "FULL_OBJECT",
                                                                                    "dmFsdWU=")
        assert cip.copy_request(got, "r", None)["ChecksumAlgorithm"] == algorithm


def test_a_past_retain_until_date_is_not_resent_but_the_legal_hold_is():
    past = {"ObjectLockMode": "GOVERNANCE", "ObjectLockRetainUntilDate": datetime(2020, 1, 1, tzinfo=timezone.utc),
            "ObjectLockLegalHoldStatus": "ON"}
    future = {**past, "ObjectLockRetainUntilDate": datetime(2999, 1, 1, tzinfo=timezone.utc)}

    sent_past = cip.copy_request(state(object_lock=past), "r", None)
    sent_future = cip.copy_request(state(object_lock=future), "r", None)

    assert "ObjectLockMode" not in sent_past and "ObjectLockRetainUntilDate" not in sent_past
    assert sent_past["ObjectLockLegalHoldStatus"] == "ON"
    assert {k: sent_future[k] for k in future} == future


def test_metadata_that_the_marker_would_push_over_2_kb_is_its_own_status():
    room = 2048 - len(cip.MARKER) - len("run")
    fits = state(metadata={"m": "x" * (room - 1)})
    too_big = state(metadata={"m": "x" * room})

    assert cip.decide(fits, "abc", "v1", "run") is None
    assert cip.decide(too_big, "abc", "v1", "run") == cip.SKIPPED_METADATA_TOO_LARGE


def test_sse_c_in_the_inventory_is_skipped_without_a_request():
    row = cip.process({"bucket": "no-such-bucket-anywhere", "key": "k", "encryption_status": "SSE-C"},
                      cip.Settings(run_id="r"), BucketInfo(acls_enabled=True, owner_id=None))
    got = dict(zip(results.FIELDS, row))

    assert (got["status"], got["requests"], got["encryption"]) == (cip.SKIPPED_SSE_C, 0, "SSE-C")


def test_s3s_400_answers_for_sse_c_objects_are_recognized():
    from botocore.exceptions import ClientError

    def error(code, message, status=400):
        return ClientError({"Error": {"Code": code, "Message": message},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "op")

    copy_refusal = error("InvalidRequest", "The object was stored using a form of Server Side Encryption. "
                         "The correct parameters must be provided to retrieve the object.")
    head_refusal = error("400", "Bad Request")
    self_copy = error("InvalidRequest", "This copy request is illegal because it is trying to copy an object "
                      "to itself without changing the object's metadata, storage class, website redirect "
                      "location or encryption attributes.")

    assert aws.is_sse_c_refusal(copy_refusal) and aws.is_sse_c_refusal(head_refusal, head=True)
    assert not aws.is_sse_c_refusal(head_refusal) and not aws.is_sse_c_refusal(self_copy)
    assert not aws.is_sse_c_refusal(error("NoSuchKey", "gone", 404), head=True)


def test_multipart_request_carries_tags_grants_and_marker():
    params = cip.multipart_request(state(sse="AES256"), "r", Acl("o", (("READ", "id", "x"),)),
                                   [{"Key": "a b", "Value": "c&d"}])

    assert params["Tagging"] == "a%20b=c%26d"
    assert params["GrantRead"] == 'id="x"' and params["ServerSideEncryption"] == "AES256"
    assert "CopySourceIfMatch" not in params and params["Metadata"][cip.MARKER] == "r"


@pytest.mark.parametrize(
    "overrides,inv_etag,expected",
    [
        ({}, "abc", None),
        ({"metadata": {cip.MARKER: "run"}}, "other", cip.ALREADY_COPIED),
        ({"replication_status": "PENDING"}, "abc", cip.SKIPPED_REPLICATING),
        ({"replication_status": "REPLICA"}, "abc", cip.SKIPPED_REPLICATING),
        ({"replication_status": "FAILED"}, "abc", None),
        ({}, "def", cip.SKIPPED_CHANGED),
        ({"sse_customer_algorithm": "AES256"}, "abc", cip.SKIPPED_SSE_C),
        ({"storage_class": "DEEP_ARCHIVE"}, "abc", cip.SKIPPED_ARCHIVED),
        ({"storage_class": "GLACIER", "restore": 'ongoing-request="true"'}, "abc", cip.SKIPPED_ARCHIVED),
        ({"storage_class": "GLACIER", "restore": 'ongoing-request="false", expiry-date="x"'}, "abc", None),
        ({"storage_class": "INTELLIGENT_TIERING", "archive_status": "ARCHIVE_ACCESS"}, "abc", cip.SKIPPED_ARCHIVED),
    ],
)
def test_decide(overrides, inv_etag, expected):
    assert cip.decide(state(**overrides), inv_etag, "v1", "run") == expected


def test_decide_missing_and_new_version():
    assert cip.decide(None, "abc", None, "run") == cip.MISSING
    assert cip.decide(state(version_id="v2"), "abc", "v1", "run") == cip.SKIPPED_CHANGED


def test_part_size_bounds():
    assert cip.part_size(12 * cip.MIB, 5 * cip.MIB) == 5 * cip.MIB
    assert cip.part_size(6 * cip.GIB, cip.DEFAULT_THRESHOLD) == 64 * cip.MIB
    assert cip.part_size(5 * 1024 * cip.GIB, cip.DEFAULT_THRESHOLD) * cip.MAX_PARTS >= 5 * 1024 * cip.GIB


# ------------------------------------------------------------------------------------- bad input


def test_unknown_table_fails_with_one_line_before_touching_anything(moto_server, tmp_path, capsys, unique):
    assert run_job("--inventory-table", f"nope_{unique}.t", "--results", tmp_path / "r") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"s3lake: error: no Glue table nope_{unique}.t (EntityNotFoundException)"]
    assert not (tmp_path / "r").exists()


def test_unwritable_results_path_fails_before_touching_anything(spark, rich, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    before = {key: object_state(rich.bucket, key) for key in rich.keys.values()}

    assert run_job("--inventory-table", rich.delivery.table, "--results", blocker / "results") == 2

    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"s3lake: error: cannot write results to {blocker}/results")
    assert {key: object_state(rich.bucket, key) for key in rich.keys.values()} == before


def test_bad_statuses_is_one_clear_line(moto_server, tmp_path, capsys):
    assert run_job("--inventory-table", "a.b", "--results", tmp_path, "--statuses", "none,BROKEN") == 2
    assert capsys.readouterr().err.strip() == (
        "s3lake: error: --statuses: unknown replication status 'BROKEN' (use none, FAILED, ...)")


@pytest.mark.slow
def test_spark_submit_runs_the_job_end_to_end(rich, tmp_path, moto_server):
    spark_submit = Path(sys.executable).parent / "spark-submit"
    proc = subprocess.run(
        [str(spark_submit), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
         str(ROOT / "jobs" / "copy_in_place.py"), "--inventory-table", rich.delivery.table,
         "--results", str(tmp_path / "r"), "--run-id", "submit"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "copy-in-place run submit:" in proc.stdout
    assert "COPIED" in proc.stdout and "SKIPPED_ARCHIVED" in proc.stdout
    meta = object_state(rich.bucket, rich.keys["kms"])["metadata"]
    assert meta[cip.MARKER] == "submit"


# ------------------------------------------------------------------ S3's contract (strict mode)


def process_one(bucket, key, settings, s3):
    """One candidate through :func:`cip.process` in this process, described as the inventory would."""
    from s3lake.objects.buckets import bucket_info

    info, _ = bucket_info(bucket, settings.copy_acls)
    row = inventory_row(s3, bucket, key)
    return dict(zip(results.FIELDS, cip.process(row, settings, info)))


def overwrite_once(bucket, key, body):
    """A handler that overwrites ``key`` (through another client) the first time it runs."""
    done = []

    def handler(**_):
        if not done:
            done.append(1)
            aws.s3(max_attempts=2).put_object(Bucket=bucket, Key=key, Body=body)

    return handler


def test_a_write_between_head_and_copy_stays_current_and_the_object_is_skipped_changed(moto_server, unique, s3,
                                                                                       hook):
    from s3lake.objects.at_most_once import once_client

    bucket = make_bucket(f"cip-race-{unique}", versioned=True)
    s3.put_object(Bucket=bucket, Key="k", Body=b"old")
    hook(once_client(), "before-call.s3.CopyObject", overwrite_once(bucket, "k", b"newer"))

    row = process_one(bucket, "k", cip.Settings(run_id="race"), s3)

    assert (row["status"], row["error_code"]) == (cip.SKIPPED_CHANGED, "PreconditionFailed")
    current = s3.get_object(Bucket=bucket, Key="k")
    assert current["Body"].read() == b"newer" and cip.MARKER not in current["Metadata"]


def test_a_write_during_a_multipart_copy_stays_current_and_the_object_is_skipped_changed(moto_server, unique, s3,
                                                                                        hook):
    bucket = make_bucket(f"cip-mprace-{unique}", versioned=True)
    s3.put_object(Bucket=bucket, Key="big", Body=b"x" * (11 * cip.MIB))
    hook(aws.s3(), "before-call.s3.UploadPartCopy", overwrite_once(bucket, "big", b"newer"))

    row = process_one(bucket, "big", cip.Settings(run_id="mprace", multipart_threshold=5 * cip.MIB), s3)

    assert row["status"] == cip.SKIPPED_CHANGED
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == b"newer"
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_request_payer_rides_on_every_request(moto_server, unique, s3):
    from s3lake.objects.at_most_once import once_client

    bucket = make_bucket(f"cip-rp-{unique}", versioned=True)
    s3.put_object(Bucket=bucket, Key="small", Body=b"s", Tagging="a=b")
    s3.put_object(Bucket=bucket, Key="big", Body=b"b" * (6 * cip.MIB), Tagging="a=b")
    seen = []

    def record(request, event_name, **_):
        seen.append((event_name.rsplit(".", 1)[-1], request.headers.get("x-amz-request-payer")))

    aws.use_request_payer("requester")
    try:
        clients = [aws.s3(), once_client()]
        for client in clients:
            client.meta.events.register("before-send.s3", record)
        settings = cip.Settings(run_id="rp", multipart_threshold=5 * cip.MIB, request_payer="requester")
        rows = [process_one(bucket, key, settings, s3) for key in ("small", "big")]
        for client in clients:
            client.meta.events.unregister("before-send.s3", record)
    finally:
        aws.use_request_payer(None)

    assert [r["status"] for r in rows] == [cip.COPIED, cip.COPIED]
    operations = {op for op, _ in seen}
    assert {"GetBucketOwnershipControls", "HeadObject", "GetObjectAcl", "CopyObject", "ListMultipartUploads",
            "CreateMultipartUpload", "UploadPartCopy", "CompleteMultipartUpload"} <= operations
    assert {payer for _, payer in seen} == {b"requester"} or {payer for _, payer in seen} == {"requester"}


def test_request_payer_option_runs_the_job(spark, rich, tmp_path):
    assert run_job("--inventory-table", rich.delivery.table, "--results", tmp_path / "r", "--run-id", "rp",
                   "--request-payer", "requester") == 0
    statuses = {r.status for r in results_by_key(spark, tmp_path / "r", "rp").values()}
    assert statuses == {cip.COPIED, cip.SKIPPED_ARCHIVED}


def test_an_inventory_naming_a_missing_bucket_is_one_line_exit_2(spark, moto_server, unique, tmp_path, capsys):
    inv = make_bucket(f"cip-inv-{unique}")
    delivery = write_inventory(inv, f"cip-gone-{unique}", [{"key": "a", "size": 1, "e_tag": "e"}])

    assert run_job("--inventory-manifest", delivery.manifest_url, "--results", tmp_path / "r") == 2

    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert errors == [f"s3lake: error: bucket cip-gone-{unique} does not exist (NoSuchBucket)"]


@pytest.mark.parametrize(
    "code,status,headers,expected",
    [
        ("AccessDenied", 403, {}, "access to bucket b denied (AccessDenied)"),
        ("PermanentRedirect", 301, {"x-amz-bucket-region": "eu-west-1"},
         "bucket b is in eu-west-1, not us-east-1 (PermanentRedirect): run the job there"),
        ("AuthorizationHeaderMalformed", 400, {}, "bucket b is in another region, not us-east-1 "
         "(AuthorizationHeaderMalformed): run the job there"),
    ],
)
def test_an_unreachable_bucket_is_named_with_the_reason(code, status, headers, expected):
    from botocore.exceptions import ClientError
    from s3lake.objects.buckets import unreachable

    exc = ClientError({"Error": {"Code": code, "Message": "m"},
                       "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers}}, "op")
    assert str(unreachable("b", exc)) == expected


def test_the_job_refuses_to_start_without_the_aws_crt(tmp_path):
    script = ("import sys; sys.modules['awscrt'] = None\n"
              "from jobs import copy_in_place\n"
              f"sys.exit(copy_in_place.main(['--inventory-table', 'a.b', '--results', {str(tmp_path / 'r')!r}]))")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT / 'lib'}:{ROOT}"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)

    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "s3lake: error: the AWS CRT is missing: install botocore[crt] (awscrt), needed for S3's CRC64NVME "
        "and CRC32C checksums"]
    assert not (tmp_path / "r").exists()


SSE_C_KEY = "k" * 32


def test_sse_c_objects_are_skipped_from_the_inventory_or_from_s3s_400_never_failed(spark, moto_server, unique,
                                                                                  tmp_path, s3):
    bucket = replicate_everything(make_bucket(f"cip-ssec-{unique}", versioned=True))
    inv = make_bucket(f"cip-inv-{unique}")
    for key in ("listed", "unlisted"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"secret", SSECustomerAlgorithm="AES256",
                      SSECustomerKey=SSE_C_KEY)
    s3.put_object(Bucket=bucket, Key="plain", Body=b"plain")
    rows = [{"key": "listed", "size": 6, "encryption_status": "SSE-C"},
            {"key": "unlisted", "size": 6},  # a report without EncryptionStatus: S3's 400 decides
            inventory_row(s3, bucket, "plain")]
    delivery = write_inventory(inv, bucket, rows)

    assert run_job("--inventory-manifest", delivery.manifest_url, "--results", tmp_path / "r", "--run-id", "c") == 0

    got = results_by_key(spark, tmp_path / "r", "c")
    assert {k: (r.status, r.requests) for k, r in got.items()} == {
        "listed": (cip.SKIPPED_SSE_C, 0), "unlisted": (cip.SKIPPED_SSE_C, 1), "plain": (cip.COPIED, 3)}


def test_a_past_retain_until_date_is_not_resent_on_the_copy_but_the_legal_hold_is(moto_server, unique, s3):
    # The copy carries the legal-hold header without Content-MD5 (CopyObject has no payload): strict mode
    # accepts it as S3 does (strict_s3._patch_copy_lock_checksum).
    import time

    bucket = f"cip-lock-{unique}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    until = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=2)
    s3.put_object(Bucket=bucket, Key="k", Body=b"locked", ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=until,
                  ObjectLockLegalHoldStatus="ON")
    time.sleep(max(0.0, (until - datetime.now(timezone.utc)).total_seconds()) + 1)

    row = process_one(bucket, "k", cip.Settings(run_id="lock"), s3)

    assert row["status"] == cip.COPIED, row["error_message"]
    after = object_state(bucket, "k")
    assert (after["object_lock_mode"], after["object_lock_retain_until"], after["legal_hold"], after["metadata"],
            after["versions"]) == (None, None, "ON", {cip.MARKER: "lock"}, 2)
