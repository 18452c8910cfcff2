"""S3 Batch Operations jobs (S3ReplicateObject) in the test bed's strict moto server (s3lake_testbed.batch_jobs)."""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from urllib.parse import quote

import pytest
from botocore.exceptions import ClientError
from s3lake import aws
from s3lake_testbed import iam
from s3lake_testbed.batch_jobs import set_pace
from s3lake_testbed.proxy import s3_operation
from s3lake_testbed.replication import put_replication, rule
from s3lake_testbed.seed import make_bucket

ACCOUNT = iam.ACCOUNT_ID
OK = ("succeeded", "200", "", "Successful")


def _role(src: str, manifests: str, reports: str, *, without: str | None = None, trust: dict | None = None) -> str:
    policy = iam.fill_placeholders(iam.load_policy("batch-replication-job-role"), {
        "DATA_BUCKET": src, "DATA_PREFIX": "", "MANIFEST_BUCKET": manifests, "MANIFEST_PREFIX": "manifests",
        "RESULTS_BUCKET": reports, "RESULTS_PREFIX": "reports"})
    if without:
        policy = iam.without_statement(policy, without)
    return iam.create_role(None, policy, trust=trust)


def _bed(unique: str, rules: list | None = None) -> dict:
    src = make_bucket(f"bj-src-{unique}")
    s3 = aws.s3()
    s3.put_object(Bucket=src, Key="pre/null-version.txt", Body=b"before versioning")
    s3.put_bucket_versioning(Bucket=src, VersioningConfiguration={"Status": "Enabled"})
    put_replication(src, rules if rules is not None else [rule("all", kms=True)])
    bed = {"src": src, "manifests": make_bucket(f"bj-man-{unique}"), "reports": make_bucket(f"bj-rep-{unique}")}
    bed["role"] = _role(src, bed["manifests"], bed["reports"])
    return bed


def _put_manifest(bed: dict, rows: list[tuple]) -> tuple[str, str]:
    """(ObjectArn, ETag) of a CSV manifest of (bucket, key, version) rows, keys URL-encoded."""
    body = "".join(",".join([b, quote(k)] + ([v] if v is not None else [])) + "\n" for b, k, v in rows)
    key = f"manifests/{uuid.uuid4().hex}.csv"
    etag = aws.s3().put_object(Bucket=bed["manifests"], Key=key, Body=body.encode())["ETag"]
    return f"arn:aws:s3:::{bed['manifests']}/{key}", etag


def _create(bed: dict, rows: list[tuple], *, token: str | None = None, etag: str | None = None,
            scope: str = "AllTasks", confirm: bool = False, role: str | None = None, client=None) -> str:
    arn, real_etag = _put_manifest(bed, rows)
    fields = ["Bucket", "Key", "VersionId"] if any(len(r) == 3 and r[2] is not None for r in rows) else [
        "Bucket", "Key"]
    return (client or aws.s3control()).create_job(
        AccountId=ACCOUNT, ConfirmationRequired=confirm, Operation={"S3ReplicateObject": {}}, Priority=10,
        ClientRequestToken=token or uuid.uuid4().hex, RoleArn=role or bed["role"],
        Manifest={"Spec": {"Format": "S3BatchOperations_CSV_20180820", "Fields": fields},
                  "Location": {"ObjectArn": arn, "ETag": etag or real_etag}},
        Report={"Bucket": f"arn:aws:s3:::{bed['reports']}", "Format": "Report_CSV_20180820", "Enabled": True,
                "Prefix": "reports", "ReportScope": scope})["JobId"]


def _describe(job_id: str) -> dict:
    return aws.s3control().describe_job(AccountId=ACCOUNT, JobId=job_id)["Job"]


def _wait(job_id: str, statuses=("Complete", "Failed", "Cancelled"), timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = _describe(job_id)
        if job["Status"] in statuses or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def _report_rows(bed: dict, job_id: str) -> dict[str, list[tuple]]:
    """TaskExecutionStatus -> CSV rows of the completion report (read through manifest.json)."""
    s3 = aws.s3()
    manifest = json.loads(s3.get_object(Bucket=bed["reports"], Key=f"reports/job-{job_id}/manifest.json")["Body"]
                          .read())
    assert manifest["Format"] == "Report_CSV_20180820"
    assert manifest["ReportSchema"] == "Bucket, Key, VersionId, TaskStatus, ErrorCode, HTTPStatusCode, ResultMessage"
    out = {}
    for result in manifest["Results"]:
        assert result["Bucket"] == bed["reports"] and result["Key"].startswith(f"reports/job-{job_id}/results/")
        text = s3.get_object(Bucket=result["Bucket"], Key=result["Key"])["Body"].read().decode()
        out[result["TaskExecutionStatus"]] = sorted(tuple(r) for r in csv.reader(io.StringIO(text)))
    return out


def _versions(bucket: str) -> list[tuple]:
    page = aws.s3().list_object_versions(Bucket=bucket)
    return sorted((v["Key"], v["VersionId"], v["ETag"], v["LastModified"], v["IsLatest"], v["Size"])
                  for v in page.get("Versions", []))


def _replication_status(bucket: str, key: str, version: str) -> str | None:
    return aws.s3().head_object(Bucket=bucket, Key=key, VersionId=version).get("ReplicationStatus")


def test_job_replicates_each_named_version_without_writing_a_version(moto_server, unique):
    bed = _bed(unique)
    s3, src = aws.s3(), bed["src"]
    old = s3.put_object(Bucket=src, Key="data/a b+c ü.txt", Body=b"v1")["VersionId"]
    new = s3.put_object(Bucket=src, Key="data/a b+c ü.txt", Body=b"v2")["VersionId"]
    other = s3.put_object(Bucket=src, Key="data/other.txt", Body=b"x")["VersionId"]
    before = _versions(src)
    rows = [(src, "data/a b+c ü.txt", old), (src, "data/other.txt", other), (src, "pre/null-version.txt", "null")]

    job_id = _create(bed, rows)
    job = _wait(job_id)

    assert job["Status"] == "Complete", job.get("FailureReasons")
    assert job["ProgressSummary"]["TotalNumberOfTasks"] == 3
    assert job["ProgressSummary"]["NumberOfTasksSucceeded"] == 3
    assert job["ProgressSummary"]["NumberOfTasksFailed"] == 0
    assert "ElapsedTimeInActiveSeconds" in job["ProgressSummary"]["Timers"]
    assert job["TerminationDate"] >= job["CreationTime"]
    assert job["RoleArn"] == bed["role"] and job["Operation"] == {"S3ReplicateObject": {}}
    assert job["Manifest"]["Spec"]["Fields"] == ["Bucket", "Key", "VersionId"]
    assert job["Report"]["ReportScope"] == "AllTasks" and job["Report"]["Prefix"] == "reports"
    assert job["JobArn"] == f"arn:aws:s3:us-east-1:{ACCOUNT}:job/{job_id}"
    assert _versions(src) == before  # no version written, ETag and LastModified unchanged
    assert _replication_status(src, "data/a b+c ü.txt", old) == "COMPLETED"
    assert _replication_status(src, "data/a b+c ü.txt", new) is None  # not in the manifest
    assert _replication_status(src, "data/other.txt", other) == "COMPLETED"
    assert _replication_status(src, "pre/null-version.txt", "null") == "COMPLETED"
    assert _report_rows(bed, job_id) == {"succeeded": sorted([
        (src, quote("data/a b+c ü.txt"), old) + OK, (src, "data/other.txt", other) + OK,
        (src, "pre/null-version.txt", "null") + OK])}


def test_same_client_request_token_answers_the_first_job_and_creates_no_other(moto_server, unique):
    bed = _bed(unique)
    version = aws.s3().put_object(Bucket=bed["src"], Key="k", Body=b"x")["VersionId"]
    arn, etag = _put_manifest(bed, [(bed["src"], "k", version)])
    control = aws.s3control()
    request = dict(AccountId=ACCOUNT, ConfirmationRequired=False, Operation={"S3ReplicateObject": {}}, Priority=1,
                   ClientRequestToken=f"token-{unique}", RoleArn=bed["role"],
                   Manifest={"Spec": {"Format": "S3BatchOperations_CSV_20180820",
                                      "Fields": ["Bucket", "Key", "VersionId"]},
                             "Location": {"ObjectArn": arn, "ETag": etag}},
                   Report={"Enabled": False})
    listed_before = {j["JobId"] for j in control.list_jobs(AccountId=ACCOUNT)["Jobs"]}

    first = control.create_job(**request)["JobId"]
    second = control.create_job(**request)["JobId"]

    assert second == first
    listed = {j["JobId"] for j in control.list_jobs(AccountId=ACCOUNT)["Jobs"]}
    assert listed - listed_before == {first}
    with pytest.raises(ClientError) as err:
        control.create_job(**{**request, "Priority": 2})
    assert err.value.response["Error"]["Code"] == "IdempotencyException"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_manifest_etag_mismatch_fails_the_job_and_replicates_nothing(moto_server, unique):
    bed = _bed(unique)
    version = aws.s3().put_object(Bucket=bed["src"], Key="k", Body=b"x")["VersionId"]

    job = _wait(_create(bed, [(bed["src"], "k", version)], etag='"0123456789abcdef0123456789abcdef"'))

    assert job["Status"] == "Failed"
    assert [f["FailureCode"] for f in job["FailureReasons"]] == ["ManifestETagMismatch"]
    assert "0123456789abcdef0123456789abcdef" in job["FailureReasons"][0]["FailureReason"]
    assert job["ProgressSummary"]["NumberOfTasksSucceeded"] == 0
    assert _replication_status(bed["src"], "k", version) is None
    assert aws.s3().list_objects_v2(Bucket=bed["reports"]).get("KeyCount") == 0  # no task ran: no report


def test_ineligible_and_missing_objects_fail_their_tasks_in_the_report(moto_server, unique):
    from s3lake_testbed.seed import make_kms_key

    bed = _bed(unique, rules=[rule("in", prefix="in/", priority=1), rule("off", prefix="off/", enabled=False,
                                                                          priority=2)])
    s3, src = aws.s3(), bed["src"]
    put = {key: s3.put_object(Bucket=src, Key=key, Body=b"x", **extra)["VersionId"] for key, extra in [
        ("in/ok.txt", {}), ("in/archived.txt", {"StorageClass": "GLACIER"}),
        ("in/deep.txt", {"StorageClass": "DEEP_ARCHIVE"}), ("out/scope.txt", {}), ("off/disabled.txt", {}),
        ("in/kms.txt", {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": make_kms_key()}),
        ("in/ssec.txt", {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": "k" * 32}),
    ]}
    gone = s3.put_object(Bucket=src, Key="in/gone.txt", Body=b"x")["VersionId"]
    s3.delete_object(Bucket=src, Key="in/gone.txt", VersionId=gone)
    rows = [(src, k, v) for k, v in put.items()] + [(src, "in/gone.txt", gone), (src, "in/never.txt", "nope")]

    job = _wait(_create(bed, rows))
    report = _report_rows(bed, job["JobId"])

    assert job["Status"] == "Complete"
    assert job["ProgressSummary"]["NumberOfTasksSucceeded"] == 2
    assert job["ProgressSummary"]["NumberOfTasksFailed"] == 7
    assert report["succeeded"] == sorted([(src, "in/ok.txt", put["in/ok.txt"]) + OK,
                                          (src, "in/ssec.txt", put["in/ssec.txt"]) + OK])
    not_eligible = ("failed", "400", "SrcObjectNotEligible")  # HTTP status before error code, as S3 writes them
    not_found = ("failed", "404", "SrcObjectNotFound", "The source object (or version) does not exist")
    rule_message = ("No enabled replication rule takes the object",)
    assert report["failed"] == sorted([
        (src, "in/archived.txt", put["in/archived.txt"]) + not_eligible + (
            "The object is in GLACIER and not restored: it is not eligible for replication",),
        (src, "in/deep.txt", put["in/deep.txt"]) + not_eligible + (
            "The object is in DEEP_ARCHIVE and not restored: it is not eligible for replication",),
        (src, "out/scope.txt", put["out/scope.txt"]) + not_eligible + rule_message,
        (src, "off/disabled.txt", put["off/disabled.txt"]) + not_eligible + rule_message,
        (src, "in/kms.txt", put["in/kms.txt"]) + not_eligible + rule_message,
        (src, "in/gone.txt", gone) + not_found,
        (src, "in/never.txt", "nope") + not_found,
    ])
    assert _replication_status(src, "out/scope.txt", put["out/scope.txt"]) is None


def test_failed_tasks_only_report_lists_only_the_failures(moto_server, unique):
    bed = _bed(unique)
    version = aws.s3().put_object(Bucket=bed["src"], Key="k", Body=b"x")["VersionId"]

    job = _wait(_create(bed, [(bed["src"], "k", version), (bed["src"], "missing", "v")], scope="FailedTasksOnly"))

    assert list(_report_rows(bed, job["JobId"])) == ["failed"]


def test_cancel_mid_way_ends_cancelled_with_a_report_of_the_tasks_done(moto_server, unique):
    bed = _bed(unique)
    s3 = aws.s3()
    rows = [(bed["src"], f"k{i:02d}", s3.put_object(Bucket=bed["src"], Key=f"k{i:02d}", Body=b"x")["VersionId"])
            for i in range(20)]
    set_pace(moto_server, 5)
    try:
        job_id = _create(bed, rows)
        deadline = time.monotonic() + 20
        while _describe(job_id)["ProgressSummary"]["NumberOfTasksSucceeded"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        answer = aws.s3control().update_job_status(AccountId=ACCOUNT, JobId=job_id, RequestedJobStatus="Cancelled",
                                                   StatusUpdateReason="test")
        job = _wait(job_id)
    finally:
        set_pace(moto_server, None)

    assert answer["Status"] == "Cancelling" and answer["StatusUpdateReason"] == "test"
    assert job["Status"] == "Cancelled" and job["StatusUpdateReason"] == "test"
    done = job["ProgressSummary"]["NumberOfTasksSucceeded"]
    assert 2 <= done < 20 and job["ProgressSummary"]["NumberOfTasksFailed"] == 0
    assert _report_rows(bed, job_id) == {"succeeded": sorted(r + OK for r in rows[:done])}
    assert _replication_status(*rows[done]) is None
    with pytest.raises(ClientError) as err:
        aws.s3control().update_job_status(AccountId=ACCOUNT, JobId=job_id, RequestedJobStatus="Cancelled")
    assert err.value.response["Error"]["Code"] == "JobStatusException"


def test_confirmation_required_job_waits_suspended_until_ready(moto_server, unique):
    bed = _bed(unique)
    version = aws.s3().put_object(Bucket=bed["src"], Key="k", Body=b"x")["VersionId"]
    job_id = _create(bed, [(bed["src"], "k", version)], confirm=True)

    suspended = _wait(job_id, statuses=("Suspended",))
    time.sleep(0.3)
    still = _describe(job_id)
    aws.s3control().update_job_status(AccountId=ACCOUNT, JobId=job_id, RequestedJobStatus="Ready")
    job = _wait(job_id)

    assert suspended["Status"] == "Suspended" and "SuspendedDate" in suspended
    assert still["Status"] == "Suspended" and still["ProgressSummary"]["NumberOfTasksSucceeded"] == 0
    assert job["Status"] == "Complete" and _replication_status(bed["src"], "k", version) == "COMPLETED"
    with pytest.raises(ClientError) as err:
        aws.s3control().update_job_status(AccountId=ACCOUNT, JobId=job_id, RequestedJobStatus="Ready")
    assert err.value.response["Error"]["Code"] == "JobStatusException"


def test_role_without_initiate_replication_fails_each_task_access_denied(moto_server, unique):
    bed = _bed(unique)
    version = aws.s3().put_object(Bucket=bed["src"], Key="k", Body=b"x")["VersionId"]
    role = _role(bed["src"], bed["manifests"], bed["reports"], without="InitiateReplication")

    job = _wait(_create(bed, [(bed["src"], "k", version)], role=role))

    assert job["Status"] == "Complete" and job["ProgressSummary"]["NumberOfTasksFailed"] == 1
    assert _report_rows(bed, job["JobId"]) == {"failed": [
        (bed["src"], "k", version, "failed", "403", "AccessDenied", "Access Denied")]}
    assert _replication_status(bed["src"], "k", version) is None


@pytest.mark.parametrize("missing", ["ReadManifest", "trust"])
def test_role_that_cannot_read_the_manifest_or_be_assumed_fails_the_job(moto_server, unique, missing):
    bed = _bed(unique)
    version = aws.s3().put_object(Bucket=bed["src"], Key="k", Body=b"x")["VersionId"]
    role = (_role(bed["src"], bed["manifests"], bed["reports"], trust=iam.EC2_TRUST) if missing == "trust"
            else _role(bed["src"], bed["manifests"], bed["reports"], without=missing))

    job = _wait(_create(bed, [(bed["src"], "k", version)], role=role))

    assert job["Status"] == "Failed"
    code = "AssumeRoleNotPermitted" if missing == "trust" else "AccessDenied"
    assert [f["FailureCode"] for f in job["FailureReasons"]] == [code]
    assert _replication_status(bed["src"], "k", version) is None


def test_bucket_without_replication_configuration_fails_the_job(moto_server, unique):
    bed = _bed(unique)
    aws.s3().delete_bucket_replication(Bucket=bed["src"])
    version = aws.s3().put_object(Bucket=bed["src"], Key="k", Body=b"x")["VersionId"]

    job = _wait(_create(bed, [(bed["src"], "k", version)]))

    assert job["Status"] == "Failed"
    assert [f["FailureCode"] for f in job["FailureReasons"]] == ["SrcBucketReplicationConfigMissing"]


@pytest.mark.parametrize("grant", [["iam:PassRole"], ["s3:CreateJob"]])
def test_caller_needs_create_job_and_pass_role(moto_server, unique, grant):
    bed = _bed(unique)
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Caller", "Effect": "Allow", "Action": grant, "Resource": "*"},
        {"Sid": "Seed", "Effect": "Allow", "Action": ["s3:PutObject"], "Resource": "*"}]}
    principal = iam.create_principal(policy)

    with iam.acting_as(principal), pytest.raises(ClientError) as err:
        _create(bed, [(bed["src"], "k", None)])

    assert err.value.response["Error"]["Code"] == "AccessDenied"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_caller_with_create_job_pass_role_and_describe_job_runs_a_job(moto_server, unique, tmp_path):
    bed = _bed(unique)
    version = aws.s3().put_object(Bucket=bed["src"], Key="k", Body=b"x")["VersionId"]
    policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "Create", "Effect": "Allow", "Action": ["s3:CreateJob", "s3:PutObject"], "Resource": "*"},
        {"Sid": "Pass", "Effect": "Allow", "Action": ["iam:PassRole"], "Resource": bed["role"]},
        # moto's IAM refuses a region in an s3 ARN ("can not contain region information"): the audit shows
        # the job ARN the server checked instead
        {"Sid": "Describe", "Effect": "Allow", "Action": ["s3:DescribeJob"], "Resource": "*"}]}
    principal = iam.create_principal(policy, audit=tmp_path / "audit.jsonl")

    with iam.acting_as(principal):
        job_id = _create(bed, [(bed["src"], "k", version)])
        job = _wait(job_id)
        with pytest.raises(ClientError) as listing:
            aws.s3control().list_jobs(AccountId=ACCOUNT)

    assert job["Status"] == "Complete"
    assert listing.value.response["Error"]["Code"] == "AccessDenied"
    decisions = {(d["action"], d["resource"], d["allowed"]) for d in iam.read_audit(tmp_path / "audit.jsonl")}
    assert ("s3:CreateJob", "*", True) in decisions
    assert ("iam:PassRole", bed["role"], True) in decisions
    assert ("s3:DescribeJob", f"arn:aws:s3:us-east-1:{ACCOUNT}:job/{job_id}", True) in decisions
    assert ("s3:ListJobs", "*", False) in decisions


def test_unknown_job_is_404_no_such_job(moto_server):
    for call in (lambda c: c.describe_job(AccountId=ACCOUNT, JobId=str(uuid.uuid4())),
                 lambda c: c.update_job_status(AccountId=ACCOUNT, JobId=str(uuid.uuid4()),
                                               RequestedJobStatus="Cancelled")):
        with pytest.raises(ClientError) as err:
            call(aws.s3control())
        assert err.value.response["Error"]["Code"] == "NoSuchJobException"
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_list_jobs_filters_by_status(moto_server, unique):
    bed = _bed(unique)
    version = aws.s3().put_object(Bucket=bed["src"], Key="k", Body=b"x")["VersionId"]
    failed = _wait(_create(bed, [(bed["src"], "k", version)], etag='"00"'))["JobId"]
    complete = _wait(_create(bed, [(bed["src"], "k", version)]))["JobId"]

    listed = aws.s3control().list_jobs(AccountId=ACCOUNT, JobStatuses=["Failed"])["Jobs"]

    assert failed in {j["JobId"] for j in listed} and complete not in {j["JobId"] for j in listed}
    assert {j["Status"] for j in listed} == {"Failed"}


def test_proxy_counts_create_job_and_describe_job(moto_server, unique, proxy):
    bed = _bed(unique)
    version = aws.s3().put_object(Bucket=bed["src"], Key="k", Body=b"x")["VersionId"]
    proxy.reset()

    _wait(_create(bed, [(bed["src"], "k", version)]))

    counts = proxy.counts()
    assert counts.get("CreateJob") == 1 and counts.get("DescribeJob", 0) >= 1


@pytest.mark.parametrize("method, path, expected", [
    ("POST", "/v20180820/jobs", "CreateJob"), ("GET", "/v20180820/jobs", "ListJobs"),
    ("GET", "/v20180820/jobs/abc", "DescribeJob"), ("POST", "/v20180820/jobs/abc/status", "UpdateJobStatus"),
    ("GET", "/v20180820/accesspoint/x", "S3Control"),
])
def test_proxy_names_s3_control_job_operations(method, path, expected):
    assert s3_operation(method, path, {}, {}) == expected


def test_more_than_half_of_the_first_thousand_tasks_failing_fails_the_job(moto_server, unique):
    bed = _bed(unique)
    version = aws.s3().put_object(Bucket=bed["src"], Key="k", Body=b"x")["VersionId"]
    rows = [(bed["src"], "k", version)] * 400 + [(bed["src"], f"missing/{i}", "v") for i in range(601)]

    job = _wait(_create(bed, rows), timeout=60)

    assert job["Status"] == "Failed"
    assert [f["FailureCode"] for f in job["FailureReasons"]] == ["TaskFailureThresholdExceeded"]
    assert job["ProgressSummary"]["NumberOfTasksSucceeded"] == 400
    assert job["ProgressSummary"]["NumberOfTasksFailed"] == 600  # stops at the 1,000th task
    assert {s: len(r) for s, r in _report_rows(bed, job["JobId"]).items()} == {"succeeded": 400, "failed": 600}
