"""The Batch Replication route end to end as a principal holding only conf/iam/copy-in-place.json, its job
running as a role holding only conf/iam/batch-replication-job-role.json (placeholders filled in).

The server audits every decision of both, so the tests show nothing was denied, each batch statement of the
caller's policy and each statement of the job role's was needed, and removing one ends the run visibly worse.
"""

from __future__ import annotations

import uuid

import pytest
from s3lake import aws
from s3lake.objects import results
from s3lake.replication import batch_report
from s3lake_testbed import iam
from s3lake_testbed.inventory import inventory_row, write_inventory
from s3lake_testbed.replication import put_replication, rule
from s3lake_testbed.seed import make_bucket, make_kms_key

from jobs import copy_in_place as job

SSE_C = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": "k" * 32}
KEYS = ["data/a.json", "data/b c.txt", "data/sse-c.bin", "other/out.txt"]
BATCH_STATEMENTS = {"BatchReplicationJobs", "FollowBatchReplicationJobs", "PassBatchJobRole", "CheckBatchJobRole",
                    "BatchManifestsAndReports", "SseCustomerKeyObjectVersions"}


def caller_policy(bucket: str, inventory: str, location: str, role_name: str) -> dict:
    return iam.fill_placeholders(iam.load_policy("copy-in-place"), {
        "REGION": "us-east-1", "ACCOUNT_ID": iam.ACCOUNT_ID,
        "ARTIFACTS_BUCKET": "artifacts-unused", "ARTIFACTS_PREFIX": "launch", "LOG_BUCKET": "logs-unused",
        "LOG_PREFIX": "logs", "INVENTORY_DATABASE": "unused_db", "INVENTORY_TABLE": "unused_table",
        "INVENTORY_BUCKET": inventory, "INVENTORY_PREFIX": "inventory", "DATA_BUCKET": bucket, "DATA_PREFIX": "",
        "DATA_KMS_KEY_ID": make_kms_key().rsplit("/", 1)[-1], "RESULTS_BUCKET": "results-unused",
        "RESULTS_PREFIX": "results", "RESULTS_DATABASE": "unused_results_db",
        "BATCH_BUCKET": location, "BATCH_PREFIX": "batch", "BATCH_ROLE_NAME": role_name,
    })


def role_policy(bucket: str, location: str) -> dict:
    return iam.fill_placeholders(iam.load_policy("batch-replication-job-role"), {
        "DATA_BUCKET": bucket, "DATA_PREFIX": "", "MANIFEST_BUCKET": location, "MANIFEST_PREFIX": "batch",
        "RESULTS_BUCKET": location, "RESULTS_PREFIX": "batch"})


class Run:
    """One batch-route run as a fresh principal, with a fresh job role: exit code, rows, both audits."""

    def __init__(self, spark, tmp, name: str, remove_caller=(), remove_role=()) -> None:
        s3 = aws.s3()
        u = uuid.uuid4().hex[:10]
        self.bucket = make_bucket(f"ibr-{u}", versioned=True)
        put_replication(self.bucket, [rule("data", prefix="data/", priority=1)])
        for key in KEYS:
            s3.put_object(Bucket=self.bucket, Key=key, Body=key.encode(), **(SSE_C if "sse-c" in key else {}))
        rows = [inventory_row(s3, self.bucket, k, version_id=None) for k in KEYS if "sse-c" not in k]
        rows.append({**rows[0], "key": "data/sse-c.bin", "encryption_status": "SSE-C", "e_tag": None})
        inventory = make_bucket(f"ibr-inv-{u}")
        delivery = write_inventory(inventory, self.bucket, rows)
        location = make_bucket(f"ibr-loc-{u}")
        role_name = f"ibr-role-{u}"
        self.role_doc, self.caller_doc = role_policy(self.bucket, location), caller_policy(
            self.bucket, inventory, location, role_name)
        for sid in remove_role:
            self.role_doc = iam.without_statement(self.role_doc, sid)
        for sid, action in remove_caller:
            self.caller_doc = iam.without_statement(self.caller_doc, sid, action)
        role_audit, caller_audit = tmp / f"{name}.role.jsonl", tmp / f"{name}.caller.jsonl"
        role = iam.create_role(role_name, self.role_doc, audit=role_audit)
        principal = iam.create_principal(self.caller_doc, audit=caller_audit)
        with iam.acting_as(principal, spark):
            self.code = job.main(["--inventory-manifest", delivery.manifest_url, "--method", "batch-replication",
                                  "--batch-role-arn", role, "--batch-location", f"s3://{location}/batch",
                                  "--results", str(tmp / name), "--run-id", name, "--progress-interval", "0.2"])
        self.rows = {r.key: (r.status, r.error_code) for r in results.read_run(spark, str(tmp / name), name).collect()}
        self.role_audit, self.caller_audit = iam.read_audit(role_audit), iam.read_audit(caller_audit)


@pytest.fixture(scope="module")
def shipped(spark, moto_server, tmp_path_factory):
    return Run(spark, tmp_path_factory.mktemp("iam-batch"), "shipped")


def test_the_shipped_policies_replicate_every_eligible_object_sse_c_included(shipped):
    assert shipped.code == 0
    assert shipped.rows == {"data/a.json": (batch_report.REPLICATED, None),
                            "data/b c.txt": (batch_report.REPLICATED, None),
                            "data/sse-c.bin": (batch_report.REPLICATED, None),
                            "other/out.txt": ("SKIPPED_OUT_OF_SCOPE", None)}


def test_no_request_of_the_caller_or_the_job_role_was_denied(shipped):
    denied = [d for d in shipped.caller_audit + shipped.role_audit if not d["allowed"]]
    # the one expected: the HEAD looking for a manifest not yet written is 403 (no s3:ListBucket on the location,
    # so S3 hides whether it exists); the create-once PutObject decides
    assert [(d["action"], d.get("kind")) for d in denied] == [("s3:ListBucket", "visibility")]


def test_every_batch_statement_of_the_caller_and_every_action_of_the_job_role_was_needed(shipped):
    used = iam.used_actions(shipped.caller_audit)
    granted = {(sid, a) for sid, a in iam.granted_actions(shipped.caller_doc) if sid in BATCH_STATEMENTS}
    assert granted - used == set()
    assert iam.granted_actions(shipped.role_doc) - iam.used_actions(shipped.role_audit) == set()


@pytest.mark.parametrize("removed, code, rows", [
    # CreateJob refused: the manifest is kept, nothing replicated, one line, exit 1
    ((("PassBatchJobRole", None),), 1, {}),
    ((("BatchReplicationJobs", "s3:CreateJob"),), 1, {}),
    ((("BatchReplicationJobs", "s3:ListJobs"),), 1, {}),  # cannot look for the run's job: creates none
    # GetRole denied: a warning, and the run goes on
    ((("CheckBatchJobRole", None),), 0, {"data/a.json": (batch_report.REPLICATED, None)}),
])
def test_without_a_batch_statement_of_the_caller_the_run_ends_as_documented(spark, tmp_path, removed, code, rows,
                                                                             capsys):
    run = Run(spark, tmp_path, "crippled", remove_caller=[(sid, a) for sid, a in removed])
    assert run.code == code
    assert {k: v for k, v in run.rows.items() if k == "data/a.json"} == rows
    err = capsys.readouterr().err
    if code == 1:
        assert ("CreateJob for " in err or "ListJobs was refused" in err) and "rerun the same command" in err
        assert "was refused (AccessDenied" in err
        assert aws.s3().head_object(Bucket=run.bucket, Key="data/a.json").get("ReplicationStatus") is None
    else:
        assert "warning: cannot check --batch-role-arn" in err and "(AccessDenied); going on" in err


def test_a_job_role_without_initiate_replication_leaves_every_eligible_object_failed_access_denied(spark, tmp_path):
    run = Run(spark, tmp_path, "no-init", remove_role=["InitiateReplication"])
    assert run.code == 1
    assert {k: v for k, v in run.rows.items() if k.startswith("data/")} == {
        k: (results.FAILED, "AccessDenied") for k in ("data/a.json", "data/b c.txt", "data/sse-c.bin")}


def test_a_job_role_that_cannot_read_the_manifest_fails_the_job_and_every_eligible_object_gets_a_failed_row(
        spark, tmp_path):
    """No task runs, so S3 writes no report; the caller, without s3:ListBucket on the location, would read a
    403 for it: the rows come from the run's eligible objects."""
    run = Run(spark, tmp_path, "no-manifest", remove_role=["ReadManifest"])
    assert run.code == 1
    assert {k: v for k, v in run.rows.items() if k.startswith("data/")} == {
        k: (results.FAILED, "JobFailed") for k in ("data/a.json", "data/b c.txt", "data/sse-c.bin")}
