"""Writing an anonymized object back under its own key, at most once and only over the version read.

* The requests (pure builders): every attribute of the object read (:mod:`s3lake.objects.attributes`),
  the ACL grants, the merged tags and the marker ``x-amz-meta-s3lake-anonymized: <run id>``, conditional on
  the ETag read (``If-Match`` on PutObject, CopyObject and CompleteMultipartUpload:
  https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html; 412 PreconditionFailed
  when the ETag differs, 404 NoSuchKey when the key is gone, 409 ConditionalRequestConflict on a
  concurrent write).
* :class:`Output`: output up to the part size is one PutObject; beyond it a multipart upload is started
  and parts are uploaded while reading goes on (at most 2 in flight), so memory per object stays around
  3 x part size whatever the object size; any failure aborts the upload. The object's checksum algorithm
  (S3's default CRC64NVME when it has none) and type are kept; a multipart write of a FULL_OBJECT
  checksum sends the whole output's checksum with the Complete
  (https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html).
* :func:`conditional_write`: through :func:`s3lake.objects.at_most_once.write_once`, after an unknown
  outcome (lost response, 5xx) the object is HEADed for this run's marker before any retry, and a 412 is
  also checked against the marker (our own write, whose response was lost, makes the retry's ETag stale).
"""

from __future__ import annotations

import math
import time
import zlib
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import quote

from s3lake import aws
from s3lake.objects.acl_grants import Acl
from s3lake.objects.at_most_once import create_multipart_once, is_retryable, once_client, write_once
from s3lake.objects.attributes import DEFAULT_CHECKSUM, ObjectState, checksum_type_for, write_attributes
from s3lake.objects.driver import Counter

MARKER = "s3lake-anonymized"
MIB = 1024 ** 2
DEFAULT_PART_SIZE = 8 * MIB
MIN_PART_SIZE = 5 * MIB  # S3's minimum for every part but the last
MAX_PARTS = 10000
MAX_TAGS = 10
PARTS_IN_FLIGHT = 2
MAX_COPY = 5 * 1024 ** 3  # CopyObject's limit


class TooManyTags(ValueError):
    pass


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


def part_size_for(size: int, part_size: int) -> int:
    """Parts big enough that even an output twice the input stays within 10,000 parts."""
    return max(part_size, math.ceil(2 * size / MAX_PARTS))


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
    """Collects output bytes; one PutObject when small, else a multipart upload started on the fly. Writes
    ``state``'s key with the marker ``run_id``; ``dry_run``: counts the bytes, sends nothing."""

    def __init__(self, state: ObjectState, run_id: str, acl: Acl | None, tags: Sequence[Mapping[str, str]],
                 gzipped: bool, counter: Counter, *, part_size: int = DEFAULT_PART_SIZE, dry_run: bool = False) -> None:
        self.state, self.run_id, self.acl, self.tags, self.counter = state, run_id, acl, tags, counter
        self.dry_run = dry_run
        self.part_size = part_size_for(state.size, part_size)
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
        if self.dry_run:
            return
        if self.full is not None:
            self.full.update(data)
        s3 = aws.s3()
        if self.upload_id is None:
            params = write_request(self.state, self.run_id, self.acl, self.tags, self.algorithm)
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
        state, run_id = self.state, self.run_id
        if self.upload_id is None:
            body = bytes(self.buffer)
            self.buffer = bytearray()
            self.bytes_out += len(body)
            if self.dry_run:
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


def tag_by_copy(state: ObjectState, run_id: str, acl: Acl | None, tags: Sequence[Mapping[str, str]],
                counter: Counter) -> dict:
    """Tag an unchanged object of an unversioned bucket through :func:`tag_copy_request` (at most once)."""
    params = tag_copy_request(state, run_id, acl, tags)

    def copy() -> dict:
        counter.add()
        return once_client().copy_object(**params)

    return conditional_write(copy, state, run_id, counter)
