"""NDJSON (e.g. Kinesis Firehose output) to partitioned Parquet, optionally registered in Glue.

The pure steps (``parse_records``, ``with_partitions``, ``dedup``, ``for_writing``) are
``DataFrame -> DataFrame``; ``convert`` does the I/O. Records are parsed once with the explicit
schema (no inference); a row is bad when its JSON is broken, a value does not match the schema type
(nested ones included), or its timestamp is missing or unparseable. Bad rows keep their raw line.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from s3lake import glue_catalog
from s3lake.committer import check_committer, committer_conflicts
from s3lake.errors import ConfigError, S3LakeError

log = logging.getLogger("s3lake.json_to_parquet")

CORRUPT = "_corrupt_record"
FILE = "_input_file"
RAW = "_raw"
REASON = "_bad_reason"
TS = "_event_ts"
UNKNOWN = "_unknown_fields"
INTERNAL = (CORRUPT, FILE, RAW, REASON, TS, UNKNOWN)

PARTITION_FORMATS = {"dt": "yyyy-MM-dd", "year": "yyyy", "month": "MM", "day": "dd", "hour": "HH"}
MODES = ("overwrite-partitions", "append")
# |epoch| at or above this is milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
EPOCH_MS_THRESHOLD = 1e11

BAD_MALFORMED = "malformed-json-or-type-mismatch"
BAD_TS_MISSING = "missing-timestamp"
BAD_TS_UNPARSEABLE = "unparseable-timestamp"

class TooManyBadRecords(S3LakeError):
    """The share of bad records is above --max-bad-fraction; the output was not touched."""


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
    files_per_partition: int = 1
    bad_records: str | None = None
    mode: str = "overwrite-partitions"
    max_bad_fraction: float = 0.01
    reuse_shuffle: bool = True


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


def validate(opts: Options) -> None:
    names = [f.name for f in opts.schema.fields]
    if opts.timestamp_field not in names:
        raise ConfigError(f"--timestamp-field {opts.timestamp_field!r} is not a top-level field of the schema")
    ts_type = opts.schema[opts.timestamp_field].dataType
    if not isinstance(ts_type, (T.StringType, T.NumericType, T.TimestampType)):
        raise ConfigError(f"--timestamp-field {opts.timestamp_field!r} has type {ts_type.simpleString()}; "
                          "use string (ISO-8601 or epoch), a number (epoch s/ms) or timestamp")
    clash = sorted(set(opts.partition_by) & {n.lower() for n in names})
    if clash:
        raise ConfigError(f"partition column(s) {clash} also exist in the schema")
    for key in opts.dedup_keys:
        if key not in names:
            raise ConfigError(f"--dedup-key {key!r} is not a top-level field of the schema")
    if CORRUPT in names or any(n in INTERNAL for n in names):
        raise ConfigError(f"the schema must not contain the reserved fields {', '.join(INTERNAL)}")
    if opts.mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}")
    if opts.max_records_per_file < 0 or opts.files_per_partition < 1:
        raise ConfigError("--max-records-per-file must be >= 0 and --files-per-partition >= 1")
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


def parse_records(lines: DataFrame, schema: T.StructType, timestamp_field: str) -> DataFrame:
    """``value`` (one JSON document per line) [+ ``_input_file``] -> schema columns + bookkeeping.

    Adds ``_event_ts``, ``_bad_reason`` (null for good rows), ``_raw`` (the line, bad rows only) and
    ``_unknown_fields`` (top-level keys not in the schema). Blank lines are skipped.
    """
    names = [f.name for f in schema.fields]
    parse_schema = T.StructType(schema.fields + [T.StructField(CORRUPT, T.StringType())])
    options = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
    if FILE not in lines.columns:
        lines = lines.withColumn(FILE, F.lit(None).cast("string"))
    parsed = lines.where(F.length(F.trim("value")) > 0).select(
        F.col(FILE),
        F.col("value"),
        F.from_json("value", parse_schema, options).alias("r"),
        F.json_object_keys("value").alias("_keys"),
    )
    ts_raw = F.col("r").getField(timestamp_field)
    staged = parsed.select(
        *[F.col("r").getField(n).alias(n) for n in names],
        F.col(FILE),
        F.col("value"),
        (F.col("r").isNull() | F.col("r").getField(CORRUPT).isNotNull()).alias("_malformed"),
        _event_ts(ts_raw, schema[timestamp_field].dataType).alias(TS),
        _unknown_keys(F.col("_keys"), names).alias(UNKNOWN),
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


def write_keys(data_columns: Sequence[str], partition_by: Sequence[str], files_per_partition: int = 1) -> list[Column]:
    """The shuffle keys of the write: the partition columns, plus a content hash salt when
    ``files_per_partition`` > 1."""
    keys = [F.col(p) for p in partition_by]
    if files_per_partition > 1:
        keys.append(F.pmod(F.xxhash64(*data_columns), F.lit(files_per_partition)))
    return keys


def for_writing(
    df: DataFrame,
    data_columns: Sequence[str],
    partition_by: Sequence[str],
    files_per_partition: int = 1,
    *,
    partitioned: bool = False,
) -> DataFrame:
    """Few large files: one shuffle by ``write_keys`` (skipped when ``partitioned``: ``df`` is already
    split that way), sorted by the partition columns inside each task (the order the partitioned writer
    needs anyway; ordering by event time as well cost ~8% of the job and its min/max statistics only
    help when the timestamp column itself is uniformly typed)."""
    if not partitioned:
        df = df.repartition(*write_keys(data_columns, partition_by, files_per_partition))
    return df.sortWithinPartitions(*partition_by).select(*data_columns, *partition_by)


def shuffled_once(df: DataFrame) -> DataFrame:
    """``df`` (ending in a shuffle) as a DataFrame over its executed RDD: every action on the result
    reuses the one set of shuffle files, so the input is read and parsed once however many jobs follow.

    Unlike ``persist`` nothing is copied into the block manager (caching parsed nested rows in the
    columnar format cost more than the parse); unlike ``localCheckpoint`` lost shuffle output is
    recomputed from the lineage.
    """
    spark = df.sparkSession
    jdf = df._jdf
    rows = jdf.queryExecution().toRdd()  # with AQE this runs the shuffle map stage now
    return DataFrame(spark._jsparkSession.internalCreateDataFrame(rows, jdf.schema(), False), spark)


# ------------------------------------------------------------------------------------------- job


def input_id(inputs: Sequence[str]) -> str:
    """A stable id of the input arguments: a re-run of the same input replaces its own bad records."""
    return hashlib.sha1("\n".join(sorted(inputs)).encode()).hexdigest()[:16]


def default_bad_records_path(output: str) -> str:
    return output.rstrip("/") + "_bad_records"


def read_lines(spark: SparkSession, inputs: Sequence[str]) -> DataFrame:
    return spark.read.text(list(inputs)).select("value", F.input_file_name().alias(FILE))


def convert(spark: SparkSession, opts: Options) -> dict[str, Any]:
    """Run the conversion; returns the summary. Raises TooManyBadRecords before touching the output.

    The input is read and parsed once, straight into the shuffle by the write's partition columns; the
    counting job, the quarantine write and the output write all read that shuffle's files (see
    ``shuffled_once``). With ``reuse_shuffle=False`` each of them reads and parses the input again.
    """
    validate(opts)
    check_committer(spark, opts.mode)
    names = [f.name for f in opts.schema.fields]
    records = with_partitions(parse_records(read_lines(spark, opts.inputs), opts.schema, opts.timestamp_field),
                              opts.partition_by)
    if not opts.dedup_keys:
        # Only dedup orders good rows by event time and input file; otherwise the file is for the
        # quarantine: keep both out of the shuffle for the good rows.
        records = records.withColumn(FILE, F.when(F.col(REASON).isNotNull(), F.col(FILE))).drop(TS)
    if opts.reuse_shuffle:
        # Bad rows (null partition values) travel with the good ones: one shuffle, one parse.
        records = shuffled_once(records.repartition(*write_keys(names, opts.partition_by, opts.files_per_partition)))
    stats = records.agg(
        F.count(F.lit(1)).alias("total"),
        F.count(REASON).alias("bad"),
        F.sum(F.when(F.col(REASON) == BAD_MALFORMED, 1).otherwise(0)).alias("malformed"),
        F.sum(F.when(F.col(REASON) == BAD_TS_MISSING, 1).otherwise(0)).alias("ts_missing"),
        F.sum(F.when(F.col(REASON) == BAD_TS_UNPARSEABLE, 1).otherwise(0)).alias("ts_unparseable"),
        F.sum(F.when(F.col(REASON).isNull(), F.col(UNKNOWN)).otherwise(0)).alias("unknown_fields"),
        F.sum(F.when(F.col(REASON).isNull() & (F.col(UNKNOWN) > 0), 1).otherwise(0)).alias("drifted"),
        F.collect_set(F.when(F.col(REASON).isNull(), F.struct(*opts.partition_by))).alias("partitions"),
    ).first()
    total, bad = stats["total"], stats["bad"]
    bad_path = (opts.bad_records or default_bad_records_path(opts.output)).rstrip("/")
    bad_dir = f"{bad_path}/input_id={input_id(opts.inputs)}"
    summary: dict[str, Any] = {
        "input_records": total,
        "bad_records": bad,
        "bad_by_reason": {
            BAD_MALFORMED: stats["malformed"] or 0,
            BAD_TS_MISSING: stats["ts_missing"] or 0,
            BAD_TS_UNPARSEABLE: stats["ts_unparseable"] or 0,
        },
        "unknown_fields_ignored": stats["unknown_fields"] or 0,
        "records_with_unknown_fields": stats["drifted"] or 0,
        "bad_records_path": bad_dir if bad else None,
    }
    if bad:
        (
            records.where(F.col(REASON).isNotNull())
            .select(F.col(FILE).alias("input_file"), F.col(REASON).alias("reason"), F.col(RAW).alias("record"))
            .repartition(1)
            .sortWithinPartitions("input_file", "record")
            .write.mode("overwrite")
            .json(bad_dir)
        )
    if total and bad / total > opts.max_bad_fraction:
        raise TooManyBadRecords(
            f"{bad} of {total} records are bad ({bad / total:.2%} > --max-bad-fraction "
            f"{opts.max_bad_fraction:.2%}); they are in {bad_dir}; the output was not changed"
        )
    good = records.where(F.col(REASON).isNull())
    partitions = sorted(tuple(p) for p in stats["partitions"])
    if opts.dedup_keys:
        good = dedup(good, opts.dedup_keys, names)
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
        out = for_writing(good, names, opts.partition_by, opts.files_per_partition,
                          partitioned=opts.reuse_shuffle and not opts.dedup_keys)
        writer = out.write.partitionBy(*opts.partition_by)
        if opts.max_records_per_file:
            writer = writer.option("maxRecordsPerFile", opts.max_records_per_file)
        if opts.mode == "overwrite-partitions":
            # The write option, not the session setting: other jobs keep static overwrite semantics.
            writer = writer.mode("overwrite").option("partitionOverwriteMode", "dynamic")
        else:
            writer = writer.mode("append")
        writer.parquet(opts.output)
    if opts.table and written:
        glue_catalog.ensure_table(opts.table, opts.output, opts.schema, opts.partition_by)
        summary["glue"] = glue_catalog.register_partitions(opts.table, opts.output, partitions)
        summary["table"] = opts.table
    return summary


# ------------------------------------------------------------------------------------------- CLI


def build_parser():
    from s3lake.cli import parser

    p = parser(
        "json_to_parquet",
        "NDJSON (gzip or plain) to Parquet partitioned by each record's own timestamp; bad records to a "
        "quarantine; optionally registered in Glue.",
    )
    p.add_argument("--input", nargs="+", required=True, metavar="PATH", help="files, directories or globs")
    p.add_argument("--output", required=True, metavar="PATH")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--schema", metavar="FILE", help="Spark StructType JSON, e.g. conf/schemas/NAME.json")
    src.add_argument("--schema-table", metavar="DB.TABLE", help="take the columns of this Glue table")
    p.add_argument("--partition-by", default="dt", help="dt (default), or year/month/day[/hour]")
    p.add_argument("--timestamp-field", required=True, metavar="FIELD")
    p.add_argument("--table", metavar="DB.TABLE", help="create/update this Glue table and its partitions")
    p.add_argument("--dedup-key", default="", metavar="FIELD[,FIELD]")
    p.add_argument("--max-records-per-file", type=int, default=0, metavar="N")
    p.add_argument("--files-per-partition", type=int, default=1, metavar="N")
    p.add_argument("--bad-records", metavar="PATH", help="default: <output>_bad_records")
    p.add_argument("--mode", choices=MODES, default="overwrite-partitions")
    p.add_argument("--max-bad-fraction", type=float, default=0.01, metavar="F",
                   help="fail when more than this share of records is bad (default 0.01)")
    p.add_argument("--reread-input", action="store_true",
                   help="read and parse the input again for each step instead of reusing one shuffle")
    return p


def options_from_args(args: Any) -> Options:
    schema = load_schema(args.schema) if args.schema else glue_catalog.schema_from_table(args.schema_table)
    opts = Options(
        inputs=list(args.input),
        output=args.output,
        schema=schema,
        timestamp_field=args.timestamp_field,
        partition_by=parse_partition_by(args.partition_by),
        table=args.table,
        dedup_keys=[k.strip() for k in args.dedup_key.split(",") if k.strip()],
        max_records_per_file=args.max_records_per_file,
        files_per_partition=args.files_per_partition,
        bad_records=args.bad_records,
        mode=args.mode,
        max_bad_fraction=args.max_bad_fraction,
        reuse_shuffle=not args.reread_input,
    )
    validate(opts)
    return opts


def cli_main(argv: Sequence[str] | None = None) -> int:
    """Entry point behind ``jobs/json_to_parquet.py`` (wrapped by ``s3lake.cli.run``)."""
    from s3lake.spark import get_session

    args = build_parser().parse_args(argv)
    if args.schema:
        load_schema(args.schema)  # fail on a bad schema file before starting Spark
    spark = get_session("json_to_parquet")
    opts = options_from_args(args)
    summary = convert(spark, opts)
    print(json.dumps({"json_to_parquet": summary}, sort_keys=True), flush=True)
    return 0


__all__ = [
    "Options",
    "TooManyBadRecords",
    "build_parser",
    "cli_main",
    "committer_conflicts",
    "convert",
    "dedup",
    "for_writing",
    "load_schema",
    "parse_records",
    "with_partitions",
]
