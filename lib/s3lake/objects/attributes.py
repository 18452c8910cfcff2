"""What "every attribute" of an object is: read it from one HEAD, re-send it on a write.

Used by every job that rewrites an object in place (copy-in-place, anonymize), so the list of what
"keeping every attribute" means lives in one place:

* system headers: Content-Type, Cache-Control, Content-Disposition, Content-Encoding, Content-Language,
  Expires, WebsiteRedirectLocation (``MetadataDirective=REPLACE`` drops them unless re-sent);
* user metadata;
* storage class;
* SSE: AES256, or aws:kms / aws:kms:dsse with the exact key id and BucketKeyEnabled;
* checksum: every algorithm botocore's S3 service model knows (CRC32, CRC32C, CRC64NVME, SHA1, SHA256
  and newer ones), and its type (FULL_OBJECT or COMPOSITE) where the write can carry it;
* Object Lock: mode and retain-until date while the date is in the future (S3 rejects a past one),
  and the legal hold.

ACL grants ride on the same write (:mod:`s3lake.objects.acl_grants`).

References: CopyObject https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html (metadata
directive, SSE, storage class, self-copy rule); checksums and their types
https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html (FULL_OBJECT for
CRC32/CRC32C/CRC64NVME, COMPOSITE for CRC32/CRC32C/SHA1/SHA256; CRC64NVME is always full-object; a
single CopyObject/PutObject gives a full-object checksum); Object Lock
https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-lock.html (a retain-until date must be in
the future); user-defined metadata (2 KB, the UTF-8 bytes of every key and value)
https://docs.aws.amazon.com/AmazonS3/latest/userguide/UsingMetadata.html#UserMetadata.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

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
# S3's default checksum since December 2024, and the one for a write whose source has none.
DEFAULT_CHECKSUM = "CRC64NVME"
FULL_OBJECT_ONLY = frozenset({"CRC64NVME"})
COMPOSITE_ONLY = frozenset({"SHA1", "SHA256"})
MAX_USER_METADATA = 2048  # bytes: UTF-8 of every key and value (S3 answers MetadataTooLarge above)
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
    checksum_type: str | None = None  # FULL_OBJECT or COMPOSITE
    checksum_value: str | None = None  # base64, as HEAD returns it (``-N`` suffix for a composite one)

    @classmethod
    def from_head(cls, bucket: str, key: str, head: Mapping[str, Any]) -> ObjectState:
        headers = {name: head[name] for name in SYSTEM_HEADERS if head.get(name) not in (None, "")}
        if "Expires" not in headers and head.get("ExpiresString"):
            headers["Expires"] = head["ExpiresString"]
        lock = {k: head[k] for k in ("ObjectLockMode", "ObjectLockRetainUntilDate", "ObjectLockLegalHoldStatus")
                if head.get(k)}
        version = head.get("VersionId")
        algorithm = next((alg for k, alg in checksum_keys().items() if head.get(k)), None)
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
            checksum_algorithm=algorithm,
            object_lock=lock,
            tag_count=int(head.get("TagCount") or 0),
            checksum_type=head.get("ChecksumType") if algorithm else None,
            checksum_value=head.get(f"Checksum{algorithm}") if algorithm else None,
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


@functools.lru_cache(maxsize=1)
def checksum_keys() -> dict[str, str]:
    """``{"ChecksumCRC32": "CRC32", ...}`` for every checksum algorithm in botocore's S3 model that
    HeadObject can return, so an algorithm S3 adds later is kept without a code change."""
    import botocore.session

    model = botocore.session.Session().get_service_model("s3")
    returned = model.operation_model("HeadObject").output_shape.members
    return {f"Checksum{alg}": alg for alg in model.shape_for("ChecksumAlgorithm").enum if f"Checksum{alg}" in returned}


def checksum_type_for(algorithm: str, wanted: str | None) -> str:
    """The multipart checksum type that keeps ``wanted`` where ``algorithm`` allows it."""
    if algorithm in FULL_OBJECT_ONLY:
        return "FULL_OBJECT"
    if algorithm in COMPOSITE_ONLY:
        return "COMPOSITE"
    return wanted or "FULL_OBJECT"


def multipart_checksum(state: ObjectState) -> dict[str, str]:
    """``ChecksumAlgorithm`` + ``ChecksumType`` for CreateMultipartUpload: the object's own algorithm and
    type (S3's default CRC64NVME for an object without one)."""
    algorithm = state.checksum_algorithm or DEFAULT_CHECKSUM
    return {"ChecksumAlgorithm": algorithm, "ChecksumType": checksum_type_for(algorithm, state.checksum_type)}


def metadata_size(metadata: Mapping[str, str]) -> int:
    """S3's measure of user-defined metadata: the UTF-8 bytes of every key and value."""
    return sum(len(k.encode("utf-8")) + len(str(v).encode("utf-8")) for k, v in metadata.items())


def lock_to_resend(lock: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """The Object Lock headers a new version can carry: the legal hold always; mode and retain-until date
    only while that date is in the future (S3 answers 400 to a past one, and the lock has expired)."""
    out = {k: v for k, v in lock.items() if k == "ObjectLockLegalHoldStatus"}
    until = lock.get("ObjectLockRetainUntilDate")
    if isinstance(until, str):
        try:
            until = datetime.fromisoformat(until.replace("Z", "+00:00"))
        except ValueError:
            until = None
    if isinstance(until, datetime):
        if until.tzinfo is None:
            until = until.replace(tzinfo=timezone.utc)
        if until > (now or datetime.now(timezone.utc)):
            out.update({k: lock[k] for k in ("ObjectLockMode", "ObjectLockRetainUntilDate") if k in lock})
    return out


def write_attributes(state: ObjectState, *, metadata: Mapping[str, str] | None = None,
                     checksum_algorithm: str | None = None, now: datetime | None = None) -> dict[str, Any]:
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
    params.update(lock_to_resend(state.object_lock, now))
    return params
