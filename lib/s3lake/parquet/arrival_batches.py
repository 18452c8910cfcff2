"""Batch ids for arrival-time inputs: which input wrote which rows of an event-time partition.

Kinesis Data Firehose writes each object under the UTC hour it *arrived* (``<prefix>YYYY/MM/dd/HH/``,
https://docs.aws.amazon.com/firehose/latest/dev/s3-object-name.html; a custom prefix such as
``year=!{timestamp:yyyy}/month=.../`` works too, https://docs.aws.amazon.com/firehose/latest/dev/s3-prefixes.html),
and records near an hour or day boundary arrive in the next hour's prefix. Converted into event-time
partitions, one arrival hour feeds several event days and one event day is fed by several arrival hours.

So a run owns the rows it wrote under ``<event partition>/batch=<id>/``, where ``<id>`` names one arrival
hour of one source prefix: ``2024-05-01T10-<8 hex digits of sha1(source prefix)>``. A run replaces exactly
the batches of the arrival hours it reads and never touches another hour's. A batch is a *whole* arrival
hour: a run that reads only some of an hour's files is refused (it would drop the others' rows), and two
sources' hours never share an id (the prefix hash). All pure functions of paths.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from typing import Iterable, Sequence

from s3lake.errors import ConfigError

BATCH_COLUMN = "batch"
# <base>/YYYY/MM/DD/HH/<file>, with or without Hive-style key= names.
ARRIVAL_PATH = re.compile(
    r"^(?P<base>.*?)/(?:year=)?(?P<y>\d{4})/(?:month=)?(?P<m>\d{2})/(?:day=)?(?P<d>\d{2})/(?:hour=)?(?P<h>\d{2})/[^/]+$"
)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/*")


class BatchError(ConfigError):
    """The input cannot be given a batch id that is safe to replace."""


def source_key(base: str) -> str:
    """The source prefix without its URI scheme (``s3://b/raw`` and ``file:/x`` / ``file:///x`` alike)."""
    return SCHEME.sub("", base).rstrip("/")


def arrival_hour_dir(path: str) -> str | None:
    """``.../2024/05/01/10/obj.gz`` -> ``.../2024/05/01/10`` (None when the path has no arrival hour)."""
    m = ARRIVAL_PATH.match(path)
    return path.rsplit("/", 1)[0] if m else None


def batch_id(path: str) -> str | None:
    """The batch id of one input file, or None when its path has no ``YYYY/MM/DD/HH/`` arrival hour."""
    m = ARRIVAL_PATH.match(path)
    if not m:
        return None
    digest = hashlib.sha1(source_key(m["base"]).encode()).hexdigest()[:8]
    return f"{m['y']}-{m['m']}-{m['d']}T{m['h']}-{digest}"


def input_batch_id(inputs: Sequence[str]) -> str:
    """One batch for an input outside the arrival layout: a hash of the ``--input`` arguments as given."""
    text = "\n".join(sorted(i.rstrip("/") for i in inputs))
    return "input-" + hashlib.sha1(text.encode()).hexdigest()[:16]


def assign(files: Sequence[str], inputs: Sequence[str]) -> dict[str, str]:
    """Input file -> batch id: its arrival hour when every file has one, else one id for the whole input."""
    ids = {f: batch_id(f) for f in files}
    outside = [f for f, b in ids.items() if b is None]
    if not outside:
        return ids  # type: ignore[return-value]
    if len(outside) < len(ids):
        inside = next(f for f, b in ids.items() if b is not None)
        raise BatchError(
            f"--input mixes files under a YYYY/MM/DD/HH/ arrival prefix ({inside}) with files outside one "
            f"({outside[0]}): convert them in separate runs"
        )
    one = input_batch_id(inputs)
    return {f: one for f in files}


def hour_dirs(files: Iterable[str]) -> list[str]:
    """The arrival-hour directories the files are in (sorted, each once)."""
    return sorted({d for d in (arrival_hour_dir(f) for f in files) if d is not None})


def check_whole_hours(read: Iterable[str], listed: Iterable[str]) -> None:
    """Refuse a run that reads only part of an arrival hour: ``listed`` is every file under the hour
    directories of ``read``; replacing the hour's batch with a part of it would drop the other files' rows."""
    have = set(read)
    missing: dict[str, list[str]] = defaultdict(list)
    for f in listed:
        if f not in have:
            missing[arrival_hour_dir(f) or f].append(f)
    if missing:
        hour, files = sorted(missing.items())[0]
        total = sum(1 for f in set(listed) if arrival_hour_dir(f) == hour)
        raise BatchError(
            f"--input reads {total - len(files)} of the {total} files of arrival hour {hour} (not {files[0]}): "
            "a run replaces whole arrival hours, so it must read all of them (pass the hour's prefix)"
        )
