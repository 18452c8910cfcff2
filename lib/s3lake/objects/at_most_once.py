"""How a non-idempotent S3 write happens at most once: which failures are retryable, the write-then-check
loop (:func:`write_once`), and a CreateMultipartUpload that never orphans an upload.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, TypeVar

from s3lake import aws

if TYPE_CHECKING:
    from s3lake.objects.driver import Counter

RETRYABLE_CODES = frozenset({
    "SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling", "ThrottlingException",
    "RequestLimitExceeded", "TooManyRequests", "RequestThrottled", "500", "502", "503", "504",
})
R = TypeVar("R")


def is_retryable(exc: BaseException) -> bool:
    """Throttling, 5xx and connection-level failures (reset, closed, timeout)."""
    from botocore.exceptions import ClientError, HTTPClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return aws.error_code(exc) in RETRYABLE_CODES or int(status) >= 500
    return isinstance(exc, (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError))


def backoff_sleep(attempt: int, base: float = 0.1, cap: float = 20.0) -> None:
    time.sleep(random.uniform(0, min(cap, base * (2 ** attempt))))


def write_once(write: Callable[[], R], applied: Callable[[], R | None], *, attempts: int = 8) -> tuple[R, int]:
    """Run a non-idempotent write at most once in effect.

    ``write`` must go through a client with retries off; on a retryable failure the outcome is unknown (the
    response may have been lost after S3 applied it), so ``applied()`` checks the object (e.g. for the run's
    marker) and returns a result if the write did happen. Returns (result, write attempts made).

    Inside a paced task (:mod:`s3lake.objects.pacing`) the loop is bounded by the object's deadline instead of
    ``attempts`` (the paced once-client has already waited out plain throttling by then).
    """
    from s3lake.objects import pacing

    pacer = pacing.current()
    deadline = pacer.deadline(pacer.clock()) if pacer is not None else None
    attempt = 0
    while True:
        try:
            return write(), attempt + 1
        except Exception as exc:  # noqa: BLE001
            out_of_time = pacer.clock() >= deadline if pacer is not None else attempt >= attempts - 1
            if not is_retryable(exc) or out_of_time:
                raise
            found = applied()
            if found is not None:
                return found, attempt + 1
            if pacer is not None:
                delay = min(pacing.backoff(attempt + 1), max(0.0, deadline - pacer.clock()))
                pacer.add_wait(delay)
                time.sleep(delay)
            else:
                backoff_sleep(attempt)
            attempt += 1


def create_multipart_once(params: Mapping[str, Any], counter: Counter | None = None) -> str:
    """CreateMultipartUpload that never orphans an upload when its response is lost.

    The key's in-progress uploads are listed first (one request; multipart objects are the big, rare
    ones); the create goes out with retries off, and after an unknown outcome an upload that was not
    there before is adopted instead of creating another. (Upload ids, not ``Initiated`` times: those
    depend on clocks, and some S3-compatible stores return a fixed date.)
    """
    bucket, key = params["Bucket"], params["Key"]

    def uploads() -> dict[str, Any]:
        if counter is not None:
            counter.add()
        found: dict[str, Any] = {}
        pages = aws.s3().get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=key)
        for page in pages:
            found.update({u["UploadId"]: u["Initiated"] for u in page.get("Uploads", []) if u["Key"] == key})
        return found

    before = uploads()

    def create() -> str:
        if counter is not None:
            counter.add()
        return once_client().create_multipart_upload(**params)["UploadId"]

    def applied() -> str | None:
        new = {upload: initiated for upload, initiated in uploads().items() if upload not in before}
        return max(new, key=lambda u: new[u]) if new else None

    upload_id, _ = write_once(create, applied)
    return upload_id


def once_client() -> Any:
    """An S3 client with botocore retries off, for the writes :func:`write_once` guards."""
    return aws.client("s3", max_attempts=1)
