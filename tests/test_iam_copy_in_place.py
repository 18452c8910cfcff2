"""Copy in place end to end as a principal holding only conf/iam/copy-in-place.json (placeholders filled in).

The runs happen once per module (each one Spark job as its own principal); the server audits every
authorization decision, so the last tests can say that no request was denied and that every action the
policy grants was needed by some request.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from s3lake import aws
from s3lake.objects import results
from s3lake.replication import copy_in_place as cip
from s3lake_testbed import iam
from s3lake_testbed.inventory import inventory_row, write_inventory
from s3lake_testbed.replication import replicate_everything
from s3lake_testbed.scenarios import seed_rich_bucket
from s3lake_testbed.seed import make_bucket, make_kms_key, object_state

from jobs import copy_in_place as job

MIB = 1024 * 1024
# Statements for the EMR cluster itself, not for the job's requests: no local run can use them.
EMR_ONLY = {"ReadLaunchArtifacts", "ListLaunchArtifacts", "WriteClusterLogs", "SparkGlueMetastoreDefaultDatabase",
            "ResultsObjects", "ResultsListing", "ResultsMultipartUploads"}
# The Batch Replication route's statements: tests/test_iam_batch_replication.py runs that route.
BATCH_ONLY = {"BatchReplicationJobs", "FollowBatchReplicationJobs", "PassBatchJobRole", "CheckBatchJobRole",
              "BatchManifestsAndReports", "SseCustomerKeyObjectVersions"}
RESULTS_TABLE = "iam_cip_results.copy_results"  # --results-table of the "plain" runs (RegisterResultsTable)


def policy(data_bucket: str, inventory_bucket: str, kms_key_arn: str, table: str = "unused_db.unused_table",
           batch_bucket: str = "batch-unused", batch_role: str = "batch-role-unused") -> dict:
    database, name = table.split(".")
    return iam.fill_placeholders(iam.load_policy("copy-in-place"), {
        "REGION": "us-east-1", "ACCOUNT_ID": iam.ACCOUNT_ID,
        "ARTIFACTS_BUCKET": "artifacts-unused", "ARTIFACTS_PREFIX": "launch",
        "LOG_BUCKET": "logs-unused", "LOG_PREFIX": "logs",
        "INVENTORY_DATABASE": database, "INVENTORY_TABLE": name,
        "INVENTORY_BUCKET": inventory_bucket, "INVENTORY_PREFIX": "inventory",
        "DATA_BUCKET": data_bucket, "DATA_PREFIX": "", "DATA_KMS_KEY_ID": kms_key_arn.rsplit("/", 1)[-1],
        "RESULTS_BUCKET": "results-unused", "RESULTS_PREFIX": "results",
        "RESULTS_DATABASE": RESULTS_TABLE.split(".")[0],
        "BATCH_BUCKET": batch_bucket, "BATCH_PREFIX": "batch", "BATCH_ROLE_NAME": batch_role,
    })


class Run:
    """One job run as a fresh principal: exit code, result rows by key, the server's audit."""

    def __init__(self, spark, tmp, name: str, principal_policy: dict, *args, run_id: str | None = None) -> None:
        audit = tmp / f"{name}.audit.jsonl"
        principal = iam.create_principal(principal_policy, audit=audit)
        run_id = run_id or name
        with iam.acting_as(principal, spark):
            self.code = job.main([*map(str, args), "--results", str(tmp / name), "--run-id", run_id])
        self.rows = {} if "--estimate" in args else {
            r.key: r for r in results.read_run(spark, str(tmp / name), run_id).collect()}
        self.audit = iam.read_audit(audit)
        self.policy = principal_policy

    def statuses(self) -> dict:
        return {k: (r.status, r.error_code) for k, r in self.rows.items()}


def make_big(inv: str, u: str) -> tuple:
    """A versioned bucket with a ~12 MiB SSE-KMS object with tags and grants (multipart above 5 MiB)."""
    s3 = aws.s3()
    big = replicate_everything(make_bucket(f"iam-cip-mp-{u}", versioned=True))
    kms = make_kms_key()
    s3.put_object(Bucket=big, Key="big/blob.bin", Body=bytes(range(256)) * (12 * MIB // 256 + 3),
                  Tagging="keep=me", ServerSideEncryption="aws:kms", SSEKMSKeyId=kms, Metadata={"m": "1"},
                  GrantFullControl=f'id="{s3.get_bucket_acl(Bucket=big)["Owner"]["ID"]}"')
    delivery = write_inventory(inv, big, [inventory_row(s3, big, "big/blob.bin")])
    return big, delivery, policy(big, inv, kms), ("--multipart-threshold", 5 * MIB)


def make_plain(inv: str, u: str) -> tuple:
    """An unversioned bucket (so no replication: --no-replication-check): a tagged object with a grant, and an
    object deleted after the inventory; the run registers its results in Glue."""
    s3 = aws.s3()
    plain = make_bucket(f"iam-cip-plain-{u}")
    s3.put_object(Bucket=plain, Key="tagged.txt", Body=b"t", Tagging="a=1",
                  GrantFullControl=f'id="{s3.get_bucket_acl(Bucket=plain)["Owner"]["ID"]}"')
    s3.put_object(Bucket=plain, Key="deleted.txt", Body=b"soon gone")
    delivery = write_inventory(inv, plain, [inventory_row(s3, plain, k) for k in ("tagged.txt", "deleted.txt")])
    s3.delete_object(Bucket=plain, Key="deleted.txt")
    return plain, delivery, policy(plain, inv, make_kms_key()), ("--no-replication-check",
                                                                  "--results-table", RESULTS_TABLE)


def make_locked(inv: str, u: str) -> tuple:
    """An Object Lock bucket: one object under GOVERNANCE retention (30 days) and a legal hold."""
    s3 = aws.s3()
    locked = f"iam-cip-lock-{u}"
    s3.create_bucket(Bucket=locked, ObjectLockEnabledForBucket=True)
    replicate_everything(locked)
    until = (datetime.now(timezone.utc) + timedelta(days=30)).replace(microsecond=0)
    s3.put_object(Bucket=locked, Key="locked.txt", Body=b"keep", ObjectLockMode="GOVERNANCE",
                  ObjectLockRetainUntilDate=until, ObjectLockLegalHoldStatus="ON", ChecksumAlgorithm="SHA256")
    delivery = write_inventory(inv, locked, [inventory_row(s3, locked, "locked.txt")])
    return locked, delivery, policy(locked, inv, make_kms_key()), ()


MAKERS = {"big": make_big, "plain": make_plain, "locked": make_locked}


@pytest.fixture(scope="module")
def inv(moto_server):
    return make_bucket(f"iam-cip-inv-{uuid.uuid4().hex[:10]}")


@pytest.fixture(scope="module")
def scenarios(inv, tmp_path_factory):
    """The rich bucket (Glue table) and one of each :data:`MAKERS`; their state before any run."""
    u = uuid.uuid4().hex[:10]
    rich = seed_rich_bucket(f"iam-cip-src-{u}", inventory_bucket=inv, table=f"iam_cip_{u}.inventory")
    replicate_everything(rich.bucket)
    made = {name: make(inv, u) for name, make in MAKERS.items()}
    return {
        "tmp": tmp_path_factory.mktemp("iam-cip"),
        "rich": (rich, policy(rich.bucket, inv, rich.kms_key, rich.delivery.table),
                 {role: object_state(rich.bucket, key) for role, key in rich.keys.items()}),
        "before": {"big": object_state(made["big"][0], "big/blob.bin"),
                   "plain": object_state(made["plain"][0], "tagged.txt")},
        **made,
    }


@pytest.fixture(scope="module")
def runs(spark, scenarios):
    """The shipped policy, each scenario once."""
    tmp = scenarios["tmp"]
    rich, rich_policy, _ = scenarios["rich"]
    # --estimate first (bucket-level reads only: EstimateBucketReads), then the copy itself
    done = {"estimate": Run(spark, tmp, "estimate", rich_policy, "--inventory-table", rich.delivery.table,
                            "--estimate")}
    done["rich"] = Run(spark, tmp, "rich", rich_policy, "--inventory-table", rich.delivery.table)
    for name in MAKERS:
        _, delivery, shipped, extra = scenarios[name]
        done[name] = Run(spark, tmp, name, shipped, "--inventory-manifest", delivery.manifest_url, *extra)
    _, delivery, shipped, extra = scenarios["plain"]  # the same run again: its Glue partition is updated
    done["plain_again"] = Run(spark, tmp, "plain_again", shipped, "--inventory-manifest", delivery.manifest_url,
                              *extra, run_id="plain")
    return done


def test_the_shipped_policy_prices_both_routes_from_the_glue_table_with_bucket_level_reads(runs, scenarios):
    run, rich = runs["estimate"], scenarios["rich"][0]
    assert run.code == 0
    assert {d["action"] for d in run.audit} >= {"s3:GetBucketNotification", "s3:GetLifecycleConfiguration"}
    assert [d for d in run.audit if d["resource"].startswith(f"arn:aws:s3:::{rich.bucket}/")] == []  # no object


def test_the_shipped_policy_copies_every_attribute_kind_through_the_glue_table(runs, scenarios):
    rich, _, before = scenarios["rich"]
    run = runs["rich"]
    assert run.code == 0, run.statuses()
    for role, key in rich.keys.items():
        after = object_state(rich.bucket, key)
        if role == "archived":
            assert run.rows[key].status == cip.SKIPPED_ARCHIVED
            continue
        assert run.rows[key].status == cip.COPIED, (role, run.rows[key].error_code, run.rows[key].error_message)
        assert after.pop("metadata") == {**before[role]["metadata"], cip.MARKER: "rich"}
        expected = {**before[role], "versions": before[role]["versions"] + 1}
        expected.pop("metadata")
        assert after == expected, role


def test_the_shipped_policy_covers_the_multipart_copy_of_a_versioned_kms_object(runs, scenarios, s3):
    big, before = scenarios["big"][0], scenarios["before"]["big"]
    assert runs["big"].statuses() == {"big/blob.bin": (cip.COPIED, None)}
    after = object_state(big, "big/blob.bin")
    assert (after["tags"], after["kms_key"], after["grants"]) == (before["tags"], before["kms_key"], before["grants"])
    assert s3.list_multipart_uploads(Bucket=big).get("Uploads", []) == []


def test_the_shipped_policy_copies_an_unversioned_object_and_reports_a_deleted_one_missing(runs, scenarios):
    plain, before = scenarios["plain"][0], scenarios["before"]["plain"]
    assert runs["plain"].statuses() == {"tagged.txt": (cip.COPIED, None), "deleted.txt": (cip.MISSING, None)}
    after = object_state(plain, "tagged.txt")
    assert (after["tags"], after["grants"]) == (before["tags"], before["grants"])
    assert runs["plain_again"].statuses() == {"tagged.txt": (cip.ALREADY_COPIED, None),
                                              "deleted.txt": (cip.MISSING, None)}


def test_the_shipped_policy_registers_the_results_table_and_updates_it_on_a_rerun(runs, scenarios, glue):
    database, table = RESULTS_TABLE.split(".")
    parts = glue.get_partitions(DatabaseName=database, TableName=table)["Partitions"]
    assert [(p["Values"], p["StorageDescriptor"]["Location"].rstrip("/")) for p in parts] == [
        (["plain"], f"{scenarios['tmp'] / 'plain_again'}/run_id=plain")]


def test_the_shipped_policy_keeps_object_lock_retention_and_legal_hold(runs, scenarios, s3):
    locked = scenarios["locked"][0]
    until = s3.head_object(Bucket=locked, Key="locked.txt", VersionId=runs["locked"].rows["locked.txt"].version_id)
    assert runs["locked"].statuses() == {"locked.txt": (cip.COPIED, None)}
    head = s3.head_object(Bucket=locked, Key="locked.txt")
    assert head["Metadata"][cip.MARKER] == "locked"
    assert (head["ObjectLockMode"], head["ObjectLockRetainUntilDate"], head["ObjectLockLegalHoldStatus"]) == (
        "GOVERNANCE", until["ObjectLockRetainUntilDate"], "ON")


def test_no_request_of_the_runs_was_denied(runs):
    denied = {(d["action"], d["resource"]) for run in runs.values() for d in run.audit
              if not d["allowed"] and d["kind"] == "request"}
    assert denied == set()


def test_every_action_the_policy_grants_was_needed_by_a_request(runs, scenarios):
    used = set().union(*(iam.used_actions(run.audit) for run in runs.values()))
    granted = iam.granted_actions(scenarios["rich"][1])
    unused = {(sid, action) for sid, action in granted - used if sid not in EMR_ONLY | BATCH_ONLY}
    # Only failure paths abort: test_without_kms_decrypt_... shows the abort is allowed and happens.
    assert unused == {("CopyObjectsInPlace", "s3:AbortMultipartUpload")}


# ------------------------------------------ each permission is needed: without it the run ends visibly worse
# (kms:GenerateDataKey / kms:Decrypt through S3: tests/test_iam_strict.py, per call)


def crippled(spark, scenarios, inv, name, scenario, removed):
    """A fresh ``scenario`` run as a principal holding the shipped policy minus each (Sid, action) ``removed``."""
    bucket, delivery, shipped, extra = MAKERS_FOR_CRIPPLED[scenario](inv, uuid.uuid4().hex[:10])
    for sid, action in removed:
        shipped = iam.without_statement(shipped, sid, action)
    run = Run(spark, scenarios["tmp"], name, shipped, "--inventory-manifest", delivery.manifest_url, *extra)
    run.bucket = bucket
    return run


def make_mixed(inv: str, u: str) -> tuple:
    """An Object Lock bucket holding a large SSE-KMS object, an object under retention and a deleted object."""
    s3 = aws.s3()
    locked, _, shipped, extra = make_locked(inv, u)
    kms = make_kms_key()
    s3.put_object(Bucket=locked, Key="big/blob.bin", Body=b"m" * (6 * MIB), ServerSideEncryption="aws:kms",
                  SSEKMSKeyId=kms)
    s3.put_object(Bucket=locked, Key="deleted.txt", Body=b"soon gone")
    rows = [inventory_row(s3, locked, k) for k in ("locked.txt", "big/blob.bin", "deleted.txt")]
    delivery = write_inventory(inv, locked, rows, config_id="mixed")
    s3.delete_object(Bucket=locked, Key="deleted.txt")
    return locked, delivery, policy(locked, inv, kms), ("--multipart-threshold", 5 * MIB)


MAKERS_FOR_CRIPPLED = {**MAKERS, "mixed": make_mixed}


def test_without_the_data_bucket_listing_and_lock_reads_three_objects_each_end_worse(spark, scenarios, inv, s3):
    """One run, three permissions removed, three independent effects (one object each)."""
    run = crippled(spark, scenarios, inv, "no_list_no_lock", "mixed", [
        ("DataBucketListing", "s3:ListBucketMultipartUploads"),  # the multipart copy cannot start
        ("DataBucketListing", "s3:ListBucket"),                  # a deleted object is 403, not 404
        ("KeepObjectLock", "s3:GetObjectRetention"),             # HEAD hides the retention: not re-sent
    ])

    assert run.statuses() == {"big/blob.bin": (cip.FAILED, "AccessDenied"), "deleted.txt": (cip.FAILED, "403"),
                              "locked.txt": (cip.COPIED, None)}
    head = s3.head_object(Bucket=run.bucket, Key="locked.txt")
    assert "ObjectLockMode" not in head and head["ObjectLockLegalHoldStatus"] == "ON"


def test_without_kms_decrypt_a_multipart_copy_fails_after_it_starts_and_its_upload_is_aborted(
        spark, scenarios, inv, s3):
    """CreateMultipartUpload needs kms:GenerateDataKey only; each UploadPartCopy needs kms:Decrypt."""
    run = crippled(spark, scenarios, inv, "no_decrypt", "big", [("DataKmsKeys", "kms:Decrypt")])
    assert run.statuses() == {"big/blob.bin": (cip.FAILED, "AccessDenied")}
    assert ("CopyObjectsInPlace", "s3:AbortMultipartUpload") in iam.used_actions(run.audit)
    assert s3.list_multipart_uploads(Bucket=run.bucket).get("Uploads", []) == []
