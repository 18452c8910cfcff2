"""What every job entry point shares: the argument parser style and one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from s3lake.errors import S3LakeError
from s3lake.objects import pacing

log = logging.getLogger("s3lake")


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_inventory_source(p: argparse.ArgumentParser, others: Sequence[tuple[str, str, str]] = ()) -> None:
    """``--inventory-table DB.TABLE [--inventory-date DT] | --inventory-manifest S3_URL``, one of them
    required, plus the job's ``others`` sources as (flag, metavar, help) in the same one-of group."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--inventory-table", metavar="DB.TABLE", help="Glue table over the S3 Inventory (Athena style)")
    src.add_argument("--inventory-manifest", metavar="S3_URL", help="s3:// URL of a delivery's manifest.json")
    for flag, metavar, help_text in others:
        src.add_argument(flag, metavar=metavar, help=help_text)
    p.add_argument("--inventory-date", metavar="DT", help="partition dt=YYYY-MM-DD-HH-MM (default: the latest)")


def add_run_options(p: argparse.ArgumentParser, *, concurrency: int, dry_run_help: str, run_id_help: str) -> None:
    """The options every per-object job has: results, dry run, run id, parallelism, failure budget."""
    p.add_argument("--results", required=True, metavar="PATH", help="Hadoop path for the results dataset")
    p.add_argument("--dry-run", action="store_true", help=dry_run_help)
    p.add_argument("--run-id", help=run_id_help)
    p.add_argument("--concurrency", type=int, default=concurrency,
                   help=f"objects in flight per Spark task (default {concurrency})")
    p.add_argument("--partitions", type=int, help="Spark tasks (default: from the candidate count)")
    p.add_argument("--max-failures", type=int, default=0, help="exit 1 when more objects FAILED (default 0)")
    p.add_argument("--max-requests-per-second", type=float, metavar="N",
                   help="run-wide cap on S3 request attempts per second, split over the running tasks "
                        "(default: none; each task adapts to throttling by itself)")
    p.add_argument("--object-deadline", "--deadline", dest="object_deadline", default="15m", metavar="DURATION",
                   help="how long one object's throttled/5xx requests are retried before it is FAILED "
                        "(900, 15m, 1h; default 15m)")
    p.add_argument("--progress-interval", type=float, default=30.0, metavar="SECONDS",
                   help="seconds between progress lines on the driver (default 30; 0: none)")
    p.add_argument("--request-payer", choices=["requester"],
                   help="Requester Pays buckets: send x-amz-request-payer on every request (this account pays)")


def check_run_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The usage errors of :func:`add_inventory_source` and :func:`add_run_options` (exit 2, one line)."""
    if args.inventory_date and not args.inventory_table:
        p.error("--inventory-date goes with --inventory-table")
    if args.concurrency < 1 or (args.partitions is not None and args.partitions < 1):
        p.error("--concurrency and --partitions must be at least 1")
    if args.max_requests_per_second is not None and args.max_requests_per_second <= 0:
        p.error("--max-requests-per-second must be positive")
    if args.progress_interval < 0:
        p.error("--progress-interval must be 0 (none) or positive")
    try:
        args.object_deadline = pacing.parse_duration(args.object_deadline)
    except ValueError as exc:
        p.error(f"--object-deadline: {exc}")


def pace_options(args: argparse.Namespace) -> pacing.PaceOptions:
    """The run's :class:`~s3lake.objects.pacing.PaceOptions` from :func:`add_run_options`' arguments."""
    return pacing.PaceOptions(max_requests_per_second=args.max_requests_per_second,
                              object_deadline=args.object_deadline, progress_interval=args.progress_interval)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (not the one at set-up, which a test runner may close)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging() -> None:
    """INFO for s3lake's own loggers only: py4j logs harmless reconnects to the *root* logger at INFO."""
    if not log.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call ``main``; a contract violation becomes one line on stderr and exit status 2."""
    setup_logging()
    try:
        return main(argv)
    except S3LakeError as exc:
        print(f"s3lake: error: {exc}", file=sys.stderr)
        return 2
