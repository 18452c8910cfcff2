"""Where a run keeps its bookkeeping beside its results: small objects written whole, conditionally.

A store is a folder of the results path: ``s3://bucket/prefix`` (S3, also ``s3a://``) or a local folder
(``file:`` or a plain path: local runs and tests). Both give the same four guarantees the checkpoints and
claims rely on:

* ``put`` writes an object whole or not at all (S3 PutObject; locally a rename);
* ``create`` writes it only if no object of that name exists (S3: ``If-None-Match: *``);
* ``replace`` writes it only if it is still the version read (S3: ``If-Match`` on the ETag);
* a refused condition is an answer (``None``), not an error.

S3's conditional writes: https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html
(412 Precondition Failed when the condition fails; 409 ConditionalRequestConflict when a concurrent
conditional write to the same key won).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import uuid
from typing import Any, Iterator

from s3lake import aws
from s3lake.errors import ConfigError

REFUSED = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409"})


class Store:
    """Named small objects under one folder (the interface; see :class:`S3Store` and :class:`LocalStore`)."""

    url: str

    def put(self, name: str, data: bytes) -> None:
        raise NotImplementedError

    def create(self, name: str, data: bytes) -> str | None:
        """Write ``name`` only if absent: its new tag, or None when it exists."""
        raise NotImplementedError

    def replace(self, name: str, data: bytes, tag: str) -> str | None:
        """Write ``name`` only if its current tag is ``tag``: the new tag, or None when it changed."""
        raise NotImplementedError

    def get(self, name: str) -> tuple[bytes, str] | None:
        """(data, tag), or None when absent."""
        raise NotImplementedError

    def names(self, prefix: str) -> Iterator[str]:
        """The names that start with ``prefix`` (sorted)."""
        raise NotImplementedError


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}"

    @staticmethod
    def _s3() -> Any:
        # The run's own bookkeeping: not paced (it must not wait behind a throttled prefix), botocore retries.
        return aws.client("s3", unpaced=True)

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _write(self, name: str, data: bytes, **condition: str) -> str | None:
        try:
            return self._s3().put_object(Bucket=self.bucket, Key=self._key(name), Body=data, **condition)["ETag"]
        except Exception as exc:  # noqa: BLE001
            if condition and aws.error_code(exc) in REFUSED:
                return None
            raise

    def put(self, name: str, data: bytes) -> None:
        self._write(name, data)

    def create(self, name: str, data: bytes) -> str | None:
        return self._write(name, data, IfNoneMatch="*")

    def replace(self, name: str, data: bytes, tag: str) -> str | None:
        return self._write(name, data, IfMatch=tag)

    def get(self, name: str) -> tuple[bytes, str] | None:
        try:
            found = self._s3().get_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as exc:  # noqa: BLE001
            if aws.error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        return found["Body"].read(), found["ETag"]

    def names(self, prefix: str) -> Iterator[str]:
        start = len(self._key(""))
        pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"][start:]


class LocalStore(Store):
    """A local folder; the conditions hold between processes of one machine (an flock per folder)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.url = folder

    def _path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def _lock(self) -> Any:
        os.makedirs(self.folder, exist_ok=True)
        fh = open(os.path.join(self.folder, ".lock"), "a")
        fcntl.flock(fh, fcntl.LOCK_EX)
        return fh

    @staticmethod
    def _tag(data: bytes) -> str:
        return f'"{hashlib.md5(data).hexdigest()}"'  # noqa: S324 - a content tag, as S3's ETag

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}")
        with open(temp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)

    def create(self, name: str, data: bytes) -> str | None:
        with self._lock():
            if os.path.exists(self._path(name)):
                return None
            self.put(name, data)
            return self._tag(data)

    def replace(self, name: str, data: bytes, tag: str) -> str | None:
        with self._lock():
            found = self.get(name)
            if found is None or found[1] != tag:
                return None
            self.put(name, data)
            return self._tag(data)

    def get(self, name: str) -> tuple[bytes, str] | None:
        try:
            with open(self._path(name), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        return data, self._tag(data)

    def names(self, prefix: str) -> Iterator[str]:
        folder, _, start = prefix.rpartition("/")
        try:
            entries = sorted(os.listdir(self._path(folder) if folder else self.folder))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.startswith(start) and not entry.startswith("."):
                yield f"{folder}/{entry}" if folder else entry


def store_for(path: str) -> Store:
    """The store of a Hadoop path: ``s3://``/``s3a://``/``s3n://`` on S3, ``file:`` or a plain path locally."""
    if path.startswith(("s3://", "s3a://", "s3n://")):
        bucket, prefix = aws.split_s3_url(path)
        return S3Store(bucket, prefix)
    if path.startswith("file://"):
        return LocalStore(path[len("file://"):])
    if path.startswith("file:"):
        return LocalStore(path[len("file:"):])
    if "://" in path:
        raise ConfigError(f"--results: the run's checkpoints need S3 or a local folder, not {path.split(':')[0]}:")
    return LocalStore(os.path.abspath(path))
