"""Helpers that create AWS resources in the local endpoint and snapshot object state."""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from s3lake import aws


def make_bucket(name: str, *, versioned: bool = False, ownership: str | None = None) -> str:
    """Create ``name``; ``ownership`` is an ObjectOwnership value such as ``BucketOwnerEnforced``."""
    s3 = aws.s3()
    kwargs: dict[str, Any] = {"Bucket": name}
    if ownership:
        kwargs["ObjectOwnership"] = ownership
    s3.create_bucket(**kwargs)
    if versioned:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def writer() -> Any:
    """An S3 client that sends no checksum of its own, as most of a lake's writers do (Firehose, older SDKs).

    Strict S3 then gives each object S3's default CRC64NVME full-object checksum, the way S3 stores
    every new object since December 2024; seeded fixtures are written through it.
    """
    return _writer(aws.endpoint_url("s3"), aws.region())


@functools.cache
def _writer(endpoint: str | None, region: str) -> Any:
    import boto3
    from botocore.config import Config

    config = aws.client_config().merge(Config(request_checksum_calculation="when_required"))
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)


def make_kms_key(description: str = "s3lake test key") -> str:
    """A new symmetric KMS key; returns its ARN."""
    return aws.client("kms").create_key(Description=description)["KeyMetadata"]["Arn"]


def make_glue_database(name: str) -> str:
    glue = aws.glue()
    try:
        glue.create_database(DatabaseInput={"Name": name})
    except glue.exceptions.AlreadyExistsException:
        pass
    return name


def object_state(bucket: str, key: str, *, with_acl: bool = True) -> dict[str, Any]:
    """Everything a user can observe about an object: HEAD fields, ACL, tags, bytes, version count."""
    s3 = aws.s3()
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    # moto refuses GET, tagging and ACL reads on archived objects (S3 refuses only the GET)
    archived = head.get("StorageClass") in ("GLACIER", "DEEP_ARCHIVE") and not head.get("Restore")
    if archived:
        digest, tags = "archived", [{"Key": "?", "Value": "archived"}]
    else:
        digest = hashlib.sha256(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).hexdigest()
        tags = s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    state: dict[str, Any] = {
        "content_type": head.get("ContentType"),
        "cache_control": head.get("CacheControl"),
        "content_disposition": head.get("ContentDisposition"),
        "content_encoding": head.get("ContentEncoding"),
        "content_language": head.get("ContentLanguage"),
        "expires": head.get("ExpiresString") or (str(head["Expires"]) if head.get("Expires") else None),
        "website_redirect_location": head.get("WebsiteRedirectLocation"),
        "metadata": dict(head.get("Metadata", {})),
        "storage_class": head.get("StorageClass", "STANDARD"),
        "sse": head.get("ServerSideEncryption"),
        "kms_key": head.get("SSEKMSKeyId"),
        "bucket_key": head.get("BucketKeyEnabled"),
        "object_lock_mode": head.get("ObjectLockMode"),
        "object_lock_retain_until": head.get("ObjectLockRetainUntilDate"),
        "legal_hold": head.get("ObjectLockLegalHoldStatus"),
        # the algorithm and type S3 keeps (the value follows from the bytes, compared as sha256)
        "checksum": checksum_kind(head),
        "tags": sorted((t["Key"], t["Value"]) for t in tags),
        "size": head["ContentLength"],
        "sha256": digest,
        "versions": count_versions(bucket, key),
    }
    if with_acl:
        acl = {"Owner": {"ID": "archived"}, "Grants": []} if archived else s3.get_object_acl(Bucket=bucket, Key=key)
        state["owner"] = acl["Owner"].get("ID")
        state["grants"] = sorted(json.dumps(g, sort_keys=True) for g in acl["Grants"])
    return state


def checksum_kind(head: dict[str, Any]) -> str | None:
    """``"CRC64NVME FULL_OBJECT"``: the stored checksum's algorithm and type from a HEAD with ChecksumMode."""
    names = sorted(k[len("Checksum"):] for k in head if k.startswith("Checksum") and k != "ChecksumType")
    return " ".join(names + [head.get("ChecksumType") or "?"]) if names else None


def count_versions(bucket: str, key: str) -> int:
    s3 = aws.s3()
    n = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key):
        n += sum(1 for v in page.get("Versions", []) if v["Key"] == key)
        n += sum(1 for v in page.get("DeleteMarkers", []) if v["Key"] == key)
    return n
