"""NDJSON (e.g. Kinesis Firehose output) to partitioned Parquet, optionally registered in Glue.

The pure steps (``parse_records``, ``with_partitions``, ``dedup``, ``for_writing``) are
``DataFrame -> DataFrame``; ``convert`` does the I/O. Records are parsed once with the explicit
schema (no inference); a row is bad when its JSON is broken, a value does not match the schema type
(nested ones included), or its timestamp is missing or unparseable. Bad rows keep their raw line.

Modes (``--mode``):

- ``replace-batches`` (default): each event partition holds one ``batch=<id>`` sub-partition per input
  batch (an arrival hour, see ``s3lake.parquet.arrival_batches``); a run replaces exactly its own batches with
  dynamic partition overwrite, so a late record converted by the next hour's or day's run lands next to
  the rows already there instead of replacing them.
- ``rebuild-partitions``: replaces every event partition the input touches, whole (a backfill from all
  the inputs of those partitions); layout without ``batch=``.
- ``append``: adds files; a re-run duplicates.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import unquote

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from s3lake import glue_catalog
from s3lake.errors import ConfigError, S3LakeError
from s3lake.parquet import arrival_batches
from s3lake.parquet.arrival_batches import BATCH_COLUMN
from s3lake.parquet.committer import DYNAMIC_OVERWRITE, check_committer, committer_conflicts

log = logging.getLogger("s3lake.parquet.convert")

CORRUPT = "_corrupt_record"
FILE = "_input_file"
RAW = "_raw"
REASON = "_bad_reason"
TS = "_event_ts"
UNKNOWN = "_unknown_fields"
INTERNAL = (CORRUPT, FILE, RAW, REASON, TS, UNKNOWN)

PARTITION_FORMATS = {"dt": "yyyy-MM-dd", "year": "yyyy", "month": "MM", "day": "dd", "hour": "HH"}
REPLACE_BATCHES = "replace-batches"
REBUILD_PARTITIONS = "rebuild-partitions"
APPEND = "append"
MODES = (REPLACE_BATCHES, REBUILD_PARTITIONS, APPEND)
# |epoch| at or above this is milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
EPOCH_MS_THRESHOLD = 1e11

DEFAULT_TARGET_FILE_SIZE = 256 * 1024 * 1024
# AQE measures a partition in shuffle bytes (LZ4-compressed blocks of UnsafeRows). On the bench's
# Firehose-style events the write's shuffle is 2.1x the Snappy Parquet it becomes (75.4 MiB for 35.4 MiB,
# 189.4 for 89.3: the status store's shuffleWriteBytes). Data that compresses differently gets files
# off by its own factor.
SHUFFLE_BYTES_PER_PARQUET_BYTE = 2.0
ADVISORY_SIZE = "spark.sql.adaptive.advisoryPartitionSizeInBytes"
# Listing a record's top-level keys parses its line a second time (~75% more parse time, measured): by
# default one record in this many (by a hash of its line, so re-runs agree) is checked for unknown fields.
DEFAULT_UNKNOWN_FIELDS_SAMPLE = 64

BAD_MALFORMED = "malformed-json-or-type-mismatch"
BAD_TS_MISSING = "missing-timestamp"
BAD_TS_UNPARSEABLE = "unparseable-timestamp"

class TooManyBadRecords(S3LakeError):
    """The share of bad records is above --max-bad-fraction; the output was not touched."""


class NoInput(S3LakeError):
    """--input matches no file; nothing was read, written or deleted."""


@dataclass
class Options:
    inputs: list[str]
    output: str
    schema: T.StructType
    timestamp_field: str
    partition_by: list[str] = field(default_factory=lambda: ["dt"])
    table: str | None = None
    dedup_keys: list[str] = field(default_factory=list)
    max_records_per_file: int = 0
    bad_records: str | None = None
    mode: str = REPLACE_BATCHES
    max_bad_fraction: float = 0.01
    reuse_shuffle: bool = True
    target_file_size: int = DEFAULT_TARGET_FILE_SIZE
    unknown_fields_sample: int = DEFAULT_UNKNOWN_FIELDS_SAMPLE


# ---------------------------------------------------------------------------------------------- config


def load_schema(path: str) -> T.StructType:
    """A Spark StructType from the JSON ``df.schema.json()`` writes."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read schema file {path}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"schema file {path} is not valid JSON: {exc}") from exc
    try:
        schema = T.StructType.fromJson(doc)
    except Exception as exc:  # noqa: BLE001 - fromJson raises KeyError/TypeError/ValueError
        raise ConfigError(f"schema file {path} is not a Spark StructType JSON: {type(exc).__name__}: {exc}") from exc
    if not schema.fields:
        raise ConfigError(f"schema file {path} has no fields")
    return schema


def parse_partition_by(text: str) -> list[str]:
    parts = [p.strip() for p in text.replace("/", ",").split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTITION_FORMATS]
    if not parts or unknown:
        raise ConfigError(
            f"--partition-by {text!r}: use dt, or year/month/day[/hour] (known: {', '.join(PARTITION_FORMATS)})"
        )
    if len(set(parts)) != len(parts):
        raise ConfigError(f"--partition-by {text!r} repeats a column")
    return parts


def parse_size(text: str) -> int:
    """``256m``, ``1g``, ``512k`` or a number of bytes."""
    units = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    t = text.strip().lower().rstrip("b")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, IndexError):
        raise ConfigError(f"--target-file-size {text!r}: use bytes or a size like 256m or 1g") from None


def partition_columns(opts: Options) -> list[str]:
    """The output's partition columns: ``--partition-by``, then ``batch`` when replacing batches."""
    return list(opts.partition_by) + ([BATCH_COLUMN] if opts.mode == REPLACE_BATCHES else [])


def validate(opts: Options) -> None:
    names = [f.name for f in opts.schema.fields]
    if opts.timestamp_field not in names:
        raise ConfigError(f"--timestamp-field {opts.timestamp_field!r} is not a top-level field of the schema")
    ts_type = opts.schema[opts.timestamp_field].dataType
    if not isinstance(ts_type, (T.StringType, T.NumericType, T.TimestampType)):
        raise ConfigError(f"--timestamp-field {opts.timestamp_field!r} has type {ts_type.simpleString()}; "
                          "use string (ISO-8601 or epoch), a number (epoch s/ms) or timestamp")
    clash = sorted(set(partition_columns(opts)) & {n.lower() for n in names})
    if clash:
        raise ConfigError(f"partition column(s) {clash} also exist in the schema")
    for key in opts.dedup_keys:
        if key not in names:
            raise ConfigError(f"--dedup-key {key!r} is not a top-level field of the schema")
    if any(n in INTERNAL for n in names):
        raise ConfigError(f"the schema must not contain the reserved fields {', '.join(INTERNAL)}")
    if opts.mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}")
    if opts.max_records_per_file < 0:
        raise ConfigError("--max-records-per-file must be >= 0")
    if opts.unknown_fields_sample < 1:
        raise ConfigError("--unknown-fields-sample must be >= 1 (1: check every record)")
    if opts.target_file_size < 1024 * 1024:
        raise ConfigError("--target-file-size must be at least 1 MiB")
    if not 0 <= opts.max_bad_fraction <= 1:
        raise ConfigError("--max-bad-fraction must be between 0 and 1")


# ----------------------------------------------------------------------------------- pure transforms


def _event_ts(c: Column, dt: T.DataType) -> Column:
    """Epoch s / epoch ms (by magnitude) / ISO-8601 -> timestamp (UTC session); null if unparseable."""
    if isinstance(dt, T.TimestampType):
        return c

    def from_epoch(num: Column) -> Column:
        return F.timestamp_seconds(F.when(F.abs(num) >= EPOCH_MS_THRESHOLD, num / 1000.0).otherwise(num))

    if isinstance(dt, T.NumericType):
        return from_epoch(c.cast("double"))
    trimmed = F.trim(c)
    is_number = trimmed.rlike(r"^-?[0-9]+(\.[0-9]+)?$")
    iso = F.try_to_timestamp(trimmed)
    return F.when(is_number, from_epoch(trimmed.cast("double"))).otherwise(iso)


def _unknown_keys(keys: Column, names: Sequence[str]) -> Column:
    """How many distinct names in ``keys`` (null: 0) are not in ``names``. The common case (every key
    known, none repeated) is settled by ``array_contains``; only the others pay for ``array_except``."""
    known = sum((F.array_contains(keys, n).cast("int") for n in names), F.lit(0))
    return (
        F.when(keys.isNull() | (F.size(keys) == known), F.lit(0))
        .otherwise(F.size(F.array_except(keys, F.array(*[F.lit(n) for n in names]))))
    )


def parse_records(lines: DataFrame, schema: T.StructType, timestamp_field: str,
                  unknown_fields_sample: int = 1) -> DataFrame:
    """``value`` (one JSON document per line) [+ ``_input_file``] -> schema columns + bookkeeping.

    Adds ``_event_ts``, ``_bad_reason`` (null for good rows), ``_raw`` (the line, bad rows only) and
    ``_unknown_fields`` (top-level keys not in the schema; null for the records outside the
    1-in-``unknown_fields_sample`` sample). Blank lines are skipped; other columns of
    ``lines`` are carried through.
    """
    names = [f.name for f in schema.fields]
    parse_schema = T.StructType(schema.fields + [T.StructField(CORRUPT, T.StringType())])
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
    if FILE not in lines.columns:
        lines = lines.withColumn(FILE, F.lit(None).cast("string"))
    carried = [c for c in lines.columns if c != "value"]  # the input file, the batch
    sampled = F.lit(True) if unknown_fields_sample <= 1 else (
        F.pmod(F.xxhash64("value"), F.lit(unknown_fields_sample)) == 0)
    # A line that starts with "{" is not blank: only the others pay for the trim (it copies the line).
    not_blank = F.col("value").startswith("{") | (F.length(F.expr("trim(BOTH ' \t\r' FROM value)")) > 0)
    parsed = lines.where(not_blank).select(
        *carried,
        F.col("value"),
        F.from_json("value", parse_schema, options).alias("r"),
        # CASE WHEN evaluates its branch lazily: the records outside the sample are not parsed twice.
        F.when(sampled, F.json_object_keys("value")).alias("_keys"),
        sampled.alias("_sampled"),
    )
    ts_raw = F.col("r").getField(timestamp_field)
    staged = parsed.select(
        *[F.col("r").getField(n).alias(n) for n in names],
        *carried,
        F.col("value"),
        (F.col("r").isNull() | F.col("r").getField(CORRUPT).isNotNull()).alias("_malformed"),
        _event_ts(ts_raw, schema[timestamp_field].dataType).alias(TS),
        F.when(F.col("_sampled"), _unknown_keys(F.col("_keys"), names)).alias(UNKNOWN),
    )
    reason = (
        F.when(F.col("_malformed"), F.lit(BAD_MALFORMED))
        .when(F.col(timestamp_field).isNull(), F.lit(BAD_TS_MISSING))
        .when(F.col(TS).isNull(), F.lit(BAD_TS_UNPARSEABLE))
    )
    return (
        staged.withColumn(REASON, reason)
        .withColumn(RAW, F.when(F.col(REASON).isNotNull(), F.col("value")))
        .withColumn(TS, F.when(F.col(REASON).isNull(), F.col(TS)))
        .drop("value", "_malformed")
    )


def with_partitions(df: DataFrame, partition_by: Sequence[str]) -> DataFrame:
    """Partition columns from each record's own ``_event_ts`` (UTC session time zone), never the clock."""
    return df.select("*", *[F.date_format(TS, PARTITION_FORMATS[p]).alias(p) for p in partition_by])


def dedup(df: DataFrame, keys: Sequence[str], data_columns: Sequence[str]) -> DataFrame:
    """One row per key: the earliest event, ties broken by input file then content (deterministic)."""
    if not keys:
        return df
    from pyspark.sql.window import Window

    order = [F.col(TS), F.col(FILE), F.xxhash64(*data_columns)]
    w = Window.partitionBy(*keys).orderBy(*order)
    return df.withColumn("_rn", F.row_number().over(w)).where("_rn = 1").drop("_rn")


def rebalanced(df: DataFrame, columns: Sequence[str]) -> DataFrame:
    """Rows of one partition value together, split by size: Spark's REBALANCE hint. With AQE the
    shuffle's reader splits a partition above the advisory size along map outputs and merges small
    ones, so a big day is written by several tasks of about that size and a small one by one task.
    (The SQL form: pyspark 3.5's ``DataFrame.hint`` takes no column arguments.)"""
    cols = ", ".join(f"`{c}`" for c in columns)
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
    return df.sortWithinPartitions(*partition_columns).select(*data_columns, *partition_columns)


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


# ------------------------------------------------------------------------------------------- job


def input_id(inputs: Sequence[str]) -> str:
    """A stable id of the input arguments: a re-run of the same input replaces its own bad records."""
    return hashlib.sha1("\n".join(sorted(inputs)).encode()).hexdigest()[:16]


def default_bad_records_path(output: str) -> str:
    return output.rstrip("/") + "_bad_records"


def read_lines(spark: SparkSession, inputs: Sequence[str]) -> DataFrame:
    """``value`` and ``_input_file`` of every line of every file under ``inputs`` (directories are read
    recursively); NoInput when a path or glob matches nothing."""
    try:
        df = spark.read.option("recursiveFileLookup", "true").text(list(inputs))
    except AnalysisException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NoInput(f"--input {' '.join(inputs)} matches no file ({first}); nothing was written") from None
    return df.select("value", F.input_file_name().alias(FILE))


def list_files(spark: SparkSession, directories: Sequence[str]) -> list[str]:
    """Every file Spark would read under ``directories`` (as ``inputFiles`` names them: URI-encoded)."""
    if not directories:
        return []
    return spark.read.option("recursiveFileLookup", "true").text([unquote(d) for d in directories]).inputFiles()


def plan_batches(spark: SparkSession, files: Sequence[str], inputs: Sequence[str]) -> dict[str, str]:
    """Input file -> batch id, after checking that the run reads whole arrival hours."""
    batches = arrival_batches.assign(files, inputs)
    hours = arrival_batches.hour_dirs(files)
    if hours:
        arrival_batches.check_whole_hours(files, list_files(spark, hours))
    return batches


def with_batch(lines: DataFrame, batches: Mapping[str, str]) -> DataFrame:
    """``lines`` plus the ``batch`` of each line's input file."""
    ids = set(batches.values())
    if len(ids) == 1:
        return lines.withColumn(BATCH_COLUMN, F.lit(next(iter(ids))))
    spark = lines.sparkSession
    mapping = spark.createDataFrame(sorted(batches.items()), f"{FILE} string, {BATCH_COLUMN} string")
    return lines.join(F.broadcast(mapping), FILE, "left")


def convert(spark: SparkSession, opts: Options) -> dict[str, Any]:
    """Run the conversion; returns the summary. Raises NoInput, BatchError or TooManyBadRecords before
    touching the output.

    The input is read and parsed once, straight into the write's shuffle (REBALANCE by the partition
    columns); the counting job, the quarantine write and the output write all read that shuffle's files
    (see ``shuffled_once``). With ``reuse_shuffle=False`` each of them reads and parses the input again.
    """
    validate(opts)
    check_committer(spark, DYNAMIC_OVERWRITE if opts.mode in (REPLACE_BATCHES, REBUILD_PARTITIONS) else opts.mode)
    names = [f.name for f in opts.schema.fields]
    part_cols = partition_columns(opts)
    lines = read_lines(spark, opts.inputs)
    files = lines.inputFiles()
    if not files:
        raise NoInput(f"--input {' '.join(opts.inputs)} matches no file; nothing was written")
    batches: dict[str, str] = {}
    if opts.mode == REPLACE_BATCHES:
        batches = plan_batches(spark, files, opts.inputs)
        lines = with_batch(lines, batches)
    records = with_partitions(parse_records(lines, opts.schema, opts.timestamp_field, opts.unknown_fields_sample),
                              opts.partition_by)
    if not opts.dedup_keys:
        # Only dedup orders good rows by event time and input file; otherwise the file is for the
        # quarantine: keep both out of the shuffle for the good rows.
        records = records.withColumn(FILE, F.when(F.col(REASON).isNotNull(), F.col(FILE))).drop(TS)
    with advisory_size(spark, opts.target_file_size):
        if opts.reuse_shuffle:
            # Bad rows (null partition values) travel with the good ones: one shuffle, one parse.
            records = shuffled_once(rebalanced(records, part_cols))
        return _checked_write(opts, records, names, part_cols, files, batches)


def _checked_write(opts: Options, records: DataFrame, names: list[str], part_cols: list[str],
                   files: Sequence[str], batches: Mapping[str, str]) -> dict[str, Any]:
    """The counts, the bad-record checks and quarantine, then the write and the Glue partitions."""
    good_row = F.col(REASON).isNull()
    # One small row per (partition, reason): a grouped count is cheaper than collecting a set of the
    # partition values over every row, and the driver adds the few groups up.
    groups = records.groupBy(*part_cols, REASON).agg(
        F.count(F.lit(1)).alias("n"),
        F.sum(F.col(UNKNOWN)).alias("unknown_fields"),
        F.count(F.when(F.col(UNKNOWN) > 0, 1)).alias("drifted"),
        F.count(F.col(UNKNOWN)).alias("checked"),
    ).collect()
    good_groups = [g for g in groups if g[REASON] is None]
    total = sum(g["n"] for g in groups)
    bad = total - sum(g["n"] for g in good_groups)
    by_reason = {reason: sum(g["n"] for g in groups if g[REASON] == reason)
                 for reason in (BAD_MALFORMED, BAD_TS_MISSING, BAD_TS_UNPARSEABLE)}
    partitions = sorted(tuple(g[c] for c in part_cols) for g in good_groups)
    if batches and any(p[-1] is None for p in partitions):
        raise RuntimeError("rows without a batch id: input_file_name() and inputFiles() disagree")
    bad_path = (opts.bad_records or default_bad_records_path(opts.output)).rstrip("/")
    # Per batch (dynamic overwrite of batch=...) or, outside batches, per input: a re-run replaces its own.
    bad_dir = bad_path if batches else f"{bad_path}/input_id={input_id(opts.inputs)}"
    summary: dict[str, Any] = {
        "mode": opts.mode,
        "input_files": len(files),
        "input_records": total,
        "bad_records": bad,
        "bad_by_reason": by_reason,
        "unknown_fields_ignored": sum(g["unknown_fields"] or 0 for g in good_groups),
        "records_with_unknown_fields": sum(g["drifted"] for g in good_groups),
        "records_checked_for_unknown_fields": sum(g["checked"] for g in good_groups),
        "bad_records_path": bad_dir if bad else None,
    }
    if batches:
        summary["batches"] = sorted(set(batches.values()))
    if bad:
        quarantine = (
            records.where(~good_row)
            .select(F.col(FILE).alias("input_file"), F.col(REASON).alias("reason"), F.col(RAW).alias("record"),
                    *([BATCH_COLUMN] if batches else []))
        )
        if batches:
            (quarantine.repartition(BATCH_COLUMN).sortWithinPartitions(BATCH_COLUMN, "input_file", "record")
             .write.mode("overwrite").option("partitionOverwriteMode", "dynamic").partitionBy(BATCH_COLUMN)
             .json(bad_dir))
        else:
            (quarantine.repartition(1).sortWithinPartitions("input_file", "record")
             .write.mode("overwrite").json(bad_dir))
    if total and bad / total > opts.max_bad_fraction:
        raise TooManyBadRecords(
            f"{bad} of {total} records are bad ({bad / total:.2%} > --max-bad-fraction "
            f"{opts.max_bad_fraction:.2%}); they are in {bad_dir}; the output was not changed"
        )
    good = records.where(good_row)
    if opts.dedup_keys:
        # Within a batch only: a batch's rows must not depend on which other hours the run read.
        good = dedup(good, opts.dedup_keys + ([BATCH_COLUMN] if batches else []), names)
        written = good.count()
    else:
        written = total - bad
    summary.update(
        written_records=written,
        duplicates_dropped=(total - bad - written),
        partitions=len(partitions),
        output=opts.output,
    )
    if written:
        # After dedup (a shuffle by the keys) the rows need the write's shuffle again.
        out = for_writing(good, names, part_cols, partitioned=opts.reuse_shuffle and not opts.dedup_keys)
        writer = out.write.partitionBy(*part_cols)
        if opts.max_records_per_file:
            writer = writer.option("maxRecordsPerFile", opts.max_records_per_file)
        if opts.mode == APPEND:
            writer = writer.mode("append")
        else:
            # The write option, not the session setting: other jobs keep static overwrite semantics.
            writer = writer.mode("overwrite").option("partitionOverwriteMode", "dynamic")
        writer.parquet(opts.output)
    if opts.table and written:
        glue_catalog.ensure_table(opts.table, opts.output, opts.schema, part_cols)
        summary["glue"] = glue_catalog.register_partitions(opts.table, opts.output, partitions)
        summary["table"] = opts.table
    return summary


__all__ = [
    "NoInput",
    "Options",
    "TooManyBadRecords",
    "committer_conflicts",
    "convert",
    "dedup",
    "for_writing",
    "load_schema",
    "parse_records",
    "rebalanced",
    "with_partitions",
]
