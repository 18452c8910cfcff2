"""Copy in place: backfill Cross-Region Replication for pre-existing and FAILED objects.

    spark-submit jobs/copy_in_place.py \\
        (--inventory-table DB.TABLE [--inventory-date DT] | --inventory-manifest S3_URL | --from-report PATH) \\
        --results PATH [--statuses none,FAILED] [--dry-run] [--prices FILE] [--run-id ID] [--no-copy-acls] \\
        [--acl-from-inventory] [--concurrency N] [--partitions N] [--multipart-threshold BYTES] \\
        [--no-replication-check] [--results-table DB.TABLE] [--max-failures N] [--request-payer requester] \\
        [--max-requests-per-second N] [--max-requests-per-second-per-prefix N] \\
        [--prefix-depth 1] [--prefix-delimiter /] [--object-deadline 15m] [--progress-interval 30] \\
        [--checkpoint-interval 60] [--estimate] \\
        [--method copy|batch-replication] [--batch-role-arn ARN] [--batch-location S3_URL] [--no-wait]

Reads the bucket's S3 Inventory, picks the latest versions whose replication status is one of
``--statuses`` and copies each onto itself keeping ACL, SSE (exact KMS key), storage class, tags, user
metadata and system headers, so replication picks it up. Only objects an enabled rule of the bucket's
replication configuration takes are copied (the others become SKIPPED_OUT_OF_SCOPE, nothing written); a
bucket without replication or versioning is refused unless ``--no-replication-check``. ``--from-report``
copies again the objects a replication report (jobs/replication_report.py) found FAILED. ``--dry-run``
ends with what the real run would cost (requests, KMS calls, new versions' bytes, dollars from
``--prices``, default conf/prices/us-east-1.json). ``--estimate`` prices both routes (copy in place and
Batch Replication) from the inventory and bucket-level reads alone, lists copy in place's side effects,
names the cheaper route and exits 0 without a request naming an object or a result written. Commits one
result row per candidate under ``--results`` (Parquet, partition ``run_id=...``; ``--results-table``
registers it in Glue before the run) every ``--checkpoint-interval``; rerunning a run id resumes it. Prints
a summary.

``--method batch-replication`` replicates the same candidates without writing a version: per source bucket
one CSV manifest (under ``--batch-location``) and one S3 Batch Operations job (``S3ReplicateObject``, run
as ``--batch-role-arn``), whose completion report becomes the result rows (REPLICATED, MISSING,
SKIPPED_NOT_ELIGIBLE, FAILED). It follows the jobs to their end unless ``--no-wait``; rerunning the same run
id re-attaches to its jobs (never a second one) and collects them.

Exit status: 0, 1 when FAILED objects exceed ``--max-failures`` (or S3 Control refused a job request: the
manifests are kept, rerun once fixed), 2 for bad input (nothing touched: also a source bucket that is
missing, in another region or denied, a missing AWS CRT, a run id another driver works, a role named that
does not exist).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from typing import Sequence

from s3lake import aws, cli, inventory
from s3lake.objects import results, results_table, run_options
from s3lake.replication import batch, batch_jobs, copy_in_place, estimate, pricing, report, scope
from s3lake.spark import get_session

log = logging.getLogger("s3lake.copy_in_place")


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("copy_in_place.py", __doc__.split("\n\n")[0])
    cli.add_inventory_source(p, [("--from-report", "PATH",
                                  "replication report (dataset or run_id=... partition): copy its FAILED objects")])
    run_options.add(p, concurrency=32, dry_run_help="write nothing; report WOULD_COPY or the skip reason",
                     run_id_help="marker and results partition (default: derived from the inventory delivery)")
    p.add_argument("--statuses", default="none,FAILED",
                   help="replication statuses that make a candidate; 'none' = no status (default: none,FAILED)")
    p.add_argument("--no-copy-acls", dest="copy_acls", action="store_false",
                   help="do not carry object ACL grants (the copy gets the bucket's default ACL)")
    p.add_argument("--acl-from-inventory", action="store_true",
                   help="take grants from the report's ObjectAccessControlList instead of GetObjectAcl "
                        "(one request less per object; grants changed since the report would be reverted)")
    p.add_argument("--multipart-threshold", type=int, default=copy_in_place.DEFAULT_THRESHOLD, metavar="BYTES",
                   help="multipart copy above this size (default 5 GiB, the CopyObject limit)")
    p.add_argument("--no-replication-check", dest="replication_check", action="store_false",
                   help="copy without reading the bucket's replication configuration and versioning")
    p.add_argument("--prices", metavar="FILE", help="price table for the dry run's estimate "
                                                     "(default conf/prices/us-east-1.json)")
    p.add_argument("--results-table", metavar="DB.TABLE", help="Glue table to create/update over --results")
    p.add_argument("--estimate", action="store_true",
                   help="price both routes from the inventory and bucket-level reads only, name the cheaper; "
                        "writes nothing")
    p.add_argument("--method", choices=["copy", "batch-replication"], default="copy",
                   help="copy: copy each object onto itself (default); batch-replication: one S3 Batch "
                        "Replication job per bucket (no new versions)")
    p.add_argument("--batch-role-arn", metavar="ARN",
                   help="batch-replication: the role the job runs as (conf/iam/batch-replication-job-role.json)")
    p.add_argument("--batch-location", metavar="S3_URL",
                   help="batch-replication: where manifests and completion reports go, under <S3_URL>/<run id>/ "
                        "(default: <results>/run_id=<id>/_batch when --results is on S3)")
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="batch-replication: return once the jobs exist; rerun the same command (same run id) "
                        "to follow them and collect their reports")
    return p


def parse_args(argv: Sequence[str] | None):
    p = build_parser()
    args = p.parse_args(argv)
    cli.check_inventory_source(p, args)
    run_options.check(p, args)
    if not 5 * 1024 * 1024 <= args.multipart_threshold <= copy_in_place.DEFAULT_THRESHOLD:
        p.error("--multipart-threshold must be between 5 MiB and 5 GiB")
    if args.estimate and (args.dry_run or args.from_report):
        p.error("--estimate prices an inventory (--inventory-table/--inventory-manifest): not with "
                + ("--dry-run" if args.dry_run else "--from-report"))
    batch = args.method == "batch-replication"
    if batch and not (args.dry_run or args.estimate) and not args.batch_role_arn:
        p.error("--method batch-replication needs --batch-role-arn (the role the Batch Operations job runs as)")
    if batch and (args.max_requests_per_second or args.max_per_prefix):
        p.error("--max-requests-per-second* pace copies: the batch-replication route's requests are S3's own")
    if not batch and (args.batch_role_arn or args.batch_location or not args.wait):
        p.error("--batch-role-arn, --batch-location and --no-wait go with --method batch-replication")
    return args


def _candidates(spark, args, statuses):
    """(candidates, source buckets, default run id) from the inventory or from a replication report."""
    if args.from_report:
        frame = report.failed_candidates(spark, args.from_report).persist()
        buckets = sorted(r.bucket for r in frame.select("bucket").distinct().collect())
        digest = hashlib.sha1(args.from_report.rstrip("/").encode()).hexdigest()[:8]
        log.info("run over the FAILED objects of report %s (%s)", args.from_report, ", ".join(buckets) or "none")
        return frame, buckets, f"cip-retry-{digest}"
    delivery, frame = inventory.read(spark, args.inventory_table, args.inventory_date, args.inventory_manifest)
    log.info("run over %s (%s)", delivery.manifest_url, delivery.file_format)
    extra = ("intelligent_tiering_access_tier",) if args.method == "batch-replication" else ()
    return (copy_in_place.select_candidates(frame, statuses, extra), [delivery.source_bucket],
            copy_in_place.default_run_id(delivery.delivery_id))


def _scopes(args, buckets):
    """Each source bucket's replication scope, read once here (one line, exit 2, if it cannot replicate)."""
    if not args.replication_check:
        return None
    return {bucket: scope.fetch(bucket) for bucket in buckets}


def _main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    aws.require_crt()
    aws.use_request_payer(args.request_payer)
    statuses = copy_in_place.parse_statuses(args.statuses)
    prices = pricing.load(args.prices)
    if args.results_table:
        results_table.check_name(args.results_table)
    if args.method == "batch-replication" and args.batch_role_arn:
        batch_jobs.check_role(args.batch_role_arn)
    spark = get_session("s3lake-copy-in-place")
    if args.estimate:
        return _estimate(spark, args, statuses, prices)
    candidates, buckets, default_id = _candidates(spark, args, statuses)
    results.check_writable(spark, args.results)
    run_id = results.check_run_id(args.run_id or default_id)
    scopes = _scopes(args, buckets)
    if args.method == "batch-replication":
        return _batch(spark, args, candidates, run_id, scopes)
    settings = copy_in_place.Settings(
        run_id=run_id,
        dry_run=args.dry_run,
        copy_acls=args.copy_acls,
        acl_from_inventory=args.acl_from_inventory,
        concurrency=args.concurrency,
        multipart_threshold=args.multipart_threshold,
        scopes=scopes,
        request_payer=args.request_payer,
    )
    if args.results_table:  # before: Athena reads the rows the tasks commit while the run goes on
        results_table.register_before_run(args.results_table, args.results, results.SCHEMA, run_id)
    summary, _ = copy_in_place.run(spark, candidates, settings, args.results, args.partitions,
                                   run_options.pace(args), run_options.checkpoint(args))
    title = f"copy-in-place run {run_id}{' (dry run)' if args.dry_run else ''}"
    code = results.report(title, summary, args.max_failures, args.results, run_id)
    tally = copy_in_place.driver_tally(summary["tally"], len(buckets), summary["driver_requests"],
                                       scopes is not None)
    if args.dry_run:
        print(pricing.format_estimate(tally, prices), flush=True)
    return code


def _batch(spark, args, candidates, run_id, scopes) -> int:
    """The Batch Replication route: manifests, one job per bucket, its report as the results."""
    settings = batch.BatchSettings(
        run_id=run_id,
        location=batch.run_location(args.results, run_id, args.batch_location),
        role_arn=args.batch_role_arn,
        dry_run=args.dry_run,
        wait=args.wait,
        concurrency=args.concurrency,
        scopes=scopes,
        progress_interval=args.progress_interval,
    )
    if args.results_table:
        results_table.register_before_run(args.results_table, args.results, results.SCHEMA, run_id)
    summary = batch.run(spark, candidates, settings, args.results, args.partitions, run_options.checkpoint(args))
    title = f"batch-replication run {run_id}{' (dry run)' if args.dry_run else ''}"
    code = results.report(title, summary, args.max_failures, args.results, run_id)
    if summary["pending"]:
        print(f"s3lake: jobs still running: {', '.join(summary['pending'])}; rerun this command (same --run-id) "
              "to follow them and collect their reports", flush=True)
    return code


def _estimate(spark, args, statuses, prices) -> int:
    """``--estimate``: both routes' prices from the inventory; bucket-level reads only, nothing written."""
    delivery, frame = inventory.read(spark, args.inventory_table, args.inventory_date, args.inventory_manifest)
    facts = {delivery.source_bucket: estimate.fetch_facts(delivery.source_bucket, args.copy_acls,
                                                          args.replication_check)}
    options = estimate.Options(args.multipart_threshold, args.copy_acls, args.acl_from_inventory)
    result = estimate.run(frame, statuses, facts, options, prices)
    print(estimate.format_estimate(result, getattr(args, "method", None)), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
