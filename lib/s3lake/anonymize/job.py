"""Anonymization pass: rewrite JSON-lines objects in place under field rules (:mod:`s3lake.anonymize.rules`).

Per candidate object (from an inventory or a ``--source`` listing):

1. skip without a request when the listing already says so (zero bytes, younger than ``min_age``);
2. one streaming GET gives the live attributes (the same headers a HEAD gives) and the body; then skip:
   gone -> ``MISSING``; empty -> ``SKIPPED_EMPTY``; too young -> ``SKIPPED_TOO_YOUNG``; archived ->
   ``SKIPPED_ARCHIVED``; SSE-C -> ``SKIPPED_SSE_C``; carrying this run's marker -> ``ALREADY_ANONYMIZED``;
   carrying the processed tag (GetObjectTagging, only when TagCount > 0) -> ``SKIPPED_PROCESSED``;
3. the body is streamed line by line (gunzipped when Content-Encoding or the key says gzip) through the
   rules; untouched lines are copied byte for byte, changed lines are re-serialized in the line's own
   style (compact or spaced, ASCII-escaped or not). A line that is not JSON stops the object: ``FAILED``
   with its line number, nothing written;
4. no line changed -> only the processed tag (existing tags + processed tag) -> ``TAGGED``: on a
   versioned bucket PutObjectTagging pinned to the version read; on an unversioned bucket (no version
   to pin, and PutObjectTagging cannot be conditional) a server-side self-copy of the same bytes with
   every attribute, the merged tags (``TaggingDirective=REPLACE``) and the marker, conditional on the
   ETag read (``x-amz-copy-source-if-match`` + ``If-Match``), so an overwrite between the GET and the
   tagging is never tagged unscanned (-> ``CONFLICT``). Otherwise the new body goes back under the same
   key with every attribute (:func:`s3lake.objects.attributes.write_attributes`), the ACL grants, the
   merged tags and the marker ``x-amz-meta-s3lake-anonymized: <run id>`` on the write itself,
   conditional on the ETag read (``If-Match``) -> ``ANONYMIZED``, or ``CONFLICT`` when the object
   changed meanwhile;
5. output up to ``part_size`` is one PutObject; beyond it a multipart upload is started and parts of
   ``part_size`` are uploaded while reading goes on (at most 2 in flight), so memory per object stays
   around 3 x part size whatever the object size; any failure aborts the upload;
6. ``purge_noncurrent``: after a rewrite, the exact version read is deleted (versioned buckets).

Checksums: the object's algorithm (S3's default CRC64NVME when it has none) and type are kept; a
multipart write of a FULL_OBJECT checksum sends the whole output's checksum with the Complete
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html).
SSE-C: skipped from the inventory's EncryptionStatus without a request, or on S3's 400 to the GET.

Conditional writes: ``If-Match`` on PutObject, CopyObject and CompleteMultipartUpload, see
https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html (412 PreconditionFailed
when the ETag differs, 404 NoSuchKey when the key is gone, 409 ConditionalRequestConflict on a
concurrent write). Both writes go through :func:`s3lake.objects.at_most_once.write_once`: after an unknown outcome
(lost response, 5xx) the object is HEADed for this run's marker before any retry, and a 412 is also
checked against the marker (our own write, whose response was lost, makes the retry's ETag stale).
A body stream that breaks mid-read (connection reset, truncated response) happens before anything is
written (a started multipart upload is aborted), so the object is simply read again from the start,
up to ``READ_ATTEMPTS`` times.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
import time
import uuid
import zlib
from collections import Counter as Tally
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import quote

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from s3lake import aws
from s3lake.anonymize.rules import RuleSet
from s3lake.errors import ConfigError
from s3lake.objects import results
from s3lake.objects.acl_grants import Acl, acl_from_response
from s3lake.objects.at_most_once import backoff_sleep, create_multipart_once, is_retryable, once_client, write_once
from s3lake.objects.attributes import (
    DEFAULT_CHECKSUM,
    MAX_USER_METADATA,
    ObjectState,
    checksum_type_for,
    metadata_size,
    write_attributes,
)
from s3lake.objects.buckets import BucketInfo
from s3lake.objects.driver import Counter, bounded_map, run_per_object
from s3lake.objects.pacing import PaceOptions

log = logging.getLogger(__name__)

JOB = "anonymize"
MARKER = "s3lake-anonymized"
MIB = 1024 ** 2
DEFAULT_PART_SIZE = 8 * MIB
MIN_PART_SIZE = 5 * MIB  # S3's minimum for every part but the last
MAX_PARTS = 10000
READ_CHUNK = 1 * MIB
DEFAULT_MAX_LINE = 256 * MIB
MAX_TAGS = 10
PARTS_IN_FLIGHT = 2
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

CANDIDATE_SCHEMA = T.StructType([
    T.StructField("bucket", T.StringType(), False),
    T.StructField("key", T.StringType(), False),
    T.StructField("size", T.LongType()),
    T.StructField("last_modified", T.TimestampType()),
    T.StructField("encryption_status", T.StringType()),
])
MAX_COPY = 5 * 1024 ** 3  # CopyObject's limit


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


class BadLine(ValueError):
    """A line that is not JSON (or too long): the object is reported FAILED, nothing is written."""

    def __init__(self, number: int, reason: str) -> None:
        super().__init__(f"line {number}: {reason}")
        self.number = number


class TooManyTags(ValueError):
    pass


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


@dataclass
class Stats:
    lines: int = 0
    records_changed: int = 0
    fields: Tally = field(default_factory=Tally)
    bytes_in: int = 0

    def fields_json(self) -> str | None:
        return json.dumps(dict(sorted(self.fields.items()))) if self.fields else None


# ------------------------------------------------------------------------------------ pure helpers


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


def has_tag(tags: Sequence[Mapping[str, str]], tag: tuple[str, str]) -> bool:
    return any(t.get("Key") == tag[0] and t.get("Value") == tag[1] for t in tags)


def merge_tags(tags: Sequence[Mapping[str, str]], tag: tuple[str, str]) -> list[dict[str, str]]:
    """Existing tags plus ``tag`` (its value replaced if the key exists); S3 allows 10 per object."""
    merged = [{"Key": t["Key"], "Value": t["Value"]} for t in tags if t["Key"] != tag[0]]
    merged.append({"Key": tag[0], "Value": tag[1]})
    if len(merged) > MAX_TAGS:
        raise TooManyTags(f"object has {len(tags)} tags; adding {tag[0]}={tag[1]} would exceed S3's {MAX_TAGS}")
    return merged


def tagging_header(tags: Sequence[Mapping[str, str]]) -> str:
    """The ``x-amz-tagging`` value (URL-encoded query string) for PutObject/CreateMultipartUpload."""
    return "&".join(f"{quote(t['Key'], safe='')}={quote(t['Value'], safe='')}" for t in tags)


def is_gzip(key: str, content_encoding: str | None) -> bool:
    encodings = [e.strip().lower() for e in (content_encoding or "").split(",")]
    return "gzip" in encodings or key.lower().endswith(".gz")


def default_run_id(source_id: str, rules_digest: str) -> str:
    """Stable for one source (inventory delivery, or --source + UTC day) and one rules file."""
    digest = hashlib.sha1(f"{source_id}\n{rules_digest}".encode()).hexdigest()[:10]
    return f"anon-{digest}"


def part_size_for(size: int, part_size: int) -> int:
    """Parts big enough that even an output twice the input stays within 10,000 parts."""
    return max(part_size, math.ceil(2 * size / MAX_PARTS))


def line_batches(chunks: Iterable[bytes], max_line: int = DEFAULT_MAX_LINE) -> Iterator[tuple[list[bytes], bool]]:
    """The lines of a byte stream, a list per input chunk, each line without its ``\\n``; the flag says
    whether the batch's last line ended with one (only the stream's final line may not)."""
    pending: list[bytes] = []
    pending_len = 0
    number = 0
    for chunk in chunks:
        if chunk.find(b"\n") < 0:
            pending.append(chunk)
            pending_len += len(chunk)
            if pending_len > max_line:
                raise BadLine(number + 1, f"longer than {max_line} bytes")
            continue
        if pending:
            chunk = b"".join(pending) + chunk
            pending, pending_len = [], 0
        lines = chunk.split(b"\n")
        tail = lines.pop()
        for i, line in enumerate(lines, number + 1):
            if len(line) >= max_line:  # + its newline
                raise BadLine(i, f"longer than {max_line} bytes")
        number += len(lines)
        yield lines, True
        if tail:
            pending, pending_len = [tail], len(tail)
            if pending_len > max_line:
                raise BadLine(number + 1, f"longer than {max_line} bytes")
    if pending:
        yield [b"".join(pending)], False


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Built once: json.loads/json.dumps with keyword arguments build a new decoder/encoder per call, and
# even a prebuilt JSONEncoder.encode builds its C encoder on every call; together a third of the
# per-line cost on large objects. Decoded JSON has no cycles, so no circular-reference check.
_DECODER = json.JSONDecoder(parse_constant=_no_constants)
_SCAN = _DECODER.scan_once


def _make_encoder(spaced: bool, ascii_only: bool) -> Callable[[Any], str]:
    item_sep, key_sep = (", ", ": ") if spaced else (",", ":")
    fallback = json.JSONEncoder(ensure_ascii=ascii_only, separators=(item_sep, key_sep), check_circular=False)
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # no C accelerator (e.g. PyPy)
        return fallback.encode
    string = json.encoder.encode_basestring_ascii if ascii_only else json.encoder.encode_basestring
    encoder = c_make_encoder(None, fallback.default, string, None, key_sep, item_sep, False, False, True)
    return lambda record: "".join(encoder(record, 0))


_ENCODERS = {(spaced, ascii_only): _make_encoder(spaced, ascii_only)
             for spaced in (True, False) for ascii_only in (True, False)}


def _decode(text: str) -> Any:
    """``json.loads`` for one line: the C scanner straight away, the full decoder for the rare rest
    (leading whitespace, trailing data) so errors read the same."""
    try:
        record, end = _SCAN(text, 0)
    except StopIteration:
        return _DECODER.decode(text)
    if end != len(text) and not text[end:].isspace():
        return _DECODER.decode(text)
    return record


def _rewrite_text(text: bytes, rules: RuleSet) -> tuple[bytes | None, list[str]]:
    """One line without its ``\\n`` (a ``\\r`` before it is kept): (new text or None, changed paths)."""
    cr = text.endswith(b"\r")
    if cr:
        text = text[:-1]
    if not text or text.isspace():
        return None, []
    record = _decode(text.decode("utf-8"))
    paths = rules.apply(record)
    if not paths:
        return None, []
    spaced = b'": ' in text or b'", "' in text
    out = _ENCODERS[(spaced, text.isascii())](record).encode("utf-8")
    return (out + b"\r" if cr else out), paths


def rewrite_line(line: bytes, rules: RuleSet) -> tuple[bytes | None, list[str]]:
    """(new line or None when untouched, changed paths). Raises ValueError for a non-JSON line."""
    newline = line.endswith(b"\n")
    new, paths = _rewrite_text(line[:-1] if newline else line, rules)
    return (new + b"\n" if new is not None and newline else new), paths


def rewrite_chunks(chunks: Iterable[bytes], rules: RuleSet, stats: Stats,
                   max_line: int = DEFAULT_MAX_LINE) -> Iterator[bytes]:
    """One output piece per input chunk: its lines through the rules, untouched ones byte for byte.
    Counts lines, changed records and fields in ``stats``; a non-JSON line raises :class:`BadLine`."""
    fields = stats.fields
    for lines, terminated in line_batches(chunks, max_line):
        number = stats.lines
        for i, line in enumerate(lines):
            try:
                new, paths = _rewrite_text(line, rules)
            except ValueError as exc:
                raise BadLine(number + i + 1, f"not valid JSON: {exc}") from None
            if new is not None:
                lines[i] = new
                stats.records_changed += 1
                fields.update(paths)
        stats.lines = number + len(lines)
        piece = b"\n".join(lines)
        yield piece + b"\n" if terminated else piece


def decoded_chunks(raw: Iterable[bytes], gzipped: bool, stats: Stats) -> Iterator[bytes]:
    """The body's bytes, gunzipped (every gzip member) when ``gzipped``; counts raw bytes in ``stats``."""
    if not gzipped:
        for chunk in raw:
            stats.bytes_in += len(chunk)
            yield chunk
        return
    inflater = zlib.decompressobj(wbits=31)
    first = True
    for chunk in raw:
        stats.bytes_in += len(chunk)
        if first and chunk:
            first = False
            if chunk[:2] != b"\x1f\x8b":
                raise BadLine(1, "object says gzip but its body is not gzip data")
        while chunk:
            out = inflater.decompress(chunk, READ_CHUNK * 4)
            if out:
                yield out
            if inflater.eof:  # next gzip member, if any
                chunk = inflater.unused_data
                inflater = zlib.decompressobj(wbits=31)
            else:
                chunk = inflater.unconsumed_tail
    if not inflater.eof and not first:
        tail = inflater.flush()
        if tail:
            yield tail


# ------------------------------------------------------------------------------------ writing


def _if_match(state: ObjectState) -> str:
    return f'"{state.etag}"'


def write_request(state: ObjectState, run_id: str, acl: Acl | None, tags: Sequence[Mapping[str, str]],
                  checksum_algorithm: str | None = None) -> dict[str, Any]:
    """Attributes for the new version: every attribute of ``state``, the marker, grants and tags."""
    params = write_attributes(state, metadata={**state.metadata, MARKER: run_id},
                              checksum_algorithm=checksum_algorithm)
    params.update(Bucket=state.bucket, Key=state.key, Tagging=tagging_header(tags))
    if acl is not None:
        params.update(acl.grant_params())
    return params


def put_request(state: ObjectState, run_id: str, acl: Acl | None, tags: Sequence[Mapping[str, str]],
                body: bytes) -> dict[str, Any]:
    """The conditional PutObject for a rewritten body."""
    return {**write_request(state, run_id, acl, tags), "Body": body, "IfMatch": _if_match(state)}


def complete_request(state: ObjectState, upload_id: str, parts: Sequence[Mapping[str, Any]],
                     full_checksum: tuple[str, str] | None = None) -> dict[str, Any]:
    """The conditional CompleteMultipartUpload; ``full_checksum`` (algorithm, base64 value) of the whole
    output for a FULL_OBJECT checksum, so S3 checks it."""
    params = {"Bucket": state.bucket, "Key": state.key, "UploadId": upload_id,
              "MultipartUpload": {"Parts": list(parts)}, "IfMatch": _if_match(state)}
    if full_checksum is not None:
        params.update({"ChecksumType": "FULL_OBJECT", f"Checksum{full_checksum[0]}": full_checksum[1]})
    return params


def tag_copy_request(state: ObjectState, run_id: str, acl: Acl | None,
                     tags: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """The conditional self-copy that tags an unchanged object of an unversioned bucket: the same bytes,
    every attribute, the grants, the merged tags and the marker, only if the object is still the one read."""
    params = write_attributes(state, metadata={**state.metadata, MARKER: run_id})
    params.update(Bucket=state.bucket, Key=state.key, CopySource={"Bucket": state.bucket, "Key": state.key},
                  CopySourceIfMatch=_if_match(state), IfMatch=_if_match(state), MetadataDirective="REPLACE",
                  TaggingDirective="REPLACE", Tagging=tagging_header(tags))
    if acl is not None:
        params.update(acl.grant_params())
    return params


class FullObjectChecksum:
    """A running CRC32 / CRC32C / CRC64NVME over the output bytes (the FULL_OBJECT-capable algorithms)."""

    WIDTH = {"CRC32": 4, "CRC32C": 4, "CRC64NVME": 8}

    def __init__(self, algorithm: str) -> None:
        from awscrt import checksums

        self.algorithm = algorithm
        self._fn = {"CRC32": checksums.crc32, "CRC32C": checksums.crc32c, "CRC64NVME": checksums.crc64nvme}[algorithm]
        self._value = 0

    @classmethod
    def supports(cls, algorithm: str) -> bool:
        return algorithm in cls.WIDTH

    def update(self, data: bytes) -> None:
        self._value = self._fn(data, self._value)

    def value(self) -> str:
        import base64

        return base64.b64encode(self._value.to_bytes(self.WIDTH[self.algorithm], "big")).decode()


class Conflict(Exception):
    """The object changed between our read and our write (not our own write)."""


def _applied(state: ObjectState, run_id: str, counter: Counter) -> dict | None:
    """Did a write of this run land? (The current version carries this run's marker.)"""
    counter.add()
    try:
        head = aws.s3().head_object(Bucket=state.bucket, Key=state.key)
    except Exception as exc:  # noqa: BLE001
        if aws.error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    if (head.get("Metadata") or {}).get(MARKER) == run_id and head.get("ETag", "").strip('"') != state.etag:
        return {"VersionId": head.get("VersionId"), "recovered": True}
    return None


def conditional_write(write: Callable[[], dict], state: ObjectState, run_id: str, counter: Counter) -> dict:
    """``write`` at most once in effect; a 412/404 is ours (marker found) or a :class:`Conflict`."""
    try:
        response, _ = write_once(write, lambda: _applied(state, run_id, counter))
        return response
    except Exception as exc:  # noqa: BLE001
        code = aws.error_code(exc)
        if code not in ("PreconditionFailed", "412", "NoSuchKey", "404", "ConditionalRequestConflict", "409"):
            raise
        ours = _applied(state, run_id, counter)
        if ours is not None:
            return ours
        raise Conflict(f"{code}: the object changed after it was read; left for the next run") from None


class Output:
    """Collects output bytes; one PutObject when small, else a multipart upload started on the fly."""

    def __init__(self, state: ObjectState, settings: Settings, acl: Acl | None, tags: Sequence[Mapping[str, str]],
                 gzipped: bool, counter: Counter) -> None:
        self.state, self.settings, self.acl, self.tags, self.counter = state, settings, acl, tags, counter
        self.part_size = part_size_for(state.size, settings.part_size)
        self.compressor = zlib.compressobj(6, zlib.DEFLATED, 31) if gzipped else None
        self.buffer = bytearray()
        self.bytes_out = 0
        self.upload_id: str | None = None
        self.algorithm = state.checksum_algorithm or DEFAULT_CHECKSUM
        self.checksum_type = checksum_type_for(self.algorithm, state.checksum_type)
        full = self.checksum_type == "FULL_OBJECT" and FullObjectChecksum.supports(self.algorithm)
        self.full = FullObjectChecksum(self.algorithm) if full else None
        self.parts: list[Future] = []
        self.pool: ThreadPoolExecutor | None = None

    def write(self, data: bytes) -> None:
        if self.compressor is not None:
            data = self.compressor.compress(data)
        self.buffer += data
        while len(self.buffer) >= self.part_size:
            self._ship(self.part_size)

    def _ship(self, size: int | None = None) -> None:
        """Upload the first ``size`` bytes of the buffer (all of it by default) as the next part."""
        if size is None or size >= len(self.buffer):
            data = bytes(self.buffer)
            self.buffer = bytearray()
        else:
            data = bytes(self.buffer[:size])
            del self.buffer[:size]
        self.bytes_out += len(data)
        if self.settings.dry_run:
            return
        if self.full is not None:
            self.full.update(data)
        s3 = aws.s3()
        if self.upload_id is None:
            params = write_request(self.state, self.settings.run_id, self.acl, self.tags, self.algorithm)
            params.update(ChecksumAlgorithm=self.algorithm, ChecksumType=self.checksum_type)
            self.upload_id = create_multipart_once(params, self.counter)
            self.pool = ThreadPoolExecutor(max_workers=PARTS_IN_FLIGHT)
        while sum(1 for f in self.parts if not f.done()) >= PARTS_IN_FLIGHT:
            wait([f for f in self.parts if not f.done()], return_when=FIRST_COMPLETED)
        number = len(self.parts) + 1
        if number > MAX_PARTS:
            raise ValueError(f"output needs more than {MAX_PARTS} parts of {self.part_size} bytes")
        upload_id, algorithm = self.upload_id, self.algorithm

        def upload() -> dict:
            self.counter.add()
            out = s3.upload_part(Bucket=self.state.bucket, Key=self.state.key, UploadId=upload_id,
                                 PartNumber=number, Body=data, ChecksumAlgorithm=algorithm)
            entry = {"PartNumber": number, "ETag": out["ETag"]}
            entry.update({k: v for k, v in out.items() if k.startswith("Checksum") and k != "ChecksumType"})
            return entry

        assert self.pool is not None
        self.parts.append(self.pool.submit(upload))

    def _flush(self) -> None:
        if self.compressor is not None:
            self.buffer += self.compressor.flush()
            self.compressor = None

    def finish(self) -> dict:
        """Write the object (conditional on the ETag read); returns the write's response."""
        self._flush()
        state, run_id = self.state, self.settings.run_id
        if self.upload_id is None:
            body = bytes(self.buffer)
            self.buffer = bytearray()
            self.bytes_out += len(body)
            if self.settings.dry_run:
                return {}
            params = put_request(state, run_id, self.acl, self.tags, body)
            params["ChecksumAlgorithm"] = self.algorithm

            def put() -> dict:
                self.counter.add()
                return once_client().put_object(**params)

            return conditional_write(put, state, run_id, self.counter)
        self._ship()
        parts = [f.result() for f in self.parts]
        self._close_pool()
        # Cheap early check (also for stores that ignore If-Match on Complete); the Complete itself is
        # conditional too, so a change after this HEAD is still caught by S3.
        self.counter.add()
        try:
            aws.s3().head_object(Bucket=state.bucket, Key=state.key, IfMatch=_if_match(state))
        except Exception as exc:  # noqa: BLE001
            if aws.error_code(exc) in ("PreconditionFailed", "412", "404", "NoSuchKey", "NotFound"):
                raise Conflict(f"{aws.error_code(exc)}: the object changed after it was read; "
                               "left for the next run") from None
            raise
        full = (self.full.algorithm, self.full.value()) if self.full is not None else None
        params = complete_request(state, self.upload_id, parts, full)

        def complete() -> dict:
            self.counter.add()
            return once_client().complete_multipart_upload(**params)

        response = conditional_write(complete, state, run_id, self.counter)
        self.upload_id = None
        return response

    def _close_pool(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None

    def abort(self) -> None:
        """Drop everything; abort the multipart upload if one was started."""
        for f in self.parts:
            f.cancel()
        self._close_pool()
        self.buffer = bytearray()
        upload_id, self.upload_id = self.upload_id, None
        if upload_id is None:
            return
        for attempt in range(5):
            try:
                self.counter.add()
                aws.s3().abort_multipart_upload(Bucket=self.state.bucket, Key=self.state.key, UploadId=upload_id)
                return
            except Exception as exc:  # noqa: BLE001
                if aws.error_code(exc) in ("NoSuchUpload", "404") or not is_retryable(exc):
                    return
                time.sleep(0.2 * (attempt + 1))


# ------------------------------------------------------------------------------------ per object (I/O)


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
        return done(status, records_changed=stats.records_changed, fields_changed=stats.fields_json(), **extra)
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
    out = Output(state, settings, acl, tags, gzipped, counter)
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


def tag_by_copy(state: ObjectState, run_id: str, acl: Acl | None, tags: Sequence[Mapping[str, str]],
                counter: Counter) -> dict:
    """Tag an unchanged object of an unversioned bucket through :func:`tag_copy_request` (at most once)."""
    params = tag_copy_request(state, run_id, acl, tags)

    def copy() -> dict:
        counter.add()
        return once_client().copy_object(**params)

    return conditional_write(copy, state, run_id, counter)


def memory_kb(field_name: str) -> int | None:
    """``VmRSS``/``VmHWM`` of this process from /proc/self/status (None where there is no /proc)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_memory() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so a task's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


class TaskStats:
    """Per-task memory diagnostics, written as JSON when ``S3LAKE_TASK_STATS_DIR`` is set (benchmarks)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        reset_peak_memory()
        self.rss_start_kb = memory_kb("VmRSS")
        self.objects = 0
        self.max_size = 0

    def saw(self, row: tuple) -> None:
        self.objects += 1
        self.max_size = max(self.max_size, int(row[results.FIELDS.index("size")] or 0))

    def write(self) -> None:
        doc = {"pid": os.getpid(), "rss_start_kb": self.rss_start_kb, "hwm_kb": memory_kb("VmHWM"),
               "objects": self.objects, "max_size": self.max_size}
        with open(os.path.join(self.directory, f"task-{uuid.uuid4().hex}.json"), "w") as fh:
            json.dump(doc, fh)


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


# ------------------------------------------------------------------------------------ driver side


def inventory_candidates(inventory: DataFrame) -> DataFrame:
    """Live objects (latest version, not delete markers) of an inventory, as candidates."""
    live = F.coalesce(F.col("is_latest"), F.lit(True)) & ~F.coalesce(F.col("is_delete_marker"), F.lit(False))
    return inventory.where(live).select("bucket", "key", "size", F.col("last_modified_date").alias("last_modified"),
                                        "encryption_status")


def list_source(url: str) -> list[tuple]:
    """``s3://bucket/prefix/`` -> candidate tuples, via ListObjectsV2 on the driver."""
    try:
        bucket, prefix = aws.split_s3_url(url)
    except ValueError as exc:
        raise ConfigError(f"--source: {exc}") from None
    out = []
    try:
        for page in aws.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out.append((bucket, obj["Key"], int(obj["Size"]), obj["LastModified"], None))
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"cannot list {url}: {aws.error_code(exc)}") from None
    return out


def source_candidates(spark: SparkSession, url: str) -> tuple[DataFrame, dict[str, int]]:
    """The objects under ``url`` as candidates, and how many there are per bucket (for :func:`run`)."""
    rows = list_source(url)
    return spark.createDataFrame(rows, CANDIDATE_SCHEMA), dict(Tally(r[0] for r in rows))


def run(spark: SparkSession, candidates: DataFrame, settings: Settings, results_path: str,
        partitions: int | None = None, bucket_counts: Mapping[str, int] | None = None,
        pace: PaceOptions | None = None) -> tuple[dict[str, Any], DataFrame]:
    """Process every candidate, write the results once, return (summary, this run's results).
    ``bucket_counts``: candidates per bucket when already known (``source_candidates``)."""
    return run_per_object(spark, candidates, results_path, settings.run_id, partitions, not settings.dry_run,
                          lambda rows, infos: process_partition(rows, settings, infos), bucket_counts,
                          concurrency=settings.concurrency, pace=pace)
