"""NDJSON (Kinesis Firehose output, gzip or plain) to Parquet partitioned by event time, registered in Glue.

    spark-submit jobs/json_to_parquet.py \\
        --input s3://raw/firehose/2024/05/01/ --output s3://lake/events \\
        (--schema conf/schemas/firehose-events.json | --schema-table DB.TABLE) --timestamp-field event_time \\
        [--timestamp-format PATTERN ...] [--partition-by dt] [--table lake.events] \\
        [--mode replace-batches|rebuild-partitions|append] [--dedup-key event_id] \\
        [--target-file-size 256m] [--max-records-per-file N] [--bad-records s3://lake/events_bad_records] \\
        [--max-bad-fraction 0.01] [--unknown-fields-sample 64] [--reread-input]

Each record goes to the partition of its own event time. By default (``replace-batches``) the rows of
each Firehose arrival hour are a sub-partition ``batch=<hour>-<source hash>`` of their event partitions:
a run replaces the batches of the hours it reads and nothing else, so hourly or daily runs over
arrival-time prefixes keep every late record exactly once. Bad records go raw (with their input file and
reason) to --bad-records; the job fails, leaving the output untouched, when more than
--max-bad-fraction of them are bad. Run on EMR with the line's conf/emr-configurations-<line>.json (EMRFS
S3-optimized committer on emr-7, S3A with EMR's commit protocol and the magic committer on emr-spark-8).
Field names may hold any character JSON allows: ``--timestamp-field`` and ``--dedup-key`` take paths
(``a.b`` reaches a field named ``a.b`` or the field ``b`` inside ``a``; ```a.b``` in backticks only the
former). Exit status: 0 done, 2 bad input (one line; nothing written or deleted), 1 written but not
registered in Glue (one line saying what was written and how to register it).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from s3lake import cli, field_paths, glue_catalog
from s3lake.parquet import options
from s3lake.parquet.convert import convert
from s3lake.spark import get_session


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("json_to_parquet.py", __doc__.split("\n\n")[0])
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="files, directories (read recursively) or globs, e.g. s3://raw/stream/2024/05/01/")
    p.add_argument("--output", required=True, metavar="PATH")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--schema", metavar="FILE", help="Spark StructType JSON, e.g. conf/schemas/NAME.json")
    src.add_argument("--schema-table", metavar="DB.TABLE", help="take the columns of this Glue table")
    p.add_argument("--timestamp-field", required=True, metavar="PATH",
                   help="the event time: a field, or a path into nested ones (payload.ts; `a.b` for a name with dots)")
    p.add_argument("--timestamp-format", action="append", default=[], metavar="PATTERN",
                   help="a Spark datetime pattern for a string timestamp, e.g. 'dd/MMM/yyyy:HH:mm:ss Z'; repeat for "
                        "more, tried in order before epoch numbers and ISO-8601")
    p.add_argument("--partition-by", default="dt", help="dt (default), or year/month/day[/hour]")
    p.add_argument("--table", metavar="DB.TABLE", help="create/update this Glue table and its partitions")
    p.add_argument("--mode", choices=options.MODES, default=options.REPLACE_BATCHES,
                   help="replace-batches (default): replace this input's arrival-hour batches only; "
                        "rebuild-partitions: replace whole event partitions (a backfill from all their "
                        "inputs); append: add files")
    p.add_argument("--dedup-key", default="", metavar="PATH[,PATH]",
                   help="keep the earliest record per key (within each batch)")
    p.add_argument("--target-file-size", default="256m", metavar="SIZE",
                   help="split an event partition's rows into tasks (and files) of about this size (256m)")
    p.add_argument("--max-records-per-file", type=int, default=0, metavar="N")
    p.add_argument("--bad-records", metavar="PATH", help="default: <output>_bad_records")
    p.add_argument("--max-bad-fraction", type=float, default=0.01, metavar="F",
                   help="fail when more than this share of records is bad (default 0.01)")
    p.add_argument("--unknown-fields-sample", type=int, default=options.DEFAULT_UNKNOWN_FIELDS_SAMPLE, metavar="N",
                   help="count unknown top-level fields in 1 of N records (default 64; 1: every record, "
                        "which parses each line twice)")
    p.add_argument("--reread-input", action="store_true",
                   help="read and parse the input again for each step instead of reusing one shuffle")
    return p


def parse_args(argv: Sequence[str] | None):
    return build_parser().parse_args(argv)


def job_options(args) -> options.Options:
    """The job's options from the arguments; every config error surfaces here, before Spark starts
    (--schema-table reads Glue, without Spark)."""
    schema = options.load_schema(args.schema) if args.schema else glue_catalog.schema_from_table(args.schema_table)
    opts = options.Options(
        inputs=list(args.input),
        output=args.output,
        schema=schema,
        timestamp_field=args.timestamp_field,
        partition_by=options.parse_partition_by(args.partition_by),
        table=args.table,
        dedup_keys=field_paths.split_list(args.dedup_key, "--dedup-key"),
        max_records_per_file=args.max_records_per_file,
        bad_records=args.bad_records,
        mode=args.mode,
        max_bad_fraction=args.max_bad_fraction,
        reuse_shuffle=not args.reread_input,
        target_file_size=options.parse_size(args.target_file_size),
        unknown_fields_sample=args.unknown_fields_sample,
        timestamp_formats=list(args.timestamp_format),
    )
    options.validate(opts)
    return opts


def _main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    opts = job_options(args)
    spark = get_session("s3lake-json-to-parquet")
    summary = convert(spark, opts)
    print(json.dumps({"json_to_parquet": summary}, sort_keys=True), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
