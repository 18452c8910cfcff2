from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from s3lake.replication import report as rr
from s3lake_testbed.inventory import inventory_row, write_inventory
from s3lake_testbed.proxy import FaultPlan
from s3lake_testbed.replication import replicate_everything
from s3lake_testbed.seed import make_bucket

from jobs import copy_in_place
from jobs import replication_report as job

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
KEYS = ("done", "pending", "failed", "nostatus", "gone", "overwritten", "early")


def later():
    return (datetime.now(timezone.utc) + timedelta(hours=1)).replace(second=0, microsecond=0)


@pytest.fixture
def copied_run(spark, moto_server, unique, tmp_path, s3):
    """A bucket whose objects one copy run copied (run id ``r1``), with results under tmp_path/results."""
    bucket = replicate_everything(make_bucket(f"rr-src-{unique}"))
    inv = make_bucket(f"rr-inv-{unique}")
    for key in KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    first = write_inventory(inv, bucket, [inventory_row(s3, bucket, k) for k in KEYS])
    before = {k: inventory_row(s3, bucket, k) for k in KEYS}
    results_path = tmp_path / "s3lake" / "results"
    assert copy_in_place.main(["--inventory-manifest", first.manifest_url, "--results", str(results_path),
                               "--run-id", "r1"]) == 0
    return bucket, inv, str(results_path), before


def later_delivery(s3, bucket, inv, before, table=None):
    """What S3 Inventory would list after replication ran over the copies (and the world moved on)."""
    s3.delete_object(Bucket=bucket, Key="gone")
    s3.put_object(Bucket=bucket, Key="overwritten", Body=b"a newer write")
    rows = [
        inventory_row(s3, bucket, "done", replication_status="COMPLETED"),
        inventory_row(s3, bucket, "pending", replication_status="PENDING"),
        inventory_row(s3, bucket, "failed", replication_status="FAILED"),
        inventory_row(s3, bucket, "nostatus"),
        inventory_row(s3, bucket, "overwritten", replication_status="PENDING"),
        before["early"],  # listed before the copy reached it
    ]
    return write_inventory(inv, bucket, rows, when=later(), table=table)


def report_rows(spark, path, run_id):
    return {r.key: r for r in rr.read_run(spark, path, run_id).collect()}


# ------------------------------------------------------------------------------------ pure outcomes


@pytest.mark.parametrize(
    "args,expected",
    [
        (("v2", T0, True, "v2", False, "COMPLETED", T0, False), rr.COMPLETED),
        (("v2", T0, True, "v2", False, "PENDING", T0, False), rr.PENDING),
        (("v2", T0, True, "v2", False, "FAILED", T0, False), rr.FAILED),
        (("v2", T0, True, "v2", False, None, T0, False), rr.NO_STATUS),
        (("v2", T0, False, None, None, None, None, False), rr.GONE),
        (("v2", T0, True, "dm", True, None, T0, False), rr.GONE),
        (("v2", T0, True, "v3", False, "COMPLETED", T0 + timedelta(minutes=1), False), rr.OVERWRITTEN),
        (("v2", T0, True, "v3", False, "COMPLETED", T0 - timedelta(minutes=1), True), rr.OVERWRITTEN),
        (("v2", T0, True, "v1", False, None, T0 - timedelta(days=9), False), rr.NOT_LISTED_YET),
        ((None, T0, True, None, False, "FAILED", T0, False), rr.FAILED),
        # the version the copy replaced is still listed: taken before the copy, whatever the clocks say
        (("v2", T0, True, "v1", False, None, T0, False, "v1"), rr.NOT_LISTED_YET),
        # a write in the same second as the copy's end: S3's LastModified has whole seconds, not earlier
        (("v2", T0 + timedelta(milliseconds=400), True, "v3", False, None, T0, False, "v1"), rr.OVERWRITTEN),
    ],
)
def test_inventory_outcome(args, expected):
    assert rr.inventory_outcome(*args) == expected


def test_live_outcome_reads_marker_version_and_status():
    mine = {"VersionId": "v2", "Metadata": {rr.MARKER: "r1"}}
    assert rr.live_outcome(None, "v2", "r1") == rr.GONE
    assert rr.live_outcome({**mine, "ReplicationStatus": "FAILED"}, "v2", "r1") == rr.FAILED
    assert rr.live_outcome(mine, "v2", "r1") == rr.NO_STATUS
    assert rr.live_outcome({**mine, "VersionId": "v3"}, "v2", "r1") == rr.OVERWRITTEN
    assert rr.live_outcome({"VersionId": "v3", "Metadata": {}}, "v2", "r1") == rr.OVERWRITTEN


def test_default_report_path_is_beside_the_results():
    assert rr.default_report_path("s3://b/s3lake/results/") == "s3://b/s3lake/replication_report"


# ------------------------------------------------------------------------------------ end to end


def test_later_inventory_gives_each_copied_object_its_outcome(spark, copied_run, s3, capsys):
    bucket, inv, results_path, before = copied_run
    delivery = later_delivery(s3, bucket, inv, before)

    code = job.main(["--results", results_path, "--run-id", "r1", "--inventory-manifest", delivery.manifest_url])

    assert code == 1  # one object FAILED
    report_path = rr.default_report_path(results_path)
    got = report_rows(spark, report_path, "r1")
    assert {k: r.outcome for k, r in got.items()} == {
        "done": rr.COMPLETED, "pending": rr.PENDING, "failed": rr.FAILED, "nostatus": rr.NO_STATUS,
        "gone": rr.GONE, "overwritten": rr.OVERWRITTEN, "early": rr.NOT_LISTED_YET,
    }
    assert got["done"].version_id == s3.head_object(Bucket=bucket, Key="done")["VersionId"]
    assert got["done"].checked_by.startswith(f"inventory {bucket}/daily/")
    out = capsys.readouterr()
    assert "replication report for run r1" in out.out and "  FAILED           1" in out.out
    assert f"--from-report {report_path}/run_id=r1" in out.err


def test_report_registers_its_table_in_glue(spark, copied_run, s3, glue, unique):
    bucket, inv, results_path, before = copied_run
    delivery = later_delivery(s3, bucket, inv, before)

    job.main(["--results", results_path, "--run-id", "r1", "--inventory-manifest", delivery.manifest_url,
              "--results-table", f"rr_{unique}.replication_report"])

    table = glue.get_table(DatabaseName=f"rr_{unique}", Name="replication_report")["Table"]
    assert [k["Name"] for k in table["PartitionKeys"]] == ["run_id"]
    assert "outcome" in [c["Name"] for c in table["StorageDescriptor"]["Columns"]]
    parts = glue.get_partitions(DatabaseName=f"rr_{unique}", TableName="replication_report")["Partitions"]
    assert [p["Values"] for p in parts] == [["r1"]]


def test_live_report_makes_one_head_per_copied_object(spark, copied_run, s3, s3_proxy):
    bucket, _, results_path, _ = copied_run
    s3.delete_object(Bucket=bucket, Key="gone")
    s3.put_object(Bucket=bucket, Key="overwritten", Body=b"a newer write")

    with s3_proxy.window() as w:
        code = job.main(["--results", results_path, "--run-id", "r1", "--live", "--report",
                         results_path + "_live"])

    assert code == 0
    assert w.counts.get("HeadObject") == len(KEYS)
    assert not {op for op in w.counts if op not in ("HeadObject",)} - {"GetObject", "ListObjectsV2"}
    got = report_rows(spark, results_path + "_live", "r1")
    assert {k: r.outcome for k, r in got.items()} == {
        **{k: rr.NO_STATUS for k in KEYS}, "gone": rr.GONE, "overwritten": rr.OVERWRITTEN}


def test_a_head_refused_with_403_is_that_objects_unchecked_row_and_exit_1(spark, copied_run, proxy, capsys):
    _, _, results_path, _ = copied_run
    proxy.configure(faults=FaultPlan(deny_keys="^(pending|early)$", deny_operations=frozenset({"HeadObject"})))
    code = job.main(["--results", results_path, "--run-id", "r1", "--live", "--report", results_path + "_live403"])

    assert code == 1
    assert "2 objects could not be checked" in capsys.readouterr().err
    got = report_rows(spark, results_path + "_live403", "r1")
    refused = (rr.UNCHECKED, "403", "An error occurred (403) when calling the HeadObject operation: Forbidden")
    assert {k: (r.outcome, r.error_code, r.error_message) for k, r in got.items()} == {
        **{k: (rr.NO_STATUS, None, None) for k in KEYS}, "pending": refused, "early": refused}


# ------------------------------------------------------------------------------------ bad input


def test_unknown_run_id_is_one_line_and_writes_nothing(spark, copied_run, capsys):
    _, _, results_path, _ = copied_run
    assert job.main(["--results", results_path, "--run-id", "nope", "--live"]) == 2
    assert capsys.readouterr().err.strip() == f"s3lake: error: results at {results_path} hold no run 'nope'"
    assert not (__import__("pathlib").Path(rr.default_report_path(results_path))).exists()


def test_inventory_of_another_bucket_is_one_line_and_writes_nothing(spark, copied_run, s3, unique, capsys):
    _, inv, results_path, _ = copied_run
    other = make_bucket(f"rr-other-{unique}")
    s3.put_object(Bucket=other, Key="x", Body=b"x")
    delivery = write_inventory(inv, other, [inventory_row(s3, other, "x")], when=later())

    assert job.main(["--results", results_path, "--run-id", "r1", "--inventory-manifest",
                     delivery.manifest_url]) == 2

    err = capsys.readouterr().err.strip()
    assert err.startswith(f"s3lake: error: inventory {other}/daily/") and "\n" not in err
    assert f"is of bucket '{other}'; run 'r1' copied objects in rr-src-{unique}" in err
    assert not (__import__("pathlib").Path(rr.default_report_path(results_path))).exists()


def test_inventory_delivered_before_the_run_is_refused(spark, copied_run, s3, capsys):
    bucket, inv, results_path, _ = copied_run
    early = write_inventory(inv, bucket, [inventory_row(s3, bucket, "done")], when=T0)

    assert job.main(["--results", results_path, "--run-id", "r1", "--inventory-manifest", early.manifest_url]) == 2
    assert "was delivered before run 'r1' finished" in capsys.readouterr().err
