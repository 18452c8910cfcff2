"""Write S3 Inventory deliveries the way S3 does, for tests, ``make demo`` and ``make bench``.

A delivery is ``<prefix>/<src>/<config>/data/*`` + ``<prefix>/<src>/<config>/<stamp>/manifest.json``
+ ``manifest.checksum`` + ``<prefix>/<src>/<config>/hive/dt=<dt>/symlink.txt``, optionally with the
Glue table AWS documents for Athena over ``hive/`` and its ``dt`` partition.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence
from urllib.parse import quote_plus

import pyarrow as pa
from s3lake import aws
from s3lake.inventory import FIELDS, column_for

CSV_NAMES = {name: inv for inv, name, _ in FIELDS}
DEFAULT_FIELDS = (
    "bucket", "key", "version_id", "is_latest", "is_delete_marker", "size", "last_modified_date", "e_tag",
    "storage_class", "is_multipart_uploaded", "replication_status", "encryption_status",
    "object_lock_retain_until_date", "object_lock_mode", "object_lock_legal_hold_status",
    "intelligent_tiering_access_tier", "bucket_key_status", "checksum_algorithm",
    "object_access_control_list", "object_owner",
)
_TYPES = {name: dtype for _, name, dtype in FIELDS}


@dataclass(frozen=True)
class WrittenDelivery:
    manifest_url: str
    dt: str
    table: str | None
    data_files: tuple[str, ...]


def _arrow_type(name: str) -> pa.DataType:
    kind = type(_TYPES[name]).__name__
    return {"BooleanType": pa.bool_(), "LongType": pa.int64(), "TimestampType": pa.timestamp("ms", tz="UTC")}.get(
        kind, pa.string()
    )


def _csv_value(name: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if name == "key":
        return quote_plus(value, safe="/")
    return str(value)


def _csv_bytes(rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, quoting=csv.QUOTE_ALL, lineterminator="\n")
    for row in rows:
        writer.writerow([_csv_value(f, row.get(f)) for f in fields])
    return gzip.compress(text.getvalue().encode("utf-8"))


def _columnar_bytes(rows: Sequence[dict[str, Any]], fields: Sequence[str], fmt: str) -> bytes:
    table = pa.table({f: pa.array([r.get(f) for r in rows], _arrow_type(f)) for f in fields})
    sink = io.BytesIO()
    if fmt == "Parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, sink, compression="snappy")
    else:
        import pyarrow.orc as orc

        orc.write_table(table, sink)
    return sink.getvalue()


def file_schema(fields: Sequence[str], fmt: str) -> str:
    """The ``fileSchema`` string S3 writes for ``fields`` in ``fmt``."""
    if fmt == "CSV":
        return ", ".join(CSV_NAMES[f] for f in fields)
    if fmt == "ORC":
        orc_types = {"bool": "boolean", "int64": "bigint", "timestamp[ms, tz=UTC]": "timestamp"}
        return "struct<" + ",".join(f"{f}:{orc_types.get(str(_arrow_type(f)), 'string')}" for f in fields) + ">"
    pq_types = {"bool": "boolean", "int64": "int64", "timestamp[ms, tz=UTC]": "int64"}
    parts = []
    for f in fields:
        t = str(_arrow_type(f))
        physical = pq_types.get(t, "binary")
        note = " (STRING)" if physical == "binary" else ""
        if t.startswith("timestamp"):
            note = " (TIMESTAMP(MILLIS,true))"
        parts.append(f"{'required' if f in ('bucket', 'key') else 'optional'} {physical} {f}{note};")
    return "message s3.inventory { " + " ".join(parts) + " }"


def write_inventory(
    dest_bucket: str,
    source_bucket: str,
    rows: Sequence[dict[str, Any]],
    *,
    fmt: str = "CSV",
    fields: Sequence[str] = DEFAULT_FIELDS,
    config_id: str = "daily",
    prefix: str = "inventory",
    when: datetime | None = None,
    files: int = 1,
    table: str | None = None,
) -> WrittenDelivery:
    """Write one delivery of ``rows`` (dicts keyed by canonical column) and optionally its Glue table.

    Rows lacking ``bucket`` get ``source_bucket``. With ``table`` (``db.name``) the Glue database, table and
    this delivery's ``dt`` partition are created (the table only if absent).
    """
    s3 = aws.s3()
    when = when or datetime(2026, 11, 24, 0, 0, tzinfo=timezone.utc)
    stamp = when.strftime("%Y-%m-%dT%H-%MZ")
    dt = when.strftime("%Y-%m-%d-%H-%M")
    base = "/".join(p for p in (prefix.strip("/"), source_bucket, config_id) if p)
    ext = {"CSV": "csv.gz", "ORC": "orc", "Parquet": "parquet"}[fmt]
    rows = [{"bucket": source_bucket, **r} for r in rows]
    chunks = [rows[i::files] for i in range(files)] if rows else [[]]
    manifest_files, urls = [], []
    for chunk in chunks:
        body = _csv_bytes(chunk, fields) if fmt == "CSV" else _columnar_bytes(chunk, fields, fmt)
        key = f"{base}/data/{uuid.uuid4()}.{ext}"
        s3.put_object(Bucket=dest_bucket, Key=key, Body=body)
        manifest_files.append({"key": key, "size": len(body), "MD5checksum": hashlib.md5(body).hexdigest()})
        urls.append(f"s3://{dest_bucket}/{key}")
    manifest = {
        "sourceBucket": source_bucket,
        "destinationBucket": f"arn:aws:s3:::{dest_bucket}",
        "version": "2016-11-30",
        "creationTimestamp": str(int(when.timestamp() * 1000)),
        "fileFormat": fmt,
        "fileSchema": file_schema(fields, fmt),
        "files": manifest_files,
    }
    raw = json.dumps(manifest, indent=2).encode("utf-8")
    s3.put_object(Bucket=dest_bucket, Key=f"{base}/{stamp}/manifest.json", Body=raw)
    checksum = hashlib.md5(raw).hexdigest().encode()
    s3.put_object(Bucket=dest_bucket, Key=f"{base}/{stamp}/manifest.checksum", Body=checksum)
    s3.put_object(Bucket=dest_bucket, Key=f"{base}/hive/dt={dt}/symlink.txt", Body=("\n".join(urls) + "\n").encode())
    if table:
        register_glue_table(table, f"s3://{dest_bucket}/{base}/hive/", fields, fmt, dt)
    return WrittenDelivery(f"s3://{dest_bucket}/{base}/{stamp}/manifest.json", dt, table, tuple(urls))


def _glue_type(name: str) -> str:
    return {"BooleanType": "boolean", "LongType": "bigint", "TimestampType": "timestamp"}.get(
        type(_TYPES[name]).__name__, "string"
    )


def register_glue_table(table: str, hive_location: str, fields: Sequence[str], fmt: str, dt: str) -> None:
    """The table AWS documents for querying an inventory with Athena, plus partition ``dt``."""
    glue = aws.glue()
    database, name = table.split(".", 1)
    try:
        glue.create_database(DatabaseInput={"Name": database})
    except glue.exceptions.AlreadyExistsException:
        pass
    serde = {
        "CSV": "org.apache.hadoop.hive.serde2.OpenCSVSerde",
        "ORC": "org.apache.hadoop.hive.ql.io.orc.OrcSerde",
        "Parquet": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe",
    }[fmt]
    columns = [{"Name": f, "Type": "string" if fmt == "CSV" else _glue_type(f)} for f in fields if column_for(f)]
    storage = {
        "Columns": columns,
        "Location": hive_location,
        "InputFormat": "org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat",
        "OutputFormat": "org.apache.hadoop.hive.ql.io.IgnoreKeyTextOutputFormat",
        "SerdeInfo": {"SerializationLibrary": serde},
    }
    try:
        glue.create_table(
            DatabaseName=database,
            TableInput={
                "Name": name,
                "TableType": "EXTERNAL_TABLE",
                "PartitionKeys": [{"Name": "dt", "Type": "string"}],
                "StorageDescriptor": storage,
            },
        )
    except glue.exceptions.AlreadyExistsException:
        pass
    glue.create_partition(
        DatabaseName=database,
        TableName=name,
        PartitionInput={"Values": [dt], "StorageDescriptor": {**storage, "Location": f"{hive_location}dt={dt}/"}},
    )


def inventory_row(s3_client: Any, bucket: str, key: str, **overrides: Any) -> dict[str, Any]:
    """An inventory row describing the object as it is now (HEAD), as S3 would list it."""
    head = s3_client.head_object(Bucket=bucket, Key=key)
    sse = head.get("ServerSideEncryption")
    encryption = {"AES256": "SSE-S3", "aws:kms": "SSE-KMS", "aws:kms:dsse": "DSSE-KMS"}.get(sse or "", "NOT-SSE")
    if head.get("SSECustomerAlgorithm"):
        encryption = "SSE-C"
    row: dict[str, Any] = {
        "bucket": bucket,
        "key": key,
        "version_id": head.get("VersionId") if head.get("VersionId") not in (None, "null") else None,
        "is_latest": True,
        "is_delete_marker": False,
        "size": head["ContentLength"],
        "last_modified_date": head["LastModified"],
        "e_tag": head["ETag"].strip('"'),
        "storage_class": head.get("StorageClass", "STANDARD"),
        "is_multipart_uploaded": "-" in head["ETag"],
        "replication_status": head.get("ReplicationStatus"),
        "encryption_status": encryption,
        "bucket_key_status": "ENABLED" if head.get("BucketKeyEnabled") else "DISABLED",
    }
    row.update(overrides)
    return row
