"""Reading the raw JSON: every line of the input, its arrival batch, parsed once with the explicit schema
(no inference), validated, its partition values from its own event time; bad rows kept with their raw
line and quarantined.

A row is bad when its JSON is broken, a value does not match the schema type (nested ones included), or
its timestamp is missing or unparseable. The transforms (``parse_records``, ``with_partitions``,
``dedup``) are ``DataFrame -> DataFrame``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Mapping, Sequence
from urllib.parse import unquote

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from s3lake import field_paths
from s3lake.errors import ConfigError, S3LakeError
from s3lake.parquet import arrival_batches
from s3lake.parquet.arrival_batches import BATCH_COLUMN

CORRUPT = "_corrupt_record"
FILE = "_input_file"
RAW = "_raw"
REASON = "_bad_reason"
TS = "_event_ts"
UNKNOWN = "_unknown_fields"
INTERNAL = (CORRUPT, FILE, RAW, REASON, TS, UNKNOWN)

PARTITION_FORMATS = {"dt": "yyyy-MM-dd", "year": "yyyy", "month": "MM", "day": "dd", "hour": "HH"}


# |epoch| at or above this is milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
EPOCH_MS_THRESHOLD = 1e11

# A leading day of the week in a datetime pattern ("EEE ", "EEEE, "): see without_weekday.
WEEKDAY_PATTERN = re.compile(r"^E{1,4},?\s+")

BAD_MALFORMED = "malformed-json-or-type-mismatch"
BAD_TS_MISSING = "missing-timestamp"
BAD_TS_UNPARSEABLE = "unparseable-timestamp"


class TooManyBadRecords(S3LakeError):
    """The share of bad records is above --max-bad-fraction; the output was not touched."""


class NoInput(S3LakeError):
    """--input matches no file; nothing was read, written or deleted."""


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


def resolve(schema: T.StructType, path: str, what: str) -> tuple[list[str], T.DataType]:
    """The field names from the top of ``schema`` down to the one ``path`` names, and its type. A dotted
    name reads as a field holding dots or as nested fields (:mod:`s3lake.field_paths`); where the schema
    has both, the path is ambiguous and must say which with backticks."""
    steps = field_paths.parse(path, what)
    if any(s.each for s in steps):
        raise ConfigError(f"{what} {path!r}: names one value, so no [] (arrays) in it")
    found: list[tuple[list[str], T.DataType]] = []

    def walk(struct: T.StructType, rest: tuple, names: list[str]) -> None:
        by_name = {f.name: f for f in struct.fields}
        for key, _, used in field_paths.readings(by_name, rest):
            dt = by_name[key].dataType
            if used == len(rest):
                found.append((names + [key], dt))
            elif isinstance(dt, T.StructType):
                walk(dt, rest[used:], names + [key])

    walk(schema, steps, [])
    if not found:
        raise ConfigError(f"{what} {path!r} is not a field of the schema")
    if len(found) > 1:
        spelled = " and ".join(field_paths.text([field_paths.Step(n, quoted=True) for n in names])
                               for names, _ in found)
        raise ConfigError(f"{what} {path!r} is ambiguous: the schema has {spelled}; say which with backticks")
    return found[0]


def col(name: str) -> Column:
    """The column named exactly ``name`` (dots, spaces, backticks and all: never read as a nested path)."""
    return F.col(field_paths.quote(name))


def field(base: Column, names: Sequence[str]) -> Column:
    """``base`` -> names[0] -> names[1] ...: struct fields by their exact names."""
    for name in names:
        base = base.getField(name)
    return base


def without_weekday(value: Column, fmt: str) -> tuple[Column, str]:
    """A pattern starting with a day of the week ("EEE MMM dd ...", Twitter's "Sun Aug 31 ..."), which Spark
    3+ parses no more: the pattern and the value without it (the date itself says the day)."""
    rest = WEEKDAY_PATTERN.sub("", fmt, count=1)
    if rest == fmt:
        return value, fmt
    return F.regexp_replace(value, r"^\s*[A-Za-z]+\.?,?\s+", ""), rest


def formats_tried(formats: Sequence[str]) -> str:
    """What an unparseable timestamp was tried as, for its quarantine record."""
    return "; ".join([*(repr(f) for f in formats), "epoch seconds/milliseconds", "ISO-8601"])


def _event_ts(c: Column, dt: T.DataType, formats: Sequence[str] = ()) -> Column:
    """``formats`` (Spark datetime patterns) in order, then epoch s / epoch ms (by magnitude, fraction
    allowed), then ISO-8601 -> timestamp (UTC session); null if none parses."""
    if isinstance(dt, T.TimestampType):
        return c

    def from_epoch(num: Column) -> Column:
        return F.timestamp_seconds(F.when(F.abs(num) >= EPOCH_MS_THRESHOLD, num / 1000.0).otherwise(num))

    if isinstance(dt, T.NumericType):
        return from_epoch(c.cast("double"))
    trimmed = F.trim(c)
    is_number = trimmed.rlike(r"^-?[0-9]+(\.[0-9]+)?$")
    builtin = F.when(is_number, from_epoch(trimmed.cast("double"))).otherwise(F.try_to_timestamp(trimmed))
    if not formats:
        return builtin
    custom = []
    for fmt in formats:
        value, pattern = without_weekday(trimmed, fmt)
        custom.append(F.try_to_timestamp(value, F.lit(pattern)))
    return F.coalesce(*custom, builtin)


def _unknown_keys(keys: Column, names: Sequence[str]) -> Column:
    """How many distinct names in ``keys`` (null: 0) are not in ``names``. The common case (every key
    known, none repeated) is settled by ``array_contains``; only the others pay for ``array_except``."""
    known = sum((F.array_contains(keys, n).cast("int") for n in names), F.lit(0))
    return (
        F.when(keys.isNull() | (F.size(keys) == known), F.lit(0))
        .otherwise(F.size(F.array_except(keys, F.array(*[F.lit(n) for n in names]))))
    )


def parse_records(lines: DataFrame, schema: T.StructType, timestamp_field: str,
                  unknown_fields_sample: int = 1, timestamp_formats: Sequence[str] = ()) -> DataFrame:
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
    ts_names, ts_type = resolve(schema, timestamp_field, "--timestamp-field")
    ts_raw = field(F.col("r"), ts_names)
    staged = parsed.select(
        *[F.col("r").getField(n).alias(n) for n in names],
        *[col(c) for c in carried],
        F.col("value"),
        (F.col("r").isNull() | F.col("r").getField(CORRUPT).isNotNull()).alias("_malformed"),
        ts_raw.isNull().alias("_ts_missing"),
        _event_ts(ts_raw, ts_type, timestamp_formats).alias(TS),
        F.when(F.col("_sampled"), _unknown_keys(F.col("_keys"), names)).alias(UNKNOWN),
    )
    reason = (
        F.when(F.col("_malformed"), F.lit(BAD_MALFORMED))
        .when(F.col("_ts_missing"), F.lit(BAD_TS_MISSING))
        .when(F.col(TS).isNull(), F.lit(BAD_TS_UNPARSEABLE))
    )
    return (
        staged.withColumn(REASON, reason)
        .withColumn(RAW, F.when(F.col(REASON).isNotNull(), F.col("value")))
        .withColumn(TS, F.when(F.col(REASON).isNull(), F.col(TS)))
        .drop("value", "_malformed", "_ts_missing")
    )


def with_partitions(df: DataFrame, partition_by: Sequence[str]) -> DataFrame:
    """Partition columns from each record's own ``_event_ts`` (UTC session time zone), never the clock."""
    return df.select("*", *[F.date_format(TS, PARTITION_FORMATS[p]).alias(p) for p in partition_by])


def dedup(df: DataFrame, keys: Sequence[Column], data_columns: Sequence[str]) -> DataFrame:
    """One row per key (columns, e.g. ``field(col(name), nested)``): the earliest event, ties broken by
    input file then content (deterministic)."""
    if not keys:
        return df
    from pyspark.sql.window import Window

    order = [F.col(TS), F.col(FILE), F.xxhash64(*[col(n) for n in data_columns])]
    w = Window.partitionBy(*keys).orderBy(*order)
    return df.withColumn("_rn", F.row_number().over(w)).where("_rn = 1").drop("_rn")


def input_id(inputs: Sequence[str]) -> str:
    """A stable id of the input arguments: a re-run of the same input replaces its own bad records."""
    return hashlib.sha1("\n".join(sorted(inputs)).encode()).hexdigest()[:16]


def default_bad_records_path(output: str) -> str:
    return output.rstrip("/") + "_bad_records"


def quarantine(records: DataFrame, bad_dir: str, batched: bool, timestamp_formats: Sequence[str] = ()) -> None:
    """Write the bad rows (input file, reason, raw line; for an unparseable timestamp, what it was tried as)
    as JSON under ``bad_dir``: per batch (dynamic overwrite of ``batch=...``) when ``batched``, else the
    whole directory (one per input): a re-run replaces its own."""
    tried = F.when(F.col(REASON) == BAD_TS_UNPARSEABLE, F.lit("tried: " + formats_tried(timestamp_formats)))
    bad = (
        records.where(F.col(REASON).isNotNull())
        .select(F.col(FILE).alias("input_file"), F.col(REASON).alias("reason"), tried.alias("detail"),
                F.col(RAW).alias("record"), *([BATCH_COLUMN] if batched else []))
    )
    if batched:
        (bad.repartition(BATCH_COLUMN).sortWithinPartitions(BATCH_COLUMN, "input_file", "record")
         .write.mode("overwrite").option("partitionOverwriteMode", "dynamic").partitionBy(BATCH_COLUMN)
         .json(bad_dir))
    else:
        (bad.repartition(1).sortWithinPartitions("input_file", "record")
         .write.mode("overwrite").json(bad_dir))
