"""S3 Batch Operations jobs of operation ``S3ReplicateObject``: create once, follow, describe.

* CreateJob (https://docs.aws.amazon.com/AmazonS3/latest/API/API_control_CreateJob.html) carries a
  ``ClientRequestToken`` derived from the run id, the bucket and the manifest's location and ETag: the same
  run over the same manifest gets the same token, and S3 answers a repeated token with the job it already
  created, so a rerun after a crash re-attaches instead of paying for a second job. The token also rides in
  the job's Description, and ListJobs is searched for it before CreateJob (:func:`find`): how long S3
  remembers a token is not documented.
* The completion report covers all tasks (``ReportScope: AllTasks``), under ``<report prefix>/job-<id>/``.
* DescribeJob (API_control_DescribeJob.html) gives the status and ``ProgressSummary``; a job is over in
  ``Complete``, ``Failed`` or ``Cancelled`` (https://docs.aws.amazon.com/AmazonS3/latest/userguide/batch-ops-job-status.html).
"""

from __future__ import annotations

import hashlib
import sys
import time
from typing import Any, Callable, Mapping

from s3lake import aws
from s3lake.errors import ConfigError, S3LakeError
from s3lake.replication.batch_manifest import FIELDS, FORMAT, Manifest

TERMINAL = frozenset({"Complete", "Failed", "Cancelled"})
REPORT_FORMAT = "Report_CSV_20180820"
PRIORITY = 10


class RoleMissingError(ConfigError):
    """A role named on the command line does not exist in this account."""


class JobRequestError(S3LakeError):
    """S3 Control refused a request about the run's jobs; the manifests are written and kept, so a rerun of
    the same run id (once fixed) goes on from there. Exit 1: something exists, look at it."""

    exit_code = 1


def token(run_id: str, manifest: Manifest) -> str:
    """The CreateJob idempotency token (at most 64 characters) of one run over one manifest."""
    text = f"s3lake\n{run_id}\n{manifest.bucket}\n{manifest.key}\n{manifest.etag}"
    return hashlib.sha256(text.encode()).hexdigest()


def caller() -> tuple[str, str]:
    """(account id, ARN partition: aws, aws-cn, aws-us-gov) of the caller."""
    identity = aws.client("sts").get_caller_identity()
    return identity["Account"], identity["Arn"].split(":")[1]


def check_role(role_arn: str, option: str = "--batch-role-arn", say: Callable[[str], None] | None = None) -> None:
    """A role that does not exist is one line, exit 2; a caller that may not read IAM is warned and goes on."""
    name = role_arn.rsplit("/", 1)[-1]
    if not role_arn.startswith("arn:") or ":role/" not in role_arn or not name:
        raise ConfigError(f"{option} must be an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME), got {role_arn!r}")
    try:
        aws.client("iam").get_role(RoleName=name)
    except Exception as exc:  # noqa: BLE001
        code = aws.error_code(exc)
        if code == "NoSuchEntity":
            raise RoleMissingError(f"{option} {role_arn}: no such IAM role in this account "
                                   "(nothing was written or created)") from None
        (say or _warn)(f"cannot check {option} {role_arn} ({code}); going on")


def _warn(line: str) -> None:
    print(f"s3lake: warning: {line}", file=sys.stderr, flush=True)


def create_request(account: str, run_id: str, manifest: Manifest, report_bucket: str, report_prefix: str,
                   role_arn: str, partition: str = "aws") -> dict[str, Any]:
    """The CreateJob parameters of one bucket's job (pure)."""
    return {
        "AccountId": account,
        "ConfirmationRequired": False,
        "Operation": {"S3ReplicateObject": {}},
        "Manifest": {"Spec": {"Format": FORMAT, "Fields": list(FIELDS)},
                     "Location": {"ObjectArn": manifest.arn(partition), "ETag": manifest.etag}},
        "Report": {"Bucket": f"arn:{partition}:s3:::{report_bucket}", "Format": REPORT_FORMAT, "Enabled": True,
                   "Prefix": report_prefix, "ReportScope": "AllTasks"},
        "ClientRequestToken": token(run_id, manifest),
        "Description": description(run_id, token(run_id, manifest)),
        "Priority": PRIORITY,
        "RoleArn": role_arn,
    }


def description(run_id: str, job_token: str) -> str:
    """The job's Description: names the run and carries the token whole (Description: at most 256)."""
    return f"s3lake copy_in_place run {run_id[:150]} token {job_token}"


def find(account: str, job_description: str) -> str | None:
    """The newest job of the account whose Description is ``job_description`` (ListJobs, every page), or None.

    S3 does not document how long it remembers a ClientRequestToken; a job found here is re-attached even
    when a rerun comes long after a driver that died between CreateJob and recording the job."""
    kwargs: dict[str, Any] = {"AccountId": account, "MaxResults": 1000}
    found: list[tuple[Any, str]] = []
    try:
        while True:
            page = aws.s3control().list_jobs(**kwargs)
            found += [(j.get("CreationTime"), j["JobId"]) for j in page.get("Jobs") or []
                      if j.get("Description") == job_description]
            if not page.get("NextToken"):
                break
            kwargs["NextToken"] = page["NextToken"]
    except Exception as exc:  # noqa: BLE001
        raise JobRequestError(f"ListJobs was refused ({aws.error_code(exc)}: {_message(exc)}); the manifests are "
                              "kept: rerun the same command once fixed") from None
    return max(found, key=lambda f: str(f[0]))[1] if found else None


def create(request: Mapping[str, Any]) -> str:
    try:
        return aws.s3control().create_job(**request)["JobId"]
    except Exception as exc:  # noqa: BLE001
        raise JobRequestError(f"CreateJob for {request['Manifest']['Location']['ObjectArn']} was refused "
                              f"({aws.error_code(exc)}: {_message(exc)}); the manifest is kept: rerun the same "
                              "command once fixed") from None


def describe(account: str, job_id: str) -> dict[str, Any]:
    try:
        return aws.s3control().describe_job(AccountId=account, JobId=job_id)["Job"]
    except Exception as exc:  # noqa: BLE001
        raise JobRequestError(f"DescribeJob {job_id} was refused ({aws.error_code(exc)}: {_message(exc)}); the "
                              "job goes on: rerun the same command once fixed to follow and collect it") from None


def _message(exc: BaseException) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Message") or exc).splitlines()[0][:300]


def progress_line(bucket: str, job: Mapping[str, Any]) -> str:
    """``batch job <id> (bucket): Active, 1,200 of 10,000 tasks done (34 failed), 12 s active``."""
    summary = job.get("ProgressSummary") or {}
    total = summary.get("TotalNumberOfTasks")
    ok, failed = summary.get("NumberOfTasksSucceeded", 0), summary.get("NumberOfTasksFailed", 0)
    active = (summary.get("Timers") or {}).get("ElapsedTimeInActiveSeconds")
    of = f" of {total:,}" if isinstance(total, int) else ""
    line = f"batch job {job.get('JobId')} ({bucket}): {job.get('Status')}, {ok + failed:,}{of} tasks done"
    line += f" ({failed:,} failed)" if failed else ""
    line += f", {active} s active" if active is not None else ""
    reasons = job.get("FailureReasons") or []
    if reasons:
        line += "; " + "; ".join(f"{r.get('FailureCode')}: {r.get('FailureReason')}" for r in reasons)
    return line


def follow(account: str, jobs: Mapping[str, str], interval: float, say: Callable[[str], None],
           sleep: Callable[[float], None] = time.sleep) -> dict[str, dict[str, Any]]:
    """DescribeJob every ``interval`` seconds (a progress line each time) until every job is over."""
    seen: dict[str, dict[str, Any]] = {}
    while True:
        for bucket, job_id in sorted(jobs.items()):
            if bucket in seen and seen[bucket].get("Status") in TERMINAL:
                continue
            seen[bucket] = describe(account, job_id)
            say(progress_line(bucket, seen[bucket]))
        if all(job.get("Status") in TERMINAL for job in seen.values()):
            return seen
        sleep(max(interval, 0.2))
