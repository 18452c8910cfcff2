"""Copy in place: backfill Cross-Region Replication for pre-existing and FAILED objects.

Per candidate (latest version, not a delete marker, replication status in ``--statuses``):

0. the inventory says SSE-C -> ``SKIPPED_SSE_C`` without a request (S3 cannot copy it without the key);
1. one HEAD (the live state) decides: gone -> ``MISSING``; carries this run's marker -> ``ALREADY_COPIED``;
   replicating now (PENDING/COMPLETED/REPLICA) -> ``SKIPPED_REPLICATING``; ETag or version differs from the
   inventory (overwritten since: the new write replicates by itself) -> ``SKIPPED_CHANGED``; archived and not
   restored -> ``SKIPPED_ARCHIVED``; SSE-C (or S3's 400 to a HEAD without the customer key) ->
   ``SKIPPED_SSE_C``; user metadata plus the marker above S3's 2 KB -> ``SKIPPED_METADATA_TOO_LARGE``;
2. the ACL (GetObjectAcl, unless the bucket has ACLs disabled or ``--no-copy-acls``) rides on the copy
   request as ``x-amz-grant-*`` headers, so the new version never exists with another ACL;
3. CopyObject onto itself with ``MetadataDirective=REPLACE`` re-sending every attribute (see
   :mod:`s3lake.objects.attributes`) plus the marker ``x-amz-meta-s3lake-copied: <run id>``,
   ``TaggingDirective=COPY``. The copy must apply to the version just read *and still current*: the source
   is the key's current version (no ``versionId``) with ``CopySourceIfMatch`` = the ETag just read, and the
   write itself is conditional on the same ETag (``If-Match``), so a write that lands after the HEAD makes
   S3 answer 412 and the object is ``SKIPPED_CHANGED``, never reverted to the stale bytes;
4. above ``multipart_threshold``: CreateMultipartUpload + UploadPartCopy in parallel (each part
   ``CopySourceIfMatch``) + CompleteMultipartUpload with ``If-Match`` (Abort on failure): a write during a
   minutes-long copy fails the Complete with 412. The checksum algorithm and type (FULL_OBJECT or
   COMPOSITE) are kept; a full-object checksum is sent with the Complete, so S3 checks the whole copy.

S3 pages: CopyObject https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html (copy-source
conditions, 412), UploadPartCopy https://docs.aws.amazon.com/AmazonS3/latest/API/API_UploadPartCopy.html,
conditional writes https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html
(``If-Match`` on CopyObject and CompleteMultipartUpload), checksums
https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html, SSE-C
https://docs.aws.amazon.com/AmazonS3/latest/userguide/ServerSideEncryptionCustomerKeys.html.

Writes go through :func:`s3lake.objects.at_most_once.write_once`: when the outcome of a copy is unknown
(throttled, reset, response lost) the object is HEADed for the run's marker before any retry, so nothing is
copied twice.
A request count per object is kept for the summary (HEAD + GetObjectAcl + CopyObject = 3 at most for a
single-part copy; 2 where ACLs are disabled).
"""

from __future__ import annotations

import hashlib
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence
from urllib.parse import quote

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from s3lake import aws
from s3lake.errors import ConfigError
from s3lake.objects import results
from s3lake.objects.acl_grants import Acl, acl_from_inventory, acl_from_response
from s3lake.objects.at_most_once import create_multipart_once, is_retryable, once_client, write_once
from s3lake.objects.attributes import (
    MAX_USER_METADATA,
    ObjectState,
    checksum_type_for,
    metadata_size,
    multipart_checksum,
    write_attributes,
)
from s3lake.objects.buckets import BucketInfo
from s3lake.objects.checkpoints import CheckpointOptions
from s3lake.objects.driver import Counter, bounded_map, run_per_object
from s3lake.objects.pacing import PaceOptions
from s3lake.replication import pricing
from s3lake.replication.scope import Scope

JOB = "copy-in-place"
MARKER = "s3lake-copied"
GIB = 1024 ** 3
MIB = 1024 ** 2
DEFAULT_THRESHOLD = 5 * GIB
MAX_PARTS = 10000

COPIED = "COPIED"
WOULD_COPY = "WOULD_COPY"
MISSING = "MISSING"
ALREADY_COPIED = "ALREADY_COPIED"
SKIPPED_REPLICATING = "SKIPPED_REPLICATING"
SKIPPED_CHANGED = "SKIPPED_CHANGED"
SKIPPED_ARCHIVED = "SKIPPED_ARCHIVED"
SKIPPED_SSE_C = "SKIPPED_SSE_C"
SKIPPED_OTHER_OWNER = "SKIPPED_OTHER_OWNER"
SKIPPED_OUT_OF_SCOPE = "SKIPPED_OUT_OF_SCOPE"  # no enabled replication rule takes it: a copy adds a version only
SKIPPED_METADATA_TOO_LARGE = "SKIPPED_METADATA_TOO_LARGE"
FAILED = results.FAILED
REPLICATING = frozenset({"PENDING", "COMPLETED", "REPLICA"})
CANDIDATE_COLUMNS = ["bucket", "key", "version_id", "e_tag", "size", "storage_class", "object_access_control_list",
                     "object_owner", "checksum_algorithm", "encryption_status"]


@dataclass(frozen=True)
class Settings:
    run_id: str
    dry_run: bool = False
    copy_acls: bool = True
    acl_from_inventory: bool = False
    concurrency: int = 32
    multipart_threshold: int = DEFAULT_THRESHOLD
    part_concurrency: int = 8
    scopes: Mapping[str, Scope] | None = None  # per bucket; None = --no-replication-check
    request_payer: str | None = None  # "requester": x-amz-request-payer on every request


# ------------------------------------------------------------------------------------ pure planning


def parse_statuses(text: str) -> frozenset[str | None]:
    """``none,FAILED`` -> {None, "FAILED"}; ``none`` means no replication status (pre-existing objects)."""
    allowed = {"NONE", "FAILED", "PENDING", "COMPLETED", "REPLICA"}
    out: set[str | None] = set()
    for part in (p.strip().upper() for p in text.split(",")):
        if not part:
            continue
        if part not in allowed:
            raise ConfigError(f"--statuses: unknown replication status {part!r} (use none, FAILED, ...)")
        out.add(None if part == "NONE" else part)
    if not out:
        raise ConfigError("--statuses names no status")
    return frozenset(out)


def select_candidates(inventory: DataFrame, statuses: Iterable[str | None], extra: Sequence[str] = ()) -> DataFrame:
    """Live objects (latest version, not delete markers) whose replication status is one of ``statuses``;
    :data:`CANDIDATE_COLUMNS` plus the inventory columns ``extra``."""
    wanted = set(statuses)
    named = sorted(s for s in wanted if s is not None)
    status = F.upper(F.col("replication_status"))
    condition = status.isin(named) if named else F.lit(False)
    if None in wanted:
        condition = condition | F.col("replication_status").isNull()
    live = F.coalesce(F.col("is_latest"), F.lit(True)) & ~F.coalesce(F.col("is_delete_marker"), F.lit(False))
    return inventory.where(live & condition).select(*CANDIDATE_COLUMNS, *extra)


def default_run_id(delivery_id: str) -> str:
    """A readable, stable id per inventory delivery: re-running the same delivery resumes it."""
    digest = hashlib.sha1(delivery_id.encode()).hexdigest()[:8]
    stamp = delivery_id.rsplit("/", 1)[-1]
    return f"cip-{stamp}-{digest}"


def part_size(size: int, threshold: int) -> int:
    """UploadPartCopy range size: >= 5 MiB, <= 10,000 parts, 64 MiB unless the threshold is lower."""
    return max(5 * MIB, math.ceil(size / MAX_PARTS), min(64 * MIB, threshold))


def decide(state: ObjectState | None, inventory_etag: str | None, inventory_version: str | None,
           run_id: str) -> str | None:
    """The skip status for a HEADed object, or None when it should be copied."""
    if state is None:
        return MISSING
    if state.metadata.get(MARKER) == run_id:
        return ALREADY_COPIED
    if state.replication_status in REPLICATING:
        return SKIPPED_REPLICATING
    if inventory_etag and state.etag != inventory_etag.strip('"'):
        return SKIPPED_CHANGED
    if inventory_version and state.version_id and state.version_id != inventory_version:
        return SKIPPED_CHANGED
    if state.sse_customer_algorithm:
        return SKIPPED_SSE_C
    if state.needs_restore:
        return SKIPPED_ARCHIVED
    if metadata_size({**state.metadata, MARKER: run_id}) > MAX_USER_METADATA:
        return SKIPPED_METADATA_TOO_LARGE
    return None


def copy_request(state: ObjectState, run_id: str, acl: Acl | None) -> dict[str, Any]:
    """The CopyObject parameters for a self-copy that keeps every attribute of ``state``."""
    params = write_attributes(state, metadata={**state.metadata, MARKER: run_id})
    params.update(
        Bucket=state.bucket,
        Key=state.key,
        CopySource=current_source(state),
        CopySourceIfMatch=f'"{state.etag}"',
        IfMatch=f'"{state.etag}"',
        MetadataDirective="REPLACE",
        TaggingDirective="COPY",
    )
    if acl is not None:
        params.update(acl.grant_params())
    return params


def current_source(state: ObjectState) -> dict[str, str]:
    """The copy source: the key's *current* version, never a pinned one. Pinning the version just read
    would make ``CopySourceIfMatch`` (that version's own ETag) always true, and a newer write would be
    superseded by the stale copy."""
    return {"Bucket": state.bucket, "Key": state.key}


def multipart_request(state: ObjectState, run_id: str, acl: Acl | None, tags: Sequence[Mapping[str, str]]) -> dict:
    """CreateMultipartUpload parameters: every attribute, the marker, the grants, the tags, and the
    object's checksum algorithm and type."""
    params = write_attributes(state, metadata={**state.metadata, MARKER: run_id})
    params.update(Bucket=state.bucket, Key=state.key, **multipart_checksum(state))
    if tags:
        params["Tagging"] = "&".join(f"{quote(t['Key'], safe='')}={quote(t['Value'], safe='')}" for t in tags)
    if acl is not None:
        params.update(acl.grant_params())
    return params


# ------------------------------------------------------------------------------------ per object (I/O)


def complete_request(state: ObjectState, upload_id: str, parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """CompleteMultipartUpload, conditional on the ETag read (a write during the copy -> 412). A
    full-object checksum of the source is sent along: the copy has the same bytes, so S3 verifies it."""
    params: dict[str, Any] = {"Bucket": state.bucket, "Key": state.key, "UploadId": upload_id,
                              "MultipartUpload": {"Parts": list(parts)}, "IfMatch": f'"{state.etag}"'}
    algorithm = state.checksum_algorithm
    if (algorithm and state.checksum_value and state.checksum_type == "FULL_OBJECT"
            and checksum_type_for(algorithm, "FULL_OBJECT") == "FULL_OBJECT"):
        params.update({"ChecksumType": "FULL_OBJECT", f"Checksum{algorithm}": state.checksum_value})
    return params


class SseCustomerKey(Exception):
    """S3 refused the request because the object is SSE-C and the customer key was not sent."""


def head(bucket: str, key: str, counter: Counter) -> ObjectState | None:
    counter.add()
    try:
        response = aws.s3().head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except Exception as exc:  # noqa: BLE001
        if aws.error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None
        if aws.is_sse_c_refusal(exc, head=True):
            raise SseCustomerKey(str(exc)) from None
        raise
    return ObjectState.from_head(bucket, key, response)


def _applied(state: ObjectState, run_id: str, counter: Counter) -> dict | None:
    """After an unknown outcome: did our copy land? (HEAD shows this run's marker.)"""
    now = head(state.bucket, state.key, counter)
    if now is not None and now.metadata.get(MARKER) == run_id:
        return {"VersionId": now.version_id, "recovered": True}
    return None


def copy_single(state: ObjectState, settings: Settings, acl: Acl | None, counter: Counter) -> dict:
    params = copy_request(state, settings.run_id, acl)

    def write() -> dict:
        counter.add()
        return once_client().copy_object(**params)

    response, _ = write_once(write, lambda: _applied(state, settings.run_id, counter))
    return response


def copy_multipart(state: ObjectState, settings: Settings, acl: Acl | None, counter: Counter) -> dict:
    s3 = aws.s3()
    tags: list = []
    if state.tag_count:
        counter.add()
        tags = s3.get_object_tagging(Bucket=state.bucket, Key=state.key,
                                     **({"VersionId": state.version_id} if state.version_id else {}))["TagSet"]
    upload_id = create_multipart_once(multipart_request(state, settings.run_id, acl, tags), counter)
    source = current_source(state)
    size = part_size(state.size, settings.multipart_threshold)
    ranges = [(i + 1, start, min(start + size, state.size) - 1) for i, start in enumerate(range(0, state.size, size))]

    def copy_part(part: tuple[int, int, int]) -> dict:
        number, first, last = part
        counter.add()
        out = s3.upload_part_copy(
            Bucket=state.bucket, Key=state.key, UploadId=upload_id, PartNumber=number, CopySource=source,
            CopySourceRange=f"bytes={first}-{last}", CopySourceIfMatch=f'"{state.etag}"',
        )["CopyPartResult"]
        entry = {"PartNumber": number, "ETag": out["ETag"]}
        entry.update({k: v for k, v in out.items() if k.startswith("Checksum") and k != "ChecksumType"})
        return entry

    try:
        with ThreadPoolExecutor(max_workers=max(1, min(settings.part_concurrency, len(ranges)))) as pool:
            parts = list(pool.map(copy_part, ranges))

        params = complete_request(state, upload_id, parts)

        def complete() -> dict:
            counter.add()
            return once_client().complete_multipart_upload(**params)

        response, _ = write_once(complete, lambda: _applied(state, settings.run_id, counter))
        return response
    except BaseException:
        _abort(state, upload_id, counter)
        raise


def _abort(state: ObjectState, upload_id: str, counter: Counter) -> None:
    for attempt in range(5):
        try:
            counter.add()
            aws.s3().abort_multipart_upload(Bucket=state.bucket, Key=state.key, UploadId=upload_id)
            return
        except Exception as exc:  # noqa: BLE001
            if aws.error_code(exc) in ("NoSuchUpload", "404"):
                return
            if not is_retryable(exc):
                return
            time.sleep(0.2 * (attempt + 1))


def process(candidate: Mapping[str, Any], settings: Settings, bucket: BucketInfo,
            tally: pricing.Tally | None = None) -> tuple:
    """Copy one candidate (or decide not to); always returns exactly one result row.

    ``tally`` (optional) receives the requests made, the writes a dry run would make, KMS calls and the
    new version's bytes (see :func:`record_tally`).
    """
    b, k = candidate["bucket"], candidate["key"]
    counter = Counter()
    base = {"version_id": candidate.get("version_id"), "size": candidate.get("size"),
            "storage_class": candidate.get("storage_class")}
    state: ObjectState | None = None
    if str(candidate.get("encryption_status") or "").upper() == "SSE-C":
        return results.row(settings.run_id, JOB, b, k, SKIPPED_SSE_C, requests=0, encryption="SSE-C", **base)
    status: str | None = None
    reads = {"HeadObject": 0, "GetObjectTagging": 0, "GetObjectAcl": 0}
    try:
        if not in_scope_by_key(candidate, settings):
            return results.row(settings.run_id, JOB, b, k, SKIPPED_OUT_OF_SCOPE, requests=0, **base)
        state = head(b, k, counter)
        reads["HeadObject"] = 1
        status = decide(state, candidate.get("e_tag"), candidate.get("version_id"), settings.run_id)
        if state is not None:
            base.update(size=state.size, storage_class=state.storage_class, encryption=state.encryption,
                        kms_key_id=state.kms_key_id, version_id=state.version_id or base["version_id"])
        if status is None and state is not None and settings.scopes is not None:
            status, reads["GetObjectTagging"] = scope_status(state, settings, counter)
        if status is None and state is not None:
            acl = None
            if settings.copy_acls and bucket.acls_enabled:
                before = counter.n
                acl = _object_acl(state, candidate, settings, counter)
                reads["GetObjectAcl"] = counter.n - before
                if bucket.owner_id and acl.owner_id and acl.owner_id != bucket.owner_id:
                    status = SKIPPED_OTHER_OWNER  # a copy would make us the owner: never change ownership
            if status is None and settings.dry_run:
                status = WOULD_COPY
            elif status is None:
                if state.size > settings.multipart_threshold:
                    response = copy_multipart(state, settings, acl, counter)
                else:
                    response = copy_single(state, settings, acl, counter)
                base["new_version_id"] = response.get("VersionId")
                base["bytes_out"] = state.size
                status = COPIED
        return results.row(settings.run_id, JOB, b, k, status or FAILED, requests=counter.n, **base)
    except SseCustomerKey as exc:
        return results.row(settings.run_id, JOB, b, k, SKIPPED_SSE_C, requests=counter.n, error_code="400",
                           error_message=str(exc), **{**base, "encryption": "SSE-C"})
    except Exception as exc:  # noqa: BLE001 - recorded per object, the job goes on
        status = None
        code = aws.error_code(exc)
        if code in ("PreconditionFailed", "412"):
            return results.row(settings.run_id, JOB, b, k, SKIPPED_CHANGED, requests=counter.n, error_code=code,
                               error_message="object changed between HEAD and copy", **base)
        if aws.is_sse_c_refusal(exc):
            return results.row(settings.run_id, JOB, b, k, SKIPPED_SSE_C, requests=counter.n, error_code=code,
                               error_message=str(exc), **{**base, "encryption": "SSE-C"})
        if code == "MetadataTooLarge":
            return results.row(settings.run_id, JOB, b, k, SKIPPED_METADATA_TOO_LARGE, requests=counter.n,
                               error_code=code, error_message=str(exc), **base)
        return results.row(settings.run_id, JOB, b, k, FAILED, requests=counter.n, error_code=code,
                           error_message=str(exc), **base)
    finally:
        if tally is not None:
            tally.counted += counter.n
            record_tally(tally, state, status, reads, settings)


def _object_acl(state: ObjectState, candidate: Mapping[str, Any], settings: Settings, counter: Counter) -> Acl:
    if settings.acl_from_inventory:
        acl = acl_from_inventory(candidate.get("object_access_control_list"), candidate.get("object_owner"))
        if acl is not None:
            return acl
    counter.add()
    kwargs = {"VersionId": state.version_id} if state.version_id else {}
    return acl_from_response(aws.s3().get_object_acl(Bucket=state.bucket, Key=state.key, **kwargs))


def process_partition(rows: Iterable[Any], settings: Settings, buckets: Mapping[str, BucketInfo],
                      tallies: Any = None) -> Iterator[tuple]:
    """A bounded pool of ``settings.concurrency`` objects in flight; S3 latency, not CPU, is the limit.

    ``tallies`` (a Spark accumulator of :class:`~s3lake.replication.pricing.Tally`) gets this task's tally at the end.
    """
    aws.use_request_payer(settings.request_payer)
    unknown = BucketInfo(acls_enabled=True, owner_id=None)

    def one(candidate: Any) -> tuple:
        c = candidate.asDict() if hasattr(candidate, "asDict") else dict(candidate)
        tally = pricing.Tally()
        return process(c, settings, buckets.get(c["bucket"], unknown), tally), tally

    total = pricing.Tally()
    for result, tally in bounded_map(one, rows, settings.concurrency):
        total.merge(tally)
        yield result
    if tallies is not None:
        tallies.add(total)


# ------------------------------------------------------------------------------------ driver side


def run(spark: SparkSession, candidates: DataFrame, settings: Settings, results_path: str,
        partitions: int | None = None, pace: PaceOptions | None = None,
        checkpoint: CheckpointOptions | None = None) -> tuple[dict[str, Any], DataFrame]:
    """Process every candidate not done yet, committing rows as it goes; return (summary, this run's results).

    ``summary["tally"]`` is the run's :class:`~s3lake.replication.pricing.Tally` of per-object requests (a dry run's
    includes the writes the real run would make); the driver's lookups are added by :func:`driver_tally`.
    """
    from pyspark.accumulators import AccumulatorParam

    class TallyParam(AccumulatorParam):
        def zero(self, value: pricing.Tally) -> pricing.Tally:
            return pricing.Tally()

        def addInPlace(self, a: pricing.Tally, b: pricing.Tally) -> pricing.Tally:  # noqa: N802 - Spark's name
            return a.merge(b)

    tallies = spark.sparkContext.accumulator(pricing.Tally(), TallyParam())
    summary, written = run_per_object(spark, candidates, results_path, settings.run_id, partitions,
                                      settings.copy_acls,
                                      lambda rows, infos: process_partition(rows, settings, infos, tallies),
                                      concurrency=settings.concurrency, pace=pace, job=JOB,
                                      dry_run=settings.dry_run, checkpoint=checkpoint)
    summary["tally"] = tallies.value
    return summary, written


# ------------------------------------------------------------------------------------ replication scope


def in_scope_by_key(candidate: Mapping[str, Any], settings: Settings) -> bool:
    """False when no enabled rule of the bucket can take the key (decided before any request)."""
    if settings.scopes is None:
        return True
    scope = settings.scopes.get(candidate["bucket"])
    if scope is None:
        raise ConfigError(f"no replication scope was looked up for bucket {candidate['bucket']}")
    return scope.maybe_covers(candidate["key"])


def scope_status(state: ObjectState, settings: Settings, counter: Counter) -> tuple[str | None, int]:
    """SKIPPED_OUT_OF_SCOPE or None (copy it), and the GetObjectTagging requests made (0 or 1).

    Tags are read only when a tag rule alone can take the object and HEAD's TagCount says it has tags.
    """
    scope = settings.scopes[state.bucket]  # type: ignore[index]
    encryption = state.sse
    tags: dict[str, str] | None = None
    fetched = 0
    if scope.needs_tags(state.key, encryption):
        tags = {}
        if state.tag_count:
            counter.add()
            fetched = 1
            kwargs = {"VersionId": state.version_id} if state.version_id else {}
            tag_set = aws.s3().get_object_tagging(Bucket=state.bucket, Key=state.key, **kwargs)["TagSet"]
            tags = {t["Key"]: t["Value"] for t in tag_set}
    return (None if scope.covers(state.key, tags, encryption) else SKIPPED_OUT_OF_SCOPE), fetched


# ------------------------------------------------------------------------------------ cost tally


def parts_of(state: ObjectState, settings: Settings) -> int | None:
    """UploadPartCopy parts for a multipart copy, None for a single CopyObject."""
    if state.size <= settings.multipart_threshold:
        return None
    return math.ceil(state.size / part_size(state.size, settings.multipart_threshold))


def record_tally(tally: pricing.Tally, state: ObjectState | None, status: str | None,
                 reads: Mapping[str, int], settings: Settings) -> None:
    """One object's requests by operation (at its storage class), KMS calls and new version bytes.

    Reads are what :func:`process` made; the writes of a COPIED object are the model of
    :func:`pricing.copy_write_requests` (retries are not counted), a WOULD_COPY's are ``predicted``.
    """
    cls = state.storage_class if state is not None else "STANDARD"
    for op, n in reads.items():
        tally.add(op, n, cls)
    if state is None or status not in (COPIED, WOULD_COPY):
        return
    parts = parts_of(state, settings)
    writes = pricing.copy_write_requests(parts, state.tag_count > 0)
    for op, n in writes.items():
        if status == COPIED:
            tally.add(op, n, cls)
        else:
            tally.predict(op, n, cls)
    tally.kms_calls += pricing.kms_calls(state.sse, state.bucket_key_enabled, parts)
    tally.add_version(cls, state.size)


def driver_tally(tally: pricing.Tally, buckets: int, driver_requests: int, scope_checked: bool) -> pricing.Tally:
    """Add the driver's per-bucket lookups: ownership controls (+ bucket ACL) and, when checked, the scope."""
    from s3lake.replication.scope import FETCH_REQUESTS

    tally.add("GetBucketOwnershipControls", buckets)
    tally.add("GetBucketAcl", driver_requests - buckets)
    if scope_checked:
        for op, n in FETCH_REQUESTS.items():
            tally.add(op, n * buckets)
    return tally
