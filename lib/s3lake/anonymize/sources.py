"""Where the anonymizer's candidates come from: the live objects of an S3 Inventory, or a ``--source`` prefix
listed (ListObjectsV2) in the tasks.

A ``--source`` listing never passes through the driver's memory: the driver lists one level
(``Delimiter="/"``), which names the prefix's sub-folders and the objects directly under it; each
sub-folder is then listed whole by a task, so 10^8 keys in dated folders are listed in parallel and
held by Spark (cached to disk when they do not fit), not in one Python list.
"""

from __future__ import annotations

from typing import Any, Iterator

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from s3lake import aws
from s3lake.errors import ConfigError

CANDIDATE_SCHEMA = T.StructType([
    T.StructField("bucket", T.StringType(), False),
    T.StructField("key", T.StringType(), False),
    T.StructField("size", T.LongType()),
    T.StructField("last_modified", T.TimestampType()),
    T.StructField("encryption_status", T.StringType()),
])


def inventory_candidates(inventory: DataFrame) -> DataFrame:
    """Live objects (latest version, not delete markers) of an inventory, as candidates."""
    live = F.coalesce(F.col("is_latest"), F.lit(True)) & ~F.coalesce(F.col("is_delete_marker"), F.lit(False))
    return inventory.where(live).select("bucket", "key", "size", F.col("last_modified_date").alias("last_modified"),
                                        "encryption_status")


def _candidate(bucket: str, obj: dict) -> tuple:
    return bucket, obj["Key"], int(obj["Size"]), obj["LastModified"], None


def list_level(url: str) -> tuple[str, list[tuple], list[str]]:
    """``s3://bucket/prefix/`` -> (bucket, the objects directly under it, its sub-folders), via
    ListObjectsV2 with a delimiter on the driver. Refuses (exit 2) a prefix it may not list."""
    try:
        bucket, prefix = aws.split_s3_url(url)
    except ValueError as exc:
        raise ConfigError(f"--source: {exc}") from None
    objects, folders = [], []
    try:
        pages = aws.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            objects += [_candidate(bucket, obj) for obj in page.get("Contents", [])]
            folders += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"cannot list {url}: {aws.error_code(exc)}") from None
    return bucket, objects, folders


def list_prefix(bucket: str, prefix: str) -> Iterator[tuple]:
    """Every object under ``prefix`` (a task's listing), as candidate tuples, page by page."""
    for page in aws.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield _candidate(bucket, obj)


def source_candidates(spark: SparkSession, url: str) -> tuple[DataFrame, Any]:
    """The objects under ``url`` as candidates (listed by the tasks that first read them), and None: their
    count per bucket is not known until they are listed."""
    bucket, objects, folders = list_level(url)
    sc = spark.sparkContext
    listed = sc.parallelize(folders, max(1, min(len(folders), sc.defaultParallelism * 4))) \
        .flatMap(lambda folder: list_prefix(bucket, folder))
    frame = spark.createDataFrame(listed, CANDIDATE_SCHEMA) if folders else spark.createDataFrame([], CANDIDATE_SCHEMA)
    if objects:
        frame = frame.unionByName(spark.createDataFrame(objects, CANDIDATE_SCHEMA))
    return frame, None
