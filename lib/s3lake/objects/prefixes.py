"""Which partitioned prefix a key counts against, as far as the client can tell (pure).

S3 scales request capacity per partitioned prefix, a key range it splits by load, and throttles each one
separately (https://docs.aws.amazon.com/AmazonS3/latest/userguide/optimizing-performance.html). The
client cannot see S3's partitions; a user knows their layout. A key's prefix here is its first ``depth``
segments split by ``delimiter`` (default: the first folder, ``logs/2024/x.json`` -> ``logs/``); a key
with fewer segments counts against its parent (a key at the bucket's root: ``""``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_DEPTH = 1
DEFAULT_DELIMITER = "/"
TOP = 5  # prefixes named as throttled most in a summary


@dataclass(frozen=True)
class PrefixRule:
    """``--prefix-depth`` segments split by ``--prefix-delimiter``."""

    depth: int = DEFAULT_DEPTH
    delimiter: str = DEFAULT_DELIMITER

    def __post_init__(self) -> None:
        if self.depth < 0 or not self.delimiter:
            raise ValueError("a prefix needs a depth >= 0 and a non-empty delimiter")

    def of(self, key: str) -> str:
        """The prefix ``key`` is paced under."""
        if not self.depth:
            return ""
        parts = key.split(self.delimiter)
        kept = min(self.depth, len(parts) - 1)  # the last part is the object's own name
        return self.delimiter.join(parts[:kept]) + self.delimiter if kept > 0 else ""

    def of_item(self, item: Any) -> tuple[str, str]:
        """``(bucket, prefix)`` of a candidate (a Row or a dict with ``bucket`` and ``key``); ``("", "")``
        for anything else."""
        try:
            return str(item["bucket"]), self.of(str(item["key"]))
        except (KeyError, TypeError, IndexError, ValueError):
            return "", ""


def label(bucket: str, prefix: str) -> str:
    """How a prefix is named in progress lines and summaries: ``bucket/prefix``."""
    return f"{bucket}/{prefix}" if bucket else (prefix or "(no prefix)")
