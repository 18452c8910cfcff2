"""What "every attribute" of an object is: read it from one HEAD, re-send it on a write.

Used by every job that rewrites an object in place (copy-in-place, anonymize), so the list of what
"keeping every attribute" means lives in one place:

* system headers: Content-Type, Cache-Control, Content-Disposition, Content-Encoding, Content-Language,
  Expires, WebsiteRedirectLocation (``MetadataDirective=REPLACE`` drops them unless re-sent);
* user metadata;
* storage class;
* SSE: AES256, or aws:kms / aws:kms:dsse with the exact key id and BucketKeyEnabled;
* checksum algorithm; Object Lock mode, retain-until date and legal hold.

ACL grants ride on the same write (:mod:`s3lake.acl_grants`).

Reference: CopyObject https://docs.aws.amazon.com/AmazonS3/latest/API/API_CopyObject.html (metadata
directive, SSE, storage class, self-copy rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
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
CHECKSUM_KEYS = {"ChecksumCRC32": "CRC32", "ChecksumCRC32C": "CRC32C", "ChecksumSHA1": "SHA1",
                 "ChecksumSHA256": "SHA256", "ChecksumCRC64NVME": "CRC64NVME"}
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

    @classmethod
    def from_head(cls, bucket: str, key: str, head: Mapping[str, Any]) -> ObjectState:
        headers = {name: head[name] for name in SYSTEM_HEADERS if head.get(name) not in (None, "")}
        if "Expires" not in headers and head.get("ExpiresString"):
            headers["Expires"] = head["ExpiresString"]
        lock = {k: head[k] for k in ("ObjectLockMode", "ObjectLockRetainUntilDate", "ObjectLockLegalHoldStatus")
                if head.get(k)}
        version = head.get("VersionId")
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
            checksum_algorithm=next((alg for k, alg in CHECKSUM_KEYS.items() if head.get(k)), None),
            object_lock=lock,
            tag_count=int(head.get("TagCount") or 0),
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


def write_attributes(state: ObjectState, *, metadata: Mapping[str, str] | None = None,
                     checksum_algorithm: str | None = None) -> dict[str, Any]:
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
    params.update(state.object_lock)
    return params
