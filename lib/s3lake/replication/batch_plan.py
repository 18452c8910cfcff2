"""Which candidates go into a Batch Replication manifest, and with which version id.

Selection is copy in place's (:func:`s3lake.replication.copy_in_place.select_candidates`), with the same
rules decided from the inventory alone: archived classes (and Intelligent-Tiering's archive tiers), no
enabled rule for the key, another owner. SSE-C
objects are eligible: S3 replicates them without their key, where a copy needs it.

A manifest names versions (https://docs.aws.amazon.com/AmazonS3/latest/userguide/batch-ops-create-job.html:
without a version id a job works the latest version *when it runs*; a manifest with a VersionId field needs
one on every line). An all-versions inventory gives them; otherwise one HEAD per candidate reads the current
version, and decides as copy in place's HEAD does (gone, overwritten since, replicating now). An SSE-C object
refuses a HEAD without its key, so its version comes from ListObjectVersions (which needs no key).
"""

from __future__ import annotations

from typing import Any, Mapping

from s3lake import aws
from s3lake.objects import results
from s3lake.objects.driver import Counter
from s3lake.replication.scope import Scope

JOB = "batch-replication"
ELIGIBLE = "ELIGIBLE"  # goes into the manifest; never written as a result
WOULD_REPLICATE = "WOULD_REPLICATE"
MISSING = "MISSING"
SKIPPED_ARCHIVED = "SKIPPED_ARCHIVED"
SKIPPED_CHANGED = "SKIPPED_CHANGED"
SKIPPED_REPLICATING = "SKIPPED_REPLICATING"
SKIPPED_OTHER_OWNER = "SKIPPED_OTHER_OWNER"
SKIPPED_OUT_OF_SCOPE = "SKIPPED_OUT_OF_SCOPE"
ARCHIVED_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})
ARCHIVED_TIERS = frozenset({"ARCHIVE_ACCESS", "DEEP_ARCHIVE_ACCESS"})  # Intelligent-Tiering's archive tiers
REPLICATING = frozenset({"PENDING", "COMPLETED", "REPLICA"})
INVENTORY_KMS = {"SSE-KMS": "aws:kms", "DSSE-KMS": "aws:kms:dsse"}


def _etag(value: str | None) -> str | None:
    return value.strip('"') if value else None


def pre_decide(candidate: Mapping[str, Any], scope: Scope | None, owner_id: str | None) -> str | None:
    """A skip status decided from the inventory row alone, or None (eligible so far)."""
    if str(candidate.get("storage_class") or "").upper() in ARCHIVED_CLASSES or str(
            candidate.get("intelligent_tiering_access_tier") or "").upper() in ARCHIVED_TIERS:
        return SKIPPED_ARCHIVED
    encryption = INVENTORY_KMS.get(str(candidate.get("encryption_status") or "").upper())
    if scope is not None and not scope.maybe_covers(candidate["key"], encryption):
        return SKIPPED_OUT_OF_SCOPE
    owner = candidate.get("object_owner")
    if owner_id and owner and owner != owner_id:
        return SKIPPED_OTHER_OWNER
    return None


def from_head(head: Mapping[str, Any] | None, inventory_etag: str | None) -> tuple[str, str | None]:
    """(status, version id) from a HEAD of the current version (None: 404); ``null`` for the null version."""
    if head is None:
        return MISSING, None
    if inventory_etag and _etag(head.get("ETag")) != _etag(inventory_etag):
        return SKIPPED_CHANGED, head.get("VersionId")  # overwritten since: the new version replicates by itself
    if str(head.get("ReplicationStatus") or "").upper() in REPLICATING:
        return SKIPPED_REPLICATING, head.get("VersionId")
    return ELIGIBLE, head.get("VersionId") or "null"


def from_listing(listing: Mapping[str, Any], key: str, inventory_etag: str | None) -> tuple[str, str | None]:
    """(status, version id) from ListObjectVersions(Prefix=key): the latest entry of exactly ``key``."""
    for marker in listing.get("DeleteMarkers") or []:
        if marker.get("Key") == key and marker.get("IsLatest"):
            return MISSING, None
    for version in listing.get("Versions") or []:
        if version.get("Key") == key and version.get("IsLatest"):
            if inventory_etag and _etag(version.get("ETag")) != _etag(inventory_etag):
                return SKIPPED_CHANGED, version.get("VersionId")
            return ELIGIBLE, version.get("VersionId") or "null"
    return MISSING, None


def current_version(bucket: str, key: str, inventory_etag: str | None, sse_c: bool,
                    counter: Counter) -> tuple[str, str | None]:
    """One HEAD (or, for SSE-C, one ListObjectVersions) of the current version, decided."""
    s3 = aws.s3()
    if not sse_c:
        counter.add()
        try:
            return from_head(s3.head_object(Bucket=bucket, Key=key), inventory_etag)
        except Exception as exc:  # noqa: BLE001
            if aws.error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return from_head(None, inventory_etag)
            if not aws.is_sse_c_refusal(exc, head=True):
                raise
    counter.add()
    # Versions of one key come newest first, and the exact key sorts before any longer key it prefixes.
    listing = s3.list_object_versions(Bucket=bucket, Prefix=key, MaxKeys=2)
    return from_listing(listing, key, inventory_etag)


def plan(candidate: Mapping[str, Any], run_id: str, scope: Scope | None, owner_id: str | None,
         dry_run: bool) -> tuple:
    """One results row: a skip, ``ELIGIBLE`` (with the version the manifest names) or ``WOULD_REPLICATE``."""
    b, k = candidate["bucket"], candidate["key"]
    base = {"version_id": candidate.get("version_id"), "size": candidate.get("size"),
            "storage_class": candidate.get("storage_class"), "encryption": candidate.get("encryption_status")}
    status = pre_decide(candidate, scope, owner_id)
    if status is not None:
        return results.row(run_id, JOB, b, k, status, requests=0, **base)
    if dry_run:
        return results.row(run_id, JOB, b, k, WOULD_REPLICATE, requests=0, **base)
    if base["version_id"]:
        return results.row(run_id, JOB, b, k, ELIGIBLE, requests=0, **base)
    counter = Counter()
    sse_c = str(candidate.get("encryption_status") or "").upper() == "SSE-C"
    try:
        status, version = current_version(b, k, candidate.get("e_tag"), sse_c, counter)
    except Exception as exc:  # noqa: BLE001 - recorded per object, the run goes on
        return results.row(run_id, JOB, b, k, results.FAILED, requests=counter.n, error_code=aws.error_code(exc),
                           error_message=str(exc), **base)
    base["version_id"] = version
    return results.row(run_id, JOB, b, k, status, requests=counter.n, **base)
