"""What the object jobs look up once per bucket, on the driver, before any object is touched.

The lookup doubles as the reachability check: a bucket that is missing, in another region or denied
stops the run with one line (exit 2) before the first object request. S3's answers:
NoSuchBucket (404), PermanentRedirect (301, with ``x-amz-bucket-region``) or AuthorizationHeaderMalformed
(400, the request signed for the wrong region), AccessDenied (403); see
https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html and
https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetBucketOwnershipControls.html.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from s3lake import aws
from s3lake.errors import BucketUnreachableError

OTHER_REGION_CODES = frozenset({"PermanentRedirect", "301", "AuthorizationHeaderMalformed",
                                "IllegalLocationConstraintException"})


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
        response = s3.get_bucket_ownership_controls(Bucket=bucket)
        _check_region(bucket, response)
        rules = response["OwnershipControls"]["Rules"]
        enforced = any(r.get("ObjectOwnership") == "BucketOwnerEnforced" for r in rules)
    except BucketUnreachableError:
        raise
    except Exception as exc:  # noqa: BLE001
        if aws.error_code(exc) != "OwnershipControlsNotFoundError":
            raise unreachable(bucket, exc) from None
        _check_region(bucket, getattr(exc, "response", {}))
        enforced = False
    owner = None
    if copy_acls and not enforced:
        requests += 1
        try:
            owner = s3.get_bucket_acl(Bucket=bucket)["Owner"].get("ID")
        except Exception as exc:  # noqa: BLE001
            raise unreachable(bucket, exc) from None
    return BucketInfo(acls_enabled=not enforced, owner_id=owner), requests


def _check_region(bucket: str, response: Any) -> None:
    headers = (response or {}).get("ResponseMetadata", {}).get("HTTPHeaders", {})
    found = headers.get("x-amz-bucket-region")
    if found and found != aws.region():
        raise BucketUnreachableError(f"bucket {bucket} is in {found}, not {aws.region()}: run the job there")


def unreachable(bucket: str, exc: BaseException) -> BucketUnreachableError:
    """The one-line error for a failed bucket lookup."""
    code = aws.error_code(exc)
    if code in ("NoSuchBucket", "404"):
        return BucketUnreachableError(f"bucket {bucket} does not exist (NoSuchBucket)")
    if code in OTHER_REGION_CODES:
        headers = getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPHeaders", {})
        where = headers.get("x-amz-bucket-region") or "another region"
        return BucketUnreachableError(f"bucket {bucket} is in {where}, not {aws.region()} ({code}): run the job there")
    if code in ("AccessDenied", "403", "AllAccessDisabled", "InvalidAccessKeyId"):
        return BucketUnreachableError(f"access to bucket {bucket} denied ({code})")
    return BucketUnreachableError(f"cannot use bucket {bucket}: {code}: {str(exc).splitlines()[0] if str(exc) else ''}")
