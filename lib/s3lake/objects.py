"""Per-object S3 attributes: read them from one HEAD (+ ACL) and re-send them on a write.

Used by every job that rewrites an object in place (copy-in-place, anonymize), so the list of what
"keeping every attribute" means lives in one place:

* system headers: Content-Type, Cache-Control, Content-Disposition, Content-Encoding, Content-Language,
  Expires, WebsiteRedirectLocation (``MetadataDirective=REPLACE`` drops them unless re-sent);
* user metadata;
* storage class;
* SSE: AES256, or aws:kms / aws:kms:dsse with the exact key id and BucketKeyEnabled;
* checksum algorithm; Object Lock mode, retain-until date and legal hold;
* ACL grants, as ``x-amz-grant-*`` headers on the write itself (never a later PutObjectAcl).

References: CopyObject https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html (metadata
directive, grant headers, SSE, storage class, self-copy rule) and ACL grant headers
https://docs.aws.amazon.com/AmazonS3/latest/userguide/acl-overview.html#setting-acls.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

from s3lake import aws

SYSTEM_HEADERS = (
    "ContentType",
    "CacheControl",
    "ContentDisposition",
    "ContentEncoding",
    "ContentLanguage",
    "Expires",
    "WebsiteRedirectLocation",
)
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
CHECKSUM_KEYS = {"ChecksumCRC32": "CRC32", "ChecksumCRC32C": "CRC32C", "ChecksumSHA1": "SHA1",
                 "ChecksumSHA256": "SHA256", "ChecksumCRC64NVME": "CRC64NVME"}
GRANT_PARAMS = {"FULL_CONTROL": "GrantFullControl", "READ": "GrantRead", "READ_ACP": "GrantReadACP",
                "WRITE_ACP": "GrantWriteACP"}
ENCRYPTION_STATUS = {"AES256": "SSE-S3", "aws:kms": "SSE-KMS", "aws:kms:dsse": "DSSE-KMS"}


@dataclass(frozen=True)
class ObjectState:
    """What one HEAD says about the current version of an object."""

    bucket: str
    key: str
    etag: str
    size: int
    last_modified: datetime | None
    version_id: str | None
    storage_class: str
    metadata: Mapping[str, str]
    headers: Mapping[str, Any]
    sse: str | None
    kms_key_id: str | None
    bucket_key_enabled: bool
    sse_customer_algorithm: str | None
    replication_status: str | None
    restore: str | None
    archive_status: str | None
    checksum_algorithm: str | None
    object_lock: Mapping[str, Any]
    tag_count: int

    @classmethod
    def from_head(cls, bucket: str, key: str, head: Mapping[str, Any]) -> ObjectState:
        headers = {name: head[name] for name in SYSTEM_HEADERS if head.get(name) not in (None, "")}
        if "Expires" not in headers and head.get("ExpiresString"):
            headers["Expires"] = head["ExpiresString"]
        lock = {k: head[k] for k in ("ObjectLockMode", "ObjectLockRetainUntilDate", "ObjectLockLegalHoldStatus")
                if head.get(k)}
        version = head.get("VersionId")
        return cls(
            bucket=bucket,
            key=key,
            etag=str(head.get("ETag", "")).strip('"'),
            size=int(head.get("ContentLength", 0)),
            last_modified=head.get("LastModified"),
            version_id=None if version in (None, "null") else version,
            storage_class=head.get("StorageClass") or "STANDARD",
            metadata=dict(head.get("Metadata") or {}),
            headers=headers,
            sse=head.get("ServerSideEncryption"),
            kms_key_id=head.get("SSEKMSKeyId"),
            bucket_key_enabled=bool(head.get("BucketKeyEnabled")),
            sse_customer_algorithm=head.get("SSECustomerAlgorithm"),
            replication_status=head.get("ReplicationStatus"),
            restore=head.get("Restore"),
            archive_status=head.get("ArchiveStatus"),
            checksum_algorithm=next((alg for k, alg in CHECKSUM_KEYS.items() if head.get(k)), None),
            object_lock=lock,
            tag_count=int(head.get("TagCount") or 0),
        )

    @property
    def encryption(self) -> str:
        """Inventory-style EncryptionStatus: NOT-SSE, SSE-S3, SSE-KMS, DSSE-KMS or SSE-C."""
        if self.sse_customer_algorithm:
            return "SSE-C"
        return ENCRYPTION_STATUS.get(self.sse or "", "NOT-SSE")

    @property
    def needs_restore(self) -> bool:
        """Archived (GLACIER, DEEP_ARCHIVE, or an Intelligent-Tiering archive tier) and not restored."""
        archived = self.storage_class in ARCHIVE_CLASSES or bool(self.archive_status)
        restored = bool(self.restore) and 'ongoing-request="false"' in self.restore
        return archived and not restored


def write_attributes(state: ObjectState, *, metadata: Mapping[str, str] | None = None,
                     checksum_algorithm: str | None = None) -> dict[str, Any]:
    """Request parameters that give a new write every attribute ``state`` has.

    Valid for CopyObject (with ``MetadataDirective=REPLACE``), PutObject and CreateMultipartUpload.
    ``metadata`` replaces the user metadata (pass the original plus any marker).
    """
    params: dict[str, Any] = dict(state.headers)
    params["Metadata"] = dict(state.metadata if metadata is None else metadata)
    params["StorageClass"] = state.storage_class
    if state.sse in ("aws:kms", "aws:kms:dsse"):
        params["ServerSideEncryption"] = state.sse
        if state.kms_key_id:
            params["SSEKMSKeyId"] = state.kms_key_id
        params["BucketKeyEnabled"] = state.bucket_key_enabled
    elif state.sse:
        params["ServerSideEncryption"] = state.sse
    algorithm = state.checksum_algorithm or checksum_algorithm
    if algorithm:
        params["ChecksumAlgorithm"] = algorithm
    params.update(state.object_lock)
    return params


# ------------------------------------------------------------------------------------------------ ACLs


@dataclass(frozen=True)
class Acl:
    owner_id: str | None
    grants: tuple[tuple[str, str, str], ...] = field(default=())  # (permission, grantee kind, value)

    def grant_params(self) -> dict[str, str]:
        """``x-amz-grant-*`` parameters that recreate exactly these grants."""
        by_param: dict[str, list[str]] = {}
        for permission, kind, value in self.grants:
            param = GRANT_PARAMS.get(permission)
            if param is None:  # WRITE is not an object permission; nothing else exists
                continue
            by_param.setdefault(param, []).append(f'{kind}="{value}"')
        return {param: ", ".join(values) for param, values in sorted(by_param.items())}


def _grantee(grantee: Mapping[str, Any]) -> tuple[str, str]:
    kind = grantee.get("Type") or grantee.get("type")
    if kind == "Group":
        return "uri", grantee.get("URI") or grantee.get("uri")
    if kind == "AmazonCustomerByEmail":
        return "emailAddress", grantee.get("EmailAddress") or grantee.get("emailAddress")
    return "id", grantee.get("ID") or grantee.get("canonicalId") or grantee.get("id")


def acl_from_response(response: Mapping[str, Any]) -> Acl:
    """An :class:`Acl` from a GetObjectAcl response."""
    grants = tuple(
        (g["Permission"], *_grantee(g["Grantee"])) for g in response.get("Grants", []) if g.get("Grantee")
    )
    return Acl((response.get("Owner") or {}).get("ID"), grants)


def acl_from_inventory(value: str | None, owner_id: str | None) -> Acl | None:
    """An :class:`Acl` from the inventory's base64 JSON ``ObjectAccessControlList`` (None if unusable)."""
    if not value:
        return None
    try:
        doc = json.loads(base64.b64decode(value))
    except ValueError:
        return None
    if str(doc.get("status", "AVAILABLE")).upper() != "AVAILABLE":
        return None
    grants = []
    for g in doc.get("grants", []):
        kind, grantee = _grantee(g)
        grants.append((g.get("permission"), kind, grantee))
    return Acl(owner_id, tuple(grants))


# --------------------------------------------------------------------------------------------- retries

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
    """
    for attempt in range(attempts):
        try:
            return write(), attempt + 1
        except Exception as exc:  # noqa: BLE001
            if not is_retryable(exc) or attempt == attempts - 1:
                raise
            found = applied()
            if found is not None:
                return found, attempt + 1
            backoff_sleep(attempt)
    raise AssertionError("unreachable")


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


# ------------------------------------------------------------------------------ shared by the object jobs


@dataclass(frozen=True)
class BucketInfo:
    """Looked up once per bucket on the driver."""

    acls_enabled: bool
    owner_id: str | None


def bucket_info(bucket: str, copy_acls: bool) -> tuple[BucketInfo, int]:
    """ACLs enabled? (ObjectOwnership != BucketOwnerEnforced) and the bucket owner's id; plus requests made."""
    s3 = aws.s3()
    requests = 1
    try:
        rules = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
        enforced = any(r.get("ObjectOwnership") == "BucketOwnerEnforced" for r in rules)
    except Exception as exc:  # noqa: BLE001
        if aws.error_code(exc) != "OwnershipControlsNotFoundError":
            raise
        enforced = False
    owner = None
    if copy_acls and not enforced:
        requests += 1
        owner = s3.get_bucket_acl(Bucket=bucket)["Owner"].get("ID")
    return BucketInfo(acls_enabled=not enforced, owner_id=owner), requests


class Counter:
    """S3 requests made for one object (thread-confined)."""

    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()

    def add(self, k: int = 1) -> None:
        with self._lock:
            self.n += k


def default_partitions(candidates: int, parallelism: int) -> int:
    """Enough tasks to use every core, and more for big inventories so one task stays a few minutes."""
    return max(1, min(candidates, max(parallelism, math.ceil(candidates / 50000))))


def run_per_object(spark: Any, candidates: Any, results_path: str, run_id: str, partitions: int | None,
                   copy_acls: bool, process_partition: Callable[[Iterable[Any], Mapping[str, BucketInfo]],
                                                                Iterator[tuple]],
                   bucket_counts: Mapping[str, int] | None = None) -> tuple[dict[str, Any], Any]:
    """The driver side of an object job: look up each bucket once, spread the candidates over tasks,
    write the result rows once (that single action does the object writes: the mapped frame is never
    recomputed), then summarize this run's partition. Returns (summary, results DataFrame).

    ``bucket_counts`` (candidates per bucket), when the caller already knows them (a listing made on the
    driver), saves the counting job; otherwise the candidates are cached and counted in one pass.
    """
    from s3lake import results

    started = time.monotonic()
    cached = bucket_counts is None
    if cached:
        candidates = candidates.persist()
        bucket_counts = dict(candidates.groupBy("bucket").count().collect())
    infos, driver_requests = {}, 0
    for name in sorted(bucket_counts):
        infos[name], n = bucket_info(name, copy_acls)
        driver_requests += n
    count = sum(bucket_counts.values())
    tasks = partitions or default_partitions(count, spark.sparkContext.defaultParallelism)
    rdd = candidates.repartition(tasks).rdd.mapPartitions(lambda rows: process_partition(rows, infos))
    results.write(spark.createDataFrame(rdd, results.SCHEMA), results_path)
    if cached:
        candidates.unpersist()
    written = results.read_run(spark, results_path, run_id)
    summary = results.summarize(results.summary_rows(written), time.monotonic() - started, driver_requests)
    return summary, written


def bounded_map(fn: Callable[[Any], R], items: Iterable[Any], concurrency: int) -> Iterator[R]:
    """``fn`` over ``items`` with at most ``concurrency`` calls in flight, results as they finish.

    A sliding window, not batches: one slow object (a retry, a multipart copy) never idles the others.
    """
    it = iter(items)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        pending = {pool.submit(fn, item) for item in itertools.islice(it, concurrency)}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
            for item in itertools.islice(it, len(done)):
                pending.add(pool.submit(fn, item))
