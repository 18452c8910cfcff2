"""What the object jobs look up once per bucket, on the driver, before any object is touched."""

from __future__ import annotations

from dataclasses import dataclass

from s3lake import aws


@dataclass(frozen=True)
class BucketInfo:
    """Looked up once per bucket on the driver."""

    acls_enabled: bool
    owner_id: str | None


def bucket_info(bucket: str, copy_acls: bool) -> tuple[BucketInfo, int]:
    """ACLs enabled? (ObjectOwnership != BucketOwnerEnforced) and the bucket owner's id; plus requests made."""
    s3 = aws.s3()
    requests = 1
    try:
        rules = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
        enforced = any(r.get("ObjectOwnership") == "BucketOwnerEnforced" for r in rules)
    except Exception as exc:  # noqa: BLE001
        if aws.error_code(exc) != "OwnershipControlsNotFoundError":
            raise
        enforced = False
    owner = None
    if copy_acls and not enforced:
        requests += 1
        owner = s3.get_bucket_acl(Bucket=bucket)["Owner"].get("ID")
    return BucketInfo(acls_enabled=not enforced, owner_id=owner), requests
