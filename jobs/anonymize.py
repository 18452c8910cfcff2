"""Anonymize JSON-lines objects in place: blank, null, drop, HMAC, mask or redact fields under a rules file.

    spark-submit jobs/anonymize.py \\
        (--inventory-table DB.TABLE [--inventory-date DT] | --inventory-manifest S3_URL | --source S3_URL) \\
        --rules PATH_OR_S3_URL --results PATH [--hmac-key-param NAME] [--min-age 300s] \\
        [--processed-tag PROCESSED=true] [--dry-run] [--run-id ID] [--concurrency N] [--partitions N] \\
        [--part-size BYTES] [--purge-noncurrent] [--results-table DB.TABLE] [--max-failures N] \\
        [--allow-unmatched-rules] [--request-payer requester] [--max-requests-per-second N] \\
        [--max-requests-per-second-per-prefix N] \\
        [--prefix-depth 1] [--prefix-delimiter /] [--object-deadline 15m] [--progress-interval 30] \\
        [--checkpoint-interval 60]

Each object is replaced atomically under its own key (conditional on the ETag read, every attribute,
ACL grant and tag kept, plus the processed tag), or only tagged when no line changed. The HMAC key
comes from the SSM SecureString ``--hmac-key-param`` or the ``S3LAKE_HMAC_KEY`` environment variable.
Commits one result row per object under ``--results`` (Parquet, partition ``run_id=...``, registered in
``--results-table`` before the run) every ``--checkpoint-interval``; rerunning a run id resumes it. Prints a
summary with each rule's counts (fields reached / changed). Rule paths reach keys holding dots
(``id.orig_h``; ```id.orig_h``` in backticks: only that key). Exit status: 0; 1 when FAILED objects exceed
``--max-failures``, when a rule reached no field in any object read (unless ``--allow-unmatched-rules``);
2 for bad input (nothing read), a results table that cannot be registered, or a run id another driver works.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Sequence

from s3lake import aws, cli, inventory
from s3lake.anonymize import job, rules, sources, writes
from s3lake.objects import results, results_table, run_options
from s3lake.spark import get_session

log = logging.getLogger("s3lake.anonymize")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("anonymize.py", __doc__.split("\n\n")[0])
    cli.add_inventory_source(p, [("--source", "S3_URL", "s3://bucket/prefix/ to list (ListObjectsV2)")])
    run_options.add(p, concurrency=16, dry_run_help="write nothing; report records and fields per object",
                     run_id_help="marker and results partition (default: from the source and the rules)")
    p.add_argument("--rules", required=True, metavar="PATH_OR_S3_URL", help="JSON rules file")
    p.add_argument("--hmac-key-param", metavar="NAME", help="SSM SecureString holding the HMAC key")
    p.add_argument("--min-age", default="300s", help="skip objects modified more recently (default 300s)")
    p.add_argument("--processed-tag", default="PROCESSED=true", metavar="KEY=VALUE",
                   help="tag added to every processed object; objects carrying it are skipped")
    p.add_argument("--part-size", type=int, default=writes.DEFAULT_PART_SIZE, metavar="BYTES",
                   help="multipart part size; outputs above it are streamed (default 8 MiB, min 5 MiB)")
    p.add_argument("--purge-noncurrent", action="store_true",
                   help="after a rewrite, delete the version that was read (its data is not anonymized)")
    p.add_argument("--results-table", metavar="DB.TABLE", help="Glue table to create/update over --results")
    p.add_argument("--allow-unmatched-rules", action="store_true",
                   help="exit 0 even when a rule reached no field in any scanned object (default: exit 1)")
    return p


def parse_args(argv: Sequence[str] | None):
    p = build_parser()
    args = p.parse_args(argv)
    cli.check_inventory_source(p, args)
    run_options.check(p, args)
    if args.part_size < writes.MIN_PART_SIZE:
        p.error("--part-size must be at least 5 MiB (5242880), S3's minimum part size")
    return args


def _main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    aws.require_crt()
    aws.use_request_payer(args.request_payer)
    # Everything that can be wrong with the input fails here, before any object is read.
    ruleset = rules.load(args.rules).with_key(rules.hmac_key(args.hmac_key_param, os.environ))
    processed_tag = job.parse_tag(args.processed_tag)
    min_age = job.parse_min_age(args.min_age)
    if args.results_table:
        results_table.check_name(args.results_table)
    spark = get_session("s3lake-anonymize")
    results.check_writable(spark, args.results)
    if args.source:
        source_id = f"{args.source}@{datetime.now(timezone.utc):%Y-%m-%d}"
        candidates, bucket_counts = sources.source_candidates(spark, args.source)
    else:
        delivery, frame = inventory.read(spark, args.inventory_table, args.inventory_date, args.inventory_manifest)
        source_id = delivery.delivery_id
        candidates, bucket_counts = sources.inventory_candidates(frame), None
    run_id = results.check_run_id(args.run_id or job.default_run_id(source_id, ruleset.digest))
    settings = job.Settings(
        run_id=run_id,
        rules=ruleset,
        processed_tag=processed_tag,
        min_age=min_age,
        dry_run=args.dry_run,
        purge_noncurrent=args.purge_noncurrent,
        concurrency=args.concurrency,
        part_size=args.part_size,
        request_payer=args.request_payer,
    )
    if args.results_table:  # before: Athena reads the rows the tasks commit while the run goes on
        results_table.register_before_run(args.results_table, args.results, results.SCHEMA, run_id)
    log.info("run %s over %s with %d rules", run_id, source_id, len(ruleset.rules))
    summary, frame = job.run(spark, candidates, settings, args.results, args.partitions, bucket_counts,
                             run_options.pace(args), run_options.checkpoint(args))
    totals = job.rule_totals(frame, ruleset.labels)
    title = f"anonymize run {run_id}{' (dry run)' if args.dry_run else ''}"
    status = results.report(title, summary, args.max_failures, args.results, run_id)
    print(job.format_rule_totals(totals), flush=True)
    if totals["unmatched"] and not args.allow_unmatched_rules:
        print(f"s3lake: rule(s) {', '.join(totals['unmatched'])} reached no field in the "
              f"{totals['scanned_objects']} objects scanned: check the paths (a dry run shows the same counts; "
              "`a.b` in backticks is the literal key a.b), or pass --allow-unmatched-rules", file=sys.stderr)
        status = max(status, 1)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
