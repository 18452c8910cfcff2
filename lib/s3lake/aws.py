"""The one place that builds boto3 clients.

* ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_<SERVICE>``) points every client at another endpoint
  (a local moto server in tests and ``make demo``); unset, boto3 talks to AWS.
* Region: ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else ``us-east-1``.
* Retries: ``S3LAKE_RETRY_MODE`` (``standard`` by default, or ``adaptive``) and ``S3LAKE_MAX_ATTEMPTS``
  (default 10). ``standard`` because adaptive's client-side rate limiter costs CPU on every request
  (measured: ~25% fewer objects/s in ``make bench``) and only pays off under sustained throttling.
  botocore's retry handler backs off on 500/503 SlowDown/throttling and connection errors, so reads
  need no retry loop of their own; non-idempotent writes use :func:`s3lake.at_most_once.write_once`.
* Inside an object job's task (a :func:`s3lake.pacing.task` is current) clients are *paced* instead:
  botocore's retries (and so its retry quota) are off and :func:`s3lake.pacing.install` retries
  throttling and 5xx until the object's deadline, takes the task's rate tokens and feeds its window.
* ``S3LAKE_MAX_POOL`` (default 64): HTTP connections per client, at least the per-task concurrency.

Clients are not picklable; build them inside Spark tasks through :func:`client`, which caches one
client per (process, service, settings), so a reused Python worker keeps its connection pool.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import boto3
from botocore.config import Config

_lock = threading.Lock()
_cache: dict[tuple, Any] = {}

DEFAULT_MAX_ATTEMPTS = 10
DEFAULT_MAX_POOL = 64


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def endpoint_url(service: str) -> str | None:
    specific = os.environ.get(f"AWS_ENDPOINT_URL_{service.upper().replace('-', '_')}")
    return specific or os.environ.get("AWS_ENDPOINT_URL") or None


def client_config(max_attempts: int | None = None, max_pool: int | None = None) -> Config:
    attempts = max_attempts or int(os.environ.get("S3LAKE_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS))
    pool = max_pool or int(os.environ.get("S3LAKE_MAX_POOL", DEFAULT_MAX_POOL))
    return Config(
        region_name=region(),
        retries={"mode": os.environ.get("S3LAKE_RETRY_MODE", "standard"), "total_max_attempts": attempts},
        max_pool_connections=pool,
        connect_timeout=10,
        read_timeout=120,
        tcp_keepalive=True,
    )


def client(service: str, *, max_attempts: int | None = None, max_pool: int | None = None) -> Any:
    """A cached boto3 client for ``service`` in this process (safe to share across threads); paced while
    a :func:`s3lake.pacing.task` is current (``max_attempts=1`` then means: a client for non-idempotent
    writes, whose unknown outcomes its caller checks)."""
    from s3lake import pacing

    paced = pacing.current() is not None
    key = (
        paced,
        os.getpid(),
        service,
        max_attempts,
        max_pool,
        endpoint_url(service),
        region(),
        os.environ.get("S3LAKE_RETRY_MODE"),
        os.environ.get("S3LAKE_MAX_ATTEMPTS"),
    )
    found = _cache.get(key)
    if found is not None:
        return found
    with _lock:
        found = _cache.get(key)
        if found is None:
            # A fresh Session per client: boto3's default session is not thread-safe to create from.
            session = boto3.session.Session()
            found = session.client(
                service,
                endpoint_url=endpoint_url(service),
                config=client_config(1 if paced else max_attempts, max_pool),
            )
            if paced:
                pacing.install(found, once=max_attempts == 1)
            _cache[key] = found
    return found


def s3(**kwargs: Any) -> Any:
    return client("s3", **kwargs)


def glue(**kwargs: Any) -> Any:
    return client("glue", **kwargs)


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key). Also accepts ``s3a://`` and ``s3n://``."""
    for scheme in ("s3://", "s3a://", "s3n://"):
        if url.startswith(scheme):
            rest = url[len(scheme):]
            bucket, _, key = rest.partition("/")
            if bucket:
                return bucket, key
    raise ValueError(f"not an s3:// URL: {url!r}")


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError, or the exception's class name."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status:
            return str(status)
    return type(exc).__name__
