"""The one place that builds boto3 clients.

* ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_<SERVICE>``) points every client at another endpoint
  (a local moto server in tests and ``make demo``); unset, boto3 talks to AWS.
* Region: ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else ``us-east-1``.
* Retries: ``S3LAKE_RETRY_MODE`` (``standard`` by default, or ``adaptive``) and ``S3LAKE_MAX_ATTEMPTS``
  (default 10). ``standard`` because adaptive's client-side rate limiter costs CPU on every request
  (measured: ~25% fewer objects/s in ``make bench``) and only pays off under sustained throttling.
  botocore's retry handler backs off on 500/503 SlowDown/throttling and connection errors, so reads
  need no retry loop of their own; non-idempotent writes use :func:`s3lake.objects.at_most_once.write_once`.
* Inside an object job's task (a :func:`s3lake.objects.pacing.task` is current) clients are *paced* instead:
  botocore's retries (and so its retry quota) are off and :func:`s3lake.objects.pacing.install` retries
  throttling and 5xx until the object's deadline, takes the task's rate tokens and feeds its window.
* ``S3LAKE_MAX_POOL`` (default 64): HTTP connections per client, at least the per-task concurrency.
* Requester Pays: after :func:`use_request_payer` ("requester") every S3 request of this process carries
  ``x-amz-request-payer: requester``
  (https://docs.aws.amazon.com/AmazonS3/latest/userguide/ObjectsinRequesterPaysBuckets.html); the object
  jobs call it on the driver and at the start of every task.
* The AWS CRT (``botocore[crt]``) must be installed: botocore computes CRC64NVME and CRC32C, the checksums
  S3 stores on objects, only with it (:func:`require_crt`).

Clients are not picklable; build them inside Spark tasks through :func:`client`, which caches one
client per (process, service, settings), so a reused Python worker keeps its connection pool.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any, Callable
from urllib.parse import urlparse, urlsplit, urlunsplit

import boto3
from botocore.config import Config

from s3lake.errors import ConfigError

_lock = threading.Lock()
_cache: dict[tuple, Any] = {}
_request_payer: str | None = None
# The object engine's pacing (s3lake.objects.pacing sets it when imported): (is a paced task current?,
# pace a new client). Plugged in from above so that this module, below every job, imports no job code.
_pacing: tuple[Callable[[], bool], Callable[..., Any]] | None = None

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


def client(service: str, *, max_attempts: int | None = None, max_pool: int | None = None,
           unpaced: bool = False) -> Any:
    """A cached boto3 client for ``service`` in this process (safe to share across threads); paced while
    a :func:`s3lake.objects.pacing.task` is current (``max_attempts=1`` then means: a client for non-idempotent
    writes, whose unknown outcomes its caller checks), unless ``unpaced`` (the run's own bookkeeping)."""
    pacing = _pacing
    paced = not unpaced and pacing is not None and pacing[0]()
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
        _request_payer if service == "s3" else None,
        # a process that switches credentials (tests acting as another principal) gets new clients
        os.environ.get("AWS_ACCESS_KEY_ID"),
        os.environ.get("AWS_PROFILE"),
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
                pacing[1](found, once=max_attempts == 1)  # type: ignore[index]
            if service == "s3" and _request_payer:
                found.meta.events.register("before-sign.s3", _payer_header(_request_payer))
            if service == "s3control" and _is_loopback(endpoint_url(service)):
                found.meta.events.register("before-sign.s3-control", _without_account_host)
            _cache[key] = found
    return found


def set_pacing(is_paced: Callable[[], bool], install: Callable[..., Any]) -> None:
    """Clients built while ``is_paced()`` get ``install(client, once=...)`` and botocore's retries off."""
    global _pacing
    _pacing = (is_paced, install)


def use_request_payer(payer: str | None) -> None:
    """``"requester"``: every S3 client built from now on in this process sends ``x-amz-request-payer``
    on every request (bucket-level ones too); ``None``: not."""
    global _request_payer
    if payer not in (None, "requester"):
        raise ConfigError(f"--request-payer must be 'requester', got {payer!r}")
    _request_payer = payer


def _payer_header(payer: str) -> Any:
    def add(request: Any, **_: Any) -> None:
        request.headers["x-amz-request-payer"] = payer

    return add


def _is_loopback(url: str | None) -> bool:
    host = urlparse(url).hostname if url else None
    return host in ("localhost", "::1") or bool(host and re.fullmatch(r"127(\.\d{1,3}){3}", host))


def _without_account_host(request: Any, **_: Any) -> None:
    """S3 Control puts the account id in front of the host (``<account>.s3-control.<region>...``); on a
    loopback endpoint that name cannot resolve, so the request goes to the endpoint itself (the account
    still rides in ``x-amz-account-id``). Only for loopback endpoints: AWS keeps its own host."""
    parts = urlsplit(request.url)
    account = request.headers.get("x-amz-account-id")
    if isinstance(account, bytes):
        account = account.decode()
    if account and parts.netloc.startswith(f"{account}."):
        request.url = urlunsplit(parts._replace(netloc=parts.netloc[len(account) + 1:]))


def require_crt() -> None:
    """Refuse to run without the AWS CRT: without it botocore cannot compute CRC64NVME (S3's default
    checksum since December 2024) or CRC32C, and every rewrite of such an object would fail."""
    from botocore.compat import HAS_CRT

    if not HAS_CRT:
        raise ConfigError("the AWS CRT is missing: install botocore[crt] (awscrt), needed for S3's CRC64NVME "
                          "and CRC32C checksums")


def s3(**kwargs: Any) -> Any:
    return client("s3", **kwargs)


def s3control(**kwargs: Any) -> Any:
    return client("s3control", **kwargs)


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


def is_sse_c_refusal(exc: BaseException, *, head: bool = False) -> bool:
    """S3's 400 to a request on an SSE-C object without the key: ``InvalidRequest`` ("The object was stored
    using a form of Server Side Encryption. The correct parameters must be provided to retrieve the
    object.") for GET/CopyObject/UploadPartCopy; for HEAD a 400 without a body (so without a code)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    if head and response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 400:
        return True
    message = str(response.get("Error", {}).get("Message", "")).lower()
    return error_code(exc) == "InvalidRequest" and "server side encryption" in message


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
