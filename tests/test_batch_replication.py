"""copy_in_place --method batch-replication end to end on the test bed's S3 Batch Operations jobs.

Every test compares whole object state (versions, LastModified, ETag, replication status) before and after,
and the run's result rows with the job's completion report.
"""

from __future__ import annotations

import csv
import io
import json
import time

import pytest
from s3lake import aws
from s3lake.objects import results
from s3lake.replication import batch_plan, batch_report
from s3lake_testbed import batch_jobs as testbed_jobs
from s3lake_testbed import iam
from s3lake_testbed.inventory import inventory_row, write_inventory
from s3lake_testbed.replication import put_replication, rule
from s3lake_testbed.seed import make_bucket

from jobs import copy_in_place as job
from jobs import replication_report as report_job

INVENTORY_HEADS = 1  # the driver resolving the inventory delivery HEADs its data file once
SSE_C = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": "k" * 32}
ACCOUNT = iam.ACCOUNT_ID


def run_job(*args):
    return job.main([str(a) for a in args])


def role_policy(data_bucket: str, location_bucket: str) -> dict:
    return iam.fill_placeholders(iam.load_policy("batch-replication-job-role"), {
        "DATA_BUCKET": data_bucket, "DATA_PREFIX": "", "MANIFEST_BUCKET": location_bucket, "MANIFEST_PREFIX": "batch",
        "RESULTS_BUCKET": location_bucket, "RESULTS_PREFIX": "batch"})


def versions(bucket: str) -> dict:
    """Every version of every key: (version id, LastModified, ETag), and the delete markers."""
    out = {}
    for page in aws.s3().get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []):
            out.setdefault(v["Key"], []).append((v["VersionId"], v["LastModified"], v["ETag"]))
        for m in page.get("DeleteMarkers", []):
            out.setdefault(m["Key"], []).append((m["VersionId"], "delete marker"))
    return out


def replication_status(bucket: str, key: str) -> str | None:
    kwargs = SSE_C if key.endswith("sse-c.bin") else {}
    return aws.s3().head_object(Bucket=bucket, Key=key, **kwargs).get("ReplicationStatus")


def rows_by_key(spark, path, run_id) -> dict:
    return {r.key: r for r in results.read_run(spark, str(path), run_id).collect()}


def report_rows(location_bucket: str) -> list[list[str]]:
    """Every row of every completion report under the location, as S3 wrote them."""
    s3 = aws.s3()
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=location_bucket, Prefix="batch/"):
        for obj in page.get("Contents", []):
            if "/results/" in obj["Key"] and obj["Key"].endswith(".csv"):
                body = s3.get_object(Bucket=location_bucket, Key=obj["Key"])["Body"].read().decode()
                out.extend(row for row in csv.reader(io.StringIO(body)) if row)
    return out


def jobs_listed() -> list[dict]:
    return aws.s3control().list_jobs(AccountId=ACCOUNT).get("Jobs", [])


KEYS = ["data/a.json", "data/with space+plus,comma\"quote.txt", "data/caf\u00e9/\u00fcml.txt", "data/sse-c.bin",
        "archive/old.log", "data/gone.txt", "data/overwritten.txt", "other/out-of-scope.txt"]


@pytest.fixture
def lake(unique, s3):
    """A versioned bucket whose one rule takes data/ and archive/ (SSE-KMS too), its objects, inventory and
    the job's location and role."""
    bucket = make_bucket(f"br-{unique}", versioned=True)
    put_replication(bucket, [rule("data", prefix="data/", kms=True, priority=1),
                             rule("archive", prefix="archive/", priority=2)])
    for key in KEYS:
        extra = dict(SSE_C) if key.endswith("sse-c.bin") else {}
        if key.startswith("archive/"):
            extra["StorageClass"] = "GLACIER"
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode() * 3, **extra)
    rows = [inventory_row(s3, bucket, k, version_id=None) if not k.endswith("sse-c.bin") else
            {**inventory_row(s3, bucket, "data/a.json", version_id=None), "key": k, "encryption_status": "SSE-C",
             "e_tag": None} for k in KEYS]
    inv = make_bucket(f"br-inv-{unique}")
    delivery = write_inventory(inv, bucket, rows)
    s3.delete_object(Bucket=bucket, Key="data/gone.txt")  # after the inventory: gone by the run
    s3.put_object(Bucket=bucket, Key="data/overwritten.txt", Body=b"newer")  # replicates by itself
    location = make_bucket(f"br-loc-{unique}")
    role = iam.create_role(f"br-role-{unique}", role_policy(bucket, location))
    return {"bucket": bucket, "manifest": delivery.manifest_url, "location": location, "role": role}


def batch_args(lake, results_path, run_id, *extra):
    return ["--inventory-manifest", lake["manifest"], "--method", "batch-replication",
            "--batch-role-arn", lake["role"], "--batch-location", f"s3://{lake['location']}/batch",
            "--results", results_path, "--run-id", run_id, "--progress-interval", "0.2", *extra]


def test_the_batch_route_replicates_each_eligible_version_writing_none_and_its_rows_are_the_report_row_for_row(
        spark, lake, tmp_path, proxy):
    bucket = lake["bucket"]
    before = versions(bucket)

    assert run_job(*batch_args(lake, tmp_path / "r", "b1")) == 0

    assert versions(bucket) == before  # no new version, LastModified and ETag as they were
    rows = rows_by_key(spark, tmp_path / "r", "b1")
    assert {k: (r.status, r.error_code, r.job) for k, r in rows.items()} == {
        "data/a.json": (batch_report.REPLICATED, None, "batch-replication"),
        "data/with space+plus,comma\"quote.txt": (batch_report.REPLICATED, None, "batch-replication"),
        "data/caf\u00e9/\u00fcml.txt": (batch_report.REPLICATED, None, "batch-replication"),
        "data/sse-c.bin": (batch_report.REPLICATED, None, "batch-replication"),  # no key needed: S3 replicates it
        "archive/old.log": (batch_plan.SKIPPED_ARCHIVED, None, "batch-replication"),
        "data/gone.txt": (batch_plan.MISSING, None, "batch-replication"),
        "data/overwritten.txt": (batch_plan.SKIPPED_CHANGED, None, "batch-replication"),
        "other/out-of-scope.txt": (batch_plan.SKIPPED_OUT_OF_SCOPE, None, "batch-replication"),
    }
    replicated = sorted(k for k, r in rows.items() if r.status == batch_report.REPLICATED)
    assert {k: replication_status(bucket, k) for k in replicated} == {k: "COMPLETED" for k in replicated}
    assert replication_status(bucket, "data/overwritten.txt") is None
    for key in replicated:  # the manifest named the version the HEAD read, which is still the only one
        assert rows[key].version_id == before[key][0][0]
    # the results hold the report, row for row (keys decoded, HTTP status and error code read by content)
    from_report = sorted((b, k, v, s) for b, k, v, s in (
        (p["bucket"], p["key"], p["version_id"], batch_report.status_of(p))
        for p in map(batch_report.parse_line, report_rows(lake["location"]))))
    assert from_report == sorted((bucket, k, rows[k].version_id, rows[k].status) for k in replicated)
    counts = proxy.counts()
    assert counts.get("CreateJob") == 1 and counts.get("ListJobs") == 1  # looked for first: none yet
    assert len(jobs_listed_for(lake)) == 1
    assert counts.get("CopyObject", 0) == 0 and counts.get("PutObject", 0) == 1  # the manifest, nothing else


def jobs_listed_for(lake) -> list[dict]:
    return [j for j in jobs_listed() if j.get("JobId") and describe(j["JobId"])["RoleArn"] == lake["role"]]


def describe(job_id: str) -> dict:
    return aws.s3control().describe_job(AccountId=ACCOUNT, JobId=job_id)["Job"]


def test_a_rerun_of_the_run_id_creates_no_second_job_and_adds_no_row(spark, lake, tmp_path, proxy):
    assert run_job(*batch_args(lake, tmp_path / "r", "b2")) == 0
    first = rows_by_key(spark, tmp_path / "r", "b2")
    proxy.reset()

    assert run_job(*batch_args(lake, tmp_path / "r", "b2")) == 0

    assert rows_by_key(spark, tmp_path / "r", "b2") == first
    assert proxy.counts().get("CreateJob", 0) == 0
    assert proxy.counts().get("HeadObject", 0) == INVENTORY_HEADS  # no object's: the run was collected
    assert len(jobs_listed_for(lake)) == 1


def test_a_driver_lost_after_creating_the_job_reattaches_to_it_on_the_rerun(spark, lake, tmp_path, proxy, hook):
    """The first driver dies between CreateJob and recording the job: the rerun plans nothing again, finds
    the manifest written, and its CreateJob (same token) answers the same job."""
    lost = []

    def die_after_create(http_response, parsed, model, **_):
        if model.name == "CreateJob" and not lost:
            lost.append(parsed["JobId"])
            raise KeyboardInterrupt("driver lost")

    hook(aws.s3control(), "after-call.s3-control.CreateJob", die_after_create)
    with pytest.raises(KeyboardInterrupt):
        job.main([str(a) for a in batch_args(lake, tmp_path / "r", "b3")])
    assert len(lost) == 1
    state = json.loads((tmp_path / "r" / "run_id=b3" / "_s3lake_batch.json").read_text())
    assert all("job_id" not in entry for entry in state["buckets"].values())
    proxy.reset()

    assert run_job(*batch_args(lake, tmp_path / "r", "b3", "--checkpoint-interval", "1")) == 0

    assert [j["JobId"] for j in jobs_listed_for(lake)] == lost
    assert proxy.counts().get("CreateJob", 0) == 0  # found by the token in its Description, not created again
    assert proxy.counts().get("HeadObject", 0) == INVENTORY_HEADS  # planned by the first driver: not again
    rows = rows_by_key(spark, tmp_path / "r", "b3")
    assert len(rows) == len(KEYS)
    assert sum(r.status == batch_report.REPLICATED for r in rows.values()) == 4


def test_a_manifest_changed_after_upload_fails_the_job_and_every_object_gets_a_failed_row(
        spark, lake, tmp_path, hook):
    bucket = lake["bucket"]
    before = versions(bucket)

    def tamper(params, **_):
        m = params["Manifest"]["Location"]["ObjectArn"].split(":::", 1)[1]
        where, key = m.split("/", 1)
        aws.s3().put_object(Bucket=where, Key=key, Body=f"{bucket},data/a.json,null\n".encode())

    hook(aws.s3control(), "before-parameter-build.s3-control.CreateJob", tamper)

    assert run_job(*batch_args(lake, tmp_path / "r", "b4")) == 1

    assert versions(bucket) == before
    assert replication_status(bucket, "data/a.json") is None
    rows = rows_by_key(spark, tmp_path / "r", "b4")
    failed = {k: r for k, r in rows.items() if r.status == results.FAILED}
    assert sorted(failed) == sorted(["data/a.json", "data/with space+plus,comma\"quote.txt",
                                     "data/caf\u00e9/\u00fcml.txt", "data/sse-c.bin"])
    assert {r.error_code for r in failed.values()} == {"JobFailed"}
    assert len(rows) == len(KEYS)


def test_a_role_without_initiate_replication_fails_each_task_access_denied_and_replicates_nothing(
        spark, lake, tmp_path, unique):
    bucket = lake["bucket"]
    role = iam.create_role(f"br-noinit-{unique}", iam.without_statement(role_policy(bucket, lake["location"]),
                                                                       "InitiateReplication"))
    args = batch_args(lake, tmp_path / "r", "b5")
    args[args.index("--batch-role-arn") + 1] = role

    assert run_job(*args, "--max-failures", "10") == 0

    rows = rows_by_key(spark, tmp_path / "r", "b5")
    denied = {k: (r.status, r.error_code) for k, r in rows.items() if r.error_code}
    assert set(denied.values()) == {(results.FAILED, "AccessDenied")} and len(denied) == 4
    assert all(replication_status(bucket, k) is None for k in denied)


def test_a_job_cancelled_mid_way_leaves_replicated_rows_and_a_failed_row_for_each_task_not_run(
        spark, lake, tmp_path, moto_server):
    bucket = lake["bucket"]
    testbed_jobs.set_pace(moto_server, 1.0)
    try:
        assert run_job(*batch_args(lake, tmp_path / "r", "b6", "--no-wait")) == 0
        job_id = jobs_listed_for(lake)[0]["JobId"]
        time.sleep(1.5)
        aws.s3control().update_job_status(AccountId=ACCOUNT, JobId=job_id, RequestedJobStatus="Cancelled")
    finally:
        testbed_jobs.set_pace(moto_server, None)
    deadline = time.time() + 30
    while describe(job_id)["Status"] not in ("Cancelled", "Complete") and time.time() < deadline:
        time.sleep(0.2)
    assert describe(job_id)["Status"] == "Cancelled"

    assert run_job(*batch_args(lake, tmp_path / "r", "b6", "--max-failures", "10")) == 0

    rows = rows_by_key(spark, tmp_path / "r", "b6")
    eligible = [k for k, r in rows.items() if r.status in (batch_report.REPLICATED, results.FAILED)]
    assert len(eligible) == 4 and len(rows) == len(KEYS)
    done = [k for k in eligible if rows[k].status == batch_report.REPLICATED]
    assert 0 < len(done) < 4
    assert {rows[k].error_code for k in eligible if k not in done} == {"JobCancelled"}
    assert {k: replication_status(bucket, k) for k in eligible} == {
        k: ("COMPLETED" if k in done else None) for k in eligible}


def test_the_replication_report_verifies_a_batch_runs_objects_live(spark, lake, tmp_path):
    assert run_job(*batch_args(lake, tmp_path / "r", "b7")) == 0

    # 1: an SSE-C object answers no HEAD without its key, so a live check cannot read its status
    assert report_job.main(["--results", str(tmp_path / "r"), "--run-id", "b7", "--live",
                            "--report", str(tmp_path / "report")]) == 1

    from s3lake.replication import report as rr
    outcomes = {r.key: (r.outcome, r.error_code) for r in rr.read_run(spark, str(tmp_path / "report"), "b7").collect()}
    assert outcomes == {**{k: (rr.COMPLETED, None) for k in ["data/a.json", "data/with space+plus,comma\"quote.txt",
                                                             "data/caf\u00e9/\u00fcml.txt"]},
                        "data/sse-c.bin": (rr.UNCHECKED, "400")}


def test_a_batch_role_that_does_not_exist_is_one_line_and_nothing_is_written(lake, tmp_path, capsys):
    args = batch_args(lake, tmp_path / "r", "b8")
    args[args.index("--batch-role-arn") + 1] = f"arn:aws:iam::{ACCOUNT}:role/no-such-role"

    assert run_job(*args) == 2

    assert "no such IAM role" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert aws.s3().list_objects_v2(Bucket=lake["location"]).get("KeyCount") == 0


def test_a_dry_run_of_the_batch_route_makes_no_object_request_and_creates_nothing(spark, lake, tmp_path, proxy):
    assert run_job(*batch_args(lake, tmp_path / "r", "b9", "--dry-run")) == 0

    counts = proxy.counts()
    assert {op: n for op, n in counts.items() if op in ("HeadObject", "PutObject", "CreateJob", "ListObjectVersions")
            } == {"HeadObject": 2 * INVENTORY_HEADS}  # the driver's and the one task's read of the inventory
    rows = rows_by_key(spark, tmp_path / "r", "b9")
    assert sum(r.status == batch_plan.WOULD_REPLICATE for r in rows.values()) == 6  # incl. gone and overwritten
    assert jobs_listed_for(lake) == []





def test_a_run_id_of_a_copy_run_is_refused_by_the_batch_route_and_the_reverse(spark, lake, tmp_path, capsys):
    assert run_job("--inventory-manifest", lake["manifest"], "--results", tmp_path / "r", "--run-id", "mixed",
                   "--dry-run") == 0
    assert run_job(*batch_args(lake, tmp_path / "r", "mixed", "--dry-run")) == 2
    assert "use another --run-id" in capsys.readouterr().err
    assert run_job(*batch_args(lake, tmp_path / "r", "other", "--dry-run")) == 0
    assert run_job("--inventory-manifest", lake["manifest"], "--results", tmp_path / "r", "--run-id", "other",
                   "--dry-run") == 2
    assert {r.job for r in results.read_run(spark, str(tmp_path / "r"), "mixed").collect()} == {"copy-in-place"}
    assert {r.job for r in results.read_run(spark, str(tmp_path / "r"), "other").collect()} == {"batch-replication"}


def test_the_replication_report_verifies_a_batch_run_from_a_later_inventory_sse_c_included(spark, lake, tmp_path,
                                                                                          s3):
    from datetime import datetime, timedelta, timezone

    from s3lake.replication import report as rr

    assert run_job(*batch_args(lake, tmp_path / "r", "b10")) == 0
    bucket = lake["bucket"]
    rows = rows_by_key(spark, tmp_path / "r", "b10")
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).replace(second=0, microsecond=0)
    listed = []
    for key in ("data/a.json", "data/with space+plus,comma\"quote.txt", "data/caf\u00e9/\u00fcml.txt"):
        listed.append(inventory_row(s3, bucket, key))  # as S3 lists them now: COMPLETED
    listed.append({**listed[0], "key": "data/sse-c.bin", "version_id": rows["data/sse-c.bin"].version_id,
                   "replication_status": "COMPLETED", "encryption_status": "SSE-C"})
    s3.put_object(Bucket=bucket, Key="data/a.json", Body=b"overwritten after the run")  # replicates by itself
    listed[0] = inventory_row(s3, bucket, "data/a.json", replication_status="PENDING")
    inv = make_bucket(f"{bucket}-later")
    delivery = write_inventory(inv, bucket, listed, when=later, config_id="later")

    assert report_job.main(["--results", str(tmp_path / "r"), "--run-id", "b10", "--inventory-manifest",
                            delivery.manifest_url, "--report", str(tmp_path / "report")]) == 0

    outcomes = {r.key: r.outcome for r in rr.read_run(spark, str(tmp_path / "report"), "b10").collect()}
    assert outcomes == {"data/a.json": rr.OVERWRITTEN, "data/with space+plus,comma\"quote.txt": rr.COMPLETED,
                        "data/caf\u00e9/\u00fcml.txt": rr.COMPLETED, "data/sse-c.bin": rr.COMPLETED}
