"""The anonymization pass per object: decide, read, rewrite (:mod:`s3lake.anonymize.rewrite`) and write
back (:mod:`s3lake.anonymize.writes`), one result row each; the Spark side of a run.

Per candidate object (from an inventory or a ``--source`` listing, :mod:`s3lake.anonymize.sources`):

1. skip without a request when the listing already says so (zero bytes, SSE-C, younger than ``min_age``);
2. one streaming GET gives the live attributes (the same headers a HEAD gives) and the body; then skip:
   gone -> ``MISSING``; empty -> ``SKIPPED_EMPTY``; too young -> ``SKIPPED_TOO_YOUNG``; archived ->
   ``SKIPPED_ARCHIVED``; SSE-C -> ``SKIPPED_SSE_C``; carrying this run's marker -> ``ALREADY_ANONYMIZED``;
   carrying the processed tag (GetObjectTagging, only when TagCount > 0) -> ``SKIPPED_PROCESSED``;
3. the body is streamed line by line (gunzipped when Content-Encoding or the key says gzip) through the
   rules. A line that is not JSON stops the object: ``FAILED`` with its line number, nothing written;
4. no line changed -> only the processed tag (existing tags + processed tag) -> ``TAGGED``: on a
   versioned bucket PutObjectTagging pinned to the version read; on an unversioned bucket (no version
   to pin, and PutObjectTagging cannot be conditional) a server-side self-copy of the same bytes with
   every attribute, the merged tags and the marker, conditional on the ETag read, so an overwrite between
   the GET and the tagging is never tagged unscanned (-> ``CONFLICT``). Otherwise the new body goes back
   under the same key with every attribute, the ACL grants, the merged tags and the marker, conditional
   on the ETag read -> ``ANONYMIZED``, or ``CONFLICT`` when the object changed meanwhile;
5. ``purge_noncurrent``: after a rewrite, the exact version read is deleted (versioned buckets).

SSE-C: skipped from the inventory's EncryptionStatus without a request, or on S3's 400 to the GET.
A body stream that breaks mid-read (connection reset, truncated response) happens before anything is
written (a started multipart upload is aborted), so the object is simply read again from the start,
up to ``READ_ATTEMPTS`` times.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Mapping, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from s3lake import aws
from s3lake.anonymize.rewrite import (
    DEFAULT_MAX_LINE,
    READ_CHUNK,
    BadLine,
    Stats,
    decoded_chunks,
    is_gzip,
    rewrite_chunks,
)
from s3lake.anonymize.rules import RuleSet
from s3lake.anonymize.task_stats import TaskStats
from s3lake.anonymize.writes import (
    DEFAULT_PART_SIZE,
    MARKER,
    MAX_COPY,
    Conflict,
    Output,
    TooManyTags,
    has_tag,
    merge_tags,
    tag_by_copy,
)
from s3lake.errors import ConfigError
from s3lake.objects import results
from s3lake.objects.acl_grants import Acl, acl_from_response
from s3lake.objects.at_most_once import backoff_sleep, is_retryable
from s3lake.objects.attributes import MAX_USER_METADATA, ObjectState, metadata_size
from s3lake.objects.buckets import BucketInfo
from s3lake.objects.checkpoints import CheckpointOptions
from s3lake.objects.driver import Counter, bounded_map, run_per_object
from s3lake.objects.pacing import PaceOptions

log = logging.getLogger(__name__)
JOB = "anonymize"
READ_ATTEMPTS = 4  # whole-object reads when the body stream breaks (botocore retries only up to the headers)

ANONYMIZED = "ANONYMIZED"
TAGGED = "TAGGED"
WOULD_ANONYMIZE = "WOULD_ANONYMIZE"
WOULD_TAG = "WOULD_TAG"
ALREADY_ANONYMIZED = "ALREADY_ANONYMIZED"
SKIPPED_PROCESSED = "SKIPPED_PROCESSED"
SKIPPED_TOO_YOUNG = "SKIPPED_TOO_YOUNG"
SKIPPED_EMPTY = "SKIPPED_EMPTY"
SKIPPED_ARCHIVED = "SKIPPED_ARCHIVED"
SKIPPED_SSE_C = "SKIPPED_SSE_C"
SKIPPED_OTHER_OWNER = "SKIPPED_OTHER_OWNER"
SKIPPED_METADATA_TOO_LARGE = "SKIPPED_METADATA_TOO_LARGE"
MISSING = "MISSING"
CONFLICT = "CONFLICT"
FAILED = results.FAILED


@dataclass(frozen=True)
class Settings:
    run_id: str
    rules: RuleSet
    processed_tag: tuple[str, str] = ("PROCESSED", "true")
    min_age: float = 300.0
    dry_run: bool = False
    purge_noncurrent: bool = False
    concurrency: int = 16
    part_size: int = DEFAULT_PART_SIZE
    max_line_bytes: int = DEFAULT_MAX_LINE
    large_objects_in_flight: int = 2  # per task: bounds memory to ~ this x 3 x part_size
    request_payer: str | None = None  # "requester": x-amz-request-payer on every request


class BodyInterrupted(Exception):
    """The GET's body stream broke mid-read (reset, truncated, timed out); nothing has been written."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"reading the object failed: {cause}")
        self.code = aws.error_code(cause)


def body_chunks(body: Any, size: int = READ_CHUNK) -> Iterator[bytes]:
    """``body.iter_chunks(size)``; a transient failure of the stream becomes :class:`BodyInterrupted`."""
    from botocore.exceptions import IncompleteReadError

    try:
        yield from body.iter_chunks(size)
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, IncompleteReadError) or is_retryable(exc):
            raise BodyInterrupted(exc) from exc
        raise


def parse_min_age(text: str) -> float:
    """``300``, ``300s``, ``5m``, ``2h``, ``1d`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text or "")
    if not m:
        raise ConfigError(f"--min-age must look like 300s, 5m, 2h or 1d, got {text!r}")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_tag(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` -> (key, value), within S3's tag limits."""
    key, eq, value = (text or "").partition("=")
    if not eq or not key:
        raise ConfigError(f"--processed-tag must be KEY=VALUE, got {text!r}")
    if len(key) > 128 or len(value) > 256 or key.startswith("aws:"):
        raise ConfigError(f"--processed-tag {text!r}: key <= 128 characters (not aws:...), value <= 256")
    return key, value


def default_run_id(source_id: str, rules_digest: str) -> str:
    """Stable for one source (inventory delivery, or --source + UTC day) and one rules file."""
    digest = hashlib.sha1(f"{source_id}\n{rules_digest}".encode()).hexdigest()[:10]
    return f"anon-{digest}"


def precheck(candidate: Mapping[str, Any], settings: Settings, now: datetime) -> str | None:
    """A skip decided from the listing alone (no request): empty, or too young even then."""
    if candidate.get("size") == 0:
        return SKIPPED_EMPTY
    if str(candidate.get("encryption_status") or "").upper() == "SSE-C":
        return SKIPPED_SSE_C  # S3 cannot read it without the customer key
    modified = candidate.get("last_modified")
    if modified is not None and _age(modified, now) < settings.min_age:
        return SKIPPED_TOO_YOUNG
    return None


def _age(modified: datetime, now: datetime) -> float:
    if modified.tzinfo is None:
        modified = modified.replace(tzinfo=timezone.utc)
    return (now - modified).total_seconds()


def decide(state: ObjectState, settings: Settings, now: datetime) -> str | None:
    """The skip status for the live object, or None when it should be read."""
    if state.size == 0:
        return SKIPPED_EMPTY
    if state.last_modified is not None and _age(state.last_modified, now) < settings.min_age:
        return SKIPPED_TOO_YOUNG
    if state.metadata.get(MARKER) == settings.run_id:
        return ALREADY_ANONYMIZED
    if state.sse_customer_algorithm:
        return SKIPPED_SSE_C
    if state.needs_restore:
        return SKIPPED_ARCHIVED
    if metadata_size({**state.metadata, MARKER: settings.run_id}) > MAX_USER_METADATA:
        return SKIPPED_METADATA_TOO_LARGE
    return None


def _version(state: ObjectState) -> dict[str, str]:
    return {"VersionId": state.version_id} if state.version_id else {}


def process(candidate: Mapping[str, Any], settings: Settings, bucket: BucketInfo,
            large_slots: threading.Semaphore | None = None) -> tuple:
    """Anonymize one object (or decide not to); always returns exactly one result row.

    When the body stream breaks mid-read nothing has been written yet: the object is read again.
    """
    counter = Counter()
    for attempt in range(READ_ATTEMPTS):
        try:
            return _process_once(candidate, settings, bucket, large_slots, counter,
                                 last=attempt == READ_ATTEMPTS - 1)
        except BodyInterrupted:
            backoff_sleep(attempt)
    raise AssertionError("unreachable")


def _process_once(candidate: Mapping[str, Any], settings: Settings, bucket: BucketInfo,
                  large_slots: threading.Semaphore | None, counter: Counter, last: bool) -> tuple:
    """One read of the object; raises :class:`BodyInterrupted` to be read again unless ``last``."""
    b, k = candidate["bucket"], candidate["key"]
    stats = Stats()
    base: dict[str, Any] = {"size": candidate.get("size")}
    now = datetime.now(timezone.utc)

    def done(status: str, **extra: Any) -> tuple:
        return results.row(settings.run_id, JOB, b, k, status, requests=counter.n, bytes_in=stats.bytes_in,
                           **{**base, **extra})

    status = precheck(candidate, settings, now)
    if status:
        return done(status)
    try:
        counter.add()
        try:
            response = aws.s3().get_object(Bucket=b, Key=k, ChecksumMode="ENABLED")
        except Exception as exc:  # noqa: BLE001
            code = aws.error_code(exc)
            skip = {"NoSuchKey": MISSING, "404": MISSING, "InvalidObjectState": SKIPPED_ARCHIVED}.get(code)
            if skip is None and aws.is_sse_c_refusal(exc):
                skip = SKIPPED_SSE_C
            if skip is None:
                raise
            return done(skip)
        body = response["Body"]
        try:
            state = ObjectState.from_head(b, k, response)
            base.update(version_id=state.version_id, size=state.size, storage_class=state.storage_class,
                        encryption=state.encryption, kms_key_id=state.kms_key_id)
            status = decide(state, settings, now)
            tags: list = []
            if status is None and state.tag_count:
                counter.add()
                tags = aws.s3().get_object_tagging(Bucket=b, Key=k, **_version(state))["TagSet"]
                if has_tag(tags, settings.processed_tag):
                    status = SKIPPED_PROCESSED
            if status:
                return done(status)
            try:
                merged = merge_tags(tags, settings.processed_tag)
            except TooManyTags as exc:
                return done(FAILED, error_code="TooManyTags", error_message=str(exc))
            acl = None
            if bucket.acls_enabled and not settings.dry_run:
                counter.add()
                acl = acl_from_response(aws.s3().get_object_acl(Bucket=b, Key=k, **_version(state)))
                if bucket.owner_id and acl.owner_id and acl.owner_id != bucket.owner_id:
                    return done(SKIPPED_OTHER_OWNER)  # a rewrite would make us the owner
            gzipped = is_gzip(k, state.headers.get("ContentEncoding"))
            big = state.size > settings.part_size and large_slots is not None
            if big:
                large_slots.acquire()  # type: ignore[union-attr]
            try:
                status, extra = rewrite(state, body, gzipped, settings, acl, merged, counter, stats)
            finally:
                if big:
                    large_slots.release()  # type: ignore[union-attr]
        finally:
            body.close()
        return done(status, records_changed=stats.records_changed, fields_changed=stats.fields_json(),
                    fields_matched=stats.matched_json(), **extra)
    except BadLine as exc:
        return done(FAILED, error_code="InvalidJSON", error_message=str(exc), records_changed=0)
    except BodyInterrupted as exc:
        if not last:
            raise
        return done(FAILED, error_code=exc.code, error_message=str(exc))
    except Conflict as exc:
        return done(CONFLICT, error_code="PreconditionFailed", error_message=str(exc))
    except Exception as exc:  # noqa: BLE001 - recorded per object, the job goes on
        code = aws.error_code(exc)
        status = SKIPPED_METADATA_TOO_LARGE if code == "MetadataTooLarge" else FAILED
        return done(status, error_code=code, error_message=str(exc))


def rewrite(state: ObjectState, body: Any, gzipped: bool, settings: Settings, acl: Acl | None,
            tags: Sequence[Mapping[str, str]], counter: Counter, stats: Stats) -> tuple[str, dict[str, Any]]:
    """Stream ``body`` through the rules into an :class:`Output`; write, tag or report (dry run)."""
    out = Output(state, settings.run_id, acl, tags, gzipped, counter, part_size=settings.part_size,
                 dry_run=settings.dry_run)
    try:
        chunks = decoded_chunks(body_chunks(body), gzipped, stats)
        for piece in rewrite_chunks(chunks, settings.rules, stats, settings.max_line_bytes):
            out.write(piece)
        if stats.records_changed == 0:
            out.abort()
            if settings.dry_run:
                return WOULD_TAG, {}
            if state.version_id is None and state.size <= MAX_COPY:
                tag_by_copy(state, settings.run_id, acl, tags, counter)
                return TAGGED, {}
            counter.add()  # tags are idempotent: the normal client's retries are fine
            aws.s3().put_object_tagging(Bucket=state.bucket, Key=state.key, Tagging={"TagSet": list(tags)},
                                        **_version(state))
            return TAGGED, {}
        response = out.finish()
    except BaseException:
        out.abort()
        raise
    if settings.dry_run:
        return WOULD_ANONYMIZE, {"bytes_out": out.bytes_out}
    extra: dict[str, Any] = {"bytes_out": out.bytes_out, "new_version_id": response.get("VersionId")}
    if settings.purge_noncurrent and state.version_id and response.get("VersionId") != state.version_id:
        counter.add()
        try:
            aws.s3().delete_object(Bucket=state.bucket, Key=state.key, VersionId=state.version_id)
        except Exception as exc:  # noqa: BLE001
            return FAILED, {**extra, "error_code": f"PurgeFailed:{aws.error_code(exc)}",
                            "error_message": f"anonymized, but deleting the version read ({state.version_id}) "
                                             f"failed: {exc}"}
    return ANONYMIZED, extra


def process_partition(rows: Iterable[Any], settings: Settings, buckets: Mapping[str, BucketInfo]) -> Iterator[tuple]:
    aws.use_request_payer(settings.request_payer)
    unknown = BucketInfo(acls_enabled=True, owner_id=None)
    slots = threading.Semaphore(max(1, settings.large_objects_in_flight))
    stats_dir = os.environ.get("S3LAKE_TASK_STATS_DIR")
    task = TaskStats(stats_dir) if stats_dir else None
    candidates = (r.asDict() if hasattr(r, "asDict") else dict(r) for r in rows)
    for row in bounded_map(lambda c: process(c, settings, buckets.get(c["bucket"], unknown), slots),
                           candidates, settings.concurrency):
        if task is not None:
            task.saw(row)
        yield row
    if task is not None:
        task.write()


def run(spark: SparkSession, candidates: DataFrame, settings: Settings, results_path: str,
        partitions: int | None = None, bucket_counts: Mapping[str, int] | None = None,
        pace: PaceOptions | None = None, checkpoint: CheckpointOptions | None = None
        ) -> tuple[dict[str, Any], DataFrame]:
    """Process every candidate not done yet, committing rows as it goes; return (summary, this run's results).
    ``bucket_counts``: candidates per bucket when already known (``source_candidates``)."""
    return run_per_object(spark, candidates, results_path, settings.run_id, partitions, not settings.dry_run,
                          lambda rows, infos: process_partition(rows, settings, infos), bucket_counts,
                          concurrency=settings.concurrency, pace=pace, job=JOB, dry_run=settings.dry_run,
                          checkpoint=checkpoint)


# Objects read through the rules from the first line to the last: the ones a rule's counts speak for.
SCANNED = (ANONYMIZED, TAGGED, WOULD_ANONYMIZE, WOULD_TAG)


def rule_totals(results_frame: DataFrame, labels: Sequence[str]) -> dict[str, Any]:
    """Per rule over the run's scanned objects: the fields its path reached and the fields it changed,
    and the rules that reached no field at all (``unmatched``; none when no object was scanned)."""
    counts = T.MapType(T.StringType(), T.LongType())
    scanned = results_frame.where(F.col("status").isin(*SCANNED))
    totals = (
        scanned.select(F.explode(F.from_json("fields_matched", counts)).alias("rule", "n"), F.lit("matched").alias("k"))
        .unionByName(scanned.select(F.explode(F.from_json("fields_changed", counts)).alias("rule", "n"),
                                    F.lit("changed").alias("k")))
        .groupBy("rule", "k").agg(F.sum("n").alias("n")).collect()
    )
    found = {(r["rule"], r["k"]): int(r["n"]) for r in totals}
    objects = scanned.count()
    rules = {label: {"matched": found.get((label, "matched"), 0), "changed": found.get((label, "changed"), 0)}
             for label in labels}
    unmatched = [label for label in labels if objects and rules[label]["matched"] == 0]
    return {"scanned_objects": objects, "rules": rules, "unmatched": unmatched}


def format_rule_totals(totals: Mapping[str, Any]) -> str:
    if not totals["scanned_objects"]:
        return "  rules: no object was read through them in this run (nothing to count)"
    lines = [f"  rules (fields reached / changed in {totals['scanned_objects']} scanned objects):"]
    width = max((len(label) for label in totals["rules"]), default=0)
    for label, n in totals["rules"].items():
        note = "   <- matched no field" if label in totals["unmatched"] else ""
        lines.append(f"    {label:<{width}}  {n['matched']} / {n['changed']}{note}")
    return "\n".join(lines)
