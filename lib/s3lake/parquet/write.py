"""Writing the good rows: rebalanced by partition into tasks of about the target file size, sorted within
each, written as Parquet with dynamic partition overwrite (or appended), and the partitions registered in
Glue. The committer guard (:mod:`s3lake.parquet.committer`) runs before anything is read.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from s3lake import field_paths, glue_catalog
from s3lake.parquet.read import col

log = logging.getLogger("s3lake.json_to_parquet")

# AQE measures a partition in shuffle bytes (LZ4-compressed blocks of UnsafeRows). On the bench's
# Firehose-style events the write's shuffle is 2.1x the Snappy Parquet it becomes (75.4 MiB for 35.4 MiB,
# 189.4 for 89.3: the status store's shuffleWriteBytes). Data that compresses differently gets files
# off by its own factor.
SHUFFLE_BYTES_PER_PARQUET_BYTE = 2.0


ADVISORY_SIZE = "spark.sql.adaptive.advisoryPartitionSizeInBytes"


def rebalanced(df: DataFrame, columns: Sequence[str]) -> DataFrame:
    """Rows of one partition value together, split by size: Spark's REBALANCE hint. With AQE the
    shuffle's reader splits a partition above the advisory size along map outputs and merges small
    ones, so a big day is written by several tasks of about that size and a small one by one task.
    (The SQL form: pyspark 3.5's ``DataFrame.hint`` takes no column arguments.)"""
    cols = ", ".join(field_paths.quote(c) for c in columns)
    return df.sparkSession.sql(f"SELECT /*+ REBALANCE({cols}) */ * FROM {{df}}", df=df)


def for_writing(
    df: DataFrame,
    data_columns: Sequence[str],
    partition_columns: Sequence[str],
    *,
    partitioned: bool = False,
) -> DataFrame:
    """Rebalanced by the partition columns (skipped when ``partitioned``: ``df`` already is), sorted by
    them inside each task (the order the partitioned writer needs anyway: one open file per task)."""
    if not partitioned:
        df = rebalanced(df, partition_columns)
    return df.sortWithinPartitions(*[col(c) for c in partition_columns]).select(
        *[col(c) for c in (*data_columns, *partition_columns)])


@contextmanager
def advisory_size(spark: SparkSession, target_file_size: int) -> Iterator[int]:
    """AQE's advisory partition size set for the write's shuffle, and restored after: a session setting
    (Spark 3.5 and 4.1 have no per-shuffle size; REBALANCE_BY_SIZE is newer)."""
    size = int(target_file_size * SHUFFLE_BYTES_PER_PARQUET_BYTE)
    if (spark.conf.get("spark.sql.adaptive.enabled", "true") or "").lower() != "true":
        log.warning("spark.sql.adaptive.enabled=false: an event partition is written by one task whatever its size")
    before = spark.conf.get(ADVISORY_SIZE, None)
    spark.conf.set(ADVISORY_SIZE, str(size))
    try:
        yield size
    finally:
        if before is None:
            spark.conf.unset(ADVISORY_SIZE)
        else:
            spark.conf.set(ADVISORY_SIZE, before)


def shuffled_once(df: DataFrame) -> DataFrame:
    """``df`` (ending in a shuffle) as a DataFrame over its executed RDD: every action on the result
    reuses the one set of shuffle files, so the input is read and parsed once however many jobs follow.

    Not public API (``queryExecution().toRdd()`` and ``internalCreateDataFrame`` through py4j); the
    tests run it on both Spark lines s3lake supports (3.5 and 4.1). The public alternatives each cost
    more or lose data safety: ``persist`` copies the parsed nested rows into the columnar cache (more
    than the parse), ``localCheckpoint`` loses the rows with an executor (Spot nodes) and cannot
    recompute them, parsing twice doubles the job. With AQE, ``toRdd`` runs the shuffle's map stage now
    and the rows come back in the partitions AQE chose (the REBALANCE splits included).
    """
    spark = df.sparkSession
    jdf = df._jdf
    rows = jdf.queryExecution().toRdd()
    return DataFrame(spark._jsparkSession.internalCreateDataFrame(rows, jdf.schema(), False), spark)


def write_parquet(df: DataFrame, output: str, partition_columns: Sequence[str], *, append: bool,
                  max_records_per_file: int = 0) -> None:
    """``df`` (already in write order) as Parquet under ``output``, partitioned; appended, or replacing
    exactly the partitions it holds (the write option, not the session setting: other jobs keep static
    overwrite semantics)."""
    writer = df.write.partitionBy(*partition_columns)
    if max_records_per_file:
        writer = writer.option("maxRecordsPerFile", max_records_per_file)
    if append:
        writer = writer.mode("append")
    else:
        writer = writer.mode("overwrite").option("partitionOverwriteMode", "dynamic")
    writer.parquet(output)


def register(table: str, output: str, schema: T.StructType, partition_columns: Sequence[str],
             partitions: Sequence[tuple]) -> dict:
    """The Glue table over ``output`` (created or updated) and the written partitions."""
    glue_catalog.ensure_table(table, output, schema, list(partition_columns))
    return glue_catalog.register_partitions(table, output, partitions)
