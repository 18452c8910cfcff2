"""JSON to Parquet's options: the modes, the schema file, the partitioning, sizes, and their checks
(a ``ConfigError`` before Spark reads anything).

Modes (``--mode``):

- ``replace-batches`` (default): each event partition holds one ``batch=<id>`` sub-partition per input
  batch (an arrival hour, see ``s3lake.parquet.arrival_batches``); a run replaces exactly its own batches
  with dynamic partition overwrite, so a late record converted by the next hour's or day's run lands next
  to the rows already there instead of replacing them.
- ``rebuild-partitions``: replaces every event partition the input touches, whole (a backfill from all
  the inputs of those partitions); layout without ``batch=``.
- ``append``: adds files; a re-run duplicates.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from pyspark.sql import types as T

from s3lake.errors import ConfigError
from s3lake.parquet.arrival_batches import BATCH_COLUMN
from s3lake.parquet.read import INTERNAL, PARTITION_FORMATS, WEEKDAY_PATTERN, resolve

REPLACE_BATCHES = "replace-batches"
REBUILD_PARTITIONS = "rebuild-partitions"
APPEND = "append"
MODES = (REPLACE_BATCHES, REBUILD_PARTITIONS, APPEND)

NESTED_NAME = re.compile(r"^[A-Za-z0-9_.]+$")
DEFAULT_TARGET_FILE_SIZE = 256 * 1024 * 1024
# Listing a record's top-level keys parses its line a second time (~75% more parse time, measured): by
# default one record in this many (by a hash of its line, so re-runs agree) is checked for unknown fields.
DEFAULT_UNKNOWN_FIELDS_SAMPLE = 64


@dataclass
class Options:
    inputs: list[str]
    output: str
    schema: T.StructType
    timestamp_field: str
    partition_by: list[str] = field(default_factory=lambda: ["dt"])
    table: str | None = None
    dedup_keys: list[str] = field(default_factory=list)
    max_records_per_file: int = 0
    bad_records: str | None = None
    mode: str = REPLACE_BATCHES
    max_bad_fraction: float = 0.01
    reuse_shuffle: bool = True
    target_file_size: int = DEFAULT_TARGET_FILE_SIZE
    unknown_fields_sample: int = DEFAULT_UNKNOWN_FIELDS_SAMPLE
    # Spark datetime patterns tried in order on a string timestamp, before epoch numbers and ISO-8601.
    timestamp_formats: list[str] = field(default_factory=list)


def load_schema(path: str) -> T.StructType:
    """A Spark StructType from the JSON ``df.schema.json()`` writes."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read schema file {path}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"schema file {path} is not valid JSON: {exc}") from exc
    try:
        schema = T.StructType.fromJson(doc)
    except Exception as exc:  # noqa: BLE001 - fromJson raises KeyError/TypeError/ValueError
        raise ConfigError(f"schema file {path} is not a Spark StructType JSON: {type(exc).__name__}: {exc}") from exc
    if not schema.fields:
        raise ConfigError(f"schema file {path} has no fields")
    return schema


def parse_partition_by(text: str) -> list[str]:
    parts = [p.strip() for p in text.replace("/", ",").split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTITION_FORMATS]
    if not parts or unknown:
        raise ConfigError(
            f"--partition-by {text!r}: use dt, or year/month/day[/hour] (known: {', '.join(PARTITION_FORMATS)})"
        )
    if len(set(parts)) != len(parts):
        raise ConfigError(f"--partition-by {text!r} repeats a column")
    return parts


def parse_size(text: str) -> int:
    """``256m``, ``1g``, ``512k`` or a number of bytes."""
    units = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    t = text.strip().lower().rstrip("b")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, IndexError):
        raise ConfigError(f"--target-file-size {text!r}: use bytes or a size like 256m or 1g") from None


def partition_columns(opts: Options) -> list[str]:
    """The output's partition columns: ``--partition-by``, then ``batch`` when replacing batches."""
    return list(opts.partition_by) + ([BATCH_COLUMN] if opts.mode == REPLACE_BATCHES else [])


def case_twins(schema: T.DataType, where: str = "") -> list[str]:
    """Field names that differ only in case within one struct, at any depth (``a.Foo/foo``)."""
    twins: list[str] = []
    if isinstance(schema, T.StructType):
        seen: dict[str, str] = {}
        for f in schema.fields:
            other = seen.setdefault(f.name.lower(), f.name)
            if other != f.name:
                twins.append(f"{where}{other}/{f.name}")
            twins += case_twins(f.dataType, f"{where}{f.name}.")
    elif isinstance(schema, T.ArrayType):
        twins += case_twins(schema.elementType, where)
    elif isinstance(schema, T.MapType):
        twins += case_twins(schema.valueType, where)
    return twins


def check_formats(formats: list[str]) -> None:
    """A day-of-week (``E``) only as a pattern's first field: Spark 3+ cannot parse it, so s3lake drops it
    from the pattern and the value (:func:`s3lake.parquet.read.without_weekday`)."""
    for fmt in formats:
        if not fmt.strip():
            raise ConfigError("--timestamp-format must not be empty")
        rest = WEEKDAY_PATTERN.sub("", fmt, count=1)
        if "E" in rest.replace("'E'", ""):
            raise ConfigError(f"--timestamp-format {fmt!r}: a day of the week (E) can only be the first field "
                              "(Spark 3+ cannot parse it; s3lake skips it there)")


def validate(opts: Options) -> None:
    names = [f.name for f in opts.schema.fields]
    _, ts_type = resolve(opts.schema, opts.timestamp_field, "--timestamp-field")
    if not isinstance(ts_type, (T.StringType, T.NumericType, T.TimestampType)):
        raise ConfigError(f"--timestamp-field {opts.timestamp_field!r} has type {ts_type.simpleString()}; "
                          "use string (ISO-8601, epoch or --timestamp-format), a number (epoch s/ms) or timestamp")
    if opts.timestamp_formats and not isinstance(ts_type, T.StringType):
        raise ConfigError(f"--timestamp-format applies to a string --timestamp-field; {opts.timestamp_field!r} "
                          f"is {ts_type.simpleString()}")
    check_formats(opts.timestamp_formats)
    clash = sorted(set(partition_columns(opts)) & {n.lower() for n in names})
    if clash:
        raise ConfigError(f"partition column(s) {clash} also exist in the schema")
    for key in opts.dedup_keys:
        resolve(opts.schema, key, "--dedup-key")
    if opts.table:
        twins = case_twins(opts.schema)
        if twins:
            raise ConfigError(f"fields {', '.join(twins)} differ only in case: Glue and Athena fold names to lower "
                              "case, so --table cannot hold both (the Parquet can: run without --table)")
        odd = glue_unsafe_nested(opts.schema)
        if odd:
            raise ConfigError(f"nested field(s) {', '.join(odd)}: Athena allows only letters, digits, _ and . in "
                              "the names inside a struct, so --table cannot describe them (run without --table)")
    if any(n in INTERNAL for n in names):
        raise ConfigError(f"the schema must not contain the reserved fields {', '.join(INTERNAL)}")
    if opts.mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}")
    if opts.max_records_per_file < 0:
        raise ConfigError("--max-records-per-file must be >= 0")
    if opts.unknown_fields_sample < 1:
        raise ConfigError("--unknown-fields-sample must be >= 1 (1: check every record)")
    if opts.target_file_size < 1024 * 1024:
        raise ConfigError("--target-file-size must be at least 1 MiB")
    if not 0 <= opts.max_bad_fraction <= 1:
        raise ConfigError("--max-bad-fraction must be between 0 and 1")


def glue_unsafe_nested(schema: T.DataType, where: str = "", top: bool = True) -> list[str]:
    """Names inside structs (not top-level columns) with characters Athena does not allow there
    (https://docs.aws.amazon.com/athena/latest/ug/tables-databases-columns-names.html)."""
    found: list[str] = []
    if isinstance(schema, T.StructType):
        for f in schema.fields:
            if not top and not NESTED_NAME.match(f.name):
                found.append(f"{where}{f.name}")
            found += glue_unsafe_nested(f.dataType, f"{where}{f.name}.", False)
    elif isinstance(schema, T.ArrayType):
        found += glue_unsafe_nested(schema.elementType, where, False)
    elif isinstance(schema, T.MapType):
        found += glue_unsafe_nested(schema.valueType, where, False)
    return found
