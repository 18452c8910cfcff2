"""Where the anonymizer's candidates come from: the live objects of an S3 Inventory, or a ``--source`` prefix listed
(ListObjectsV2) on the driver."""

from __future__ import annotations

from collections import Counter as Tally

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


def list_source(url: str) -> list[tuple]:
    """``s3://bucket/prefix/`` -> candidate tuples, via ListObjectsV2 on the driver."""
    try:
        bucket, prefix = aws.split_s3_url(url)
    except ValueError as exc:
        raise ConfigError(f"--source: {exc}") from None
    out = []
    try:
        for page in aws.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out.append((bucket, obj["Key"], int(obj["Size"]), obj["LastModified"], None))
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"cannot list {url}: {aws.error_code(exc)}") from None
    return out


def source_candidates(spark: SparkSession, url: str) -> tuple[DataFrame, dict[str, int]]:
    """The objects under ``url`` as candidates, and how many there are per bucket (for :func:`run`)."""
    rows = list_source(url)
    return spark.createDataFrame(rows, CANDIDATE_SCHEMA), dict(Tally(r[0] for r in rows))
