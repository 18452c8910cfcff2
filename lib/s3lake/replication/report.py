"""Did replication take what a copy-in-place run copied? One outcome per copied object.

The objects are the run's ``COPIED`` result rows (bucket, key, the new version id, when), or a Batch
Replication run's ``REPLICATED`` rows (the version the job replicated: no new version). Their state
comes from either

* a later S3 Inventory delivery of the source bucket (no object requests): the listed latest version
  and its ReplicationStatus; an all-versions report also shows our version when something newer exists;
* or ``live``: one HEAD per object (ReplicationStatus, VersionId, this run's marker).

Outcomes: ``COMPLETED``, ``PENDING``, ``FAILED`` (replication's own status of the copied version),
``NO_STATUS`` (the copy has no replication status: no rule took it), ``GONE`` (deleted since, or a
delete marker is current), ``OVERWRITTEN`` (a newer version exists: it replicates by itself),
``NOT_LISTED_YET`` (the inventory listed the object before the copy: use a later delivery),
``UNCHECKED`` (live only: the HEAD failed for another reason, e.g. 403; ``error_code`` and
``error_message`` say why, as in the results).
S3 Inventory's ReplicationStatus field: https://docs.aws.amazon.com/AmazonS3/latest/userguide/storage-inventory.html;
HEAD's x-amz-replication-status: https://docs.aws.amazon.com/AmazonS3/latest/userguide/replication-status.html.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Mapping

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from s3lake import aws
from s3lake.errors import S3LakeError
from s3lake.objects import results

COMPLETED = "COMPLETED"
PENDING = "PENDING"
FAILED = "FAILED"
NO_STATUS = "NO_STATUS"
GONE = "GONE"
OVERWRITTEN = "OVERWRITTEN"
NOT_LISTED_YET = "NOT_LISTED_YET"
UNCHECKED = "UNCHECKED"
OUTCOMES = (COMPLETED, PENDING, FAILED, NO_STATUS, GONE, OVERWRITTEN, NOT_LISTED_YET, UNCHECKED)
COPIED = "COPIED"
REPLICATED = "REPLICATED"  # batch_report.REPLICATED: a Batch Replication run's replicated version
MARKER = "s3lake-copied"  # copy_in_place.MARKER (not imported: that module pulls in the copy machinery)

SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("bucket", T.StringType(), False),
    T.StructField("key", T.StringType(), False),
    T.StructField("version_id", T.StringType()),  # the version the copy made
    T.StructField("size", T.LongType()),
    T.StructField("storage_class", T.StringType()),
    T.StructField("outcome", T.StringType(), False),
    T.StructField("replication_status", T.StringType()),  # as listed / as HEAD says
    T.StructField("current_version_id", T.StringType()),
    T.StructField("checked_by", T.StringType()),  # "inventory <delivery id>" or "live"
    T.StructField("checked_at", T.TimestampType()),
    T.StructField("error_code", T.StringType()),  # UNCHECKED: why the HEAD failed, as in the results
    T.StructField("error_message", T.StringType()),
])
FIELDS = SCHEMA.fieldNames()


class ReportInputError(S3LakeError):
    """The results, the run id or the inventory do not fit together."""


def default_report_path(results_path: str) -> str:
    """``<parent of the results>/replication_report``: beside the results dataset."""
    parent = results_path.rstrip("/").rsplit("/", 1)[0]
    return f"{parent}/replication_report"


# ------------------------------------------------------------------------------------ pure outcomes


def status_outcome(status: str | None) -> str:
    if not status:
        return NO_STATUS
    status = status.upper()
    return status if status in (COMPLETED, PENDING, FAILED) else status


def inventory_outcome(copied_version: str | None, finished_at: datetime | None, listed: bool,
                      latest_version: str | None, latest_is_delete_marker: bool | None,
                      latest_status: str | None, latest_modified: datetime | None,
                      ours_listed_not_latest: bool, source_version: str | None = None) -> str:
    """The outcome of one copied object from what a later inventory lists for its key.

    ``source_version`` is the version the copy read: listed as latest, the inventory predates the copy.
    Without it the listed LastModified decides, at S3's one-second resolution.
    """
    if not listed or latest_is_delete_marker:
        return GONE
    if ours_listed_not_latest:
        return OVERWRITTEN
    if copied_version is None or latest_version is None or latest_version == copied_version:
        return status_outcome(latest_status)
    if source_version is not None and latest_version == source_version:
        return NOT_LISTED_YET  # the version our copy replaced: the inventory was taken before the copy
    if latest_modified is not None and finished_at is not None and latest_modified < finished_at.replace(
            microsecond=0):
        return NOT_LISTED_YET  # the listed version is older than our copy: listed before it
    return OVERWRITTEN


def live_outcome(head: Mapping[str, Any] | None, copied_version: str | None, run_id: str,
                 marked: bool = True) -> str:
    """The outcome of one copied object from a HEAD now (None: 404). ``marked``: the run's copy carries the
    run's marker; a Batch Replication run writes no version, so only the version id tells."""
    if head is None:
        return GONE
    version = head.get("VersionId")
    version = None if version in (None, "null") else version
    copied_version = None if copied_version == "null" else copied_version
    if marked and (head.get("Metadata") or {}).get(MARKER) != run_id:
        return OVERWRITTEN
    if not marked and bool(version) != bool(copied_version):
        return OVERWRITTEN  # the null version replicated, a versioned write since (or the reverse)
    if copied_version and version and version != copied_version:
        return OVERWRITTEN
    return status_outcome(head.get("ReplicationStatus"))


def row(run_id: str, copied: Mapping[str, Any], outcome: str, status: str | None, current: str | None,
        checked_by: str, checked_at: datetime, error: BaseException | None = None) -> tuple:
    values = {"run_id": run_id, "bucket": copied["bucket"], "key": copied["key"],
              "version_id": copied.get("new_version_id"), "size": copied.get("size"),
              "storage_class": copied.get("storage_class"), "outcome": outcome, "replication_status": status,
              "current_version_id": current, "checked_by": checked_by, "checked_at": checked_at,
              "error_code": aws.error_code(error) if error else None,
              "error_message": str(error) if error else None}
    return tuple(values[f] for f in FIELDS)


# ------------------------------------------------------------------------------------ inputs


def copied_objects(spark: SparkSession, results_path: str, run_id: str) -> DataFrame:
    """This run's COPIED rows; a run id the results do not hold is one line, exit 2."""
    try:
        run = results.read_run(spark, results_path, run_id)
        present = run.limit(1).count()
    except Exception as exc:  # noqa: BLE001 - Spark's AnalysisException for a missing path
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReportInputError(f"cannot read results at {results_path}: {first}") from None
    if not present:
        raise ReportInputError(f"results at {results_path} hold no run {run_id!r}")
    replicated = F.col("status") == REPLICATED  # Batch Replication: the version itself, no new one
    return run.where(F.col("status").isin(COPIED, REPLICATED)).select(
        "bucket", "key", "version_id",
        F.when(replicated, _version(F.col("version_id"))).otherwise(F.col("new_version_id")).alias("new_version_id"),
        "size", "storage_class", "finished_at", "status")


def _version(column: Any) -> Any:
    """The null version as NULL: all-versions inventories list it with an empty VersionId, results as ``null``."""
    return F.when(column.isin("", "null"), F.lit(None)).otherwise(column)


def delivery_time(delivery_id: str) -> datetime | None:
    """``<bucket>/<config>/YYYY-MM-DDTHH-MMZ`` -> that UTC time (None if the folder is not a stamp)."""
    stamp = delivery_id.rsplit("/", 1)[-1]
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H-%MZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def check_inventory(source_bucket: str, delivery_id: str, run_buckets: Iterable[str], run_id: str,
                    run_finished: datetime | None) -> None:
    """The delivery must be of a bucket the run copied in, and delivered after the run."""
    buckets = sorted(set(run_buckets))
    if source_bucket not in buckets:
        raise ReportInputError(f"inventory {delivery_id} is of bucket {source_bucket!r}; run {run_id!r} copied "
                               f"objects in {', '.join(buckets) or 'no bucket'}")
    delivered = delivery_time(delivery_id)
    if delivered is not None and run_finished is not None:
        finished = run_finished if run_finished.tzinfo else run_finished.replace(tzinfo=timezone.utc)
        if delivered < finished:
            raise ReportInputError(f"inventory {delivery_id} was delivered before run {run_id!r} finished "
                                   f"({finished:%Y-%m-%dT%H:%MZ}): use a later delivery")


# ------------------------------------------------------------------------------------ from an inventory


def from_inventory(copied: DataFrame, inventory: DataFrame, run_id: str, checked_by: str,
                   checked_at: datetime) -> DataFrame:
    """One report row per copied object, from a later inventory of its bucket (no object requests)."""
    inv = inventory.select(
        "bucket", "key", _version(F.col("version_id")).alias("inv_version"),
        F.coalesce(F.col("is_latest"), F.lit(True)).alias("inv_latest"),
        F.coalesce(F.col("is_delete_marker"), F.lit(False)).alias("inv_dm"),
        F.col("replication_status").alias("inv_status"), F.col("last_modified_date").alias("inv_modified"),
    )
    latest = F.col("inv_latest")
    ours = F.col("inv_version") == F.col("new_version_id")
    per_key = (
        copied.join(inv, ["bucket", "key"], "left")
        .groupBy("bucket", "key", "version_id", "new_version_id", "size", "storage_class", "finished_at", "status")
        .agg(
            F.max(F.col("inv_latest").isNotNull()).alias("listed"),
            F.max(F.when(latest, F.col("inv_version"))).alias("latest_version"),
            F.max(F.when(latest, F.col("inv_dm"))).alias("latest_dm"),
            F.max(F.when(latest, F.col("inv_status"))).alias("latest_status"),
            F.max(F.when(latest, F.col("inv_modified"))).alias("latest_modified"),
            F.max(F.when(ours & ~latest, F.lit(True))).alias("ours_not_latest"),
        )
    )

    def classify(r: Any) -> tuple:
        copy = r.status == COPIED  # a replicated version is as old as ever: its LastModified says nothing
        outcome = inventory_outcome(r.new_version_id, r.finished_at if copy else None, bool(r.listed),
                                    r.latest_version, r.latest_dm, r.latest_status, r.latest_modified,
                                    bool(r.ours_not_latest), source_version=r.version_id if copy else None)
        return row(run_id, r.asDict(), outcome, r.latest_status, r.latest_version, checked_by, checked_at)

    return copied.sparkSession.createDataFrame(per_key.rdd.map(classify), SCHEMA)


# ------------------------------------------------------------------------------------ live


def head_now(bucket: str, key: str) -> dict[str, Any] | None:
    """HEAD of the current version; None for 404. Other errors (after the client's retries) raise."""
    try:
        return aws.s3().head_object(Bucket=bucket, Key=key)
    except Exception as exc:  # noqa: BLE001
        if aws.error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def live_partition(rows: Iterable[Any], run_id: str, concurrency: int, checked_at: datetime) -> Iterator[tuple]:
    from s3lake.objects.driver import bounded_map

    def one(r: Any) -> tuple:
        c = r.asDict()
        try:
            head = head_now(c["bucket"], c["key"])
        except Exception as exc:  # noqa: BLE001 - one object's error is that object's row, not the run's end
            return row(run_id, c, UNCHECKED, None, None, "live", checked_at, error=exc)
        outcome = live_outcome(head, c.get("new_version_id"), run_id, marked=c.get("status") != REPLICATED)
        status = head.get("ReplicationStatus") if head else None
        current = head.get("VersionId") if head else None
        return row(run_id, c, outcome, status, current, "live", checked_at)

    yield from bounded_map(one, rows, concurrency)


def live(copied: DataFrame, run_id: str, concurrency: int, checked_at: datetime,
         partitions: int | None = None) -> DataFrame:
    """One HEAD per copied object, ``concurrency`` in flight per task."""
    spark = copied.sparkSession
    frame = copied.repartition(partitions or spark.sparkContext.defaultParallelism)
    rdd = frame.rdd.mapPartitions(lambda rows: live_partition(rows, run_id, concurrency, checked_at))
    return spark.createDataFrame(rdd, SCHEMA)


# ------------------------------------------------------------------------------------ output


def write(report: DataFrame, path: str) -> None:
    """Partition ``run_id=<id>``; re-reporting a run replaces its partition only."""
    report.write.mode("overwrite").option("partitionOverwriteMode", "dynamic").partitionBy("run_id").parquet(path)


def read_run(spark: SparkSession, path: str, run_id: str) -> DataFrame:
    return spark.read.schema(SCHEMA).parquet(path).where(F.col("run_id") == run_id)


def summarize(report: DataFrame) -> dict[str, int]:
    return {r["outcome"]: int(r["count"]) for r in report.groupBy("outcome").count().collect()}


def format_summary(run_id: str, checked_by: str, counts: Mapping[str, int], path: str) -> str:
    total = sum(counts.values())
    lines = [f"replication report for run {run_id} ({checked_by}): {total} copied objects -> {path}"]
    for outcome in OUTCOMES:
        if counts.get(outcome):
            lines.append(f"  {outcome:<16} {counts[outcome]}")
    for outcome, n in sorted(counts.items()):
        if outcome not in OUTCOMES:
            lines.append(f"  {outcome:<16} {n}")
    return "\n".join(lines)


def failed_candidates(spark: SparkSession, report_path: str) -> DataFrame:
    """``copy_in_place --from-report``: the objects whose latest report outcome is FAILED.

    ``report_path`` is the report dataset (every run) or one ``run_id=...`` partition of it. Each object's
    newest check decides; the copied version is the expected one (a newer write is SKIPPED_CHANGED).
    """
    partition = os.path.basename(report_path.rstrip("/")).startswith("run_id=")
    schema = T.StructType([f for f in SCHEMA.fields if f.name != "run_id"]) if partition else SCHEMA
    try:
        frame = spark.read.schema(schema).parquet(report_path)
    except Exception as exc:  # noqa: BLE001 - Spark's AnalysisException for a missing path
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReportInputError(f"cannot read the replication report at {report_path}: {first}") from None
    from pyspark.sql import Window

    newest = Window.partitionBy("bucket", "key").orderBy(F.col("checked_at").desc())
    latest = frame.withColumn("_n", F.row_number().over(newest)).where(F.col("_n") == 1)
    return latest.where(F.col("outcome") == FAILED).select("bucket", "key", "version_id", "size", "storage_class")
