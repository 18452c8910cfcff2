"""The Batch Replication route's pure parts: manifest lines, plan decisions, job request, report rows."""

from __future__ import annotations

import pytest
from s3lake.objects import results
from s3lake.replication import batch_jobs, batch_manifest, batch_plan, batch_report
from s3lake.replication.scope import parse

SCOPE = parse("src", {"Role": "r", "Rules": [
    {"ID": "logs", "Status": "Enabled", "Priority": 1, "Filter": {"Prefix": "logs/"},
     "Destination": {"Bucket": "arn:aws:s3:::dst"}, "DeleteMarkerReplication": {"Status": "Disabled"}},
]})


def fields_of(row: tuple) -> dict:
    return dict(zip(results.FIELDS, row))


@pytest.mark.parametrize("key, version, line", [
    ("logs/a.json", "v1", b"src,logs/a.json,v1\n"),
    ("logs/with space,comma\"quote\nnewline+plus%", "v2",
     b"src,logs/with%20space%2Ccomma%22quote%0Anewline%2Bplus%25,v2\n"),
    ("logs/null-version", None, b"src,logs/null-version,null\n"),
    ("logs/caf\u00e9", "null", b"src,logs/caf%C3%A9,null\n"),
])
def test_a_manifest_line_url_encodes_the_key_and_names_the_null_version_null(key, version, line):
    assert batch_manifest.line("src", key, version) == line


def test_a_manifest_line_reads_back_through_the_report_parser_to_the_same_key():
    key = "logs/a b,c\"d\ne+f%g/\u00e9"
    bucket, encoded, version = batch_manifest.line("src", key, "v9").decode().rstrip("\n").split(",")
    parsed = batch_report.parse_line([bucket, encoded, version, "succeeded", "200", "", "Successful"])
    assert (parsed["bucket"], parsed["key"], parsed["version_id"]) == ("src", key, "v9")


@pytest.mark.parametrize("candidate, owner, status", [
    ({"key": "logs/a", "storage_class": "GLACIER"}, None, batch_plan.SKIPPED_ARCHIVED),
    ({"key": "logs/a", "storage_class": "DEEP_ARCHIVE"}, None, batch_plan.SKIPPED_ARCHIVED),
    ({"key": "other/a", "storage_class": "STANDARD"}, None, batch_plan.SKIPPED_OUT_OF_SCOPE),
    ({"key": "logs/a", "storage_class": "STANDARD", "encryption_status": "SSE-KMS"}, None,
     batch_plan.SKIPPED_OUT_OF_SCOPE),  # the rule does not take SSE-KMS objects
    ({"key": "logs/a", "storage_class": "STANDARD", "object_owner": "them"}, "us", batch_plan.SKIPPED_OTHER_OWNER),
    ({"key": "logs/a", "storage_class": "STANDARD", "object_owner": "us"}, "us", None),
    ({"key": "logs/a", "storage_class": "STANDARD", "encryption_status": "SSE-C"}, None, None),  # eligible
    ({"key": "logs/a", "storage_class": "GLACIER_IR"}, None, None),
    ({"key": "logs/a", "storage_class": "INTELLIGENT_TIERING", "intelligent_tiering_access_tier": "ARCHIVE_ACCESS"},
     None, batch_plan.SKIPPED_ARCHIVED),
    ({"key": "logs/a", "storage_class": "INTELLIGENT_TIERING", "intelligent_tiering_access_tier": "FREQUENT"}, None,
     None),
])
def test_the_plan_skips_from_the_inventory_row_what_copy_in_place_skips_but_sse_c(candidate, owner, status):
    assert batch_plan.pre_decide({"bucket": "src", **candidate}, SCOPE, owner) == status


def test_without_a_replication_check_only_archived_and_other_owner_rules_apply():
    assert batch_plan.pre_decide({"bucket": "src", "key": "other/a", "storage_class": "STANDARD"}, None, None) is None


@pytest.mark.parametrize("head, status, version", [
    (None, batch_plan.MISSING, None),
    ({"ETag": '"e1"', "VersionId": "v1"}, batch_plan.ELIGIBLE, "v1"),
    ({"ETag": '"e1"'}, batch_plan.ELIGIBLE, "null"),  # the null version: S3 sends no version id
    ({"ETag": '"e2"', "VersionId": "v2"}, batch_plan.SKIPPED_CHANGED, "v2"),
    ({"ETag": '"e1"', "VersionId": "v1", "ReplicationStatus": "PENDING"}, batch_plan.SKIPPED_REPLICATING, "v1"),
    ({"ETag": '"e1"', "VersionId": "v1", "ReplicationStatus": "FAILED"}, batch_plan.ELIGIBLE, "v1"),
])
def test_a_head_decides_the_version_the_manifest_names(head, status, version):
    assert batch_plan.from_head(head, "e1") == (status, version)


def test_a_listing_of_an_sse_c_object_gives_its_latest_version_and_ignores_longer_keys():
    listing = {"Versions": [
        {"Key": "logs/a", "VersionId": "v2", "IsLatest": True, "ETag": '"e1"'},
        {"Key": "logs/a", "VersionId": "v1", "IsLatest": False, "ETag": '"e0"'},
    ]}
    assert batch_plan.from_listing(listing, "logs/a", "e1") == (batch_plan.ELIGIBLE, "v2")
    longer = {"Versions": [{"Key": "logs/a/b", "VersionId": "v7", "IsLatest": True, "ETag": '"e1"'}]}
    assert batch_plan.from_listing(longer, "logs/a", "e1") == (batch_plan.MISSING, None)
    deleted = {"DeleteMarkers": [{"Key": "logs/a", "VersionId": "d1", "IsLatest": True}],
               "Versions": [{"Key": "logs/a", "VersionId": "v2", "IsLatest": False, "ETag": '"e1"'}]}
    assert batch_plan.from_listing(deleted, "logs/a", "e1") == (batch_plan.MISSING, None)


def test_the_job_token_is_the_same_for_the_same_run_and_manifest_and_changes_with_either():
    m = batch_manifest.Manifest("b", "runs/r1/src/manifest.csv", "etag1", 10, True)
    same = batch_manifest.Manifest("b", "runs/r1/src/manifest.csv", "etag1", -1, False)
    other = batch_manifest.Manifest("b", "runs/r1/src/manifest.csv", "etag2", 10, True)
    assert batch_jobs.token("r1", m) == batch_jobs.token("r1", same)
    assert len({batch_jobs.token("r1", m), batch_jobs.token("r2", m), batch_jobs.token("r1", other)}) == 3
    assert len(batch_jobs.token("r1", m)) <= 64


def test_the_create_job_request_replicates_the_manifest_versions_and_reports_every_task():
    m = batch_manifest.Manifest("mb", "p/r1/src/manifest.csv", "etag1", 10, True)
    request = batch_jobs.create_request("123456789012", "r1", m, "mb", "p/r1/src/report", "arn:aws:iam::1:role/j")
    assert request == {
        "AccountId": "123456789012", "ConfirmationRequired": False, "Operation": {"S3ReplicateObject": {}},
        "Manifest": {"Spec": {"Format": "S3BatchOperations_CSV_20180820", "Fields": ["Bucket", "Key", "VersionId"]},
                     "Location": {"ObjectArn": "arn:aws:s3:::mb/p/r1/src/manifest.csv", "ETag": "etag1"}},
        "Report": {"Bucket": "arn:aws:s3:::mb", "Format": "Report_CSV_20180820", "Enabled": True,
                   "Prefix": "p/r1/src/report", "ReportScope": "AllTasks"},
        "ClientRequestToken": batch_jobs.token("r1", m),
        "Description": f"s3lake copy_in_place run r1 token {batch_jobs.token('r1', m)}",
        "Priority": 10, "RoleArn": "arn:aws:iam::1:role/j",
    }


@pytest.mark.parametrize("fields", [
    ["src", "logs/a%20b", "v1", "failed", "404", "SrcObjectNotFound", "Source object not found"],  # as S3 writes
    ["src", "logs/a%20b", "v1", "failed", "SrcObjectNotFound", "404", "Source object not found"],  # as declared
])
def test_a_report_row_is_read_by_content_whichever_order_status_and_error_code_come_in(fields):
    assert batch_report.parse_line(fields) == {
        "bucket": "src", "key": "logs/a b", "version_id": "v1", "task_status": "failed", "http_status": 404,
        "error_code": "SrcObjectNotFound", "message": "Source object not found"}


@pytest.mark.parametrize("fields, status, code", [
    (["src", "k", "v1", "succeeded", "200", "", "Successful"], batch_report.REPLICATED, None),
    (["src", "k", "v1", "failed", "404", "SrcObjectNotFound", "gone"], batch_plan.MISSING, "SrcObjectNotFound"),
    (["src", "k", "v1", "failed", "400", "SrcObjectNotEligible", "archived"], batch_report.SKIPPED_NOT_ELIGIBLE,
     "SrcObjectNotEligible"),
    (["src", "k", "v1", "failed", "403", "AccessDenied", "Access Denied"], results.FAILED, "AccessDenied"),
])
def test_each_task_outcome_becomes_one_result_row(fields, status, code):
    row = fields_of(batch_report.result_row("r1", batch_report.parse_line(fields)))
    assert (row["run_id"], row["job"], row["bucket"], row["key"], row["version_id"], row["status"],
            row["error_code"]) == ("r1", "batch-replication", "src", "k", "v1", status, code)


def test_a_progress_line_says_status_tasks_done_failures_and_reasons():
    job = {"JobId": "j1", "Status": "Active", "ProgressSummary": {
        "TotalNumberOfTasks": 10000, "NumberOfTasksSucceeded": 1166, "NumberOfTasksFailed": 34,
        "Timers": {"ElapsedTimeInActiveSeconds": 12}}}
    assert batch_jobs.progress_line("src", job) == \
        "batch job j1 (src): Active, 1,200 of 10,000 tasks done (34 failed), 12 s active"
    failed = {"JobId": "j2", "Status": "Failed", "FailureReasons": [
        {"FailureCode": "ETAG_MISMATCH", "FailureReason": "the manifest changed"}]}
    assert batch_jobs.progress_line("src", failed) == \
        "batch job j2 (src): Failed, 0 tasks done; ETAG_MISMATCH: the manifest changed"


def test_following_jobs_describes_each_until_every_one_is_over(monkeypatch):
    answers = {"j1": iter(["Active", "Complete"]), "j2": iter(["Complete"])}
    asked = []

    def describe(account, job_id):
        asked.append(job_id)
        return {"JobId": job_id, "Status": next(answers[job_id])}

    monkeypatch.setattr(batch_jobs, "describe", describe)
    lines = []
    finals = batch_jobs.follow("1", {"a": "j1", "b": "j2"}, 0, lines.append, sleep=lambda s: None)
    assert {b: j["Status"] for b, j in finals.items()} == {"a": "Complete", "b": "Complete"}
    assert asked == ["j1", "j2", "j1"]
    assert len(lines) == 3


def test_the_pacing_caps_of_copies_are_refused_with_the_batch_route():
    from jobs import copy_in_place as job

    with pytest.raises(SystemExit) as exit_:
        job.parse_args(["--inventory-manifest", "s3://b/m.json", "--results", "/tmp/r", "--dry-run",
                        "--method", "batch-replication", "--max-requests-per-second", "5"])
    assert exit_.value.code == 2


def test_a_replicated_null_version_is_the_version_an_all_versions_inventory_lists_with_an_empty_id(spark):
    from datetime import datetime, timezone

    from s3lake.replication import report as rr

    when = datetime(2026, 12, 5, tzinfo=timezone.utc)
    run = spark.createDataFrame([
        ("r1", "batch-replication", "src", "old.txt", "null", "REPLICATED", when),
        ("r1", "batch-replication", "src", "new.txt", "v2", "REPLICATED", when),
    ], "run_id string, job string, bucket string, key string, version_id string, status string, "
       "finished_at timestamp")
    copied = run.select("bucket", "key", "version_id", rr._version(run.version_id).alias("new_version_id"),
                        spark_null("size", "bigint"), spark_null("storage_class", "string"), "finished_at", "status")
    inventory = spark.createDataFrame([
        ("src", "old.txt", "", True, False, "COMPLETED", when),
        ("src", "new.txt", "v2", True, False, "COMPLETED", when),
    ], "bucket string, key string, version_id string, is_latest boolean, is_delete_marker boolean, "
       "replication_status string, last_modified_date timestamp")
    out = {r.key: r.outcome for r in rr.from_inventory(copied, inventory, "r1", "inventory x", when).collect()}
    assert out == {"old.txt": rr.COMPLETED, "new.txt": rr.COMPLETED}


def spark_null(name, kind):
    from pyspark.sql import functions as F

    return F.lit(None).cast(kind).alias(name)


@pytest.mark.parametrize("results_path, location, message", [
    ("/tmp/results", None, "needs --batch-location s3://BUCKET/PREFIX when --results is not on S3"),
    ("/tmp/results", "hdfs://nn/batch", "--batch-location must be an s3:// URL"),
    ("s3://ops/r", "s3:///no-bucket", "--batch-location must be an s3:// URL"),
])
def test_a_batch_location_that_is_not_on_s3_is_one_line_before_anything_is_written(results_path, location, message):
    from s3lake.errors import ConfigError
    from s3lake.replication import batch

    with pytest.raises(ConfigError, match=message.replace("/", ".").replace("+", ".")):
        batch.run_location(results_path, "r1", location)


def test_the_batch_location_defaults_under_the_run_when_the_results_are_on_s3():
    from s3lake.replication import batch

    assert batch.run_location("s3://ops/cip/", "r1", None) == "s3://ops/cip/run_id=r1/_batch"
    assert batch.run_location("/tmp/r", "r1", "s3://ops/batch/") == "s3://ops/batch/r1"
