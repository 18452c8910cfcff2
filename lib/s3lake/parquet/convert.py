"""JSON to Parquet, the run: NDJSON (e.g. Kinesis Firehose output) to partitioned Parquet, optionally
registered in Glue.

The input is read and parsed once (:mod:`s3lake.parquet.read`), straight into the write's shuffle; the
counts, the bad-record checks and quarantine, and the write (:mod:`s3lake.parquet.write`) all read that
shuffle's files. Nothing is written to the output when the input is missing, a batch is incomplete or
too many records are bad. Options and modes: :mod:`s3lake.parquet.options`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from s3lake import aws
from s3lake.errors import ConfigError, NotRegistered
from s3lake.parquet.arrival_batches import BATCH_COLUMN
from s3lake.parquet.committer import DYNAMIC_OVERWRITE, check_committer
from s3lake.parquet.options import (
    APPEND,
    REBUILD_PARTITIONS,
    REPLACE_BATCHES,
    Options,
    case_twins,
    partition_columns,
    validate,
)
from s3lake.parquet.read import (
    BAD_MALFORMED,
    BAD_TS_MISSING,
    BAD_TS_UNPARSEABLE,
    FILE,
    REASON,
    TS,
    UNKNOWN,
    NoInput,
    TooManyBadRecords,
    col,
    dedup,
    default_bad_records_path,
    field,
    input_id,
    parse_records,
    plan_batches,
    quarantine,
    read_lines,
    resolve,
    with_batch,
    with_partitions,
    without_weekday,
)
from s3lake.parquet.write import advisory_size, for_writing, rebalanced, register, shuffled_once, write_parquet


def convert(spark: SparkSession, opts: Options) -> dict[str, Any]:
    """Run the conversion; returns the summary. Raises NoInput, BatchError or TooManyBadRecords before
    touching the output.

    The input is read and parsed once, straight into the write's shuffle (REBALANCE by the partition
    columns); the counting job, the quarantine write and the output write all read that shuffle's files
    (see ``shuffled_once``). With ``reuse_shuffle=False`` each of them reads and parses the input again.
    """
    validate(opts)
    check_committer(spark, DYNAMIC_OVERWRITE if opts.mode in (REPLACE_BATCHES, REBUILD_PARTITIONS) else opts.mode)
    check_patterns(spark, opts.timestamp_formats)
    with case_sensitive(spark, bool(case_twins(opts.schema))):
        return _convert(spark, opts)


def _convert(spark: SparkSession, opts: Options) -> dict[str, Any]:
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
    records = with_partitions(parse_records(lines, opts.schema, opts.timestamp_field, opts.unknown_fields_sample,
                                            opts.timestamp_formats), opts.partition_by)
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
        quarantine(records, bad_dir, batched=bool(batches), timestamp_formats=opts.timestamp_formats)
    if total and bad / total > opts.max_bad_fraction:
        raise TooManyBadRecords(
            f"{bad} of {total} records are bad ({bad / total:.2%} > --max-bad-fraction "
            f"{opts.max_bad_fraction:.2%}); they are in {bad_dir}; the output was not changed"
        )
    good = records.where(good_row)
    if opts.dedup_keys:
        # Within a batch only: a batch's rows must not depend on which other hours the run read.
        keys = [field(col(path[0]), path[1:]) for path in (resolve(opts.schema, k, "--dedup-key")[0]
                                                            for k in opts.dedup_keys)]
        good = dedup(good, keys + ([col(BATCH_COLUMN)] if batches else []), names)
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
        write_parquet(out, opts.output, part_cols, append=opts.mode == APPEND,
                      max_records_per_file=opts.max_records_per_file)
    if opts.table and written:
        try:
            summary["glue"] = register(opts.table, opts.output, opts.schema, part_cols, partitions)
        except Exception as exc:  # noqa: BLE001 - whatever Glue answered, the Parquet is written
            raise NotRegistered(not_registered(opts, written, partitions, exc)) from None
        summary["table"] = opts.table
    return summary


def not_registered(opts: Options, written: int, partitions: Sequence[tuple], exc: BaseException) -> str:
    """The one line for a Glue failure after the write: what is written, and how to register it."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    how = ("rerun this command once that is fixed (it rewrites the same partitions, then registers them)"
           if opts.mode != APPEND else
           f"do not rerun (--mode append would add the rows again): once that is fixed, run MSCK REPAIR TABLE "
           f"{opts.table} in Athena (the table must exist)")
    return (f"wrote {written} records in {len(partitions)} partitions to {opts.output}, but registering them in "
            f"Glue table {opts.table} failed ({aws.error_code(exc)}: {first}); {how}")


@contextmanager
def case_sensitive(spark: SparkSession, on: bool) -> Iterator[None]:
    """``spark.sql.caseSensitive`` for the run when the schema holds names differing only in case (else
    Spark calls them ambiguous), restored after."""
    key = "spark.sql.caseSensitive"
    before = spark.conf.get(key, "false")
    if on:
        spark.conf.set(key, "true")
    try:
        yield
    finally:
        if on:
            spark.conf.set(key, before)


def check_patterns(spark: SparkSession, formats: Sequence[str]) -> None:
    """Each ``--timestamp-format`` compiles (Spark checks a pattern only when it runs): one line, exit 2,
    before any input is read."""
    for fmt in formats:
        value, pattern = without_weekday(F.lit("1970-01-01"), fmt)
        try:
            spark.range(1).select(F.try_to_timestamp(value, F.lit(pattern))).collect()
        except Exception as exc:  # noqa: BLE001 - Spark's pattern errors come in several types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"--timestamp-format {fmt!r} is not a Spark datetime pattern: {first}") from None
