"""Price both backfill routes from the inventory alone (``copy_in_place.py --estimate``).

Two routes replicate objects that replication never took:

* **copy** (copy in place, :mod:`s3lake.replication.copy_in_place`): per candidate HEAD (+ GetObjectAcl where
  the bucket's ACLs are enabled) + CopyObject, or the multipart sequence above the threshold; KMS calls for
  SSE-KMS without a Bucket Key; a retrieval fee for classes that charge per GB read; the old version stays,
  noncurrent, until a NoncurrentVersionExpiration rule removes it (forever without one). Every copy fires the
  bucket's ``s3:ObjectCreated:Copy`` (``CompleteMultipartUpload`` for multipart) notifications and
  EventBridge "Object Created", and restarts current-version lifecycle clocks.
* **batch-replication** (S3 Batch Operations ``S3ReplicateObject``): per source bucket one job (a job fee plus
  a fee per manifest row, from the price table's ``batch_operations``), the manifest PutObject and the
  report's few requests, one HEAD per candidate only when the inventory has no version ids (ListObjectVersions
  for SSE-C); no new version, no notification, no lifecycle restart; SSE-C objects are eligible; archived
  objects and other accounts' are left out of the manifest (:mod:`s3lake.replication.batch_plan`).

Candidates no enabled replication rule can take by their key are left out of both. Replication's own
transfer and destination storage are the same for both routes and shown once.

The work is one Spark ``groupBy`` over the candidates (:func:`aggregate`) into a few :class:`Group` rows;
everything else is pure Python on those rows and on bucket-level facts (:func:`fetch_facts`: ownership
controls, bucket ACL, replication scope, versioning, notification and lifecycle configurations). No request
names an object. The copy route's :class:`~s3lake.replication.pricing.Tally` mirrors what a dry run counts
(:func:`copy_in_place.record_tally` + :func:`copy_in_place.driver_tally`) on the same inventory, assuming the
inventory is current (no MISSING / CHANGED / already replicating objects) and, because the inventory has no
tag count, that multipart copies read no tags and tag-decided objects have their tags read and replicate.

S3 pages: https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetBucketNotificationConfiguration.html
(Topic/Queue/LambdaFunction configurations, EventBridgeConfiguration), notification event types
https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-how-to-event-types-and-destinations.html,
https://docs.aws.amazon.com/AmazonS3/latest/API/API_GetBucketLifecycleConfiguration.html
(NoSuchLifecycleConfiguration when there is none; Filter: Prefix, Tag, ObjectSizeGreaterThan/LessThan, And),
Batch Replication https://docs.aws.amazon.com/AmazonS3/latest/userguide/s3-batch-replication-batch.html.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from s3lake.errors import S3LakeError
from s3lake.replication import pricing
from s3lake.replication.scope import KMS_ENCRYPTIONS, Scope

MIB = 1024 ** 2
GIB = 1024 ** 3
DAYS_PER_MONTH = 30
FOREVER_MONTHS = 12  # how long "kept forever" storage is counted in the verdict
ROUTES = ("copy", "batch-replication")
ARCHIVE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")
ARCHIVE_TIERS = ("ARCHIVE_ACCESS", "DEEP_ARCHIVE_ACCESS")

# what the copy route does with a candidate
SSE_C = "sse-c"                    # 0 requests (copy cannot); batch replicates it
OUT_BY_KEY = "out-by-key"          # 0 requests; left out of both routes
OUT_BY_ENCRYPTION = "out-by-kms"   # SSE-KMS and no rule takes SSE-KMS objects: HEAD, then skipped; not in batch
ARCHIVED = "archived"              # HEAD, then skipped; batch: SrcObjectNotEligible (task fee only)
OTHER_OWNER = "other-owner"        # HEAD + GetObjectAcl, then skipped
COPY = "copy"                      # copied

#: Requests per Batch Operations job besides its tasks: our manifest PutObject; S3 writing the completion
#: report (its manifest.json and one results file) and our two reads of it.
BATCH_JOB_REQUESTS = {"PutObject": 3, "GetObject": 2}


class EstimateError(S3LakeError):
    """A bucket-level configuration the estimate needs cannot be read."""


# ------------------------------------------------------------------------------------ bucket facts


@dataclass(frozen=True)
class LifecycleRule:
    id: str
    prefix: str
    tags: tuple[tuple[str, str], ...]
    size_gt: int | None
    size_lt: int | None
    clock: str | None            # what restarts on a copy ("expire after 365 days"), None: no day-based action
    noncurrent_days: int | None  # NoncurrentVersionExpiration.NoncurrentDays


@dataclass(frozen=True)
class Notification:
    id: str
    target: str                  # the topic, queue or function ARN
    events: tuple[str, ...]
    prefix: str
    suffix: str

    def fires_on(self, event: str) -> bool:
        return any(e in (event, "s3:ObjectCreated:*") for e in self.events)


@dataclass(frozen=True)
class BucketFacts:
    """What the estimate reads once per source bucket (bucket-level requests only)."""

    bucket: str
    acls_enabled: bool
    owner_id: str | None
    owner_requests: int                     # GetBucketOwnershipControls (+ GetBucketAcl), as the job's driver
    scope: Scope | None                     # None: --no-replication-check
    versioning: str | None
    lifecycle: tuple[LifecycleRule, ...] = ()
    notifications: tuple[Notification, ...] = ()
    eventbridge: bool = False


def _filter_parts(flt: Mapping[str, Any]) -> tuple[str, tuple, int | None, int | None]:
    both = flt.get("And") or {}
    prefix = flt.get("Prefix", both.get("Prefix")) or ""
    tags = [flt["Tag"]] if flt.get("Tag") else list(both.get("Tags") or ())
    gt = flt.get("ObjectSizeGreaterThan", both.get("ObjectSizeGreaterThan"))
    lt = flt.get("ObjectSizeLessThan", both.get("ObjectSizeLessThan"))
    return (str(prefix), tuple(sorted((str(t["Key"]), str(t.get("Value", ""))) for t in tags)),
            int(gt) if gt is not None else None, int(lt) if lt is not None else None)


def parse_lifecycle(rules: Iterable[Mapping[str, Any]]) -> tuple[LifecycleRule, ...]:
    """The enabled rules of a GetBucketLifecycleConfiguration ``Rules`` list (V2 Filter or legacy Prefix)."""
    out = []
    for i, rule in enumerate(rules or ()):
        if rule.get("Status") != "Enabled":
            continue
        if rule.get("Filter") is not None:
            prefix, tags, gt, lt = _filter_parts(rule["Filter"])
        else:
            prefix, tags, gt, lt = str(rule.get("Prefix") or ""), (), None, None
        clocks = []
        if (rule.get("Expiration") or {}).get("Days") is not None:
            clocks.append(f"expire after {rule['Expiration']['Days']} days")
        for t in rule.get("Transitions") or ():
            if t.get("Days") is not None:
                clocks.append(f"to {t.get('StorageClass')} after {t['Days']} days")
        nc = (rule.get("NoncurrentVersionExpiration") or {}).get("NoncurrentDays")
        out.append(LifecycleRule(str(rule.get("ID") or f"#{i + 1}"), prefix, tags, gt, lt,
                                 ", ".join(clocks) or None, int(nc) if nc is not None else None))
    return tuple(out)


def parse_notifications(response: Mapping[str, Any]) -> tuple[tuple[Notification, ...], bool]:
    """(Topic/Queue/Lambda configurations, EventBridge on?) from GetBucketNotificationConfiguration."""
    out = []
    for kind, arn in (("TopicConfigurations", "TopicArn"), ("QueueConfigurations", "QueueArn"),
                      ("LambdaFunctionConfigurations", "LambdaFunctionArn")):
        for i, conf in enumerate(response.get(kind) or ()):
            rules = ((conf.get("Filter") or {}).get("Key") or {}).get("FilterRules") or ()
            by_name = {str(r.get("Name", "")).lower(): str(r.get("Value", "")) for r in rules}
            out.append(Notification(str(conf.get("Id") or f"{kind[:-14].lower()}#{i + 1}"), str(conf.get(arn, "")),
                                    tuple(conf.get("Events") or ()), by_name.get("prefix", ""),
                                    by_name.get("suffix", "")))
    return tuple(out), "EventBridgeConfiguration" in response


def fetch_facts(bucket: str, copy_acls: bool = True, replication_check: bool = True) -> BucketFacts:
    """Bucket-level reads only: ownership (+ ACL), replication scope, versioning, notifications, lifecycle."""
    from s3lake import aws
    from s3lake.objects.buckets import bucket_info
    from s3lake.replication import scope as scope_mod

    info, owner_requests = bucket_info(bucket, copy_acls)
    found = scope_mod.fetch(bucket) if replication_check else None
    s3 = aws.s3()

    def read(what: str, permission: str, call, missing: str | None = None) -> Any:
        try:
            return call(Bucket=bucket)
        except Exception as exc:  # noqa: BLE001
            if missing and aws.error_code(exc) == missing:
                return None
            raise EstimateError(f"bucket {bucket}: cannot read the {what} ({aws.error_code(exc)}; the role needs "
                                f"{permission})") from None

    versioning = read("versioning", "s3:GetBucketVersioning", s3.get_bucket_versioning).get("Status")
    notes = read("notification configuration", "s3:GetBucketNotification",
                 s3.get_bucket_notification_configuration)
    lifecycle = read("lifecycle configuration", "s3:GetLifecycleConfiguration",
                     s3.get_bucket_lifecycle_configuration, "NoSuchLifecycleConfiguration")
    notifications, eventbridge = parse_notifications(notes or {})
    return BucketFacts(bucket, info.acls_enabled, info.owner_id, owner_requests, found, versioning,
                       parse_lifecycle((lifecycle or {}).get("Rules") or ()), notifications, eventbridge)


#: Bucket-level requests :func:`fetch_facts` makes beyond the job driver's own lookups.
FACT_REQUESTS = ("GetBucketVersioning", "GetBucketNotificationConfiguration", "GetBucketLifecycleConfiguration")


# ------------------------------------------------------------------------------------ Spark aggregation


@dataclass(frozen=True)
class Options:
    multipart_threshold: int
    copy_acls: bool = True
    acl_from_inventory: bool = False


@dataclass(frozen=True)
class Group:
    """Candidates alike in everything the price depends on, with their count, bytes and multipart parts."""

    bucket: str
    storage_class: str
    encryption: str
    bucket_key: bool
    fate: str
    tags_read: bool
    acl_read: bool
    multipart: bool
    versionless: bool
    noncurrent_days: int | None
    objects: int
    bytes: int
    parts: int
    lifecycle_hits: tuple[int, ...] = ()      # per facts.lifecycle rule
    notification_hits: tuple[int, ...] = ()   # per facts.notifications entry (those that fire)


def candidates(inventory: Any, statuses: Iterable[str | None]) -> Any:
    """:func:`copy_in_place.select_candidates`'s rows, keeping the columns the estimate needs."""
    from s3lake.replication.copy_in_place import select_candidates

    return select_candidates(inventory, statuses, extra=("bucket_key_status", "intelligent_tiering_access_tier"))


def _any(conditions: Sequence[Any]) -> Any:
    from pyspark.sql import functions as F

    out = F.lit(False)
    for c in conditions:
        out = out | c
    return out


def _lifecycle_match(rule: LifecycleRule, key: Any, size: Any) -> Any:
    cond = key.startswith(rule.prefix)
    if rule.size_gt is not None:
        cond = cond & (size > rule.size_gt)
    if rule.size_lt is not None:
        cond = cond & (size < rule.size_lt)
    return cond


def _columns(facts: BucketFacts, options: Options) -> dict[str, Any]:
    """The per-row Spark columns for one bucket's candidates."""
    from pyspark.sql import functions as F

    key, size = F.col("key"), F.coalesce(F.col("size"), F.lit(0)).cast("long")
    enc = F.upper(F.coalesce(F.col("encryption_status"), F.lit("NOT-SSE")))
    kms = enc.isin(*sorted(KMS_ENCRYPTIONS))
    archived = (F.coalesce(F.col("storage_class"), F.lit("STANDARD")).isin(*ARCHIVE_CLASSES)
                | F.coalesce(F.col("intelligent_tiering_access_tier"), F.lit("")).isin(*ARCHIVE_TIERS))
    if facts.scope is None:
        by_key, by_enc, tag_free = F.lit(True), F.lit(True), F.lit(True)
    else:
        rules = facts.scope.enabled
        by_key = _any([key.startswith(r.prefix) for r in rules])
        by_enc = _any([key.startswith(r.prefix) & (F.lit(r.kms_objects) | ~kms) for r in rules])
        tag_free = _any([key.startswith(r.prefix) & (F.lit(r.kms_objects) | ~kms) for r in rules if not r.tags])
    acls = options.copy_acls and facts.acls_enabled
    acl_read = F.lit(acls)
    if acls and options.acl_from_inventory:
        acl_read = F.col("object_access_control_list").isNull()
    other = F.lit(False)
    if acls and facts.owner_id:
        other = F.col("object_owner").isNotNull() & (F.col("object_owner") != F.lit(facts.owner_id))
    fate = (F.when(enc == "SSE-C", SSE_C).when(~by_key, OUT_BY_KEY).when(archived, ARCHIVED)
            .when(~by_enc, OUT_BY_ENCRYPTION).when(other, OTHER_OWNER).otherwise(COPY))
    threshold = options.multipart_threshold
    part = F.greatest(F.lit(5 * MIB), F.ceil(size / 10000), F.lit(min(64 * MIB, threshold)))
    multipart = size > threshold
    nc = F.lit(None).cast("int")
    for rule in sorted((r for r in facts.lifecycle if r.noncurrent_days is not None and not r.tags),
                       key=lambda r: -r.noncurrent_days):  # the shortest matching rule wins
        nc = F.when(_lifecycle_match(rule, key, size), F.lit(rule.noncurrent_days)).otherwise(nc)
    return {
        "storage_class": F.coalesce(F.col("storage_class"), F.lit("STANDARD")),
        "encryption": enc,
        "bucket_key": F.upper(F.coalesce(F.col("bucket_key_status"), F.lit(""))) == "ENABLED",
        "fate": fate,
        "tags_read": (fate.isin(OTHER_OWNER, COPY)) & ~tag_free,
        "acl_read": fate.isin(OTHER_OWNER, COPY) & acl_read,
        "multipart": multipart,
        "versionless": F.col("version_id").isNull(),
        "noncurrent_days": nc,
        "_size": size,
        "_parts": F.when(multipart, F.ceil(size / part)).otherwise(F.lit(0)).cast("long"),
        **{f"_lc{i}": _lifecycle_match(r, key, size) for i, r in enumerate(facts.lifecycle)},
        **{f"_nt{i}": key.startswith(n.prefix) & key.endswith(n.suffix)
           for i, n in enumerate(facts.notifications)},
    }


GROUP_KEYS = ("bucket", "storage_class", "encryption", "bucket_key", "fate", "tags_read", "acl_read", "multipart",
              "versionless", "noncurrent_days")


def aggregate(frame: Any, facts: Mapping[str, BucketFacts], options: Options) -> list[Group]:
    """One Spark groupBy over the candidates of each bucket in ``facts`` -> :class:`Group` rows."""
    from pyspark.sql import functions as F

    out: list[Group] = []
    for bucket, f in sorted(facts.items()):
        cols = _columns(f, options)
        rows = frame.where(F.col("bucket") == bucket).select("bucket", *[c.alias(n) for n, c in cols.items()])
        copy_cond = F.col("fate") == COPY
        sums = [F.count(F.lit(1)).alias("objects"), F.sum("_size").alias("bytes"), F.sum("_parts").alias("parts")]
        sums += [F.sum(F.when(F.col(f"_lc{i}") & copy_cond, 1).otherwise(0)).alias(f"lc{i}")
                 for i in range(len(f.lifecycle))]
        sums += [F.sum(F.when(F.col(f"_nt{i}") & copy_cond, 1).otherwise(0)).alias(f"nt{i}")
                 for i in range(len(f.notifications))]
        for r in rows.groupBy(*GROUP_KEYS).agg(*sums).collect():
            d = r.asDict()
            out.append(Group(
                **{k: d[k] for k in GROUP_KEYS}, objects=int(d["objects"]), bytes=int(d["bytes"] or 0),
                parts=int(d["parts"] or 0), lifecycle_hits=tuple(int(d[f"lc{i}"]) for i in range(len(f.lifecycle))),
                notification_hits=tuple(int(d[f"nt{i}"]) for i in range(len(f.notifications)))))
    return sorted(out, key=lambda g: tuple(str(getattr(g, k)) for k in GROUP_KEYS))


# ------------------------------------------------------------------------------------ pure pricing


def copy_tally(groups: Iterable[Group], facts: Mapping[str, BucketFacts]) -> pricing.Tally:
    """What copy in place would make on these candidates: the dry run's tally, from the inventory."""
    from s3lake.replication.copy_in_place import driver_tally

    tally = pricing.Tally()
    for g in groups:
        if g.fate in (SSE_C, OUT_BY_KEY):
            continue
        cls, n = g.storage_class, g.objects
        tally.add("HeadObject", n, cls)
        if g.fate not in (OTHER_OWNER, COPY):
            continue
        tally.add("GetObjectTagging", n if g.tags_read else 0, cls)
        tally.add("GetObjectAcl", n if g.acl_read else 0, cls)
        if g.fate != COPY:
            continue
        if g.multipart:
            for op in ("ListMultipartUploads", "CreateMultipartUpload", "CompleteMultipartUpload"):
                tally.predict(op, n, cls)
            tally.predict("UploadPartCopy", g.parts, cls)
        else:
            tally.predict("CopyObject", n, cls)
        if g.encryption in KMS_ENCRYPTIONS and not g.bucket_key:
            tally.kms_calls += n + 2 * g.parts if g.multipart else 2 * n
        tally.add_version(cls, g.bytes, n)
    scoped = any(f.scope is not None for f in facts.values())
    return driver_tally(tally, len(facts), sum(f.owner_requests for f in facts.values()), scoped)


def batch_tasks(groups: Iterable[Group]) -> list[Group]:
    """The candidates a Batch Replication manifest lists (:mod:`batch_plan`: what a rule can take, neither
    archived nor another account's; SSE-C included)."""
    return [g for g in groups if g.fate in (SSE_C, COPY)]


def batch_tally(groups: Iterable[Group], facts: Mapping[str, BucketFacts]) -> pricing.Tally:
    """The S3 requests of the batch-replication route (fees apart): HEADs for version ids, manifest, report."""
    from s3lake.replication.scope import FETCH_REQUESTS

    tally = pricing.Tally()
    for g in batch_tasks(groups):  # the current version's id, when the inventory has none
        op = "ListObjectVersions" if g.fate == SSE_C else "HeadObject"  # SSE-C refuses a HEAD without its key
        tally.add(op, g.objects if g.versionless else 0, g.storage_class)
    for op, n in BATCH_JOB_REQUESTS.items():
        tally.predict(op, n * len(facts))
    for op, n in FETCH_REQUESTS.items():
        tally.add(op, n * sum(1 for f in facts.values() if f.scope is not None))
    return tally


@dataclass
class Route:
    name: str
    tally: pricing.Tally
    cost: dict[str, Any]
    fees: float = 0.0                 # Batch Operations job + task fees
    jobs: int = 0
    tasks: int = 0
    monthly: float = 0.0              # old versions kept forever, per month
    bounded: float = 0.0              # old versions that expire: their storage until then, once
    bounded_days: tuple[int, ...] = ()
    notes: list[str] = field(default_factory=list)

    @property
    def one_time(self) -> float:
        return self.cost["one_time"] + self.fees

    def total(self, months: int = FOREVER_MONTHS) -> float:
        """One-time + expiring old versions' storage + ``months`` of the storage kept forever."""
        return self.one_time + self.bounded + self.monthly * months


@dataclass
class Estimate:
    table: pricing.PriceTable
    groups: list[Group]
    facts: Mapping[str, BucketFacts]
    copy: Route
    batch: Route
    side_effects: list[str]
    shared: dict[str, float]
    candidates: dict[str, tuple[int, int]]   # fate -> (objects, bytes)

    @property
    def cheaper(self) -> Route:
        return self.batch if self.batch.total() < self.copy.total() else self.copy


def _storage_price(table: pricing.PriceTable, cls: str) -> float:
    return table.storage_per_gb_month.get(cls, table.storage_per_gb_month["STANDARD"])


def _gib(n: int) -> str:
    return pricing._size(n)


def side_effects(groups: Sequence[Group], facts: Mapping[str, BucketFacts]) -> list[str]:
    """What the copies would set off, with counts: notifications, EventBridge, lifecycle clocks, kept versions."""
    lines = []
    for bucket, f in sorted(facts.items()):
        mine = [g for g in groups if g.bucket == bucket and g.fate == COPY]
        copies = sum(g.objects for g in mine)
        if not copies:
            continue
        for i, n in enumerate(f.notifications):
            for event, multipart in (("s3:ObjectCreated:Copy", False),
                                     ("s3:ObjectCreated:CompleteMultipartUpload", True)):
                count = sum(g.notification_hits[i] for g in mine if g.multipart == multipart)
                if count and n.fires_on(event):
                    lines.append(f"{count} {event} events to {n.target} (notification {n.id})")
        if f.eventbridge:
            lines.append(f"EventBridge: {copies} Object Created events (bucket {bucket})")
        for i, rule in enumerate(f.lifecycle):
            hits = sum(g.lifecycle_hits[i] for g in mine)
            if rule.clock and hits:
                lines.append(f"lifecycle rule {rule.id} ({rule.clock}"
                             f"{', tag filter not checked: at most' if rule.tags else ''}): "
                             f"{hits} objects' clocks restart")
        if f.versioning not in ("Enabled", "Suspended"):
            continue
        kept = sum(g.bytes for g in mine if g.noncurrent_days is None)
        if kept and not any(r.noncurrent_days is not None for r in f.lifecycle):
            lines.append(f"no NoncurrentVersionExpiration: the old versions ({_gib(kept)}) are kept forever")
        elif kept:
            objects = sum(g.objects for g in mine if g.noncurrent_days is None)
            lines.append(f"no NoncurrentVersionExpiration rule covers {objects} copied objects: their old versions "
                         f"({_gib(kept)}) are kept forever")
    return lines


def build(groups: Sequence[Group], facts: Mapping[str, BucketFacts], table: pricing.PriceTable) -> Estimate:
    """Both routes priced from the aggregated candidates and the bucket facts."""
    ctally = copy_tally(groups, facts)
    copy = Route("copy", ctally, pricing.estimate(ctally, table))
    keeps = {b for b, f in facts.items() if f.versioning in ("Enabled", "Suspended")}
    for g in groups:
        if g.fate != COPY or g.bucket not in keeps:
            continue
        monthly = g.bytes / GIB * _storage_price(table, g.storage_class)
        if g.noncurrent_days is None:
            copy.monthly += monthly
        else:
            copy.bounded += monthly * g.noncurrent_days / DAYS_PER_MONTH
    copy.bounded_days = tuple(sorted({g.noncurrent_days for g in groups
                                      if g.fate == COPY and g.noncurrent_days is not None}))
    btally = batch_tally(groups, facts)
    batch = Route("batch-replication", btally, pricing.estimate(btally, table))
    batch.tasks = sum(g.objects for g in batch_tasks(groups))
    batch.jobs = len([b for b in facts if any(g.bucket == b for g in batch_tasks(groups))])
    batch.fees = batch.jobs * table.batch_job + batch.tasks / 1e6 * table.batch_per_million_objects
    archived = sum(g.objects for g in groups if g.fate == ARCHIVED)
    if archived:
        batch.notes.append(f"{archived:,} archived objects left out of the manifest (copy in place skips them "
                           "after a HEAD); restore them first to replicate them")
    sse_c = [g for g in groups if g.fate == SSE_C]
    if sse_c:
        batch.notes.append(f"replicates {sum(g.objects for g in sse_c):,} SSE-C objects "
                           f"({_gib(sum(g.bytes for g in sse_c))}) copy in place cannot copy")
    tag_decided = sum(g.objects for g in groups if g.tags_read)
    if tag_decided:
        copy.notes.append(f"{tag_decided:,} objects only a tag-filtered rule can take: counted as tagged and copied "
                          "(an upper bound)")
    multipart = sum(g.objects for g in groups if g.fate == COPY and g.multipart)
    if multipart:
        copy.notes.append(f"{multipart:,} multipart copies; one GetObjectTagging more for each that has tags")
    both = [g for g in groups if g.fate == COPY]
    moved = sum(g.bytes for g in both)
    shared = {
        "objects": sum(g.objects for g in both),
        "bytes": moved,
        "transfer": moved / GIB * table.replication_transfer_per_gb,
        "destination_storage_per_month": sum(g.bytes / GIB * _storage_price(table, g.storage_class) for g in both),
    }
    fates: dict[str, tuple[int, int]] = {}
    for g in groups:
        n, b = fates.get(g.fate, (0, 0))
        fates[g.fate] = (n + g.objects, b + g.bytes)
    return Estimate(table, list(groups), facts, copy, batch, side_effects(groups, facts), shared, fates)


def run(inventory: Any, statuses: Iterable[str | None], facts: Mapping[str, BucketFacts], options: Options,
        table: pricing.PriceTable) -> Estimate:
    """The whole estimate for an inventory frame (one Spark job) and the buckets' facts."""
    return build(aggregate(candidates(inventory, statuses), facts, options), facts, table)


# ------------------------------------------------------------------------------------ output


def _money(x: float, cur: str) -> str:
    return f"{cur} {pricing._money(x)}"


def _route_lines(route: Route, table: pricing.PriceTable) -> list[str]:
    cur = table.currency
    lines = [f"  {route.name}:"]
    for op, n in route.tally.by_operation().items():
        lines.append(f"    {op:<32} {n:>14,} requests ({pricing.tier(op)})")
    for t, e in sorted(route.cost["requests"].items()):
        lines.append(f"    {t + ' requests':<32} {_money(e['cost'], cur)}")
    lines.append(f"    {'KMS requests':<32} {route.tally.kms_calls:>14,}  {_money(route.cost['kms'], cur)}")
    lines.append(f"    {'retrieval (IA/Glacier IR)':<32} {_money(route.cost['retrieval'], cur)}")
    if route.name == "batch-replication":
        lines.append(f"    {'Batch Operations fees':<32} {_money(route.fees, cur)} ({route.jobs} job(s) x "
                     f"{_money(table.batch_job, cur)} + {route.tasks:,} objects x "
                     f"{_money(table.batch_per_million_objects, cur)} per million)")
    lines.append(f"    {'one-time total':<32} {_money(route.one_time, cur)}")
    if route.name == "copy":
        if route.bounded:
            days = "/".join(str(d) for d in route.bounded_days)
            lines.append(f"    {'old versions (expiring)':<32} {_money(route.bounded, cur)} once "
                         f"(for {days} days, NoncurrentVersionExpiration)")
        lines.append(f"    {'old versions kept forever':<32} {_money(route.monthly, cur)} per month")
        for cls, n in sorted(route.tally.new_bytes.items()):
            lines.append(f"    new versions {cls:<19} {route.tally.new_versions.get(cls, 0):>14,} objects, "
                         f"{_gib(n)}")
    else:
        lines.append(f"    {'recurring':<32} {_money(0, cur)} (no new versions)")
    lines += [f"    note: {n}" for n in route.notes]
    return lines


def verdict(est: Estimate) -> str:
    cur = est.table.currency
    c, b = est.copy, est.batch
    forever = f" + {_money(c.monthly, cur)}/month kept forever, counted {FOREVER_MONTHS} months" if c.monthly else ""
    expiring = f" + {_money(c.bounded, cur)} until old versions expire" if c.bounded else ""
    copy_why = f"{_money(c.total(), cur)} ({_money(c.one_time, cur)} once{expiring}{forever})"
    batch_why = f"{_money(b.total(), cur)} ({_money(b.fees, cur)} of it Batch Operations fees)"
    if est.cheaper is b:
        quiet = "; and it adds no versions, fires no notifications, restarts no lifecycle clocks" \
            if est.side_effects else ""
        return f"cheaper: batch-replication, {batch_why}, vs copy {copy_why}{quiet}"
    return (f"cheaper: copy, {copy_why}, vs batch-replication {batch_why}"
            + (f"; mind its {len(est.side_effects)} side effects above" if est.side_effects else ""))


def format_estimate(est: Estimate, method: str | None = None) -> str:
    """The ``--estimate`` report: candidates, both routes, the shared cost, side effects, the verdict."""
    t = est.table
    cur = t.currency
    lines = [f"estimate of both routes ({t.region} list prices as of {t.as_of}, {t.sources[0]}; "
             "from the inventory and bucket-level reads only):", "  candidates:"]
    names = {COPY: "copied", ARCHIVED: "archived (GLACIER/DEEP_ARCHIVE)", SSE_C: "SSE-C",
             OTHER_OWNER: "owned by another account", OUT_BY_KEY: "out of scope by key (neither route)",
             OUT_BY_ENCRYPTION: "SSE-KMS no rule takes (neither route)"}
    for fate, (n, b) in sorted(est.candidates.items()):
        lines.append(f"    {names.get(fate, fate):<40} {n:>14,} objects, {_gib(b)}")
    by_class: dict[str, tuple[int, int]] = {}
    for g in est.groups:
        if g.fate not in (OUT_BY_KEY, OUT_BY_ENCRYPTION):
            n, b = by_class.get(g.storage_class, (0, 0))
            by_class[g.storage_class] = (n + g.objects, b + g.bytes)
    for cls, (n, b) in sorted(by_class.items()):
        lines.append(f"    in scope, {cls:<30} {n:>14,} objects, {_gib(b)}")
    kms = sum(g.objects for g in est.groups if g.fate == COPY and g.encryption in KMS_ENCRYPTIONS and not g.bucket_key)
    mp = sum(g.objects for g in est.groups if g.fate == COPY and g.multipart)
    lines.append(f"    {'SSE-KMS without a bucket key':<40} {kms:>14,} objects")
    lines.append(f"    {'multipart copies (above threshold)':<40} {mp:>14,} objects")
    lines += _route_lines(est.copy, t) + _route_lines(est.batch, t)
    s = est.shared
    lines.append(f"  shared by both routes (replication of {s['objects']:,} objects, {_gib(s['bytes'])}): "
                 f"transfer {_money(s['transfer'], cur)} once, destination storage "
                 f"{_money(s['destination_storage_per_month'], cur)} per month")
    lines.append("  side effects of copy in place:" if est.side_effects else "  side effects of copy in place: none")
    lines += [f"    {line}" for line in est.side_effects]
    if method and method != est.cheaper.name:
        lines.append(f"  note: --method {method} takes the dearer route")
    lines.append(f"  {verdict(est)}")
    return "\n".join(lines)

