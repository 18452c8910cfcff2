"""What every job entry point shares: the argument parser style, the inventory source options, one-line
errors. (The per-object jobs' run options are :mod:`s3lake.objects.run_options`.)"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from s3lake.errors import S3LakeError

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


def check_inventory_source(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The usage errors of :func:`add_inventory_source` (exit 2, one line)."""
    if args.inventory_date and not args.inventory_table:
        p.error("--inventory-date goes with --inventory-table")


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
    """Call ``main``; a contract violation becomes one line on stderr and its exit status (2: bad input,
    nothing touched; 1: written but not registered)."""
    setup_logging()
    try:
        return main(argv)
    except S3LakeError as exc:
        print(f"s3lake: error: {exc}", file=sys.stderr)
        return exc.exit_code
