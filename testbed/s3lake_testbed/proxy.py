"""A loopback HTTP proxy in front of the moto server: fixed latency, request counts, injected faults.

Clients point ``AWS_ENDPOINT_URL`` (or ``endpoint_url=``) at :attr:`S3Proxy.url`; every request is
forwarded byte for byte to ``upstream`` (path-style S3, JSON-protocol services such as Glue/KMS/SSM
via ``X-Amz-Target``, query-protocol services via ``Action``). Request bodies framed by
``Content-Length`` or ``Transfer-Encoding: chunked`` (including ``aws-chunked`` payloads) are forwarded
with their framing intact; large bodies are streamed, not buffered. Standard library only.

Used by

* benchmarks: ``S3Proxy(upstream, latency=0.02)`` adds 20 ms to every request and counts requests by
  operation name (``PutObject``, ``UploadPartCopy``, ``ListObjectsV2``, ``GetDatabases``, S3 Control's
  ``CreateJob``/``DescribeJob`` ...; see :func:`s3_operation`). ``counts()`` is a snapshot,
  ``reset_counts()`` clears it, and ``with proxy.window() as w: ...`` gives the requests made inside
  the block in ``w.counts``.
* fault-injection tests: ``S3Proxy(upstream, faults=FaultPlan(seed=7, slowdown=0.05,
  drop_after=0.02, operations=OBJECT_WRITES))``. For each request whose operation passes the plan's
  filter, one ``random.Random(seed)`` draw picks at most one fault:

  - ``slowdown``: 503 ``<Error><Code>SlowDown</Code>`` (``ThrottlingException`` for JSON services),
  - ``internal_error``: 500 ``<Error><Code>InternalError</Code>``,
  - ``drop_before``: the connection is closed without a response; nothing reaches upstream,
  - ``drop_after``: the request is forwarded and applied upstream, the response is read and
    discarded, then the client connection is closed (the lost-response case),
  - ``truncate``: the request is applied upstream and the response's status, headers and the first
    half of its body are sent, then the connection is closed (a reset mid-download; a response
    without a body is simply lost, as with ``drop_after``).

  Permission faults are deterministic, not drawn: ``FaultPlan(deny_keys=r"^secret/",
  deny_operations={"CopyObject"})`` answers 403 ``<Error><Code>AccessDenied</Code>`` to every request
  of those operations (``None``: every operation) on an object key that ``re.search`` matches (as for
  a KMS key the role may not use). A denied request consumes no random draw and is counted in
  :meth:`S3Proxy.fault_counts` as ``("access_denied", operation)`` but not in the fault log.

  The same seed and the same sequence of eligible requests give the same faults;
  :meth:`FaultPlan.preview` lists the first ``n`` decisions, :meth:`S3Proxy.fault_log` the ones made,
  :meth:`S3Proxy.fault_counts` counts them by ``(kind, operation)``. ``configure(faults=...)``
  installs a new plan (and restarts its random sequence) on a running proxy.

* S3's per-prefix request limits: ``S3Proxy(upstream, limits=LimitPlan(scale=0.01))`` keeps a token
  bucket per (bucket, prefix, class) - writes (PUT, COPY, POST, DELETE) at 3,500 x scale per second,
  reads (GET, HEAD) at 5,500 x scale - and answers requests over it 503 SlowDown without forwarding
  them (HEAD: no body), as S3 does while a prefix scales. ``configure(limits=...)`` changes the plan
  on a running proxy, ``configure(blackout=30)`` answers every S3 request 503 SlowDown for the next
  30 s (``blackout_prefix="bucket/logs/"``: only object requests under it, from the first one on).
  :meth:`S3Proxy.per_second` gives the S3 requests that arrived in each second (reads, writes,
  throttled), :meth:`S3Proxy.prefix_seconds` the same per prefix, :meth:`S3Proxy.limit_counts` the
  totals by class and outcome. ``LimitPlan(prefix_scales={"bucket/hot/": 0.001})`` gives one prefix its
  own limit (a hot prefix beside free ones).

* a separate process, so the proxy's GIL does not compete with Spark or the benchmark::

      python -m s3lake_testbed.proxy --upstream URL [--port N] [--latency 0.02]
          [--seed 7 --slowdown 0.05 --internal-error 0 --drop-before 0 --drop-after 0.01
           --operations PutObject,UploadPart] [--deny-keys REGEX --deny-operations CopyObject,GetObject]
          [--limit-scale 0.01 --limit-burst 0.5 --prefix-depth 1 | --prefix-regex REGEX]

  prints its URL on stdout and serves until killed. :class:`ProxyProcess` starts one on a free port
  and has the same ``counts()/reset_counts()/fault_counts()/configure()/window()`` API, backed by the
  proxy's own endpoints, which are never forwarded nor counted:
  ``GET /__proxy__/counts`` (JSON), ``POST /__proxy__/reset``, ``POST /__proxy__/config`` (JSON body
  ``{"latency": 0.02, "faults": {...FaultPlan fields...} | null, "limits": {...LimitPlan fields...} | null,
  "blackout": seconds, "blackout_prefix": "bucket/prefix" | null}``), ``GET /__proxy__/health``.

Example::

    with MotoServer() as upstream, S3Proxy(upstream, latency=0.02) as url:
        s3 = boto3.client("s3", endpoint_url=url)
        ...
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import random
import re
import select
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Mapping

from s3lake_testbed.moto import free_port
from s3lake_testbed.process import LoopbackProcess

__all__ = [
    "FAULT_KINDS",
    "OBJECT_WRITES",
    "CountWindow",
    "FaultPlan",
    "LimitPlan",
    "ProxyProcess",
    "S3Proxy",
    "s3_operation",
]

FAULT_KINDS = ("slowdown", "internal_error", "drop_before", "drop_after", "truncate")

#: Object-level writes: the usual ``FaultPlan.operations`` for "fail the writes, not the reads".
OBJECT_WRITES = frozenset(
    {
        "PutObject",
        "CopyObject",
        "PutObjectAcl",
        "PutObjectTagging",
        "DeleteObjectTagging",
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPartCopy",
        "CompleteMultipartUpload",
        "AbortMultipartUpload",
        "DeleteObject",
        "DeleteObjects",
        "PutObjectRetention",
        "PutObjectLegalHold",
    }
)

CONTROL_PREFIX = "/__proxy__/"
BUFFER_LIMIT = 1 << 20  # request bodies up to this size are read whole (and can be re-sent once)
COPY_SIZE = 1 << 18
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
     "te", "trailer", "upgrade"}
)

# --------------------------------------------------------------------------------------------------
# Operation names
# --------------------------------------------------------------------------------------------------

# Bucket subresource -> suffix used in Get/Put/Delete<Bucket...> names, in lookup order.
_BUCKET_SUBRESOURCES = (
    ("acl", "BucketAcl"),
    ("tagging", "BucketTagging"),
    ("versioning", "BucketVersioning"),
    ("ownershipControls", "BucketOwnershipControls"),
    ("policyStatus", "BucketPolicyStatus"),
    ("policy", "BucketPolicy"),
    ("lifecycle", "BucketLifecycleConfiguration"),
    ("encryption", "BucketEncryption"),
    ("cors", "BucketCors"),
    ("notification", "BucketNotificationConfiguration"),
    ("object-lock", "ObjectLockConfiguration"),
    ("publicAccessBlock", "PublicAccessBlock"),
    ("logging", "BucketLogging"),
    ("website", "BucketWebsite"),
    ("replication", "BucketReplication"),
    ("accelerate", "BucketAccelerateConfiguration"),
    ("requestPayment", "BucketRequestPayment"),
    ("analytics", "BucketAnalyticsConfiguration"),
    ("metrics", "BucketMetricsConfiguration"),
    ("inventory", "BucketInventoryConfiguration"),
    ("intelligent-tiering", "BucketIntelligentTieringConfiguration"),
)
_DELETE_NAMES = {"lifecycle": "DeleteBucketLifecycle"}

_OBJECT_SUBRESOURCES = (
    ("acl", "ObjectAcl"),
    ("tagging", "ObjectTagging"),
    ("retention", "ObjectRetention"),
    ("legal-hold", "ObjectLegalHold"),
)


def _header(headers: Any, name: str) -> str | None:
    if headers is None:
        return None
    if isinstance(headers, Mapping) and not hasattr(headers, "get_all"):
        lower = name.lower()
        for key, value in headers.items():
            if key.lower() == lower:
                return value
        return None
    return headers.get(name)  # email.message.Message / HTTPMessage: case-insensitive


def s3_operation(method: str, path: str, query: Any = None, headers: Any = None) -> str:
    """The AWS operation name of a request (pure; path-style S3 addressing).

    ``path`` is the request path (a query string after ``?`` is ignored; pass it as ``query``),
    ``query`` a mapping whose keys are the query parameters (``parse_qs`` output or plain dict) or a raw
    query string, ``headers`` a mapping or ``http.client.HTTPMessage`` (case-insensitive).
    JSON-protocol requests give the operation in ``X-Amz-Target`` (``AWSGlue.GetTable`` -> ``GetTable``),
    query-protocol requests in ``Action``. Unrecognised requests give ``"Unknown"``.
    """
    method = method.upper()
    if isinstance(query, (str, bytes)):
        query = urllib.parse.parse_qs(query if isinstance(query, str) else query.decode(),
                                      keep_blank_values=True)
    params = set(query or ())
    target = _header(headers, "X-Amz-Target")
    if target:
        return target.rsplit(".", 1)[-1]
    if "Action" in params and isinstance(query, Mapping):
        action = query["Action"]
        if isinstance(action, (list, tuple)):
            action = action[0] if action else ""
        if action:
            return str(action)
    path = path.split("?", 1)[0]
    bucket, _, key = path.lstrip("/").partition("/")
    if bucket == "moto-api":
        return "MotoApi"
    if bucket == S3CONTROL_ROOT:
        return _control_operation(method, key)
    if not bucket:
        return "ListBuckets" if method == "GET" else "Unknown"
    copy = _header(headers, "x-amz-copy-source") is not None
    if key:
        return _object_operation(method, params, copy)
    return _bucket_operation(method, params)


S3CONTROL_ROOT = "v20180820"  # S3 Control's path root (the account rides in x-amz-account-id)


def _control_operation(method: str, path: str) -> str:
    """S3 Batch Operations jobs under ``/v20180820/``; other S3 Control paths give ``"S3Control"``."""
    parts = path.rstrip("/").split("/")
    if parts[0] == "jobs":
        if len(parts) == 1:
            return {"POST": "CreateJob", "GET": "ListJobs"}.get(method, "Unknown")
        if len(parts) == 2 and method == "GET":
            return "DescribeJob"
        if len(parts) == 3 and parts[2] == "status" and method == "POST":
            return "UpdateJobStatus"
        if len(parts) == 3 and parts[2] == "tagging":
            return {"GET": "GetJobTagging", "PUT": "PutJobTagging", "DELETE": "DeleteJobTagging"}.get(
                method, "Unknown")
        if len(parts) == 3 and parts[2] == "priority" and method == "POST":
            return "UpdateJobPriority"
        return "Unknown"
    return "S3Control"


def _object_operation(method: str, params: set, copy: bool) -> str:
    if method == "HEAD":
        return "HeadObject"
    if method == "GET":
        if "uploadId" in params:
            return "ListParts"
        for sub, name in _OBJECT_SUBRESOURCES:
            if sub in params:
                return "Get" + name
        if "attributes" in params:
            return "GetObjectAttributes"
        if "torrent" in params:
            return "GetObjectTorrent"
        return "GetObject"
    if method == "PUT":
        if "uploadId" in params and "partNumber" in params:
            return "UploadPartCopy" if copy else "UploadPart"
        for sub, name in _OBJECT_SUBRESOURCES:
            if sub in params:
                return "Put" + name
        return "CopyObject" if copy else "PutObject"
    if method == "POST":
        if "uploads" in params:
            return "CreateMultipartUpload"
        if "uploadId" in params:
            return "CompleteMultipartUpload"
        if "restore" in params:
            return "RestoreObject"
        if "select" in params:
            return "SelectObjectContent"
        return "Unknown"
    if method == "DELETE":
        if "uploadId" in params:
            return "AbortMultipartUpload"
        if "tagging" in params:
            return "DeleteObjectTagging"
        return "DeleteObject"
    return "Unknown"


def _bucket_operation(method: str, params: set) -> str:
    if method == "HEAD":
        return "HeadBucket"
    if method == "POST":
        if "delete" in params:
            return "DeleteObjects"
        return "PostObject"
    if method == "GET":
        if params.intersection(("list-type",)) and "versions" not in params:
            return "ListObjectsV2"
        if "versions" in params:
            return "ListObjectVersions"
        if "uploads" in params:
            return "ListMultipartUploads"
        if "location" in params:
            return "GetBucketLocation"
        for sub, name in _BUCKET_SUBRESOURCES:
            if sub in params:
                return "Get" + name
        return "ListObjects"
    if method == "PUT":
        for sub, name in _BUCKET_SUBRESOURCES:
            if sub in params and sub != "policyStatus":
                return "Put" + name
        return "CreateBucket"
    if method == "DELETE":
        for sub, name in _BUCKET_SUBRESOURCES:
            if sub in params and sub != "policyStatus":
                return _DELETE_NAMES.get(sub, "Delete" + name)
        return "DeleteBucket"
    return "Unknown"


# --------------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------------


@dataclass
class FaultPlan:
    """What share of requests to fault, and how. Rates are probabilities per eligible request.

    A request is eligible if its operation is in ``operations`` (``None``: every operation) and
    ``predicate(operation)`` is true (``None``: always; not available for :class:`ProxyProcess`).
    Each eligible request consumes exactly one ``random.Random(seed)`` draw, so the sequence of
    decisions depends only on the seed and the order of eligible requests.

    ``deny_keys`` (a regular expression searched in the URL-decoded object key) with ``deny_operations``
    (``None``: every operation) answers matching object requests 403 AccessDenied, whatever ``operations``
    says and without a draw.
    """

    seed: int = 0
    slowdown: float = 0.0
    internal_error: float = 0.0
    drop_before: float = 0.0
    drop_after: float = 0.0
    truncate: float = 0.0
    operations: frozenset | None = None
    predicate: Callable[[str], bool] | None = None
    deny_keys: str | None = None
    deny_operations: frozenset | None = None

    def __post_init__(self) -> None:
        rates = [self.slowdown, self.internal_error, self.drop_before, self.drop_after, self.truncate]
        if any(r < 0 for r in rates) or sum(rates) > 1 + 1e-9:
            raise ValueError(f"fault rates must be >= 0 and sum to at most 1: {rates}")
        if self.operations is not None and not isinstance(self.operations, frozenset):
            self.operations = frozenset(self.operations)
        if self.deny_operations is not None and not isinstance(self.deny_operations, frozenset):
            self.deny_operations = frozenset(self.deny_operations)
        if self.deny_keys is not None:
            try:
                re.compile(self.deny_keys)  # a bad pattern fails here, not in the proxy
            except re.error as exc:
                raise ValueError(f"deny_keys is not a regular expression: {exc}") from None

    def denies(self, operation: str, key: str | None) -> bool:
        """Whether a request of ``operation`` on object ``key`` (None: not an object request) is denied."""
        if self.deny_keys is None or not key:
            return False
        if self.deny_operations is not None and operation not in self.deny_operations:
            return False
        return re.search(self.deny_keys, key) is not None

    def applies_to(self, operation: str) -> bool:
        if self.operations is not None and operation not in self.operations:
            return False
        return self.predicate is None or bool(self.predicate(operation))

    def decide(self, rng: random.Random) -> str | None:
        """One draw: a kind from :data:`FAULT_KINDS`, or ``None`` for no fault."""
        r = rng.random()
        edge = 0.0
        for kind in FAULT_KINDS:
            edge += getattr(self, kind)
            if r < edge:
                return kind
        return None

    def preview(self, n: int) -> list:
        """The decisions for the first ``n`` eligible requests (a list of kinds or ``None``)."""
        rng = random.Random(self.seed)
        return [self.decide(rng) for _ in range(n)]

    def to_json(self) -> dict:
        if self.predicate is not None:
            raise ValueError("a FaultPlan with a predicate cannot be sent to another process")
        data = dataclasses.asdict(self)
        data.pop("predicate")
        data["operations"] = sorted(self.operations) if self.operations is not None else None
        data["deny_operations"] = sorted(self.deny_operations) if self.deny_operations is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict | None) -> FaultPlan | None:
        if data is None:
            return None
        data = dict(data)
        for name in ("operations", "deny_operations"):
            if data.get(name) is not None:
                data[name] = frozenset(data[name])
        return cls(**data)


# --------------------------------------------------------------------------------------------------
# Per-prefix request limits
# --------------------------------------------------------------------------------------------------

#: S3's per-prefix request rates: "at least 3,500 PUT/COPY/POST/DELETE or 5,500 GET/HEAD requests per
#: second per partitioned Amazon S3 prefix", 503 Slow Down above while the prefix scales
#: (https://docs.aws.amazon.com/AmazonS3/latest/userguide/optimizing-performance.html).
S3_WRITES_PER_SECOND = 3500
S3_READS_PER_SECOND = 5500
LIMIT_CLASSES = ("read", "write")


def request_class(method: str) -> str:
    """``read`` (GET, HEAD) or ``write`` (PUT - a copy is a PUT -, POST, DELETE, anything else)."""
    return "read" if method.upper() in ("GET", "HEAD") else "write"


@dataclass
class LimitPlan:
    """S3's per-prefix limits, scaled: a token bucket per (bucket, prefix, class).

    ``scale`` multiplies S3's 3,500 writes / 5,500 reads per second (``scale=0.01``: 35 and 55/s).
    ``burst`` is the bucket's depth in seconds of its rate (at least one token). A key's prefix is its
    first ``prefix_depth`` folders (depth 1: ``logs/2024/x.json`` -> ``logs/``; a key at the bucket's
    root -> ``""``), or, with ``prefix_regex``, the text ``re.match(prefix_regex, key)`` matches (none:
    ``""``). Bucket-level requests (listings) map their ``prefix`` query parameter the same way.
    """

    scale: float = 1.0
    burst: float = 0.5
    prefix_depth: int = 1
    prefix_regex: str | None = None
    prefix_scales: dict | None = None  # "bucket/prefix" -> its own scale (one hot prefix among free ones)

    def __post_init__(self) -> None:
        if self.scale <= 0 or self.burst <= 0 or self.prefix_depth < 0:
            raise ValueError("LimitPlan needs scale > 0, burst > 0, prefix_depth >= 0")
        if self.prefix_regex is not None:
            try:
                re.compile(self.prefix_regex)
            except re.error as exc:
                raise ValueError(f"prefix_regex is not a regular expression: {exc}") from None

    def rate(self, cls: str, name: str | None = None) -> float:
        """Requests per second allowed per prefix for ``cls`` (``read`` or ``write``); ``name``
        (``bucket/prefix``) picks its own scale from ``prefix_scales``."""
        scale = (self.prefix_scales or {}).get(name, self.scale) if name is not None else self.scale
        return (S3_READS_PER_SECOND if cls == "read" else S3_WRITES_PER_SECOND) * scale

    def prefix(self, key: str) -> str:
        """The partitioned prefix ``key`` counts against (pure)."""
        if self.prefix_regex is not None:
            found = re.match(self.prefix_regex, key)
            return found.group(0) if found else ""
        parts = key.split("/")
        if len(parts) <= self.prefix_depth:  # the key itself is not under a prefix that deep
            return "/".join(parts[:-1]) + "/" if len(parts) > 1 else ""
        return "/".join(parts[: self.prefix_depth]) + "/" if self.prefix_depth else ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> LimitPlan | None:
        return None if data is None else cls(**data)


class TokenBuckets:
    """Token buckets by name, refilled from a monotonic clock (pure apart from the clock; not locked)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict = {}  # name -> [tokens, last refill]

    def take(self, name: Any, rate: float, depth: float) -> bool:
        """Take one token from ``name`` (rate tokens/s, at most ``depth``); False when it is empty."""
        now = self.clock()
        found = self._buckets.get(name)
        if found is None:
            found = self._buckets[name] = [depth, now]
        tokens = min(depth, found[0] + (now - found[1]) * rate)
        found[1] = now
        if tokens >= 1.0:
            found[0] = tokens - 1.0
            return True
        found[0] = tokens
        return False


_ERROR_TEXT = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal_error": (500, "Internal Server Error", "InternalError",
                       "We encountered an internal error. Please try again."),
    "access_denied": (403, "Forbidden", "AccessDenied", "Access Denied"),
}
_JSON_ERRORS = {
    "slowdown": (400, "Bad Request", "ThrottlingException", "Rate exceeded"),
    "internal_error": (500, "Internal Server Error", "InternalFailure",
                       "The request processing has failed because of an unknown error."),
    "access_denied": (400, "Bad Request", "AccessDeniedException", "Access denied"),
}
_QUERY_ERRORS = {
    "slowdown": (400, "Bad Request", "Throttling", "Rate exceeded"),
    "internal_error": (500, "Internal Server Error", "InternalFailure",
                       "The request processing has failed because of an unknown error."),
    "access_denied": (403, "Forbidden", "AccessDenied", "Access denied"),
}


def _error_response(kind: str, protocol: str, resource: str, request_id: str) -> tuple:
    """(status, reason, headers, body) of an injected error in the request's protocol."""
    if protocol == "json":
        status, reason, code, message = _JSON_ERRORS[kind]
        body = json.dumps({"__type": code, "message": message}).encode()
        headers = [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-ErrorType", code)]
    elif protocol == "query":
        status, reason, code, message = _QUERY_ERRORS[kind]
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse><Error><Type>Receiver</Type>'
            f"<Code>{code}</Code><Message>{message}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        ).encode()
        headers = [("Content-Type", "text/xml")]
    else:
        status, reason, code, message = _ERROR_TEXT[kind]
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><Resource>{_xml_escape(resource)}</Resource>"
            f"<RequestId>{request_id}</RequestId><HostId>s3lake-proxy</HostId></Error>"
        ).encode()
        headers = [("Content-Type", "application/xml")]
    headers += [("x-amz-request-id", request_id), ("x-amzn-RequestId", request_id)]
    return status, reason, headers, body


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --------------------------------------------------------------------------------------------------
# State shared by the handler threads
# --------------------------------------------------------------------------------------------------


class _State:
    def __init__(self, latency: float, faults: FaultPlan | None, limits: LimitPlan | None = None) -> None:
        self.lock = threading.Lock()
        self.latency = latency
        self.faults = faults
        self.limits = limits
        self.buckets = TokenBuckets()
        self.blackout_until: float | None = 0.0
        self.blackout_seconds = 0.0
        self.blackout_prefix: str | None = None
        self.limit_counts: dict = {}  # (class, "allowed" | "throttled") -> n
        self.per_second: dict = {}  # int(time.time()) -> [reads, writes, throttled]
        self.prefix_seconds: dict = {}  # (int(time.time()), "bucket/prefix") -> [requests, throttled]
        self.rng = random.Random(faults.seed if faults else 0)
        self.counts: dict = {}
        self.fault_counts: dict = {}
        self.fault_log: list = []  # (eligible request index, operation, kind)
        self.eligible = 0
        self.request_ids = 0

    def configure(self, latency: float | None = None, faults: Any = ..., limits: Any = ...,
                  blackout: float | None = None, blackout_prefix: str | None = None) -> None:
        with self.lock:
            if latency is not None:
                self.latency = float(latency)
            if faults is not ...:
                self.faults = faults
                self.rng = random.Random(faults.seed if faults else 0)
                self.eligible = 0
            if limits is not ...:
                self.limits = limits
                self.buckets = TokenBuckets()
            if blackout is not None:
                self.blackout_seconds = float(blackout)
                self.blackout_prefix = blackout_prefix
                # with a prefix, the stretch starts at the first request on it
                self.blackout_until = None if blackout_prefix else time.monotonic() + self.blackout_seconds

    def throttle(self, method: str, bucket: str, key: str | None, list_prefix: str | None) -> bool:
        """Count an S3 request per second and class; True when it is over its prefix's limit (or in a
        blackout) and must be answered 503 SlowDown."""
        cls = request_class(method)
        with self.lock:
            second = int(time.time())
            row = self.per_second.get(second)
            if row is None:
                row = self.per_second[second] = [0, 0, 0]
                for old in [s for s in self.per_second if s < second - 3600]:
                    del self.per_second[old]
            row[0 if cls == "read" else 1] += 1
            plan = self.limits
            now = time.monotonic()
            if self.blackout_prefix is None:
                throttled = self.blackout_until is not None and now < self.blackout_until
            else:
                throttled = key is not None and f"{bucket}/{key}".startswith(self.blackout_prefix)
                if throttled and self.blackout_until is None:
                    self.blackout_until = now + self.blackout_seconds
                throttled = throttled and now < (self.blackout_until or 0.0)
            if plan is not None:
                name = f"{bucket}/{plan.prefix(key if key is not None else (list_prefix or ''))}"
                if not throttled:
                    rate = plan.rate(cls, name)
                    throttled = not self.buckets.take((name, cls), rate, max(1.0, rate * plan.burst))
                counted = self.prefix_seconds.setdefault((second, name), [0, 0])
                counted[0] += 1
                counted[1] += throttled
            if throttled:
                row[2] += 1
            outcome = (cls, "throttled" if throttled else "allowed")
            self.limit_counts[outcome] = self.limit_counts.get(outcome, 0) + 1
            return throttled

    def count(self, operation: str) -> None:
        with self.lock:
            self.counts[operation] = self.counts.get(operation, 0) + 1

    def record(self, operation: str, key: str | None = None) -> str | None:
        """Count a request and decide its fault (``key``: the object key, if it names one)."""
        with self.lock:
            self.counts[operation] = self.counts.get(operation, 0) + 1
            plan = self.faults
            if plan is not None and plan.denies(operation, key):
                denied = ("access_denied", operation)
                self.fault_counts[denied] = self.fault_counts.get(denied, 0) + 1
                return "access_denied"
            if plan is None or not plan.applies_to(operation):
                return None
            index = self.eligible
            self.eligible += 1
            kind = plan.decide(self.rng)
            if kind is not None:
                key = (kind, operation)
                self.fault_counts[key] = self.fault_counts.get(key, 0) + 1
                if len(self.fault_log) < 1_000_000:
                    self.fault_log.append((index, operation, kind))
            return kind

    def next_request_id(self) -> str:
        with self.lock:
            self.request_ids += 1
            return f"S3LAKEPROXY{self.request_ids:012d}"

    def reset(self) -> None:
        with self.lock:
            self.counts = {}
            self.fault_counts = {}
            self.fault_log = []
            self.limit_counts = {}
            self.per_second = {}
            self.prefix_seconds = {}

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "counts": dict(self.counts),
                "faults": [[k, op, n] for (k, op), n in sorted(self.fault_counts.items())],
                "fault_log": [list(e) for e in self.fault_log],
                "latency": self.latency,
                "limits": [[c, o, n] for (c, o), n in sorted(self.limit_counts.items())],
                "per_second": [[t, *row] for t, row in sorted(self.per_second.items())],
                "prefix_seconds": [[t, name, *row] for (t, name), row in sorted(self.prefix_seconds.items())],
            }


class _Dropped(Exception):
    """Close the client connection without (further) response."""


class _UpstreamError(Exception):
    """The upstream failed and the request cannot be re-sent: answer 502."""


# --------------------------------------------------------------------------------------------------
# The HTTP server
# --------------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, address: tuple, upstream: str, state: _State) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"upstream must be an http:// URL: {upstream!r}")
        self.upstream_host = parsed.hostname
        self.upstream_port = parsed.port or 80
        self.state = state
        self.open_sockets: set = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the FQDN, which can be slow without DNS.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host
        self.server_port = port

    def close_client_sockets(self) -> None:
        with self.sockets_lock:
            socks = list(self.open_sockets)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _readable(sock: socket.socket) -> bool:
    """Whether ``sock`` has data or EOF waiting (poll: no FD_SETSIZE limit, unlike select)."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (AttributeError, OSError):  # no poll() (Windows)
        try:
            return bool(select.select([sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        try:
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.upstream: http.client.HTTPConnection | None = None
        with self.server.sockets_lock:
            self.server.open_sockets.add(self.request)

    def finish(self) -> None:
        with self.server.sockets_lock:
            self.server.open_sockets.discard(self.request)
        if self.upstream is not None:
            self.upstream.close()
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, socket.timeout, _Dropped, ValueError, http.client.HTTPException):
            self.close_connection = True

    def _proxy(self) -> None:
        try:
            self._proxy_request()
        except _UpstreamError as exc:
            rid = self.server.state.next_request_id()
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>BadGateway</Code>'
                f"<Message>{_xml_escape(str(exc))}</Message><RequestId>{rid}</RequestId></Error>"
            ).encode()
            self._write_simple(502, "Bad Gateway", [("Content-Type", "application/xml")], body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_OPTIONS = do_PATCH = _proxy

    # ---------------------------------------------------------------- request body

    def _body_framing(self) -> tuple:
        """("length", n) | ("chunked", None)."""
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            return "chunked", None
        length = self.headers.get("Content-Length")
        return "length", int(length) if length else 0

    def _read_exact(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) != n:
            raise _Dropped("client closed the connection mid-body")
        return data

    def _pump_body(self, framing: tuple, sink: Callable[[bytes], None] | None) -> None:
        """Copy the request body from the client to ``sink`` (None: discard), framing included."""
        kind, length = framing
        if kind == "length":
            remaining = length
            while remaining > 0:
                piece = self._read_exact(min(COPY_SIZE, remaining))
                remaining -= len(piece)
                if sink is not None:
                    sink(piece)
            return
        while True:
            line = self.rfile.readline(65537)
            if not line.endswith(b"\n"):
                raise _Dropped("bad chunk size line")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if sink is not None:
                sink(line)
            if size == 0:
                while True:  # trailers, then the empty line
                    trailer = self.rfile.readline(65537)
                    if not trailer:
                        raise _Dropped("client closed the connection in trailers")
                    if sink is not None:
                        sink(trailer)
                    if trailer in (b"\r\n", b"\n"):
                        return
            remaining = size
            while remaining > 0:
                piece = self._read_exact(min(COPY_SIZE, remaining))
                remaining -= len(piece)
                if sink is not None:
                    sink(piece)
            crlf = self.rfile.readline(3)
            if sink is not None:
                sink(crlf)

    # ---------------------------------------------------------------- responses

    def _write(self, status: int, reason: str, headers: list, body: bytes = b"") -> None:
        head = [f"HTTP/1.1 {status} {reason}\r\n"]
        head += [f"{k}: {v}\r\n" for k, v in headers]
        if self.close_connection:
            head.append("Connection: close\r\n")
        head.append("\r\n")
        self.wfile.write("".join(head).encode("latin-1") + body)

    def _write_simple(self, status: int, reason: str, headers: list, body: bytes) -> None:
        headers = list(headers) + [("Content-Length", str(len(body)))]
        self._write(status, reason, headers, b"" if self.command == "HEAD" else body)

    def _control(self, path: str, framing: tuple) -> None:
        state: _State = self.server.state
        chunks: list = []
        self._pump_body(framing, chunks.append)
        body = b"".join(chunks)
        if path == "counts" and self.command == "GET":
            out = state.snapshot()
        elif path == "health":
            out = {"ok": True}
        elif path == "reset" and self.command == "POST":
            state.reset()
            out = {"ok": True}
        elif path == "config" and self.command == "POST":
            conf = json.loads(body or b"{}")
            kwargs: dict = {"latency": conf.get("latency")}
            if "faults" in conf:
                kwargs["faults"] = FaultPlan.from_json(conf["faults"])
            if "limits" in conf:
                kwargs["limits"] = LimitPlan.from_json(conf["limits"])
            kwargs["blackout"] = conf.get("blackout")
            kwargs["blackout_prefix"] = conf.get("blackout_prefix")
            state.configure(**kwargs)
            out = {"ok": True}
        else:
            self._write_simple(404, "Not Found", [("Content-Type", "text/plain")], b"unknown\n")
            return
        self._write_simple(200, "OK", [("Content-Type", "application/json")], json.dumps(out).encode())

    # ---------------------------------------------------------------- forwarding

    def _proxy_request(self) -> None:
        state = self.server.state
        framing = self._body_framing()
        path, _, raw_query = self.path.partition("?")
        if path.startswith(CONTROL_PREFIX):
            self._control(path[len(CONTROL_PREFIX):], framing)
            return
        query = urllib.parse.parse_qs(raw_query, keep_blank_values=True)
        operation = s3_operation(self.command, path, query, self.headers)
        body: bytes | None = None
        if framing[0] == "length" and framing[1] <= BUFFER_LIMIT:
            body = self._read_exact(framing[1])
        protocol = "json" if self.headers.get("X-Amz-Target") else "s3"
        if operation in ("Unknown", "PostObject") and body:
            ctype = (self.headers.get("Content-Type") or "").lower()
            if ctype.startswith("application/x-www-form-urlencoded"):
                form = urllib.parse.parse_qs(body.decode("latin-1"), keep_blank_values=True)
                if form.get("Action"):
                    operation = form["Action"][0]
                    protocol = "query"
        elif "Action" in query:
            protocol = "query"

        key = None
        throttled = False
        if protocol == "s3":
            bucket, _, raw_key = path.lstrip("/").partition("/")
            key = urllib.parse.unquote(raw_key) if bucket and raw_key and bucket != S3CONTROL_ROOT else None
            if bucket and bucket not in ("moto-api", S3CONTROL_ROOT):
                throttled = state.throttle(self.command, bucket, key, (query.get("prefix") or [None])[0])
        if throttled:
            state.count(operation)
            fault: str | None = "slowdown"
        else:
            fault = state.record(operation, key)
        if state.latency > 0:
            time.sleep(state.latency)

        if fault in ("slowdown", "internal_error", "access_denied", "drop_before"):
            if body is None:
                self._pump_body(framing, None)
            if fault == "drop_before":
                raise _Dropped(fault)
            status, reason, headers, payload = _error_response(
                fault, protocol, path, state.next_request_id()
            )
            self._write_simple(status, reason, headers, payload)
            return

        response = self._forward(framing, body)
        try:
            if fault == "drop_after":
                while response.read(COPY_SIZE):
                    pass
                raise _Dropped(fault)
            if fault == "truncate":
                self._relay_half(response)
                raise _Dropped(fault)
            self._relay(response)
        finally:
            response.close()

    def _connection(self) -> tuple:
        """(connection, reused) - the per-client-connection upstream connection."""
        conn = self.upstream
        if conn is not None and conn.sock is not None:
            if _readable(conn.sock):  # while idle: the upstream closed it (or sent junk); start afresh
                conn.close()
            else:
                return conn, True
        if conn is None:
            conn = http.client.HTTPConnection(
                self.server.upstream_host, self.server.upstream_port, timeout=600
            )
            self.upstream = conn
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, False

    def _send_request(self, conn: http.client.HTTPConnection, framing: tuple, body: bytes | None):
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        drop = {h.strip().lower() for h in (self.headers.get("Connection") or "").split(",")}
        for name, value in self.headers.items():
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in drop or lower == "expect":
                continue
            conn.putheader(name, value)
        conn.endheaders()
        if body is not None:
            if body:
                conn.send(body)
        else:
            self._pump_body(framing, conn.send)
        return conn.getresponse()

    def _forward(self, framing: tuple, body: bytes | None) -> http.client.HTTPResponse:
        for attempt in (1, 2):
            conn, reused = self._connection()
            try:
                return self._send_request(conn, framing, body)
            except _Dropped:
                conn.close()
                raise
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if attempt == 1 and reused and body is not None:
                    continue  # a stale keep-alive connection; the whole request is in hand
                if body is None:
                    raise _Dropped(f"upstream failed mid-body: {exc}") from exc
                raise _UpstreamError(str(exc)) from exc
        raise AssertionError("unreachable")

    def _relay_half(self, response: http.client.HTTPResponse) -> None:
        """Status, headers (announcing the whole body) and the first half of the body; the caller closes."""
        payload = response.read()
        if self.command == "HEAD" or not payload:
            return
        headers = [
            (k, v) for k, v in response.getheaders()
            if k.lower() not in HOP_BY_HOP and k.lower() not in ("transfer-encoding", "content-length")
        ]
        headers.append(("Content-Length", str(len(payload))))
        reason = response.reason or http.client.responses.get(response.status, "")
        self._write(response.status, reason, headers, payload[: len(payload) // 2])
        self.wfile.flush()

    def _relay(self, response: http.client.HTTPResponse) -> None:
        headers = [
            (k, v) for k, v in response.getheaders()
            if k.lower() not in HOP_BY_HOP and k.lower() != "transfer-encoding"
        ]
        no_body = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
        reason = response.reason or http.client.responses.get(response.status, "")
        if no_body:
            response.read()
            self._write(response.status, reason, headers)
            return
        if response.chunked:
            self._write(response.status, reason, headers + [("Transfer-Encoding", "chunked")])
            while True:
                piece = response.read(COPY_SIZE)
                if not piece:
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        if response.length is None:  # delimited by the upstream closing: buffer it
            payload = response.read()
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            self._write_simple(response.status, reason, headers, payload)
            return
        if response.length <= COPY_SIZE:
            self._write(response.status, reason, headers, response.read())
            return
        self._write(response.status, reason, headers)
        while True:
            piece = response.read(COPY_SIZE)
            if not piece:
                break
            self.wfile.write(piece)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


class CountWindow:
    """Requests counted between entering and leaving ``proxy.window()``: ``counts``, ``total``."""

    def __init__(self) -> None:
        self.counts: dict = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __repr__(self) -> str:
        return f"CountWindow({self.counts!r})"


class _CountsAPI:
    def counts(self) -> dict:  # pragma: no cover - overridden
        raise NotImplementedError

    def _snapshot(self) -> dict:  # pragma: no cover - overridden
        raise NotImplementedError

    def limit_counts(self) -> dict:
        """``{(class, "allowed" | "throttled"): n}`` for the S3 requests since the last reset."""
        return {(c, o): n for c, o, n in self._snapshot()["limits"]}

    def per_second(self) -> list:
        """``[(unix second, reads, writes, throttled), ...]``: S3 requests arriving in each second (all of
        them, throttled or not; the last hour), oldest first."""
        return [tuple(row) for row in self._snapshot()["per_second"]]

    def prefix_seconds(self) -> list:
        """``[(unix second, "bucket/prefix", requests, throttled), ...]`` while a ``LimitPlan`` is set:
        S3 requests per partitioned prefix and second, oldest first."""
        return [tuple(row) for row in self._snapshot()["prefix_seconds"]]

    @contextmanager
    def window(self) -> Iterator[CountWindow]:
        """``with proxy.window() as w: ...`` -> ``w.counts``: requests by operation in the block.

        A difference of snapshots, so it does not reset the proxy's counts and windows can nest.
        """
        window = CountWindow()
        before = self.counts()
        try:
            yield window
        finally:
            after = self.counts()
            window.counts = {
                op: n - before.get(op, 0) for op, n in sorted(after.items()) if n != before.get(op, 0)
            }


class S3Proxy(_CountsAPI):
    """The proxy on a thread of this process: ``with S3Proxy(upstream, latency=0.02) as url: ...``."""

    def __init__(
        self,
        upstream: str,
        *,
        latency: float = 0.0,
        faults: FaultPlan | None = None,
        limits: LimitPlan | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.host = host
        self.port = port or 0
        self.url = ""
        self._state = _State(latency, faults, limits)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _bind(self) -> _Server:
        if self._server is None:
            self._server = _Server((self.host, self.port), self.upstream, self._state)
            self.port = self._server.server_address[1]
            self.url = f"http://{self.host}:{self.port}"
        return self._server

    def start(self) -> str:
        self._bind()
        self._thread = threading.Thread(
            target=self._bind().serve_forever, kwargs={"poll_interval": 0.2},
            name=f"s3proxy-{self.port}", daemon=True,
        )
        self._thread.start()
        return self.url

    def serve_forever(self) -> None:
        """Serve on the calling thread (the ``python -m`` entry point)."""
        self._bind().serve_forever(poll_interval=0.2)

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_client_sockets()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def environ(self) -> dict:
        return {"AWS_ENDPOINT_URL": self.url}

    @property
    def latency(self) -> float:
        return self._state.latency

    def configure(self, *, latency: float | None = None, faults: Any = ..., limits: Any = ...,
                  blackout: float | None = None, blackout_prefix: str | None = None) -> None:
        """While running: change the latency, install a fault plan or a limit plan (``None``: none), or
        answer every S3 request 503 SlowDown for the next ``blackout`` seconds - with ``blackout_prefix``
        (``"bucket/key prefix"``), only object requests under it, for ``blackout`` seconds from the first
        such request."""
        self._state.configure(latency, faults, limits, blackout, blackout_prefix)

    def counts(self) -> dict:
        with self._state.lock:
            return dict(self._state.counts)

    def _snapshot(self) -> dict:
        return self._state.snapshot()

    def reset_counts(self) -> None:
        """Clear request counts, fault counts and the fault log (the fault random sequence goes on)."""
        self._state.reset()

    reset = reset_counts

    def fault_counts(self) -> dict:
        with self._state.lock:
            return dict(self._state.fault_counts)

    def fault_log(self) -> list:
        """``[(index, operation, kind), ...]``: the faults injected so far; ``index`` counts the
        eligible requests since the plan was installed, as in :meth:`FaultPlan.preview`."""
        with self._state.lock:
            return list(self._state.fault_log)


class ProxyProcess(LoopbackProcess, _CountsAPI):
    """The proxy in its own process (``python -m s3lake_testbed.proxy``), mirroring ``MotoServer``."""

    def __init__(
        self,
        upstream: str,
        *,
        latency: float = 0.0,
        faults: FaultPlan | None = None,
        limits: LimitPlan | None = None,
        port: int | None = None,
        log_path: str | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.latency = latency
        self.faults = faults
        self.limits = limits
        self.port = port or free_port()
        super().__init__(f"http://127.0.0.1:{self.port}", log_path)

    name = "proxy"

    def command(self) -> list:
        cmd = [sys.executable, "-m", "s3lake_testbed.proxy", "--upstream", self.upstream,
               "--port", str(self.port), "--latency", str(self.latency)]
        if self.faults is not None:
            plan = self.faults.to_json()
            cmd += ["--seed", str(plan["seed"])]
            for kind in FAULT_KINDS:
                cmd += [f"--{kind.replace('_', '-')}", str(plan[kind])]
            if plan["operations"] is not None:
                cmd += ["--operations", ",".join(plan["operations"])]
            if plan["deny_keys"] is not None:
                cmd += ["--deny-keys", plan["deny_keys"]]
            if plan["deny_operations"] is not None:
                cmd += ["--deny-operations", ",".join(plan["deny_operations"])]
        if self.limits is not None:
            cmd += ["--limit-scale", str(self.limits.scale), "--limit-burst", str(self.limits.burst),
                    "--prefix-depth", str(self.limits.prefix_depth)]
            if self.limits.prefix_regex is not None:
                cmd += ["--prefix-regex", self.limits.prefix_regex]
        return cmd

    def start(self) -> str:
        env = dict(os.environ)
        home = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder holding s3lake_testbed
        env["PYTHONPATH"] = os.pathsep.join(p for p in (home, env.get("PYTHONPATH")) if p)
        return self._launch(self.command(), env, lambda: self._call("GET", "health"), timeout=30)

    def environ(self) -> dict:
        return {"AWS_ENDPOINT_URL": self.url}

    def _call(self, method: str, name: str, payload: dict | None = None) -> dict:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(f"{self.url}{CONTROL_PREFIX}{name}", data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def configure(self, *, latency: float | None = None, faults: Any = ..., limits: Any = ...,
                  blackout: float | None = None, blackout_prefix: str | None = None) -> None:
        payload: dict = {"latency": latency, "blackout": blackout, "blackout_prefix": blackout_prefix}
        if faults is not ...:
            payload["faults"] = faults.to_json() if faults is not None else None
            self.faults = faults
        if limits is not ...:
            payload["limits"] = limits.to_json() if limits is not None else None
            self.limits = limits
        if latency is not None:
            self.latency = latency
        self._call("POST", "config", payload)

    def counts(self) -> dict:
        return self._call("GET", "counts")["counts"]

    def _snapshot(self) -> dict:
        return self._call("GET", "counts")

    def reset_counts(self) -> None:
        self._call("POST", "reset", {})

    reset = reset_counts

    def fault_counts(self) -> dict:
        return {(k, op): n for k, op, n in self._call("GET", "counts")["faults"]}

    def fault_log(self) -> list:
        return [tuple(e) for e in self._call("GET", "counts")["fault_log"]]


def _raise_open_files_limit() -> None:
    """Each client connection holds two sockets; lift the soft limit to the hard one (Unix)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):
        pass


def main(argv: list | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m s3lake_testbed.proxy", description="A latency/fault-injecting proxy for moto."
    )
    parser.add_argument("--upstream", required=True, help="the moto server URL, e.g. http://127.0.0.1:5000")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--seed", type=int, default=0)
    for kind in FAULT_KINDS:
        parser.add_argument(f"--{kind.replace('_', '-')}", type=float, default=0.0, dest=kind,
                            help=f"share of eligible requests answered with {kind}")
    parser.add_argument("--operations", default=None, help="comma-separated operations to fault")
    parser.add_argument("--deny-keys", default=None, metavar="REGEX",
                        help="answer 403 AccessDenied to requests on object keys matching REGEX")
    parser.add_argument("--deny-operations", default=None,
                        help="comma-separated operations --deny-keys applies to (default: all)")
    parser.add_argument("--limit-scale", type=float, default=None, metavar="F",
                        help="emulate S3's per-prefix limits: F x (3,500 writes, 5,500 reads) per second")
    parser.add_argument("--limit-burst", type=float, default=0.5, metavar="SECONDS",
                        help="token bucket depth in seconds of its rate (default 0.5)")
    parser.add_argument("--prefix-depth", type=int, default=1, help="path segments in a prefix (default 1)")
    parser.add_argument("--prefix-regex", default=None, metavar="REGEX",
                        help="a key's prefix is the text REGEX matches at its start (instead of --prefix-depth)")
    args = parser.parse_args(argv)

    def names(text: str | None) -> frozenset | None:
        return frozenset(o.strip() for o in text.split(",") if o.strip()) if text else None

    faults = None
    if any(getattr(args, kind) for kind in FAULT_KINDS) or args.deny_keys is not None:
        faults = FaultPlan(seed=args.seed, operations=names(args.operations), deny_keys=args.deny_keys,
                           deny_operations=names(args.deny_operations),
                           **{k: getattr(args, k) for k in FAULT_KINDS})
    limits = None
    if args.limit_scale is not None:
        try:
            limits = LimitPlan(scale=args.limit_scale, burst=args.limit_burst, prefix_depth=args.prefix_depth,
                               prefix_regex=args.prefix_regex)
        except ValueError as exc:
            parser.error(str(exc))
    proxy = S3Proxy(args.upstream, latency=args.latency, faults=faults, limits=limits, port=args.port,
                    host=args.host)
    _raise_open_files_limit()
    proxy._bind()
    print(proxy.url, flush=True)
    try:
        proxy.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
