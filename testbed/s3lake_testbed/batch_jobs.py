"""S3 Batch Operations jobs in the moto server: CreateJob, DescribeJob, ListJobs, UpdateJobStatus, and the
S3ReplicateObject operation (S3 Batch Replication). moto 5 has none of them (it answers 404 to /v20180820/jobs).

:func:`install` adds the routes to moto's s3control URL map before the server builds its app
(:mod:`s3lake_testbed.moto_server`, both modes). Jobs live in the server process; each runs in a thread of its own.
Each behaviour cites the page it emulates:

1. CreateJob (``POST /v20180820/jobs``) checks the request and answers a JobId; the same ClientRequestToken in the
   same account answers the first job's id and creates nothing (the token "ensures that you don't accidentally
   submit the same request twice"); the same token with a *different* request answers 400 IdempotencyException
   (an error the API lists; the page does not say when). Only ``S3ReplicateObject`` runs; any other operation, a
   manifest format other than ``S3BatchOperations_CSV_20180820`` with Fields ``Bucket, Key[, VersionId]``, or a
   report format other than ``Report_CSV_20180820`` is 400 InvalidRequest.
   https://docs.aws.amazon.com/AmazonS3/latest/API/API_control_CreateJob.html
2. The job reads the manifest as its role: a missing manifest, one the role may not read
   (``s3:GetObject``, ``s3:GetObjectVersion`` with ObjectVersionId), or an ETag that is not the object's fails the
   job (Status ``Failed``, FailureReasons) before any task runs: a "Job Failure ... due to issues with the
   manifest or permissions" (https://docs.aws.amazon.com/AmazonS3/latest/userguide/troubleshooting-batch-operations.html;
   the FailureCode/FailureReason wording is the test bed's, no page gives it). The role must exist and trust
   ``batchoperations.s3.amazonaws.com`` (https://docs.aws.amazon.com/AmazonS3/latest/userguide/batch-ops-iam-role-policies.html,
   trust policy), else the job fails the same way (failure code ``AssumeRoleNotPermitted``:
   https://docs.aws.amazon.com/AmazonS3/latest/userguide/replication-failure-codes.html). A manifest bucket
   without replication configuration fails the job ("If you don't configure a replication rule on the source
   bucket, then your Batch job for replication fails":
   https://repost.aws/knowledge-center/s3-troubleshoot-batch-replication-fail).
3. Statuses New -> Preparing -> (Suspended while ConfirmationRequired, until UpdateJobStatus Ready) -> Ready ->
   Active -> Complete; Failed; UpdateJobStatus Cancelled from any non-terminal status -> Cancelling ->
   Cancelled; Ready only from Suspended; anything else is 400 JobStatusException
   (https://docs.aws.amazon.com/AmazonS3/latest/userguide/batch-ops-job-status.html, "Job statuses",
   https://docs.aws.amazon.com/AmazonS3/latest/API/API_control_UpdateJobStatus.html). After at least 1,000
   tasks, a failure rate above 50% fails the job (https://repost.aws/knowledge-center/s3-troubleshoot-batch-operations,
   "task failure threshold").
4. An S3ReplicateObject task replicates the version named (VersionId ``null``: the null version; Bucket and Key
   URL-encoded in the manifest): it then answers ``x-amz-replication-status: COMPLETED`` to HEAD/GET, with no new
   version, LastModified and ETag unchanged (https://docs.aws.amazon.com/AmazonS3/latest/userguide/s3-batch-replication-batch.html,
   https://docs.aws.amazon.com/AmazonS3/latest/userguide/replication-status.html). A missing key or version fails
   the task ``SrcObjectNotFound`` (404); an object in GLACIER / DEEP_ARCHIVE not restored, or one no *enabled* rule
   takes (Prefix / Tag / And filter, legacy rule Prefix; SSE-KMS only with ``SseKmsEncryptedObjects`` Enabled)
   ``SrcObjectNotEligible`` (400) (replication-failure-codes.html); SSE-C objects replicate. A role without
   ``s3:InitiateReplication`` on the object (strict mode) fails it ``AccessDenied`` (403)
   (https://docs.aws.amazon.com/AmazonS3/latest/userguide/s3-batch-replication-policies.html).
5. The completion report (Report Enabled), written as the role (``s3:PutObject``) for Complete, Failed after tasks
   ran, and Cancelled (the tasks done), "as long as at least one task has been invoked": ``<prefix>/job-<id>/
   manifest.json`` (Format, ReportCreationDate, Results[TaskExecutionStatus, Bucket, MD5Checksum, Key],
   ReportSchema) and one CSV per task status under ``<prefix>/job-<id>/results/<sha1>.csv``; ReportScope
   FailedTasksOnly writes only failed tasks. Each row is ``Bucket,Key,VersionId,TaskStatus,HTTPStatusCode,ErrorCode,
   ResultMessage`` -- HTTP status *before* error code, the reverse of the declared ReportSchema, as the page's own
   example rows are (``...,failed,200,PermanentFailure,...``); Bucket/Key/VersionId as the manifest gave them
   (https://docs.aws.amazon.com/AmazonS3/latest/userguide/batch-ops-examples-reports.html,
   https://docs.aws.amazon.com/AmazonS3/latest/userguide/batch-ops-job-status.html#batch-ops-completion-report).
6. DescribeJob (JobDescriptor: Status, ProgressSummary with Timers, FailureReasons, Manifest, Report, RoleArn,
   CreationTime, TerminationDate, SuspendedDate), ListJobs (``jobStatuses`` filter) and UpdateJobStatus; an unknown
   job id is 404 ``NoSuchJobException`` "No such job" (troubleshooting-batch-operations.html, NoSuchJobException;
   https://docs.aws.amazon.com/AmazonS3/latest/API/API_control_DescribeJob.html,
   https://docs.aws.amazon.com/AmazonS3/latest/API/API_control_JobDescriptor.html,
   https://docs.aws.amazon.com/AmazonS3/latest/API/API_control_ListJobs.html).
7. Strict mode, requests signed by a principal (:mod:`s3lake_testbed.iam_corrections` decides who is one):
   CreateJob needs ``s3:CreateJob`` and ``iam:PassRole`` on the RoleArn, DescribeJob ``s3:DescribeJob`` and
   UpdateJobStatus ``s3:UpdateJobStatus`` on ``arn:aws:s3:<region>:<account>:job/<id>``, ListJobs ``s3:ListJobs``;
   denied: 403 AccessDenied (batch-ops-iam-role-policies.html;
   https://docs.aws.amazon.com/service-authorization/latest/reference/list_amazons3.html). The role's own checks
   (2, 4, 5) apply in strict mode only; its decisions go to the role's audit file (``s3lake:iam-audit`` tag).

Pace: tasks run as fast as they can unless ``S3LAKE_TESTBED_BATCH_TASKS_PER_SECOND`` (server environment) or
``POST /v20180820/s3lake-testbed/batch`` with ``{"tasks_per_second": N}`` (``null``: back to the environment's)
sets a rate; :func:`set_pace` sends the latter (a test slows jobs down to cancel one mid-way).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, unquote_plus, urlparse
from xml.sax.saxutils import escape

PACE_VARIABLE = "S3LAKE_TESTBED_BATCH_TASKS_PER_SECOND"
CONTROL_PATH = "/v20180820/s3lake-testbed/batch"
SERVICE_PRINCIPAL = "batchoperations.s3.amazonaws.com"
NAMESPACE = "http://awss3control.amazonaws.com/doc/2018-08-20/"
MANIFEST_FORMAT = "S3BatchOperations_CSV_20180820"
REPORT_FORMAT = "Report_CSV_20180820"
REPORT_SCHEMA = "Bucket, Key, VersionId, TaskStatus, ErrorCode, HTTPStatusCode, ResultMessage"
TERMINAL = ("Complete", "Cancelled", "Failed")
FAILURE_THRESHOLD_TASKS = 1000
ARCHIVED = ("GLACIER", "DEEP_ARCHIVE")
KMS = ("aws:kms", "aws:kms:dsse")

Response = tuple  # (status, headers, body)


class ControlError(Exception):
    """An S3 Control error answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message

    def response(self) -> Response:
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse><Error><Code>{self.code}</Code>'
                f"<Message>{escape(self.message)}</Message></Error><RequestId>s3lake-testbed</RequestId>"
                "</ErrorResponse>")
        return self.status, {"Content-Type": "application/xml"}, body


class JobFailure(Exception):
    """The job fails (Status Failed) with this FailureCode and FailureReason."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code, self.reason = code, reason


@dataclass
class Task:
    bucket: str  # as the manifest has them (URL-encoded)
    key: str
    version_id: str | None


@dataclass
class Job:
    account: str
    region: str
    job_id: str
    request: dict
    fingerprint: str
    status: str = "New"
    created: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    terminated: datetime | None = None
    suspended: datetime | None = None
    status_update_reason: str | None = None
    failures: list = field(default_factory=list)  # [(code, reason)]
    total: int | None = None
    succeeded: int = 0
    failed: int = 0
    active_since: float | None = None
    active_seconds: float = 0.0
    rows: list = field(default_factory=list)  # [(status, [csv fields])]
    cancel: threading.Event = field(default_factory=threading.Event)
    confirmed: threading.Event = field(default_factory=threading.Event)

    @property
    def arn(self) -> str:
        return f"arn:aws:s3:{self.region}:{self.account}:job/{self.job_id}"

    def elapsed(self) -> int:
        extra = time.monotonic() - self.active_since if self.active_since is not None else 0.0
        return int(self.active_seconds + extra)


_lock = threading.RLock()
_jobs: dict[tuple[str, str], Job] = {}
_tokens: dict[tuple[str, str], str] = {}
_pace: dict[str, float | None] = {"tasks_per_second": None}
_strict = False


def tasks_per_second() -> float:
    """The current pace (0: no pause between tasks)."""
    value = _pace["tasks_per_second"]
    if value is None:
        value = float(os.environ.get(PACE_VARIABLE) or 0)
    return float(value)


def set_pace(endpoint: str, tasks_per_second: float | None) -> None:
    """Set the server's task pace (None: the server environment's); ``endpoint`` is the moto server's URL."""
    import urllib.request

    body = json.dumps({"tasks_per_second": tasks_per_second}).encode()
    # moto routes /v20180820/ to S3 Control only for requests whose credential scope names s3
    auth = "AWS4-HMAC-SHA256 Credential=testing/20200101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0"
    request = urllib.request.Request(endpoint.rstrip("/") + CONTROL_PATH, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": auth})
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()


# ------------------------------------------------------------------------------ XML


def _xml(name: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return f"<{name}>{''.join(_xml(k, v) for k, v in value.items())}</{name}>"
    if isinstance(value, list):
        return f"<{name}>{''.join(_xml('member', v) for v in value)}</{name}>"
    if isinstance(value, bool):
        value = "true" if value else "false"
    if isinstance(value, datetime):
        value = value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    return f"<{name}>{escape(str(value))}</{name}>"


def _answer(root: str, content: dict) -> Response:
    inner = "".join(_xml(k, v) for k, v in content.items())
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{NAMESPACE}">{inner}</{root}>'
    return 200, {"Content-Type": "application/xml"}, body


def _members(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, dict):
        value = value.get("member")
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _parse_create(body: bytes) -> dict:
    import xmltodict

    try:
        doc = xmltodict.parse(body or b"<x/>")
    except Exception:  # noqa: BLE001 - any parse error is the caller's
        raise ControlError(400, "MalformedXML", "The XML you provided was not well-formed") from None
    request = next(iter(doc.values())) or {}
    return request if isinstance(request, dict) else {}


def _bool(value: Any) -> bool:
    return str(value).lower() == "true"


def _validate(req: dict) -> dict:
    """The CreateJob request as the job keeps it (raises 400 InvalidRequest)."""
    def bad(message: str) -> ControlError:
        return ControlError(400, "InvalidRequest", message)

    operation = req.get("Operation") or {}
    names = list(operation) if isinstance(operation, dict) else []
    if len(names) != 1:
        raise bad("Exactly one operation must be specified")
    if names[0] != "S3ReplicateObject":
        raise bad(f"Operation {names[0]} is not supported by the s3lake test bed (only S3ReplicateObject)")
    manifest = req.get("Manifest") or {}
    spec, location = manifest.get("Spec") or {}, manifest.get("Location") or {}
    fields = _members(spec.get("Fields"))
    if spec.get("Format") != MANIFEST_FORMAT:
        raise bad(f"Unsupported manifest format {spec.get('Format')!r} (the test bed reads {MANIFEST_FORMAT})")
    if fields not in (["Bucket", "Key"], ["Bucket", "Key", "VersionId"]):
        raise bad("Manifest Fields must be Bucket, Key or Bucket, Key, VersionId")
    arn = location.get("ObjectArn") or ""
    if not arn.startswith("arn:aws:s3:::") or "/" not in arn:
        raise bad("Manifest ObjectArn must be an S3 object ARN")
    if not location.get("ETag"):
        raise bad("Manifest ETag is required")
    report = req.get("Report") or {}
    enabled = _bool(report.get("Enabled"))
    if enabled:
        if report.get("Format") != REPORT_FORMAT:
            raise bad(f"Report Format must be {REPORT_FORMAT}")
        if not (report.get("Bucket") or "").startswith("arn:aws:s3:::"):
            raise bad("Report Bucket must be a bucket ARN")
        if report.get("ReportScope", "AllTasks") not in ("AllTasks", "FailedTasksOnly"):
            raise bad("ReportScope must be AllTasks or FailedTasksOnly")
    role = req.get("RoleArn") or ""
    if not re.fullmatch(r"arn:aws[\w-]*:iam::\d{12}:role/.+", role):
        raise bad("RoleArn must be an IAM role ARN")
    try:
        priority = int(req.get("Priority"))
    except (TypeError, ValueError):
        raise bad("Priority is required (an integer)") from None
    if not req.get("ClientRequestToken"):
        raise bad("ClientRequestToken is required")
    return {
        "Operation": names[0], "Fields": fields, "ManifestFormat": spec["Format"], "ManifestArn": arn,
        "ManifestETag": location["ETag"], "ManifestVersionId": location.get("ObjectVersionId"),
        "Report": {"Bucket": report.get("Bucket"), "Format": report.get("Format"), "Enabled": enabled,
                   "Prefix": report.get("Prefix"), "ReportScope": report.get("ReportScope") if enabled else None},
        "Priority": priority, "RoleArn": role, "Description": req.get("Description"),
        "ConfirmationRequired": _bool(req.get("ConfirmationRequired")),
    }


# ------------------------------------------------------------------------------ IAM


class _Caller:
    def __init__(self, headers: Any, account: str) -> None:
        self.headers, self.current_account = headers, account


def _region(headers: Any) -> str:
    auth = headers.get("Authorization") or ""
    scope = auth.partition("Credential=")[2].partition(",")[0].split("/")
    return scope[2] if len(scope) > 2 else "us-east-1"


def _authorize(request: Any, account: str, needs: list[tuple[str, str]],
               context: dict[str, str] | None = None) -> None:
    if not _strict:
        return
    from s3lake_testbed.iam_corrections import _principal

    principal = _principal(_Caller(request.headers, account))
    if principal is None:
        return
    for action, resource in needs:
        if not principal.allows(action, resource, context):
            raise ControlError(403, "AccessDenied", "Access Denied")


def _role(account: str, role_arn: str) -> Any:
    """The job role as an iam_corrections.Principal (None outside strict mode); raises JobFailure."""
    if not _strict:
        return None
    from moto.iam.access_control import IAMPolicy
    from moto.iam.models import iam_backends

    from s3lake_testbed.iam_corrections import AUDIT_TAG, Principal, _as_list

    iam = iam_backends[account]["aws"]
    name = role_arn.rsplit("/", 1)[-1]
    denied = JobFailure("AssumeRoleNotPermitted", f"Unable to assume role {role_arn}")
    try:
        role = iam.get_role(name)
    except Exception:  # noqa: BLE001 - moto raises its own NoSuchEntity
        raise denied from None
    if role.arn != role_arn:
        raise denied
    text = role.assume_role_policy_document or "{}"
    trust = json.loads(text if text.lstrip().startswith("{") else unquote(text))
    trusted = any(
        s.get("Effect") == "Allow" and "sts:AssumeRole" in _as_list(s.get("Action", []))
        and SERVICE_PRINCIPAL in _as_list((s.get("Principal") or {}).get("Service", []))
        for s in _as_list(trust.get("Statement", [])))
    if not trusted:
        raise denied
    documents = []
    for policy_name in iam.list_role_policies(name):
        documents.append(json.loads(iam.get_role_policy(name, policy_name)[1]))
    attached, _ = iam.list_attached_role_policies(name)
    documents += [IAMPolicy(p)._policy_json for p in attached]
    tags = role.tags.values() if isinstance(role.tags, dict) else role.tags or []
    audit = {t["Key"]: t["Value"] for t in tags}.get(AUDIT_TAG)
    return Principal(role_arn, documents, audit)


def _role_allows(role: Any, action: str, resource: str) -> bool:
    return role is None or role.allows(action, resource)


# ------------------------------------------------------------------------------ the job


def _backend(account: str) -> Any:
    from moto.s3.models import s3_backends

    return s3_backends[account]["aws"]


def _set_status(job: Job, status: str) -> None:
    with _lock:
        if job.status == "Active" and status != "Active" and job.active_since is not None:
            job.active_seconds += time.monotonic() - job.active_since
            job.active_since = None
        if status == "Active":
            job.active_since = time.monotonic()
        job.status = status
        if status == "Suspended":
            job.suspended = datetime.now(timezone.utc)
        if status in TERMINAL:
            job.terminated = datetime.now(timezone.utc)


def _read_manifest(job: Job, role: Any) -> list[Task]:
    req = job.request
    bucket, _, key = req["ManifestArn"][len("arn:aws:s3:::"):].partition("/")
    version = req["ManifestVersionId"]
    action = "s3:GetObjectVersion" if version else "s3:GetObject"
    if not _role_allows(role, action, req["ManifestArn"]):
        raise JobFailure("AccessDenied", "Reading the manifest is forbidden: AccessDenied")
    try:
        obj = _backend(job.account).get_object(bucket, key, version_id=version)
    except Exception:  # noqa: BLE001 - a missing bucket
        obj = None
    if obj is None:
        raise JobFailure("NoSuchKey", "Reading the manifest failed: NoSuchKey (the manifest object does not exist)")
    if obj.etag.strip('"') != req["ManifestETag"].strip('"'):
        raise JobFailure("ManifestETagMismatch",
                         f"The ETag of the manifest object ({obj.etag.strip(chr(34))}) does not match the ETag "
                         f"specified for the job ({req['ManifestETag'].strip(chr(34))})")
    tasks = []
    text = obj.value.decode("utf-8-sig")
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not any(row):
            continue
        if len(row) != len(req["Fields"]):
            raise JobFailure("InvalidManifestContent",
                             f"Line {line_no} of the manifest has {len(row)} fields, the job expects "
                             f"{len(req['Fields'])}")
        version_id = row[2] if len(row) > 2 and row[2] != "" else None
        tasks.append(Task(row[0], row[1], version_id))
    return tasks


def _check_replication_configured(job: Job, tasks: list[Task]) -> None:
    backend = _backend(job.account)
    for bucket in sorted({unquote_plus(t.bucket) for t in tasks}):
        try:
            configured = backend.get_bucket_replication(bucket)
        except Exception:  # noqa: BLE001 - a missing bucket fails its tasks instead
            continue
        if not configured:
            raise JobFailure("SrcBucketReplicationConfigMissing",
                             f"The source bucket {bucket} has no replication configuration")


def _rule_takes(rule: dict, key: str, tags: dict[str, str], kms: bool) -> bool:
    from s3lake_testbed.moto_replication import rule_as_s3_answers

    shaped = rule_as_s3_answers(rule)
    if shaped["Status"] != "Enabled":
        return False
    if kms and ((shaped.get("SourceSelectionCriteria") or {}).get("SseKmsEncryptedObjects") or {}).get(
            "Status") != "Enabled":
        return False
    if "Filter" not in shaped:
        return key.startswith(shaped.get("Prefix") or "")
    flt = shaped["Filter"]
    if "And" in flt:
        prefix, wanted = flt["And"].get("Prefix") or "", flt["And"].get("Tags") or []
    elif "Tag" in flt:
        prefix, wanted = "", [flt["Tag"]]
    else:
        prefix, wanted = flt.get("Prefix") or "", []
    return key.startswith(prefix) and all(tags.get(t["Key"]) == t["Value"] for t in wanted)


def _replicate(job: Job, role: Any, task: Task) -> tuple[str, int, str, str]:
    """(TaskStatus, HTTPStatusCode, ErrorCode, ResultMessage) of one S3ReplicateObject task."""
    bucket, key = unquote_plus(task.bucket), unquote_plus(task.key)
    if not _role_allows(role, "s3:InitiateReplication", f"arn:aws:s3:::{bucket}/{key}"):
        return "failed", 403, "AccessDenied", "Access Denied"
    backend = _backend(job.account)
    try:
        obj = backend.get_object(bucket, key, version_id=task.version_id, return_delete_marker=True)
    except Exception:  # noqa: BLE001 - a missing bucket
        obj = None
    if obj is None:
        return "failed", 404, "SrcObjectNotFound", "The source object (or version) does not exist"
    config = backend.get_bucket_replication(bucket) or {}
    rules = config.get("Rule") or []
    if not hasattr(obj, "storage_class"):  # a delete marker
        takes = any(_rule_takes(r, key, {}, False)
                    and ((r.get("DeleteMarkerReplication") or {}).get("Status") == "Enabled") for r in rules)
        if not takes:
            return "failed", 400, "SrcObjectNotEligible", "The delete marker is not eligible for replication"
        return "succeeded", 200, "", "Successful"
    archived = obj.storage_class in ARCHIVED and not (obj._expiry is not None and obj.status == "RESTORED")
    if archived:
        return "failed", 400, "SrcObjectNotEligible", (
            f"The object is in {obj.storage_class} and not restored: it is not eligible for replication")
    tags = {t["Key"]: t["Value"] for t in backend.get_object_tagging(obj).get("Tags", [])}
    if not any(_rule_takes(r, key, tags, obj.encryption in KMS) for r in rules):
        return "failed", 400, "SrcObjectNotEligible", "No enabled replication rule takes the object"
    obj.replication_status = "COMPLETED"
    return "succeeded", 200, "", "Successful"


def _report(job: Job, role: Any) -> None:
    report = job.request["Report"]
    if not report["Enabled"] or not job.rows:
        return
    bucket = report["Bucket"][len("arn:aws:s3:::"):]
    base = "/".join(p for p in ((report["Prefix"] or "").strip("/"), f"job-{job.job_id}") if p)
    statuses = ("failed",) if report["ReportScope"] == "FailedTasksOnly" else ("succeeded", "failed")
    files: list[tuple[str, bytes]] = []
    results = []
    for status in statuses:
        rows = [fields for s, fields in job.rows if s == status]
        if not rows:
            continue
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(rows)
        data = out.getvalue().encode()
        name = hashlib.sha1(f"{job.job_id}/{status}".encode()).hexdigest()
        key = f"{base}/results/{name}.csv"
        files.append((key, data))
        results.append({"TaskExecutionStatus": status, "Bucket": bucket,
                        "MD5Checksum": hashlib.md5(data).hexdigest(), "Key": key})
    now = datetime.now(timezone.utc)
    manifest = {"Format": REPORT_FORMAT,
                "ReportCreationDate": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
                "Results": results, "ReportSchema": REPORT_SCHEMA}
    files.append((f"{base}/manifest.json", json.dumps(manifest, indent=4).encode()))
    backend = _backend(job.account)
    for key, data in files:
        if not _role_allows(role, "s3:PutObject", f"arn:aws:s3:::{bucket}/{key}"):
            raise JobFailure("AccessDenied", f"Writing the completion report to s3://{bucket}/{key} is forbidden: "
                                             "AccessDenied")
        try:
            backend.put_object(bucket, key, data)
        except Exception as exc:  # noqa: BLE001 - a missing report bucket
            raise JobFailure("ReportWriteFailed", f"Writing the completion report failed: {exc}") from None


def _pause(started: float, done: int) -> None:
    rate = tasks_per_second()
    if rate > 0:
        delay = started + done / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def _run(job: Job) -> None:
    started_tasks = False
    try:
        _set_status(job, "Preparing")
        role = _role(job.account, job.request["RoleArn"])
        tasks = _read_manifest(job, role)
        _check_replication_configured(job, tasks)
        with _lock:
            job.total = len(tasks)
        if job.request["ConfirmationRequired"]:
            _set_status(job, "Suspended")
            while not job.confirmed.wait(0.05):
                if job.cancel.is_set():
                    break
        if job.cancel.is_set():
            _set_status(job, "Cancelled")
            return
        _set_status(job, "Ready")
        _set_status(job, "Active")
        started = time.monotonic()
        for done, task in enumerate(tasks):
            if job.cancel.is_set():
                break
            _pause(started, done)
            if job.cancel.is_set():
                break
            status, http, code, message = _replicate(job, role, task)
            started_tasks = True
            with _lock:
                job.rows.append((status, [task.bucket, task.key, task.version_id or "", status, str(http), code,
                                          message]))
                if status == "succeeded":
                    job.succeeded += 1
                else:
                    job.failed += 1
                attempted = job.succeeded + job.failed
            if attempted >= FAILURE_THRESHOLD_TASKS and job.failed * 2 > attempted:
                _set_status(job, "Failing")
                raise JobFailure("TaskFailureThresholdExceeded",
                                 f"{job.failed} of {attempted} tasks failed: more than 50% after at least "
                                 f"{FAILURE_THRESHOLD_TASKS} tasks")
        if job.cancel.is_set():
            _report(job, role)
            _set_status(job, "Cancelled")
            return
        _set_status(job, "Completing")
        _report(job, role)
        _set_status(job, "Complete")
    except JobFailure as failure:
        with _lock:
            job.failures.append((failure.code, failure.reason))
        if started_tasks:
            try:
                _report(job, _role(job.account, job.request["RoleArn"]))
            except JobFailure as also:
                job.failures.append((also.code, also.reason))
        _set_status(job, "Failed")
    except Exception as exc:  # noqa: BLE001 - a test bed bug must end the job, not hang it
        with _lock:
            job.failures.append(("InternalError", f"s3lake test bed: {type(exc).__name__}: {exc}"))
        _set_status(job, "Failed")


# ------------------------------------------------------------------------------ the API


def _descriptor(job: Job) -> dict:
    req = job.request
    report = req["Report"]
    return {
        "JobId": job.job_id, "ConfirmationRequired": req["ConfirmationRequired"],
        "Description": req["Description"], "JobArn": job.arn, "Status": job.status,
        "Manifest": {"Spec": {"Format": req["ManifestFormat"], "Fields": req["Fields"]},
                     "Location": {"ObjectArn": req["ManifestArn"], "ObjectVersionId": req["ManifestVersionId"],
                                  "ETag": req["ManifestETag"]}},
        "Operation": {"S3ReplicateObject": {}},
        "Priority": req["Priority"],
        "ProgressSummary": _progress(job),
        "StatusUpdateReason": job.status_update_reason,
        "FailureReasons": [{"FailureCode": c, "FailureReason": r} for c, r in job.failures] or None,
        "Report": {"Bucket": report["Bucket"], "Format": report["Format"], "Enabled": report["Enabled"],
                   "Prefix": report["Prefix"], "ReportScope": report["ReportScope"]},
        "CreationTime": job.created, "TerminationDate": job.terminated, "RoleArn": req["RoleArn"],
        "SuspendedDate": job.suspended,
        "SuspendedCause": "The job requires confirmation (ConfirmationRequired)" if job.suspended else None,
    }


def _progress(job: Job) -> dict:
    return {"TotalNumberOfTasks": job.total if job.total is not None else None,
            "NumberOfTasksSucceeded": job.succeeded, "NumberOfTasksFailed": job.failed,
            "Timers": {"ElapsedTimeInActiveSeconds": job.elapsed()}}


def _fingerprint(req: dict) -> str:
    return json.dumps(req, sort_keys=True, default=str)


def create_job(request: Any, account: str, body: bytes) -> Response:
    raw = _parse_create(body)
    req = _validate(raw)
    # iam:PassedToService: the service the role is passed to (IAM's PassRole condition key)
    _authorize(request, account, [("s3:CreateJob", "*"), ("iam:PassRole", req["RoleArn"])],
               {"iam:PassedToService": SERVICE_PRINCIPAL})
    token = raw["ClientRequestToken"]
    fingerprint = _fingerprint(req)
    with _lock:
        known = _tokens.get((account, token))
        if known is not None:
            if _jobs[(account, known)].fingerprint != fingerprint:
                raise ControlError(400, "IdempotencyException",
                                   "The ClientRequestToken was already used with a different request")
            return _answer("CreateJobResult", {"JobId": known})
        job = Job(account, _region(request.headers), str(uuid.uuid4()), req, fingerprint)
        _jobs[(account, job.job_id)] = job
        _tokens[(account, token)] = job.job_id
    threading.Thread(target=_run, args=(job,), name=f"batch-job-{job.job_id}", daemon=True).start()
    return _answer("CreateJobResult", {"JobId": job.job_id})


def _job(account: str, job_id: str) -> Job:
    job = _jobs.get((account, job_id))
    if job is None:
        raise ControlError(404, "NoSuchJobException", "No such job")
    return job


def describe_job(request: Any, account: str, job_id: str) -> Response:
    region = _region(request.headers)
    _authorize(request, account, [("s3:DescribeJob", f"arn:aws:s3:{region}:{account}:job/{job_id}")])
    with _lock:
        return _answer("DescribeJobResult", {"Job": _descriptor(_job(account, job_id))})


def list_jobs(request: Any, account: str, query: dict[str, list[str]]) -> Response:
    _authorize(request, account, [("s3:ListJobs", "*")])
    wanted = set(query.get("jobStatuses", []))
    with _lock:
        jobs = sorted((j for (a, _), j in _jobs.items() if a == account and (not wanted or j.status in wanted)),
                      key=lambda j: j.created, reverse=True)
        listed = [{"JobId": j.job_id, "Description": j.request["Description"], "Operation": "S3ReplicateObject",
                   "Priority": j.request["Priority"], "Status": j.status, "CreationTime": j.created,
                   "TerminationDate": j.terminated, "ProgressSummary": _progress(j)} for j in jobs]
    return _answer("ListJobsResult", {"Jobs": listed})


def update_job_status(request: Any, account: str, job_id: str, query: dict[str, list[str]]) -> Response:
    region = _region(request.headers)
    _authorize(request, account, [("s3:UpdateJobStatus", f"arn:aws:s3:{region}:{account}:job/{job_id}")])
    requested = (query.get("requestedJobStatus") or [""])[0]
    reason = (query.get("statusUpdateReason") or [None])[0]
    if requested not in ("Cancelled", "Ready"):
        raise ControlError(400, "InvalidRequest", "requestedJobStatus must be Cancelled or Ready")
    with _lock:
        job = _job(account, job_id)
        if requested == "Ready":
            if job.status != "Suspended":
                raise ControlError(400, "JobStatusException",
                                   f"Job status {job.status} cannot be changed to Ready (only a Suspended job)")
            job.confirmed.set()
            job.status = "Ready"
        else:
            if job.status in TERMINAL or job.status in ("Cancelling", "Failing"):
                raise ControlError(400, "JobStatusException", f"Job status {job.status} cannot be cancelled")
            job.cancel.set()
            job.status = "Cancelling"
        job.status_update_reason = reason
        return _answer("UpdateJobStatusResult", {"JobId": job.job_id, "Status": job.status,
                                                 "StatusUpdateReason": reason})


def _account(request: Any) -> str:
    account = request.headers.get("x-amz-account-id")
    if not account:
        from s3lake_testbed.iam import ACCOUNT_ID  # noqa: PLC0415 - the test bed's one account

        account = ACCOUNT_ID
    return account


def _control(request: Any) -> Response:
    data = json.loads(request.get_data() or b"{}")
    value = data.get("tasks_per_second")
    _pace["tasks_per_second"] = None if value is None else float(value)
    return 200, {"Content-Type": "application/json"}, json.dumps({"tasks_per_second": tasks_per_second()})


def jobs_handler(request: Any, full_url: str, headers: Any) -> Response:
    """moto url handler for /v20180820/jobs[...] (named so moto's app does not take it for a ``dispatch``)."""
    parsed = urlparse(full_url)
    path, query = parsed.path.rstrip("/"), parse_qs(parsed.query, keep_blank_values=True)
    method = request.method.upper()
    try:
        if path == CONTROL_PATH and method == "POST":
            return _control(request)
        account = _account(request)
        if path == "/v20180820/jobs":
            if method == "POST":
                return create_job(request, account, request.get_data())
            if method == "GET":
                return list_jobs(request, account, query)
        match = re.fullmatch(r"/v20180820/jobs/([^/]+)(/status)?", path)
        if match and method == "GET" and not match.group(2):
            return describe_job(request, account, unquote(match.group(1)))
        if match and method == "POST" and match.group(2):
            return update_job_status(request, account, unquote(match.group(1)), query)
        raise ControlError(405, "MethodNotAllowed", f"{method} {path} is not an S3 Control jobs operation")
    except ControlError as error:
        return error.response()


def _with_replication_status(original: Callable) -> property:
    def response_dict(self: Any) -> dict:
        res = original(self)
        status = getattr(self, "replication_status", None)
        if status:
            res["x-amz-replication-status"] = status
        return res

    return property(response_dict)


_installed = False


def install(strict: bool = False) -> None:
    """Add the jobs routes to moto's s3control URLs (idempotent); ``strict``: IAM for principals and the role."""
    global _installed, _strict
    _strict = _strict or strict
    if _installed:
        return
    from moto.s3 import models
    from moto.s3control import urls

    urls.url_paths["{0}/v20180820/jobs$"] = jobs_handler
    urls.url_paths["{0}/v20180820/jobs/(?P<job_id>[^/]+)$"] = jobs_handler
    urls.url_paths["{0}/v20180820/jobs/(?P<job_id>[^/]+)/status$"] = jobs_handler
    urls.url_paths["{0}" + CONTROL_PATH + "$"] = jobs_handler
    # moto never renders x-amz-replication-status; a replicated version carries it on HEAD/GET
    models.FakeKey.response_dict = _with_replication_status(models.FakeKey.response_dict.fget)
    _installed = True
