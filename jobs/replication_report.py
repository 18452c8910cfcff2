"""Replication report: did Cross-Region Replication take what a copy-in-place run copied?

    spark-submit jobs/replication_report.py --results PATH --run-id ID \\
        (--inventory-table DB.TABLE [--inventory-date DT] | --inventory-manifest S3_URL | --live) \\
        [--report PATH] [--results-table DB.TABLE] [--concurrency N] [--partitions N]

For every object the run COPIED: COMPLETED, PENDING, FAILED, NO_STATUS, GONE, OVERWRITTEN (a newer
version replicates by itself) or NOT_LISTED_YET, from a later inventory delivery of the source bucket
(no object requests) or, with ``--live``, one HEAD per object (UNCHECKED, with the error, when a HEAD
fails for another reason than 404). Writes the report as Parquet beside the results
(``<parent>/replication_report/run_id=ID``, or ``--report``), registers it in Glue with
``--results-table``, and prints a summary. The FAILED objects are what ``copy_in_place.py --from-report``
copies again. Exit status: 0, 1 while any object is FAILED or UNCHECKED, 2 for bad input (nothing
written).
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime, timezone
from typing import Sequence

from pyspark.sql import functions as F
from s3lake import cli, inventory
from s3lake.objects import results, results_table
from s3lake.replication import report
from s3lake.spark import get_session

log = logging.getLogger("s3lake.replication_report")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("replication_report.py", __doc__.split("\n\n")[0])
    p.add_argument("--results", required=True, metavar="PATH", help="the copy runs' results dataset")
    p.add_argument("--run-id", required=True, help="the copy run to report on")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--inventory-table", metavar="DB.TABLE", help="Glue table over a later S3 Inventory")
    src.add_argument("--inventory-manifest", metavar="S3_URL", help="s3:// URL of a later delivery's manifest.json")
    src.add_argument("--live", action="store_true", help="one HEAD per copied object instead of an inventory")
    p.add_argument("--inventory-date", metavar="DT", help="partition dt=YYYY-MM-DD-HH-MM (default: the latest)")
    p.add_argument("--report", metavar="PATH", help="report dataset (default: replication_report beside --results)")
    p.add_argument("--results-table", metavar="DB.TABLE", help="Glue table to create/update over the report")
    p.add_argument("--concurrency", type=int, default=32, help="HEADs in flight per task with --live (default 32)")
    p.add_argument("--partitions", type=int, help="Spark tasks for --live (default: the cores)")
    return p


def parse_args(argv: Sequence[str] | None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.inventory_date and not args.inventory_table:
        p.error("--inventory-date goes with --inventory-table")
    if args.concurrency < 1 or (args.partitions is not None and args.partitions < 1):
        p.error("--concurrency and --partitions must be at least 1")
    return args


def _main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run_id = results.check_run_id(args.run_id)
    if args.results_table:
        results_table.check_name(args.results_table)
    report_path = args.report or report.default_report_path(args.results)
    spark = get_session("s3lake-replication-report")
    copied = report.copied_objects(spark, args.results, run_id).persist()
    checked_at = datetime.now(timezone.utc)
    if args.live:
        checked_by = "live"
        checks = report.live(copied, run_id, args.concurrency, checked_at, args.partitions)
    else:
        delivery, frame = inventory.read(spark, args.inventory_table, args.inventory_date, args.inventory_manifest)
        stats = copied.agg(F.max("finished_at").alias("finished")).collect()[0]
        buckets = [r.bucket for r in results.read_run(spark, args.results, run_id).select("bucket").distinct()
                   .collect()]
        report.check_inventory(delivery.source_bucket, delivery.delivery_id, buckets, run_id,
                                           stats.finished)
        checked_by = f"inventory {delivery.delivery_id}"
        mine = copied.where(F.col("bucket") == delivery.source_bucket)
        checks = report.from_inventory(mine, frame, run_id, checked_by, checked_at)
    results.check_writable(spark, report_path)
    report.write(checks, report_path)
    copied.unpersist()
    written = report.read_run(spark, report_path, run_id)
    counts = report.summarize(written)
    print(report.format_summary(run_id, checked_by, counts, f"{report_path.rstrip('/')}/run_id={run_id}"),
          flush=True)
    failed = counts.get(report.FAILED, 0)
    unchecked = counts.get(report.UNCHECKED, 0)
    if failed:
        print(f"s3lake: {failed} objects FAILED to replicate; copy them again with "
              f"copy_in_place.py --from-report {report_path.rstrip('/')}/run_id={run_id}", file=sys.stderr)
    if unchecked:
        print(f"s3lake: {unchecked} objects could not be checked (HEAD failed; error_code and error_message say why); "
              "report again once that is fixed", file=sys.stderr)
    if args.results_table:  # after the summary: a failure here says what is written and how to register it
        results_table.register_after_run(args.results_table, report_path, report.SCHEMA, run_id)
    return 1 if failed or unchecked else 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
