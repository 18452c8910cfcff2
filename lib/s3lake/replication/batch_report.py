"""A Batch Replication job's completion report, read into result rows (one per task).

S3 writes ``<report prefix>/job-<id>/manifest.json`` listing the report's CSV files under ``results/``
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/batch-ops-examples-reports.html). Its declared
``ReportSchema`` is ``Bucket, Key, VersionId, TaskStatus, ErrorCode, HTTPStatusCode, ResultMessage``, but
the rows S3 writes carry the HTTP status *before* the error code; the columns are read by content (the
one of the two that is a three-digit number is the HTTP status), so either order reads the same. Keys are
URL-encoded as the manifest gave them; decoded as form-encoded (``+`` a space), which our manifests
never make ambiguous: they encode ``+`` as ``%2B``.

Outcomes: ``succeeded`` -> ``REPLICATED``; ``SrcObjectNotFound`` -> ``MISSING``; ``SrcObjectNotEligible``
(archived, or no enabled rule takes it) -> ``SKIPPED_NOT_ELIGIBLE``; any other failure -> ``FAILED``. A job
that ends (``Failed``, ``Cancelled``) before some of its tasks leaves those without a report row: they
become ``FAILED`` with the job's end as the error, so every manifest line has exactly one row.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any, Iterable, Iterator, Mapping
from urllib.parse import unquote_plus

from s3lake import aws
from s3lake.errors import S3LakeError
from s3lake.objects import results
from s3lake.replication.batch_plan import JOB, MISSING

REPLICATED = "REPLICATED"
SKIPPED_NOT_ELIGIBLE = "SKIPPED_NOT_ELIGIBLE"
BY_ERROR = {"SrcObjectNotFound": MISSING, "SrcObjectNotEligible": SKIPPED_NOT_ELIGIBLE}
_HTTP = re.compile(r"\d{3}")


class ReportError(S3LakeError):
    """A job's completion report is missing or cannot be read."""

    exit_code = 1


def parse_line(fields: list[str]) -> dict[str, Any]:
    """One report row -> bucket, key, version_id, task_status, http_status, error_code, message."""
    if len(fields) < 4:
        raise ReportError(f"a completion report row has {len(fields)} columns: {fields!r}")
    a, b = (fields + ["", ""])[4:6]
    if _HTTP.fullmatch(a.strip()) and not _HTTP.fullmatch(b.strip()):
        http, code = a, b
    else:
        http, code = b, a
    return {"bucket": fields[0], "key": unquote_plus(fields[1]), "version_id": fields[2] or None,
            "task_status": fields[3].strip().lower(), "http_status": int(http) if _HTTP.fullmatch(http.strip())
            else None, "error_code": code.strip() or None, "message": ",".join(fields[6:]).strip() or None}


def status_of(parsed: Mapping[str, Any]) -> str:
    if parsed["task_status"] == "succeeded":
        return REPLICATED
    return BY_ERROR.get(parsed.get("error_code") or "", results.FAILED)


def result_row(run_id: str, parsed: Mapping[str, Any]) -> tuple:
    message = parsed.get("message")
    if parsed.get("http_status") is not None and parsed["task_status"] != "succeeded":
        message = f"HTTP {parsed['http_status']}: {message or ''}".rstrip(": ")
    return results.row(run_id, JOB, parsed["bucket"], parsed["key"], status_of(parsed),
                       version_id=parsed.get("version_id"), error_code=parsed.get("error_code"),
                       error_message=message, requests=0)


def report_files(manifest: Mapping[str, Any], default_bucket: str) -> list[tuple[str, str]]:
    """(bucket, key) of every results CSV a report manifest.json lists."""
    out = []
    for entry in manifest.get("Results") or []:
        bucket = str(entry.get("Bucket") or default_bucket).split(":::")[-1]
        out.append((bucket, entry["Key"]))
    return out


def load_manifest(bucket: str, key: str, required: bool = True) -> dict[str, Any] | None:
    """The report's manifest.json, or None when there is none. A job that did not complete may have written
    none (its role could not, say): not ``required``, a missing or unreadable one (403: without s3:ListBucket
    a missing key is 403) is None and the run's eligible objects without a row become FAILED."""
    try:
        body = aws.s3().get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:  # noqa: BLE001
        code = aws.error_code(exc)
        if code in ("NoSuchKey", "404") or (not required and code in ("AccessDenied", "403")):
            return None
        raise ReportError(f"cannot read the completion report s3://{bucket}/{key}: {code}") from None
    try:
        return json.loads(body)
    except ValueError as exc:
        raise ReportError(f"s3://{bucket}/{key} is not a completion report manifest: {exc}") from None


def read_file(bucket: str, key: str) -> Iterator[list[str]]:
    body = aws.s3().get_object(Bucket=bucket, Key=key)["Body"]
    text = io.TextIOWrapper(body, encoding="utf-8", newline="")
    for fields in csv.reader(text):
        if fields:
            yield fields


def rows_of(run_id: str, files: Iterable[tuple[str, str]]) -> Iterator[tuple]:
    for bucket, key in files:
        for fields in read_file(bucket, key):
            yield result_row(run_id, parse_line(fields))
