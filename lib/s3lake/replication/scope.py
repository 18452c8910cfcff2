"""Which objects a bucket's replication configuration will replicate (the scope of a copy-in-place run).

Parsed from a GetBucketReplication response (boto3 shape) once per source bucket on the driver:

* V2 rules carry a ``Filter``: exactly one of ``Prefix``, ``Tag`` or ``And`` (a prefix and/or several
  tags, all of which must match); an empty ``Filter`` (or ``Prefix: ""``) takes every object.
  The legacy (V1) rule has a ``Prefix`` on the rule itself and no ``Filter``.
* ``Status: Disabled`` rules replicate nothing and are ignored. ``Priority`` decides which enabled rule
  applies when several with the same destination match one object; it never changes *whether* the
  object replicates, so coverage is "any enabled rule matches".
* SSE-KMS (and DSSE-KMS) objects replicate only under a rule whose
  ``SourceSelectionCriteria.SseKmsEncryptedObjects.Status`` is ``Enabled``.
* Replication requires versioning ``Enabled`` on the source bucket.

Tag filters need the object's tags; :meth:`Scope.needs_tags` says when they can change the answer, so
GetObjectTagging is called only then (and only when HEAD's TagCount is not 0).

References: https://docs.aws.amazon.com/AmazonS3/latest/API/API_ReplicationRule.html (Status, Priority,
Filter, legacy Prefix), https://docs.aws.amazon.com/AmazonS3/latest/API/API_ReplicationRuleFilter.html
(exactly one of Prefix, Tag, And), https://docs.aws.amazon.com/AmazonS3/latest/API/API_ReplicationRuleAndOperator.html,
https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutBucketReplication.html (versioning must be
enabled), https://docs.aws.amazon.com/AmazonS3/latest/userguide/replication-config-for-kms-objects.html
(SseKmsEncryptedObjects).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from s3lake.errors import S3LakeError

KMS_ENCRYPTIONS = frozenset({"SSE-KMS", "DSSE-KMS", "aws:kms", "aws:kms:dsse"})


class ReplicationScopeError(S3LakeError):
    """The bucket cannot be replicated as configured (no configuration, no versioning, unreadable rule)."""


@dataclass(frozen=True)
class Rule:
    id: str
    enabled: bool
    prefix: str
    tags: tuple[tuple[str, str], ...]
    priority: int | None
    destination: str
    kms_objects: bool  # SseKmsEncryptedObjects Enabled: SSE-KMS objects replicate under this rule

    def matches(self, key: str, tags: Mapping[str, str] | None, encryption: str | None) -> bool:
        """Does this rule take the object? ``tags`` None = unknown (only valid for tag-free rules)."""
        if not key.startswith(self.prefix):
            return False
        if encryption in KMS_ENCRYPTIONS and not self.kms_objects:
            return False
        if not self.tags:
            return True
        if tags is None:
            raise ValueError(f"rule {self.id!r} filters on tags: the object's tags are needed")
        return all(tags.get(k) == v for k, v in self.tags)


@dataclass(frozen=True)
class Scope:
    bucket: str
    rules: tuple[Rule, ...]

    @property
    def enabled(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.enabled)

    def maybe_covers(self, key: str, encryption: str | None = None) -> bool:
        """False when no enabled rule can take ``key`` whatever its tags (decided without any request)."""
        return any(key.startswith(r.prefix) and (encryption not in KMS_ENCRYPTIONS or r.kms_objects)
                   for r in self.enabled)

    def needs_tags(self, key: str, encryption: str | None = None) -> bool:
        """True when only a tag-filtered rule could take the object, so its tags decide."""
        possible = [r for r in self.enabled if key.startswith(r.prefix)
                    and (encryption not in KMS_ENCRYPTIONS or r.kms_objects)]
        return bool(possible) and all(r.tags for r in possible)

    def covers(self, key: str, tags: Mapping[str, str] | None = None, encryption: str | None = None) -> bool:
        """Will replication take this object? ``tags`` may be None when :meth:`needs_tags` is False."""
        for rule in self.enabled:
            if rule.tags and tags is None:
                continue
            if rule.matches(key, tags, encryption):
                return True
        if tags is None and self.needs_tags(key, encryption):
            raise ValueError(f"s3://{self.bucket}/{key}: a tag rule decides; the object's tags are needed")
        return False


# ------------------------------------------------------------------------------------------ parsing


def _tag(value: Any, where: str) -> tuple[str, str]:
    if not isinstance(value, Mapping) or "Key" not in value:
        raise ReplicationScopeError(f"{where}: a tag filter needs Key and Value, got {value!r}")
    return str(value["Key"]), str(value.get("Value", ""))


def parse_rule(rule: Mapping[str, Any], bucket: str, index: int) -> Rule:
    """One rule of a GetBucketReplication ``Rules`` list (V2 ``Filter`` or legacy rule ``Prefix``)."""
    rule_id = str(rule.get("ID") or f"#{index + 1}")
    where = f"bucket {bucket}: replication rule {rule_id!r}"
    status = str(rule.get("Status", ""))
    if status not in ("Enabled", "Disabled"):
        raise ReplicationScopeError(f"{where}: Status must be Enabled or Disabled, got {status!r}")
    prefix, tags = "", ()
    if "Filter" in rule and rule["Filter"] is not None:
        flt = rule["Filter"]
        if not isinstance(flt, Mapping):
            raise ReplicationScopeError(f"{where}: Filter is not an object: {flt!r}")
        present = [k for k in ("Prefix", "Tag", "And") if k in flt]
        if len(present) > 1:
            raise ReplicationScopeError(f"{where}: Filter must hold one of Prefix, Tag or And, not {present}")
        if "Prefix" in flt:
            prefix = str(flt["Prefix"] or "")
        elif "Tag" in flt:
            tags = (_tag(flt["Tag"], where),)
        elif "And" in flt:
            both = flt["And"] or {}
            prefix = str(both.get("Prefix") or "")
            tags = tuple(_tag(t, where) for t in both.get("Tags") or ())
    elif "Prefix" in rule:
        prefix = str(rule["Prefix"] or "")
    kms = (((rule.get("SourceSelectionCriteria") or {}).get("SseKmsEncryptedObjects") or {}).get("Status")
           == "Enabled")
    priority = rule.get("Priority")
    return Rule(
        id=rule_id,
        enabled=status == "Enabled",
        prefix=prefix,
        tags=tuple(sorted(tags)),
        priority=int(priority) if priority is not None else None,
        destination=str((rule.get("Destination") or {}).get("Bucket", "")),
        kms_objects=kms,
    )


def parse(bucket: str, configuration: Mapping[str, Any] | None) -> Scope:
    """A :class:`Scope` from GetBucketReplication's ``ReplicationConfiguration`` (None: there is none)."""
    if not configuration:
        raise ReplicationScopeError(
            f"bucket {bucket} has no replication configuration: a copy would only add versions "
            "(configure replication first, or pass --no-replication-check)")
    rules = configuration.get("Rules")
    if not isinstance(rules, Sequence) or isinstance(rules, (str, bytes)) or not rules:
        raise ReplicationScopeError(f"bucket {bucket}: replication configuration has no rules")
    return Scope(bucket, tuple(parse_rule(r, bucket, i) for i, r in enumerate(rules)))


def check_versioning(bucket: str, status: str | None) -> None:
    """Replication needs versioning Enabled (Suspended or never enabled: refuse)."""
    if status != "Enabled":
        state = status or "never enabled"
        raise ReplicationScopeError(
            f"bucket {bucket}: versioning is {state}, so nothing replicates and a copy would only rewrite "
            "objects (enable versioning and replication first, or pass --no-replication-check)")


# ---------------------------------------------------------------------------------------- I/O (driver)

#: Driver requests :func:`fetch` makes per bucket (for the cost estimate).
FETCH_REQUESTS = {"GetBucketVersioning": 1, "GetBucketReplication": 1}


def fetch(bucket: str) -> Scope:
    """GetBucketVersioning + GetBucketReplication, then :func:`parse` (one line on any refusal)."""
    from s3lake import aws
    from s3lake.objects.buckets import unreachable

    s3 = aws.s3()
    try:
        versioning = s3.get_bucket_versioning(Bucket=bucket).get("Status")
    except Exception as exc:  # noqa: BLE001 - missing, other region, denied: the jobs' usual one line
        raise unreachable(bucket, exc) from None
    configuration = None
    try:
        configuration = s3.get_bucket_replication(Bucket=bucket).get("ReplicationConfiguration")
    except Exception as exc:  # noqa: BLE001
        if aws.error_code(exc) != "ReplicationConfigurationNotFoundError":
            raise ReplicationScopeError(
                f"bucket {bucket}: cannot read the replication configuration ({aws.error_code(exc)}; the role "
                "needs s3:GetReplicationConfiguration, or pass --no-replication-check)") from None
    check_versioning(bucket, versioning)
    return parse(bucket, configuration)
