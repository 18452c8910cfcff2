"""The replication report end to end as a principal holding only conf/iam/replication-report.json.

A copy run (set-up credentials) copies a replicated bucket; then the report runs twice as principals: ``--live``
(one HEAD per copied object, ``--results-table``) and from a later inventory. The server audits each decision.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from s3lake.replication import report as rr
from s3lake_testbed import iam
from s3lake_testbed.inventory import inventory_row, write_inventory
from s3lake_testbed.replication import replicate_everything
from s3lake_testbed.seed import make_bucket

from jobs import copy_in_place
from jobs import replication_report as job

EMR_ONLY = {"ReadLaunchArtifacts", "ListLaunchArtifacts", "WriteClusterLogs", "SparkGlueMetastoreDefaultDatabase",
            "ResultsObjects", "ResultsListing", "ResultsMultipartUploads"}
# --inventory-table is the Glue form of --inventory-manifest (copy-in-place's IAM tests cover that statement;
# its glue:GetTable counts as used here through the catalog ARN, which --results-table's GetTable also needs);
# re-registering the same run id updates its partition (test_iam_copy_in_place's re-run).
NOT_IN_THESE_RUNS = {("ReadInventoryTable", "glue:GetPartitions"), ("RegisterResultsTable", "glue:UpdatePartition")}
RESULTS_TABLE = "iam_rr_results.replication_report"
KEYS = ("kept", "gone")


def later() -> datetime:
    """A delivery time after the copy run finished (the report refuses an earlier inventory)."""
    return (datetime.now(timezone.utc) + timedelta(hours=1)).replace(second=0, microsecond=0)


def policy(bucket: str, inventory_bucket: str) -> dict:
    return iam.fill_placeholders(iam.load_policy("replication-report"), {
        "REGION": "us-east-1", "ACCOUNT_ID": iam.ACCOUNT_ID,
        "ARTIFACTS_BUCKET": "artifacts-unused", "ARTIFACTS_PREFIX": "launch",
        "LOG_BUCKET": "logs-unused", "LOG_PREFIX": "logs",
        "INVENTORY_DATABASE": "unused_db", "INVENTORY_TABLE": "unused_table",
        "INVENTORY_BUCKET": inventory_bucket, "INVENTORY_PREFIX": "inventory",
        "DATA_BUCKET": bucket, "DATA_PREFIX": "",
        "RESULTS_BUCKET": "results-unused", "RESULTS_PREFIX": "results",
        "RESULTS_DATABASE": RESULTS_TABLE.split(".")[0],
    })


def copied(s3, tmp) -> tuple[str, str, str]:
    """A replicated bucket copied by run ``r1`` (set-up credentials), then one object deleted."""
    u = uuid.uuid4().hex[:10]
    bucket = replicate_everything(make_bucket(f"iam-rr-src-{u}"))
    inv = make_bucket(f"iam-rr-inv-{u}")
    for key in KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    first = write_inventory(inv, bucket, [inventory_row(s3, bucket, k) for k in KEYS])
    results_path = str(tmp / "results")
    assert copy_in_place.main(["--inventory-manifest", first.manifest_url, "--results", results_path,
                               "--run-id", "r1"]) == 0
    s3.delete_object(Bucket=bucket, Key="gone")
    return bucket, inv, results_path


def run_as(spark, principal_policy: dict, audit, *args: str):
    principal = iam.create_principal(principal_policy, audit=audit)
    with iam.acting_as(principal, spark):
        code = job.main(list(args))
    return code, iam.read_audit(audit)


@pytest.fixture(scope="module")
def reports(spark, moto_server, tmp_path_factory):
    from s3lake import aws

    s3 = aws.s3()
    tmp = tmp_path_factory.mktemp("iam-rr")
    bucket, inv, results_path = copied(s3, tmp)
    shipped = policy(bucket, inv)
    live = run_as(spark, shipped, tmp / "live.audit.jsonl", "--results", results_path, "--run-id", "r1", "--live",
                  "--report", str(tmp / "live"), "--results-table", RESULTS_TABLE)
    delivery = write_inventory(inv, bucket, [inventory_row(s3, bucket, "kept", replication_status="COMPLETED")],
                               when=later())
    inventory = run_as(spark, shipped, tmp / "inv.audit.jsonl", "--results", results_path, "--run-id", "r1",
                       "--inventory-manifest", delivery.manifest_url, "--report", str(tmp / "inventory"))
    return {"bucket": bucket, "inv": inv, "results": results_path, "tmp": tmp, "policy": shipped,
            "live": live, "inventory": inventory}


def outcomes(spark, path: str) -> dict:
    return {r.key: r.outcome for r in rr.read_run(spark, path, "r1").collect()}


def test_the_shipped_policy_reports_live_and_from_a_later_inventory(spark, reports, glue):
    assert (reports["live"][0], reports["inventory"][0]) == (0, 0)
    assert outcomes(spark, str(reports["tmp"] / "live")) == {"kept": rr.NO_STATUS, "gone": rr.GONE}
    assert outcomes(spark, str(reports["tmp"] / "inventory")) == {"kept": rr.COMPLETED, "gone": rr.GONE}
    database, table = RESULTS_TABLE.split(".")
    assert [p["Values"] for p in glue.get_partitions(DatabaseName=database, TableName=table)["Partitions"]] == [
        ["r1"]]


def test_no_request_of_the_reports_was_denied(reports):
    audit = reports["live"][1] + reports["inventory"][1]
    assert [(d["action"], d["resource"]) for d in audit if not d["allowed"] and d["kind"] == "request"] == []


def test_every_action_the_policy_grants_was_needed_by_a_request(reports):
    used = iam.used_actions(reports["live"][1]) | iam.used_actions(reports["inventory"][1])
    unused = {(sid, a) for sid, a in iam.granted_actions(reports["policy"]) - used if sid not in EMR_ONLY}
    assert unused == NOT_IN_THESE_RUNS


def test_without_list_bucket_on_the_data_bucket_a_deleted_object_is_not_reported_gone(spark, reports):
    crippled = iam.without_statement(reports["policy"], "DataBucketListing")
    path = reports["tmp"] / "no_list"
    try:
        code, audit = run_as(spark, crippled, reports["tmp"] / "no_list.audit.jsonl", "--results",
                             reports["results"], "--run-id", "r1", "--live", "--report", str(path))
    except Exception:  # noqa: BLE001 - today the HEAD's 403 ends the run with a Spark traceback (finding for i15)
        code = None
    assert code != 0
    assert not path.exists() or outcomes(spark, str(path)).get("gone") != rr.GONE
