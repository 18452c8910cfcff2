"""The command-line options every per-object job has (results, dry run, run id, parallelism, failure
budget, pacing, Requester Pays), their usage errors and the run's pacing settings."""

from __future__ import annotations

import argparse

from s3lake.objects import checkpoints, pacing, prefixes


def add(p: argparse.ArgumentParser, *, concurrency: int, dry_run_help: str, run_id_help: str) -> None:
    """The options every per-object job has: results, dry run, run id, parallelism, failure budget."""
    p.add_argument("--results", required=True, metavar="PATH", help="Hadoop path for the results dataset")
    p.add_argument("--dry-run", action="store_true", help=dry_run_help)
    p.add_argument("--run-id", help=run_id_help)
    p.add_argument("--concurrency", type=int, default=concurrency,
                   help=f"objects in flight per Spark task (default {concurrency})")
    p.add_argument("--partitions", type=int, help="Spark tasks (default: from the candidate count)")
    p.add_argument("--max-failures", type=int, default=0, help="exit 1 when more objects FAILED (default 0)")
    p.add_argument("--max-requests-per-second", type=float, metavar="N",
                   help="run-wide cap on S3 request attempts per second, shared by the tasks running at each "
                        "moment however many executors join (default: none; each prefix's pace adapts to "
                        "throttling by itself)")
    p.add_argument("--max-requests-per-second-per-prefix", dest="max_per_prefix", type=float, metavar="N",
                   help="run-wide cap on S3 request attempts per second to any one prefix (default: none)")
    p.add_argument("--prefix-depth", type=int, default=prefixes.DEFAULT_DEPTH, metavar="N",
                   help="a key's first N segments are the prefix it is paced under: S3 throttles per "
                        f"partitioned prefix (default {prefixes.DEFAULT_DEPTH}; 0: the whole bucket)")
    p.add_argument("--prefix-delimiter", default=prefixes.DEFAULT_DELIMITER, metavar="C",
                   help=f"what splits a key into segments (default {prefixes.DEFAULT_DELIMITER!r})")
    p.add_argument("--object-deadline", "--deadline", dest="object_deadline", default="15m", metavar="DURATION",
                   help="how long one object's throttled/5xx requests are retried before it is FAILED "
                        "(900, 15m, 1h; default 15m)")
    p.add_argument("--progress-interval", type=float, default=30.0, metavar="SECONDS",
                   help="seconds between progress lines on the driver (default 30; 0: none)")
    p.add_argument("--checkpoint-interval", type=float, default=checkpoints.DEFAULT_INTERVAL, metavar="SECONDS",
                   help="each task commits the rows of the objects it finished at least this often; an abort "
                        "loses at most this much work, and a rerun of the run id resumes after the rows "
                        f"committed (default {checkpoints.DEFAULT_INTERVAL:.0f})")
    p.add_argument("--request-payer", choices=["requester"],
                   help="Requester Pays buckets: send x-amz-request-payer on every request (this account pays)")


def check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The usage errors of :func:`add` (exit 2, one line)."""
    if args.concurrency < 1 or (args.partitions is not None and args.partitions < 1):
        p.error("--concurrency and --partitions must be at least 1")
    if args.max_requests_per_second is not None and args.max_requests_per_second <= 0:
        p.error("--max-requests-per-second must be positive")
    if args.max_per_prefix is not None and args.max_per_prefix <= 0:
        p.error("--max-requests-per-second-per-prefix must be positive")
    if args.prefix_depth < 0 or not args.prefix_delimiter:
        p.error("--prefix-depth must be 0 or more and --prefix-delimiter not empty")
    if not args.checkpoint_interval > 0:
        p.error("--checkpoint-interval must be positive")
    if args.progress_interval < 0:
        p.error("--progress-interval must be 0 (none) or positive")
    try:
        args.object_deadline = pacing.parse_duration(args.object_deadline)
    except ValueError as exc:
        p.error(f"--object-deadline: {exc}")


def pace(args: argparse.Namespace) -> pacing.PaceOptions:
    """The run's :class:`~s3lake.objects.pacing.PaceOptions` from :func:`add`'s arguments."""
    return pacing.PaceOptions(max_requests_per_second=args.max_requests_per_second,
                              max_per_prefix=args.max_per_prefix, object_deadline=args.object_deadline,
                              progress_interval=args.progress_interval,
                              prefixes=prefixes.PrefixRule(args.prefix_depth, args.prefix_delimiter))


def checkpoint(args: argparse.Namespace) -> checkpoints.CheckpointOptions:
    """The run's :class:`~s3lake.objects.checkpoints.CheckpointOptions` from :func:`add`'s arguments."""
    return checkpoints.CheckpointOptions(interval=args.checkpoint_interval)
