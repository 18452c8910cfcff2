"""Replication configurations for test buckets (PutBucketReplication through the local endpoint).

moto accepts the configuration but never replicates; a later inventory delivery written with
:func:`s3lake_testbed.inventory.inventory_row` ``(replication_status=...)`` plays what S3 would report.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from s3lake import aws

ROLE = "arn:aws:iam::123456789012:role/s3lake-replication"
DESTINATION = "arn:aws:s3:::s3lake-replica"


def rule(rule_id: str, *, prefix: str | None = None, tags: Mapping[str, str] | None = None,
         enabled: bool = True, priority: int = 1, kms: bool = False, legacy: bool = False) -> dict[str, Any]:
    """One PutBucketReplication rule: a V2 ``Filter`` (Prefix, Tag or And) or, ``legacy``, a V1 rule Prefix."""
    out: dict[str, Any] = {"ID": rule_id, "Status": "Enabled" if enabled else "Disabled",
                           "Destination": {"Bucket": DESTINATION}}
    if legacy:
        out["Prefix"] = prefix or ""
    else:
        tag_list = [{"Key": k, "Value": v} for k, v in (tags or {}).items()]
        if tag_list and (prefix is not None or len(tag_list) > 1):
            both: dict[str, Any] = {"Tags": tag_list}
            if prefix is not None:
                both["Prefix"] = prefix
            out["Filter"] = {"And": both}
        elif tag_list:
            out["Filter"] = {"Tag": tag_list[0]}
        else:
            out["Filter"] = {"Prefix": prefix or ""}
        out["Priority"] = priority
        out["DeleteMarkerReplication"] = {"Status": "Disabled"}
    if kms:
        out["SourceSelectionCriteria"] = {"SseKmsEncryptedObjects": {"Status": "Enabled"}}
    return out


def put_replication(bucket: str, rules: Sequence[Mapping[str, Any]]) -> None:
    """Replace the bucket's replication configuration (versioning must be Enabled, as in S3)."""
    aws.s3().put_bucket_replication(Bucket=bucket,
                                    ReplicationConfiguration={"Role": ROLE, "Rules": list(rules)})


def replicate_everything(bucket: str) -> str:
    """Versioning on and one enabled rule over every object (SSE-KMS objects included)."""
    s3 = aws.s3()
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    put_replication(bucket, [rule("all", kms=True)])
    return bucket
