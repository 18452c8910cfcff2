"""Read an S3 Inventory delivery into a Spark DataFrame.

Two ways in:

* :func:`resolve_table` -- the Glue table AWS documents for querying inventories with Athena
  (``SymlinkTextInputFormat`` over ``.../<config-id>/hive/``, partitioned by ``dt``): table ->
  partition location -> ``symlink.txt`` -> data file URLs, plus the delivery's ``manifest.json``
  beside ``hive/`` for the authoritative ``fileSchema`` and ``fileFormat``.
* :func:`resolve_manifest` -- a ``manifest.json`` URL.

Both return an :class:`InventoryDelivery`; :func:`read_inventory` turns it into a DataFrame with the
canonical columns of :data:`SCHEMA` (every column always present, null where the report lacks the
field). Data files are read by boto3 + pyarrow inside Spark tasks (one task per data file), never on
the driver and never through a Hadoop S3 connector, so the same code runs on EMR and against a local
endpoint.

Conventions (documented in the README):

* ``key`` is the real key: CSV reports URL-encode keys (``+`` for space) and are decoded with
  ``unquote_plus``; ORC and Parquet reports carry keys as they are.
* Empty strings become null in every column, so an object with no replication status (one that
  existed before replication was configured) has ``replication_status IS NULL``.
* Timestamps are UTC.

AWS references: https://docs.aws.amazon.com/AmazonS3/latest/userguide/storage-inventory-location.html
(layout, manifest.json, manifest.checksum, symlink.txt) and
https://docs.aws.amazon.com/AmazonS3/latest/userguide/storage-inventory.html (fields, URL-encoded CSV keys).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence
from urllib.parse import unquote_plus

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from s3lake import aws
from s3lake.errors import InventoryError

log = logging.getLogger(__name__)

FORMATS = ("CSV", "ORC", "Parquet")

# (inventory field as in a CSV fileSchema, column name, Spark type)
FIELDS: list[tuple[str, str, T.DataType]] = [
    ("Bucket", "bucket", T.StringType()),
    ("Key", "key", T.StringType()),
    ("VersionId", "version_id", T.StringType()),
    ("IsLatest", "is_latest", T.BooleanType()),
    ("IsDeleteMarker", "is_delete_marker", T.BooleanType()),
    ("Size", "size", T.LongType()),
    ("LastModifiedDate", "last_modified_date", T.TimestampType()),
    ("ETag", "e_tag", T.StringType()),
    ("StorageClass", "storage_class", T.StringType()),
    ("IsMultipartUploaded", "is_multipart_uploaded", T.BooleanType()),
    ("ReplicationStatus", "replication_status", T.StringType()),
    ("EncryptionStatus", "encryption_status", T.StringType()),
    ("ObjectLockRetainUntilDate", "object_lock_retain_until_date", T.TimestampType()),
    ("ObjectLockMode", "object_lock_mode", T.StringType()),
    ("ObjectLockLegalHoldStatus", "object_lock_legal_hold_status", T.StringType()),
    ("IntelligentTieringAccessTier", "intelligent_tiering_access_tier", T.StringType()),
    ("BucketKeyStatus", "bucket_key_status", T.StringType()),
    ("ChecksumAlgorithm", "checksum_algorithm", T.StringType()),
    ("ObjectAccessControlList", "object_access_control_list", T.StringType()),
    ("ObjectOwner", "object_owner", T.StringType()),
    ("LifecycleExpirationDate", "lifecycle_expiration_date", T.TimestampType()),
]
COLUMNS = [name for _, name, _ in FIELDS]
SCHEMA = T.StructType([T.StructField(name, dtype, nullable=name not in ("bucket", "key")) for _, name, dtype in FIELDS])
_BY_NORMALIZED = {re.sub(r"[^a-z]", "", name): name for _, name, _ in FIELDS}
_BY_NORMALIZED.update({inv.lower(): name for inv, name, _ in FIELDS})


def column_for(field_name: str) -> str | None:
    """Canonical column for an inventory field in any spelling (``ETag``, ``e_tag``, ``last_modified``...)."""
    return _BY_NORMALIZED.get(re.sub(r"[^a-z]", "", field_name.lower()))


@dataclass(frozen=True)
class InventoryDelivery:
    """One inventory delivery: where its data files are and how to read them."""

    source_bucket: str
    manifest_url: str
    file_format: str
    fields: tuple[str, ...]  # the report's fields, as canonical column names, in file order
    data_files: tuple[str, ...]
    dt: str | None = None
    table: str | None = None
    extra_fields: tuple[str, ...] = field(default=())

    @property
    def delivery_id(self) -> str:
        """``<source-bucket>/<config-id>/<YYYY-MM-DDTHH-MMZ>``: stable across re-runs of the same delivery."""
        parts = self.manifest_url.rstrip("/").split("/")
        return "/".join([self.source_bucket, parts[-3], parts[-2]])


# --------------------------------------------------------------------------------------------- manifest


def parse_file_schema(file_format: str, file_schema: str) -> tuple[list[str], list[str]]:
    """The columns a ``fileSchema`` names, and the field names s3lake does not know (ignored)."""
    if file_format == "CSV":
        names = [part.strip() for part in file_schema.split(",") if part.strip()]
    elif file_format == "ORC":
        inner = re.sub(r"^\s*struct<|>\s*$", "", file_schema)
        names = re.findall(r"(?:^|,)\s*`?([A-Za-z_]\w*)`?\s*:", inner)
    else:
        names = re.findall(r"(?:required|optional)\s+\w+\s+([A-Za-z_]\w*)", file_schema)
    if not names:
        raise InventoryError(f"manifest fileSchema names no fields: {file_schema!r}")
    known, unknown = [], []
    for name in names:
        column = column_for(name)
        (known if column else unknown).append(column or name)
    if "key" not in known or "bucket" not in known:
        raise InventoryError(f"manifest fileSchema lacks Bucket/Key: {file_schema!r}")
    return known, unknown


def _read_bytes(url: str, what: str) -> bytes:
    bucket, key = aws.split_s3_url(url)
    try:
        return aws.s3().get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear line
        code = aws.error_code(exc)
        if code in ("NoSuchKey", "404", "NoSuchBucket"):
            raise InventoryError(f"no {what} at {url} ({code})") from None
        raise InventoryError(f"cannot read {what} {url}: {code}: {exc}") from None


def load_manifest(url: str) -> dict[str, Any]:
    """Fetch ``manifest.json``, check it against ``manifest.checksum`` and validate its shape."""
    raw = _read_bytes(url, "manifest.json")
    checksum_url = url.rsplit("/", 1)[0] + "/manifest.checksum"
    try:
        expected = _read_bytes(checksum_url, "manifest.checksum").decode("ascii", "replace").strip().lower()
    except InventoryError as exc:
        log.warning("%s; cannot verify the manifest's MD5", exc)
    else:
        actual = hashlib.md5(raw).hexdigest()
        if expected.split()[0] != actual:
            raise InventoryError(
                f"manifest {url} does not match manifest.checksum (MD5 {actual}, checksum file says {expected})"
            )
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise InventoryError(f"manifest {url} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise InventoryError(f"manifest {url} is not a JSON object")
    for required in ("fileFormat", "fileSchema", "files"):
        if required not in manifest:
            raise InventoryError(f"manifest {url} has no {required!r}")
    fmt = str(manifest["fileFormat"])
    canonical = {f.lower(): f for f in FORMATS}.get(fmt.lower())
    if canonical is None:
        raise InventoryError(f"manifest {url}: unknown inventory fileFormat {fmt!r} (expected CSV, ORC or Parquet)")
    manifest["fileFormat"] = canonical
    return manifest


def _destination_bucket(manifest: dict[str, Any], manifest_url: str) -> str:
    dest = str(manifest.get("destinationBucket") or "")
    if dest.startswith("arn:"):
        return dest.split(":::", 1)[-1]
    return dest or aws.split_s3_url(manifest_url)[0]


def resolve_manifest(url: str, *, data_files: Sequence[str] | None = None, dt: str | None = None,
                     table: str | None = None) -> InventoryDelivery:
    """An :class:`InventoryDelivery` from a ``manifest.json`` URL (data files as the manifest lists them)."""
    if not url.startswith(("s3://", "s3a://", "s3n://")):
        raise InventoryError(f"--inventory-manifest must be an s3:// URL of a manifest.json, got {url!r}")
    manifest = load_manifest(url)
    fields, unknown = parse_file_schema(manifest["fileFormat"], str(manifest["fileSchema"]))
    if unknown:
        log.info("inventory fields s3lake does not model, ignored: %s", ", ".join(unknown))
    dest = _destination_bucket(manifest, url)
    entries = [e for e in manifest["files"] if isinstance(e, dict) and "key" in e]
    listed = [f"s3://{dest}/{entry['key']}" for entry in entries]
    if not listed:
        raise InventoryError(f"manifest {url} lists no data files")
    if data_files is not None and set(data_files) != set(listed):
        log.warning("symlink.txt and manifest.json list different data files; trusting the manifest (%s)", url)
    source = str(manifest.get("sourceBucket") or "")
    _check_data_files(listed, url)
    return InventoryDelivery(
        source_bucket=source,
        manifest_url=url,
        file_format=manifest["fileFormat"],
        fields=tuple(fields),
        data_files=tuple(listed),
        dt=dt,
        table=table,
        extra_fields=tuple(unknown),
    )


def _check_data_files(urls: Sequence[str], manifest_url: str) -> None:
    """HEAD every data file up front, so a missing one is one clear error and not a failed task."""

    def missing(url: str) -> str | None:
        bucket, key = aws.split_s3_url(url)
        try:
            aws.s3().head_object(Bucket=bucket, Key=key)
            return None
        except Exception as exc:  # noqa: BLE001
            return f"{url} ({aws.error_code(exc)})"

    with ThreadPoolExecutor(max_workers=min(16, len(urls))) as pool:
        problems = [m for m in pool.map(missing, urls) if m]
    if problems:
        shown = ", ".join(problems[:3]) + (f" and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise InventoryError(f"inventory data file listed in {manifest_url} is missing or unreadable: {shown}")


# ------------------------------------------------------------------------------------------ Glue table


def dt_to_stamp(dt: str) -> str:
    """``2024-01-02-03-04`` (hive partition) -> ``2024-01-02T03-04Z`` (manifest folder)."""
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2})-(\d{2})-(\d{2})", dt)
    if not m:
        raise InventoryError(f"inventory partition dt={dt!r} is not YYYY-MM-DD-HH-MM")
    return f"{m.group(1)}T{m.group(2)}-{m.group(3)}Z"


def split_table_name(table: str) -> tuple[str, str]:
    database, dot, name = table.partition(".")
    if not dot or not database or not name:
        raise InventoryError(f"inventory table must be DATABASE.TABLE, got {table!r}")
    return database, name


def resolve_table(table: str, dt: str | None = None) -> InventoryDelivery:
    """An :class:`InventoryDelivery` from the Glue table over an inventory; ``dt`` defaults to the latest."""
    database, name = split_table_name(table)
    glue = aws.glue()
    try:
        meta = glue.get_table(DatabaseName=database, Name=name)["Table"]
    except Exception as exc:  # noqa: BLE001
        raise InventoryError(f"no Glue table {table} ({aws.error_code(exc)})") from None
    keys = [k["Name"] for k in meta.get("PartitionKeys", [])]
    if keys != ["dt"]:
        raise InventoryError(f"Glue table {table} is not partitioned by dt alone (partition keys: {keys})")
    partitions: dict[str, str] = {}
    for page in glue.get_paginator("get_partitions").paginate(DatabaseName=database, TableName=name):
        for part in page["Partitions"]:
            partitions[part["Values"][0]] = part["StorageDescriptor"]["Location"]
    if not partitions:
        raise InventoryError(f"Glue table {table} has no partitions (no inventory delivered yet?)")
    if dt is None:
        dt = max(partitions)
        log.info("inventory %s: latest partition dt=%s", table, dt)
    elif dt not in partitions:
        raise InventoryError(f"Glue table {table} has no partition dt={dt} (latest is dt={max(partitions)})")
    location = partitions[dt].rstrip("/")
    symlink = _read_bytes(location + "/symlink.txt", "symlink.txt").decode("utf-8")
    data_files = [line.strip() for line in symlink.splitlines() if line.strip()]
    hive_root = location.rsplit("/", 1)[0]
    if not hive_root.endswith("/hive"):
        raise InventoryError(f"partition location {location} of {table} is not under .../hive/dt=...")
    manifest_url = f"{hive_root[: -len('/hive')]}/{dt_to_stamp(dt)}/manifest.json"
    delivery = resolve_manifest(manifest_url, data_files=data_files, dt=dt, table=table)
    columns = [column_for(c["Name"]) or c["Name"] for c in meta.get("StorageDescriptor", {}).get("Columns", [])]
    if columns and columns != list(delivery.fields):
        log.warning(
            "Glue table %s columns %s differ from the manifest's fileSchema %s; trusting the manifest",
            table, columns, list(delivery.fields),
        )
    return delivery


def resolve(table: str | None = None, dt: str | None = None, manifest: str | None = None) -> InventoryDelivery:
    """The delivery named by the jobs' ``--inventory-table/--inventory-date`` or ``--inventory-manifest``."""
    if bool(table) == bool(manifest):
        raise InventoryError("give exactly one of --inventory-table or --inventory-manifest")
    if manifest:
        if dt:
            raise InventoryError("--inventory-date goes with --inventory-table, not --inventory-manifest")
        return resolve_manifest(manifest)
    return resolve_table(table, dt)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ reading (tasks)


def _arrow_type(dtype: T.DataType, tz: str) -> pa.DataType:
    if isinstance(dtype, T.BooleanType):
        return pa.bool_()
    if isinstance(dtype, T.LongType):
        return pa.int64()
    if isinstance(dtype, T.TimestampType):
        return pa.timestamp("us", tz=tz)
    return pa.string()


def arrow_schema(tz: str = "UTC") -> pa.Schema:
    return pa.schema([pa.field(name, _arrow_type(dtype, tz)) for _, name, dtype in FIELDS])


def _blank_to_null(arr: pa.Array) -> pa.Array:
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
        return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)
    return arr


def _convert(arr: pa.Array, target: pa.DataType) -> pa.Array:
    arr = _blank_to_null(arr)
    if arr.type == target:
        return arr
    if pa.types.is_boolean(target) and pa.types.is_string(arr.type):
        lowered = pc.utf8_lower(arr)
        return pc.if_else(pc.is_null(lowered), pa.scalar(None, pa.bool_()), pc.equal(lowered, "true"))
    if pa.types.is_timestamp(target):
        if pa.types.is_string(arr.type):
            arr = arr.cast(pa.timestamp("ms", tz="UTC"))
        elif pa.types.is_integer(arr.type):  # some writers store epoch millis without the logical type
            arr = arr.cast(pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
        elif pa.types.is_timestamp(arr.type) and arr.type.tz is None:
            arr = pc.assume_timezone(arr, "UTC")
    return arr.cast(target)


def normalize_batch(batch: pa.RecordBatch, fields: Sequence[str], url_encoded_keys: bool,
                    schema: pa.Schema) -> pa.RecordBatch:
    """A raw inventory batch (any format) -> a batch of the canonical schema."""
    by_column: dict[str, pa.Array] = {}
    for name in batch.schema.names:
        column = column_for(name)
        if column is not None and column in fields:
            by_column[column] = batch.column(name)
    arrays = []
    for target in schema:
        arr = by_column.get(target.name)
        if arr is None:
            arrays.append(pa.nulls(batch.num_rows, target.type))
            continue
        if target.name == "key" and url_encoded_keys:
            arr = pa.array([None if k is None else unquote_plus(k) for k in arr.cast(pa.string()).to_pylist()],
                           pa.string())
        arrays.append(_convert(arr, target.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _download(url: str, suffix: str) -> tempfile._TemporaryFileWrapper:
    bucket, key = aws.split_s3_url(url)
    tmp = tempfile.NamedTemporaryFile(prefix="s3lake-inv-", suffix=suffix)
    try:
        aws.s3().download_fileobj(bucket, key, tmp)
    except Exception as exc:  # noqa: BLE001
        tmp.close()
        raise InventoryError(f"cannot read inventory data file {url}: {aws.error_code(exc)}") from None
    tmp.flush()
    return tmp


def read_data_file(url: str, file_format: str, fields: Sequence[str], tz: str = "UTC",
                   batch_rows: int = 65536) -> Iterator[pa.RecordBatch]:
    """Stream one inventory data file as canonical batches (the file is spooled to local disk first)."""
    import pyarrow.csv as pacsv

    schema = arrow_schema(tz)
    with _download(url, "." + file_format.lower()) as tmp:
        if file_format == "CSV":
            with open(tmp.name, "rb") as fh:
                gz = fh.read(2) == b"\x1f\x8b"
            source: Any = pa.CompressedInputStream(pa.OSFile(tmp.name), "gzip") if gz else pa.OSFile(tmp.name)
            reader = pacsv.open_csv(
                source,
                read_options=pacsv.ReadOptions(column_names=list(fields), block_size=8 << 20),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types={f: pa.string() for f in fields}, strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
            for batch in reader:
                yield normalize_batch(batch, fields, True, schema)
        elif file_format == "Parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(tmp.name).iter_batches(batch_size=batch_rows):
                yield normalize_batch(batch, fields, False, schema)
        elif file_format == "ORC":
            import pyarrow.orc as orc

            f = orc.ORCFile(tmp.name)
            for i in range(f.nstripes):
                for batch in pa.Table.from_batches([f.read_stripe(i)]).to_batches(max_chunksize=batch_rows):
                    yield normalize_batch(batch, fields, False, schema)
        else:
            raise InventoryError(f"unknown inventory format {file_format!r}")


def read_inventory(spark: SparkSession, delivery: InventoryDelivery) -> DataFrame:
    """The delivery as a DataFrame of :data:`SCHEMA`, one Spark task per data file."""
    tz = spark.conf.get("spark.sql.session.timeZone") or "UTC"
    file_format, fields = delivery.file_format, list(delivery.fields)
    files = list(delivery.data_files)
    urls = spark.sparkContext.parallelize([(u,) for u in files], numSlices=max(1, len(files)))
    frame = spark.createDataFrame(urls, "url string")

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for url in batch.column(0).to_pylist():
                yield from read_data_file(url, file_format, fields, tz)

    return frame.mapInArrow(read, SCHEMA)


def read(spark: SparkSession, table: str | None = None, dt: str | None = None,
         manifest: str | None = None) -> tuple[InventoryDelivery, DataFrame]:
    """Resolve and read in one call (the jobs' entry point)."""
    delivery = resolve(table, dt, manifest)
    return delivery, read_inventory(spark, delivery)
