"""What every job entry point shares: the argument parser style and one-line errors."""

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
