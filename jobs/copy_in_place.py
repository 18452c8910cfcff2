"""Copy in place: backfill Cross-Region Replication for pre-existing and FAILED objects.

    spark-submit jobs/copy_in_place.py \\
        (--inventory-table DB.TABLE [--inventory-date DT] | --inventory-manifest S3_URL) \\
        --results PATH [--statuses none,FAILED] [--dry-run] [--run-id ID] [--no-copy-acls] \\
        [--acl-from-inventory] [--concurrency N] [--partitions N] [--multipart-threshold BYTES] \\
        [--max-failures N] [--request-payer requester]

Reads the bucket's S3 Inventory, picks the latest versions whose replication status is one of
``--statuses`` and copies each onto itself keeping ACL, SSE (exact KMS key), storage class, tags, user
metadata and system headers, so replication picks it up. Writes one result row per candidate under
``--results`` (Parquet, partition ``run_id=...``) and prints a summary. Exit status: 0, 1 when FAILED
objects exceed ``--max-failures``, 2 for bad input (nothing touched: also a source bucket that is
missing, in another region or denied, and a missing AWS CRT).
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from s3lake import aws, cli, copy_in_place, inventory, results
from s3lake.spark import get_session

log = logging.getLogger("s3lake.copy_in_place")


def parse_args(argv: Sequence[str] | None):
    p = cli.parser("copy_in_place.py", __doc__.split("\n\n")[0])
    cli.add_inventory_source(p)
    cli.add_run_options(p, concurrency=32, dry_run_help="write nothing; report WOULD_COPY or the skip reason",
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
    args = p.parse_args(argv)
    cli.check_run_options(p, args)
    if not 5 * 1024 * 1024 <= args.multipart_threshold <= copy_in_place.DEFAULT_THRESHOLD:
        p.error("--multipart-threshold must be between 5 MiB and 5 GiB")
    return args


def _main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    aws.require_crt()
    aws.use_request_payer(args.request_payer)
    statuses = copy_in_place.parse_statuses(args.statuses)
    spark = get_session("s3lake-copy-in-place")
    delivery, frame = inventory.read(spark, args.inventory_table, args.inventory_date, args.inventory_manifest)
    results.check_writable(spark, args.results)
    run_id = results.check_run_id(args.run_id or copy_in_place.default_run_id(delivery.delivery_id))
    settings = copy_in_place.Settings(
        run_id=run_id,
        dry_run=args.dry_run,
        copy_acls=args.copy_acls,
        acl_from_inventory=args.acl_from_inventory,
        concurrency=args.concurrency,
        multipart_threshold=args.multipart_threshold,
        request_payer=args.request_payer,
    )
    log.info("run %s over %s (%s)", run_id, delivery.manifest_url, delivery.file_format)
    candidates = copy_in_place.select_candidates(frame, statuses)
    summary, _ = copy_in_place.run(spark, candidates, settings, args.results, args.partitions)
    title = f"copy-in-place run {run_id}{' (dry run)' if args.dry_run else ''}"
    return results.report(title, summary, args.max_failures, args.results, run_id)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
