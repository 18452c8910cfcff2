from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from chispa import assert_df_equality
from s3lake import copy_in_place as cip
from s3lake import results
from s3lake.acl_grants import Acl
from s3lake.object_attributes import ObjectState
from s3lake.testbed.inventory import inventory_row, write_inventory
from s3lake.testbed.scenarios import seed_rich_bucket
from s3lake.testbed.seed import make_bucket, object_state

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
    return seed_rich_bucket(f"cip-src-{unique}", inventory_bucket=inv, table=f"cip_{unique}.inventory")


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


def test_rerun_of_the_same_delivery_copies_nothing(spark, rich, tmp_path):
    run_job("--inventory-table", rich.delivery.table, "--results", tmp_path / "r")
    between = {key: object_state(rich.bucket, key) for key in rich.keys.values()}

    assert run_job("--inventory-table", rich.delivery.table, "--results", tmp_path / "r") == 0

    run_id = cip.default_run_id(f"{rich.bucket}/daily/2026-11-24T00-00Z")
    statuses = {k: r.status for k, r in results_by_key(spark, tmp_path / "r", run_id).items()}
    assert {s for k, s in statuses.items() if k != rich.keys["archived"]} == {cip.ALREADY_COPIED}
    assert {key: object_state(rich.bucket, key) for key in rich.keys.values()} == between


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
    bucket = make_bucket(f"cip-mp-{unique}", versioned=True)
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
    bucket = make_bucket(f"cip-skip-{unique}", versioned=True)
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
            "--statuses", "FAILED")

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


def test_copy_request_is_conditional_on_the_etag_and_version_just_read():
    params = cip.copy_request(state(), "run-1", None)

    assert params["CopySourceIfMatch"] == '"abc"'
    assert params["CopySource"] == {"Bucket": "b", "Key": "k", "VersionId": "v1"}
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
