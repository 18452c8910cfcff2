"""Strict S3: moto plus the documented S3 behaviours the object jobs depend on and moto lacks.

:func:`install` patches moto's S3 layer inside the moto server process (``python -m
s3lake_testbed.moto_server --strict``, the default of :class:`~s3lake_testbed.MotoServer`). Each
behaviour is one function below, citing the S3 page it emulates:

1. default CRC64NVME full-object checksum on every object written without a client checksum; part
   checksums of multipart uploads created with an algorithm;
3. SSE-C objects refuse HEAD, GET and CopyObject without their customer key;
4. CopyObject onto itself that changes nothing is 400 InvalidRequest;
5. ACL writes on a BucketOwnerEnforced bucket are 400 AccessControlListNotSupported;
6. CopyObject / UploadPartCopy copy-source conditions (412 PreconditionFailed);
7. a retain-until date in the past is 400 InvalidArgument;
8. (moto stricter than S3, undone) CopyObject with Object Lock headers needs no Content-MD5 / checksum;
9. a conditional PutObject (``If-None-Match: *``, ``If-Match``) is decided and written atomically.

Request checks run before moto handles a request (they answer with S3's error); checksum and SSE-C
bookkeeping runs on moto's backend. Plain moto (``strict=False``) stays available.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import functools
import re
import threading
from datetime import datetime, timezone
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlparse
from xml.sax.saxutils import escape

Response = tuple  # (status, headers, body), moto's TYPE_RESPONSE

_installed = False
_lock = threading.Lock()
DEFAULT_ALGORITHM = "CRC64NVME"


class S3Error(Exception):
    """An S3 error answer: HTTP status, S3 error code, message and extra XML fields."""

    def __init__(self, status: int, code: str, message: str, **fields: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message, self.fields = status, code, message, fields

    def response(self) -> Response:
        extra = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in self.fields.items())
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{self.code}</Code>'
                f"<Message>{escape(self.message)}</Message>{extra}<RequestId>strict-s3</RequestId></Error>")
        return self.status, {"Content-Type": "application/xml", "x-amz-strict-s3": self.code}, body


# --- the request moto is about to handle ---------------------------------------------------------

class Request:
    """What a strict check needs to know about one object-level request (``self`` is moto's S3Response)."""

    def __init__(self, response: Any, method: str) -> None:
        self.moto = response
        self.method = method
        self.headers = response.headers
        self.query: dict[str, list] = response.querystring or {}
        self.bucket_name: str = response.bucket_name
        self.key_name: str = response.parse_key_name()

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return value.decode() if isinstance(value, bytes) else value

    @property
    def operation(self) -> str:
        q, m = self.query, self.method
        sub = next((s for s in ("acl", "tagging", "retention", "legal-hold", "attributes", "restore", "select")
                    if s in q), None)
        if m == "PUT":
            if sub:
                return {"acl": "PutObjectAcl", "tagging": "PutObjectTagging", "retention": "PutObjectRetention",
                        "legal-hold": "PutObjectLegalHold"}.get(sub, "Other")
            if "uploadId" in q and "partNumber" in q:
                return "UploadPartCopy" if self.header("x-amz-copy-source") else "UploadPart"
            return "CopyObject" if self.header("x-amz-copy-source") else "PutObject"
        if m == "POST":
            if "uploads" in q:
                return "CreateMultipartUpload"
            return "CompleteMultipartUpload" if "uploadId" in q else "Other"
        if m == "GET" and not sub and "uploadId" not in q:
            return "GetObject"
        if m == "HEAD":
            return "HeadObject"
        return "Other"

    @property
    def backend(self) -> Any:
        return self.moto.backend

    def bucket(self) -> Any:
        return self.backend.get_bucket(self.bucket_name)

    def copy_source(self) -> tuple[str, str, str | None]:
        """(bucket, key, version id or None) named by ``x-amz-copy-source``."""
        parsed = urlparse(self.header("x-amz-copy-source") or "")
        bucket, key = unquote(parsed.path).lstrip("/").split("/", 1)
        return bucket, key, parse_qs(parsed.query).get("versionId", [None])[0]

    def source_key(self) -> Any:
        bucket, key, version = self.copy_source()
        try:
            return self.backend.get_object(bucket, key, version_id=version)
        except Exception:  # noqa: BLE001 - a missing bucket is moto's to answer
            return None

    def target_key(self) -> Any:
        version = self.query.get("versionId", [None])[0]
        try:
            return self.backend.get_object(self.bucket_name, self.key_name, version_id=version)
        except Exception:  # noqa: BLE001
            return None


# --- 1. default CRC64NVME checksum ----------------------------------------------------------------
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html
# Since December 2024 S3 computes a CRC64NVME full-object checksum for every object uploaded without
# one (PutObject, CopyObject, CompleteMultipartUpload) and returns it, with x-amz-checksum-type, to HEAD
# and GET with ChecksumMode=ENABLED; CopyObject and CompleteMultipartUpload return it in their results
# (https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html,
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_CompleteMultipartUpload.html). A copy keeps the
# source's algorithm unless x-amz-checksum-algorithm names another, recomputed over the whole object.

def compute_checksum(body: bytes, algorithm: str, encode_base64: bool = True) -> bytes:
    """moto's ``compute_checksum`` with CRC32C and CRC64NVME from the AWS CRT (moto falls back to CRC32)."""
    from awscrt import checksums

    if algorithm == "CRC32C":
        raw = checksums.crc32c(body).to_bytes(4, "big")
    elif algorithm == "CRC64NVME":
        raw = checksums.crc64nvme(body).to_bytes(8, "big")
    else:
        return _moto_compute_checksum(body, algorithm, encode_base64)
    return base64.b64encode(raw) if encode_base64 else raw


_moto_compute_checksum: Callable[..., bytes] = None  # type: ignore[assignment]


def _value(key: Any) -> bytes:
    return bytes(key.value)


def default_checksum(key: Any) -> None:
    """Give ``key`` S3's default checksum if the client sent none; single-part objects are FULL_OBJECT."""
    if key.checksum_value is None:
        key.checksum_algorithm = DEFAULT_ALGORITHM
        key.checksum_value = compute_checksum(_value(key), DEFAULT_ALGORITHM).decode()
        key.checksum_type, key.checksum_parts = "FULL_OBJECT", None
    elif key.checksum_type is None:
        key.checksum_type = "FULL_OBJECT"


def _patch_checksums(models: Any, responses: Any, utils: Any) -> None:
    global _moto_compute_checksum
    _moto_compute_checksum = utils.compute_checksum
    for module in (models, responses, utils):
        module.compute_checksum = compute_checksum
    backend = models.S3Backend

    put_object = backend.put_object

    @functools.wraps(put_object)
    def strict_put_object(self: Any, *args: Any, **kwargs: Any) -> Any:
        key = put_object(self, *args, **kwargs)
        default_checksum(key)
        return key

    copy_object = backend.copy_object

    @functools.wraps(copy_object)
    def strict_copy_object(self: Any, src_key: Any, dest_bucket_name: str, dest_key_name: str,
                           *args: Any, **kwargs: Any) -> Any:
        algorithm = src_key.checksum_algorithm or DEFAULT_ALGORITHM
        result = copy_object(self, src_key, dest_bucket_name, dest_key_name, *args, **kwargs)
        new_key = self.get_object(dest_bucket_name, dest_key_name)
        new_key.checksum_algorithm = algorithm
        new_key.checksum_value = compute_checksum(_value(new_key), algorithm).decode()
        new_key.checksum_type, new_key.checksum_parts = "FULL_OBJECT", None
        return result

    complete = backend.complete_multipart_upload

    @functools.wraps(complete)
    def strict_complete(self: Any, bucket_name: str, multipart_id: str, body: Any) -> Any:
        multipart = self.get_bucket(bucket_name).multiparts.get(multipart_id)
        sse_c = getattr(multipart, "strict_sse_c", None)
        key = complete(self, bucket_name, multipart_id, body)
        if key is not None:
            # moto computes CRC64NVME FULL_OBJECT for an upload created without an algorithm, but
            # leaves the key's algorithm unset, so nothing is returned
            key.checksum_algorithm = key.checksum_algorithm or DEFAULT_ALGORITHM
            default_checksum(key)
            if sse_c:
                key.strict_sse_c = sse_c
        return key

    backend.put_object, backend.copy_object = strict_put_object, strict_copy_object
    backend.complete_multipart_upload = strict_complete


def _qualified(key: Any) -> str:
    if key.checksum_type == "COMPOSITE" and key.checksum_parts:
        return f"{key.checksum_value}-{key.checksum_parts}"
    return key.checksum_value


def _insert_xml(body: Any, closing_tag: str, xml: str) -> Any:
    text = body.decode() if isinstance(body, bytes) else body
    if not text or closing_tag not in text:
        return body
    return text.replace(closing_tag, xml + closing_tag, 1)


def checksum_answers(req: Request, status: int, headers: dict, body: Any) -> tuple[dict, Any]:
    """Return the stored checksum where S3 does and moto does not (types, composite suffix, results)."""
    op = req.operation
    if status != 200 or op not in ("PutObject", "CopyObject", "CompleteMultipartUpload", "HeadObject"):
        return headers, body
    version = headers.get("x-amz-version-id")
    if op == "HeadObject":
        key = req.target_key()
    else:
        key = req.backend.get_object(req.bucket_name, req.key_name,
                                     version_id=version if version not in (None, "null") else None)
    if key is None or not key.checksum_algorithm or not key.checksum_value:
        return headers, body
    name = f"Checksum{key.checksum_algorithm}"
    header = f"x-amz-checksum-{key.checksum_algorithm.lower()}"
    if op == "HeadObject":
        if req.header("x-amz-checksum-mode") == "ENABLED" and not req.header("range"):
            headers[header] = _qualified(key)
            headers["x-amz-checksum-type"] = key.checksum_type or "FULL_OBJECT"
    elif op == "PutObject":
        headers.setdefault(header, key.checksum_value)
        headers["x-amz-checksum-type"] = key.checksum_type or "FULL_OBJECT"
    else:
        if op == "CopyObject":
            body = _insert_xml(body, "</CopyObjectResult>", f"<ChecksumType>{key.checksum_type}</ChecksumType>")
        else:
            xml = f"<{name}>{_qualified(key)}</{name}><ChecksumType>{key.checksum_type}</ChecksumType>"
            body = _insert_xml(body, "</CompleteMultipartUploadResult>", xml)
        for k in [k for k in headers if k.lower() == "content-length"]:  # the XML result grew
            headers[k] = str(len(body.encode() if isinstance(body, str) else body))
    return headers, body


# Multipart uploads created with a checksum algorithm
# (https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html#large-object-checksums,
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_UploadPartCopy.html,
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_CompleteMultipartUpload.html): UploadPartCopy returns
# the part's checksum in CopyPartResult; a part sent with another algorithm is 400; a COMPOSITE upload's
# Complete must list every part's checksum (400 InvalidRequest otherwise). moto checks none of this.

CHECKSUM_HEADERS = ("x-amz-checksum-type", "x-amz-checksum-algorithm", "x-amz-checksum-mode")


def upload_checksum(req: Request) -> tuple[Any, str | None, str | None]:
    """(the upload named by ``uploadId``, its algorithm, its checksum type)."""
    upload_id = req.query.get("uploadId", [None])[0]
    try:
        multipart = req.bucket().multiparts.get(upload_id) if upload_id else None
    except Exception:  # noqa: BLE001
        multipart = None
    if multipart is None:
        return None, None, None
    algorithm = (multipart.metadata.get("x-amz-checksum-algorithm") or "").upper() or None
    kind = multipart.metadata.get("x-amz-checksum-type") or (
        "FULL_OBJECT" if algorithm == DEFAULT_ALGORITHM else "COMPOSITE")
    return multipart, algorithm, kind if algorithm else None


def _part_algorithm(req: Request) -> str | None:
    names = [h.lower() for h in req.headers.keys()]
    trailer = (req.header("x-amz-trailer") or "").lower()
    for name in names + [trailer]:
        if name.startswith("x-amz-checksum-") and name not in CHECKSUM_HEADERS:
            return name[len("x-amz-checksum-"):].upper()
    sdk = req.header("x-amz-sdk-checksum-algorithm")
    return sdk.upper() if sdk else None


def check_part_checksums(req: Request) -> None:
    op = req.operation
    if op not in ("UploadPart", "CompleteMultipartUpload"):
        return
    _, algorithm, kind = upload_checksum(req)
    if not algorithm:
        return
    if op == "UploadPart":
        given = _part_algorithm(req)
        if (given and given != algorithm) or (given is None and kind == "COMPOSITE"):
            raise S3Error(400, "InvalidRequest", f"Checksum Type mismatch occurred, expected checksum Type: "
                                                 f"{algorithm.lower()}, actual checksum Type: "
                                                 f"{given.lower() if given else 'null'}")
        return
    if kind != "COMPOSITE":
        return
    body = req.moto.body
    text = body.decode(errors="replace") if isinstance(body, bytes) else (body or "")
    for part in re.findall(r"<Part>(.*?)</Part>", text, flags=re.S):
        number = re.search(r"<PartNumber>\s*(\d+)\s*</PartNumber>", part)
        if f"<Checksum{algorithm}>" not in part:
            raise S3Error(400, "InvalidRequest", f"The upload was created using a {algorithm.lower()} checksum. "
                                                 f"The complete request must include the checksum for each part. "
                                                 f"It was missing for part {number.group(1) if number else '?'} "
                                                 f"in the request.")


def check_client_checksum(req: Request) -> None:
    """A checksum the client sent with PutObject / UploadPart must match the bytes: 400 BadDigest otherwise
    (https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity-upload.html); moto
    stores whatever value it is given."""
    if req.operation not in ("PutObject", "UploadPart"):
        return
    algorithm = _part_algorithm(req)
    if not algorithm or algorithm not in ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"):
        return
    value = req.header(f"x-amz-checksum-{algorithm.lower()}")
    if not value:
        raw = req.moto.raw_body if isinstance(req.moto.raw_body, bytes) else b""
        found = re.search(rb"x-amz-checksum-" + algorithm.lower().encode() + rb":\s*([A-Za-z0-9+/=]+)", raw)
        value = found.group(1).decode() if found else None
    if value and compute_checksum(bytes(req.moto.body or b""), algorithm).decode() != value:
        raise S3Error(400, "BadDigest", f"The {algorithm} you specified did not match the calculated checksum.")


def part_copy_checksum(req: Request, status: int, headers: dict, body: Any) -> Any:
    """UploadPartCopy's CopyPartResult carries the part's checksum when the upload has an algorithm."""
    if status != 200 or req.operation != "UploadPartCopy":
        return body
    multipart, algorithm, _ = upload_checksum(req)
    part = multipart.parts.get(int(req.query.get("partNumber", ["0"])[0])) if multipart else None
    if not algorithm or part is None:
        return body
    value = compute_checksum(_value(part), algorithm).decode()
    body = _insert_xml(body, "</CopyPartResult>", f"<Checksum{algorithm}>{value}</Checksum{algorithm}>")
    for k in [k for k in headers if k.lower() == "content-length"]:
        headers[k] = str(len(body.encode() if isinstance(body, str) else body))
    return body


# --- 3. SSE-C -------------------------------------------------------------------------------------
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/ServerSideEncryptionCustomerKeys.html and
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_HeadObject.html, API_GetObject.html,
# API_CopyObject.html (x-amz-copy-source-server-side-encryption-customer-*): an object stored with SSE-C
# can only be read, or copied from, with its key. Without it S3 answers 400 InvalidRequest (HEAD: 400 with
# no body), with another key 403 AccessDenied; SSE-C headers on an object not stored with SSE-C are 400.

SSE_C_MISSING = ("The object was stored using a form of Server Side Encryption. The correct parameters must be "
                 "provided to retrieve the object.")
SSE_C_NOT_APPLICABLE = "The encryption parameters are not applicable to this object."
SSE_C = "x-amz-server-side-encryption-customer-"
COPY_SSE_C = "x-amz-copy-source-server-side-encryption-customer-"


def _sse_c_of(req: Request, prefix: str) -> tuple[str, str] | None:
    algorithm = req.header(prefix + "algorithm")
    if not algorithm:
        return None
    md5 = req.header(prefix + "key-MD5") or req.header(prefix + "key-md5")
    if not md5 and req.header(prefix + "key"):
        import hashlib

        md5 = base64.b64encode(hashlib.md5(base64.b64decode(req.header(prefix + "key") or "")).digest()).decode()
    return algorithm, md5 or ""


def _check_key(stored: tuple[str, str] | None, given: tuple[str, str] | None) -> None:
    if stored and not given:
        raise S3Error(400, "InvalidRequest", SSE_C_MISSING)
    if given and not stored:
        raise S3Error(400, "InvalidRequest", SSE_C_NOT_APPLICABLE)
    if stored and given and stored[1] != given[1]:
        raise S3Error(403, "AccessDenied", "Access Denied")


def check_sse_c(req: Request) -> None:
    op = req.operation
    if op in ("GetObject", "HeadObject"):
        key = req.target_key()
        if key is not None:
            _check_key(getattr(key, "strict_sse_c", None), _sse_c_of(req, SSE_C))
    elif op in ("CopyObject", "UploadPartCopy"):
        key = req.source_key()
        if key is not None:
            _check_key(getattr(key, "strict_sse_c", None), _sse_c_of(req, COPY_SSE_C))


def record_sse_c(req: Request, status: int, headers: dict, body: Any) -> None:
    """Remember the customer key's MD5 on what was written (moto ignores SSE-C altogether)."""
    op = req.operation
    given = _sse_c_of(req, SSE_C)
    if status != 200 or not given or op not in ("PutObject", "CopyObject", "CreateMultipartUpload"):
        return
    if op == "CreateMultipartUpload":
        text = body.decode() if isinstance(body, bytes) else body
        found = re.search(r"<UploadId>([^<]+)</UploadId>", text or "")
        multipart = req.bucket().multiparts.get(found.group(1)) if found else None
        if multipart is not None:
            multipart.strict_sse_c = given
        return
    version = headers.get("x-amz-version-id")
    key = req.backend.get_object(req.bucket_name, req.key_name,
                                 version_id=version if version not in (None, "null") else None)
    if key is not None:
        key.strict_sse_c = given
        headers[SSE_C + "algorithm"], headers[SSE_C + "key-MD5"] = given


def _patch_sse_c_headers(models: Any) -> None:
    response_dict = models.FakeKey.response_dict.fget

    def strict_response_dict(self: Any) -> dict:
        res = response_dict(self)
        sse_c = getattr(self, "strict_sse_c", None)
        if sse_c:
            res.pop("x-amz-server-side-encryption", None)  # S3 names SSE-C by its own two headers only
            res[SSE_C + "algorithm"], res[SSE_C + "key-MD5"] = sse_c
        return res

    models.FakeKey.response_dict = property(strict_response_dict)


# --- 4. self-copy must change something -----------------------------------------------------------
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html: copying an object onto itself
# without changing its metadata (MetadataDirective REPLACE), storage class, website redirect location or
# encryption attributes is 400 InvalidRequest. moto also lets it through whenever the bucket has a default
# encryption configuration, which every S3 bucket has since January 2023. Naming a source version on a
# versioned bucket (restoring a version) is a regular copy and allowed, as in moto.

SELF_COPY = ("This copy request is illegal because it is trying to copy an object to itself without changing the "
             "object's metadata, storage class, website redirect location or encryption attributes.")


def check_self_copy(req: Request) -> None:
    if req.operation != "CopyObject":
        return
    bucket, key, version = req.copy_source()
    if (bucket, key) != (req.bucket_name, req.key_name):
        return
    try:
        versioned = req.bucket().is_versioned
    except Exception:  # noqa: BLE001
        return
    if versioned and version:
        return
    source = req.source_key()
    if source is None:
        return
    changes = (
        req.header("x-amz-storage-class"),
        req.header("x-amz-server-side-encryption"),
        req.header(SSE_C + "algorithm"),
        req.header("x-amz-website-redirect-location"),
        (req.header("x-amz-metadata-directive") or "COPY").upper() == "REPLACE",
        # as moto: an SSE-KMS source copied without encryption headers becomes SSE-S3, a change
        source.encryption not in (None, "AES256") and not req.header("x-amz-server-side-encryption"),
    )
    if not any(changes):
        raise S3Error(400, "InvalidRequest", SELF_COPY)


# --- 5. ACLs disabled (BucketOwnerEnforced) -------------------------------------------------------
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-ownership-error-responses.html and
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/about-object-ownership.html: with the bucket owner
# enforced setting, requests to set or update ACLs fail with 400 AccessControlListNotSupported ("The
# bucket does not allow ACLs"); PUT requests must specify no ACL or the bucket-owner-full-control canned
# ACL. Reading ACLs still works.

ACL_WRITES = ("PutObject", "CopyObject", "CreateMultipartUpload")


def check_acl_disabled(req: Request) -> None:
    op = req.operation
    if op != "PutObjectAcl" and op not in ACL_WRITES:
        return
    try:
        ownership = req.bucket().ownership_rule
    except Exception:  # noqa: BLE001
        return
    if ownership != "BucketOwnerEnforced":
        return
    canned = req.header("x-amz-acl")
    grants = [h for h in req.headers.keys() if h.lower().startswith("x-amz-grant-")]
    if op == "PutObjectAcl" or grants or (canned and canned != "bucket-owner-full-control"):
        raise S3Error(400, "AccessControlListNotSupported", "The bucket does not allow ACLs")


# --- 6. copy-source conditions --------------------------------------------------------------------
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html and API_UploadPartCopy.html:
# x-amz-copy-source-if-match / -if-none-match / -if-modified-since / -if-unmodified-since are evaluated on
# the source; a failed condition is 412 PreconditionFailed. When if-match holds, if-unmodified-since is
# not evaluated; when if-none-match is present it decides and if-modified-since is not evaluated
# (https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-requests.html). moto checks only
# if-none-match, and only on CopyObject.

PRECONDITION = "At least one of the pre-conditions you specified did not hold"


def _etags(value: str) -> list[str]:
    return [t.strip().strip('"') for t in value.split(",")]


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # S3 ignores a date it cannot parse
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def check_copy_conditions(req: Request) -> None:
    if req.operation not in ("CopyObject", "UploadPartCopy"):
        return
    prefix = "x-amz-copy-source-if-"
    if_match, if_none_match = req.header(prefix + "match"), req.header(prefix + "none-match")
    modified, unmodified = _http_date(req.header(prefix + "modified-since")), \
        _http_date(req.header(prefix + "unmodified-since"))
    if not (if_match or if_none_match or modified or unmodified):
        return
    source = req.source_key()
    if source is None:
        return
    etag = source.etag.strip('"')
    last_modified = source.last_modified.replace(microsecond=0, tzinfo=timezone.utc)

    def fail(condition: str) -> S3Error:
        return S3Error(412, "PreconditionFailed", PRECONDITION, Condition=condition)

    if if_match:
        if etag not in _etags(if_match) and "*" not in _etags(if_match):
            raise fail("x-amz-copy-source-If-Match")
    elif unmodified and last_modified > unmodified:
        raise fail("x-amz-copy-source-If-Unmodified-Since")
    if if_none_match:
        if etag in _etags(if_none_match) or "*" in _etags(if_none_match):
            raise fail("x-amz-copy-source-If-None-Match")
    elif modified and last_modified <= modified:
        raise fail("x-amz-copy-source-If-Modified-Since")


# --- 7. Object Lock: retain-until in the past -----------------------------------------------------
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-lock.html (a retention period is a point
# in the future) and API_PutObject.html / API_PutObjectRetention.html: a retain-until date that is not
# in the future is 400 InvalidArgument "The retain until date must be in the future!".

RETAIN_PAST = "The retain until date must be in the future!"


def _iso_date(value: str) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def check_retain_until(req: Request) -> None:
    op = req.operation
    if op in ("PutObject", "CopyObject", "CreateMultipartUpload"):
        name = "x-amz-object-lock-retain-until-date"
        value = req.header(name)
    elif op == "PutObjectRetention":
        name = "RetainUntilDate"
        body = req.moto.body
        text = body.decode(errors="replace") if isinstance(body, bytes) else (body or "")
        found = re.search(r"<RetainUntilDate>([^<]+)</RetainUntilDate>", text)
        value = found.group(1) if found else None
    else:
        return
    until = _iso_date(value) if value else None
    if until is not None and until <= datetime.now(timezone.utc):
        raise S3Error(400, "InvalidArgument", RETAIN_PAST, ArgumentName=name, ArgumentValue=value)


# --- wiring ---------------------------------------------------------------------------------------

# --- 9. conditional PutObject, decided atomically ---------------------------------------------------
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html and API_PutObject.html:
# ``If-None-Match: *`` writes only if no object has the key (412 PreconditionFailed otherwise); ``If-Match``
# writes only if the current object's ETag is the one given (412 otherwise; 404 NoSuchKey when there is no
# object). S3 decides a condition and the write as one step: of concurrent conditional writes to one key,
# one wins and the others fail (409 ConditionalRequestConflict or 412). moto checks the condition and then
# writes, unlocked, in a threaded server: two claims could both win. Here both happen under one lock.

_conditional = threading.Lock()


def is_conditional_put(req: Request) -> bool:
    return req.operation == "PutObject" and bool(req.header("if-none-match") or req.header("if-match"))


def check_conditional_put(req: Request) -> None:
    """Runs under ``_conditional`` (see :func:`install`)."""
    if not is_conditional_put(req):
        return
    try:
        current = req.backend.get_object(req.bucket_name, req.key_name)
    except Exception:  # noqa: BLE001 - a missing bucket is moto's to answer
        return
    if current is not None and getattr(current, "is_delete_marker", False):
        current = None
    if_match, if_none_match = req.header("if-match"), req.header("if-none-match")
    if if_none_match and "*" in _etags(if_none_match) and current is not None:
        raise S3Error(412, "PreconditionFailed", PRECONDITION, Condition="If-None-Match")
    if if_match:
        if current is None:
            raise S3Error(404, "NoSuchKey", "The specified key does not exist.", Key=req.key_name)
        if current.etag.strip('"') not in _etags(if_match) and "*" not in _etags(if_match):
            raise S3Error(412, "PreconditionFailed", PRECONDITION, Condition="If-Match")


CHECKS: tuple[Callable[[Request], None], ...] = (
    check_sse_c, check_copy_conditions, check_self_copy, check_acl_disabled, check_retain_until,
    check_part_checksums, check_client_checksum, check_conditional_put,
)


def _patch_copy_lock_checksum(responses: Any) -> None:
    """CopyObject with Object Lock headers: accepted without Content-MD5 / x-amz-sdk-checksum-algorithm.

    S3 requires one of them "for any request to upload an object with a retention period configured using
    Amazon S3 Object Lock" (API_PutObject.html, Content-MD5): a payload write. CopyObject has no payload and no
    Content-MD5 parameter at all (https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html), yet moto
    refuses it with MissingUploadObjectWithObjectLockHeaders: a copy in place of a locked object, legal hold
    included, could not be tested. Strict mode must not be stricter than S3.
    """
    key_response_put = responses.S3Response._key_response_put
    lock_headers = ("x-amz-object-lock-mode", "x-amz-object-lock-retain-until-date", "x-amz-object-lock-legal-hold")

    @functools.wraps(key_response_put)
    def copy_lock_without_checksum(self: Any, query: dict, key_name: str) -> Any:
        headers = self.headers
        if (headers.get("x-amz-copy-source") and "partNumber" not in query
                and any(headers.get(h) for h in lock_headers)
                and not (headers.get("Content-MD5") or headers.get("x-amz-sdk-checksum-algorithm"))):
            from werkzeug.datastructures import Headers

            patched = Headers(headers)
            patched["x-amz-sdk-checksum-algorithm"] = "CRC64NVME"  # read by moto's lock check only
            self.headers = patched
        return key_response_put(self, query, key_name)

    responses.S3Response._key_response_put = copy_lock_without_checksum


def install() -> None:
    """Make this process's moto S3 strict (idempotent). Call before the server handles a request."""
    global _installed
    with _lock:
        if _installed:
            return
        from moto.s3 import models, responses, utils

        _patch_checksums(models, responses, utils)
        _patch_sse_c_headers(models)
        _patch_copy_lock_checksum(responses)
        key_response = responses.S3Response._key_response

        @functools.wraps(key_response)
        def strict_key_response(self: Any, request: Any, full_url: str) -> Any:
            req = Request(self, request.method)
            with _conditional if is_conditional_put(req) else contextlib.nullcontext():
                try:
                    for check in CHECKS:
                        check(req)
                except S3Error as error:
                    return error.response()
                result = key_response(self, request, full_url)
            if not (isinstance(result, tuple) and len(result) == 3):
                return result
            status, headers, body = result
            headers = dict(headers)
            record_sse_c(req, status, headers, body)
            headers, body = checksum_answers(req, status, headers, body)
            body = part_copy_checksum(req, status, headers, body)
            return status, headers, body

        responses.S3Response._key_response = strict_key_response
        _installed = True
