"""``copy_in_place.py --estimate`` over generated inventories of 10^5 and 10^6 rows: seconds, and the
requests it makes at the proxy (only the inventory's files and bucket-level reads; none naming an object).

The inventory is generated column-wise with pyarrow (:func:`write_generated_inventory`), a Parquet
delivery laid out as S3 writes it; the source bucket holds no object at all, so any object request would
show as an error as well as a count.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
from s3lake import aws
from s3lake_testbed.inventory import file_schema

FIELDS = ("bucket", "key", "version_id", "is_latest", "is_delete_marker", "size", "storage_class",
          "replication_status", "encryption_status", "bucket_key_status")
CLASSES = ("STANDARD", "STANDARD", "STANDARD", "STANDARD_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "GLACIER",
           "DEEP_ARCHIVE")
ENCRYPTIONS = ("SSE-S3", "SSE-S3", "SSE-KMS", "NOT-SSE", "SSE-C")


def generated_table(source_bucket: str, start: int, stop: int) -> pa.Table:
    """Rows ``start..stop`` of a generated inventory: a mix of classes, sizes (1 KiB..~360 MiB, and one in
    50,000 of 12 GiB), encryptions, keys under data/ and (one in ten) other/, one in five already
    replicated, no version ids."""
    import numpy as np
    import pyarrow.compute as pc

    ids = np.arange(start, stop, dtype=np.int64)
    n = stop - start
    prefix = pa.array(np.where(ids % 10 == 0, "other/", "data/"))
    key = pc.binary_join_element_wise(prefix, pc.cast(pa.array(ids), pa.string()), "")
    size = np.where(ids % 50000 == 7, 12 * 1024 ** 3, (ids % 9973) * 1024 * 37 + 1024)
    return pa.table({
        "bucket": pa.array(np.full(n, source_bucket)), "key": key, "version_id": pa.nulls(n, pa.string()),
        "is_latest": pa.array(np.ones(n, dtype=bool)), "is_delete_marker": pa.array(np.zeros(n, dtype=bool)),
        "size": pa.array(size), "storage_class": pa.array(CLASSES).take(pa.array(ids % len(CLASSES))),
        "replication_status": pa.array(np.where(ids % 5 == 0, "COMPLETED", None)),
        "encryption_status": pa.array(ENCRYPTIONS).take(pa.array(ids // 3 % len(ENCRYPTIONS))),
        "bucket_key_status": pa.array(np.where(ids % 2 == 0, "ENABLED", "DISABLED")),
    })


def write_generated_inventory(inventory_bucket: str, source_bucket: str, rows: int, files: int = 4) -> str:
    """A Parquet inventory delivery of ``rows`` generated rows in ``files`` data files; its manifest URL."""
    s3 = aws.s3()
    base = f"inventory/{source_bucket}/daily"
    entries = []
    step = -(-rows // files)
    for start in range(0, rows, step):
        sink = io.BytesIO()
        pq.write_table(generated_table(source_bucket, start, min(rows, start + step)), sink, compression="snappy")
        body = sink.getvalue()
        key = f"{base}/data/{uuid.uuid4()}.parquet"
        s3.put_object(Bucket=inventory_bucket, Key=key, Body=body)
        entries.append({"key": key, "size": len(body), "MD5checksum": hashlib.md5(body).hexdigest()})
    manifest = {"sourceBucket": source_bucket, "destinationBucket": f"arn:aws:s3:::{inventory_bucket}",
                "version": "2016-11-30", "creationTimestamp": "1795478400000", "fileFormat": "Parquet",
                "fileSchema": file_schema(FIELDS, "Parquet"), "files": entries}
    raw = json.dumps(manifest).encode()
    s3.put_object(Bucket=inventory_bucket, Key=f"{base}/2026-11-24T00-00Z/manifest.json", Body=raw)
    s3.put_object(Bucket=inventory_bucket, Key=f"{base}/2026-11-24T00-00Z/manifest.checksum",
                  Body=hashlib.md5(raw).hexdigest().encode())
    return f"s3://{inventory_bucket}/{base}/2026-11-24T00-00Z/manifest.json"


def source_bucket(name: str) -> str:
    """Versioned, one replication rule over data/ (SSE-KMS included); no objects."""
    from s3lake_testbed.replication import put_replication, rule
    from s3lake_testbed.seed import make_bucket

    make_bucket(name, versioned=True)
    put_replication(name, [rule("data", prefix="data/", kms=True)])
    return name


def main() -> int:
    from bench.common import aws_behind_proxy, local_spark
    from jobs import copy_in_place as job

    with aws_behind_proxy(0.0) as (_, proxy):
        local_spark()
        from s3lake_testbed.seed import make_bucket

        for rows in (10 ** 5, 10 ** 6):
            tag = uuid.uuid4().hex[:8]
            src, inv = source_bucket(f"est-src-{tag}"), make_bucket(f"est-inv-{tag}")
            started = time.monotonic()
            manifest = write_generated_inventory(inv, src, rows)
            written = time.monotonic() - started
            before = proxy.counts()
            started = time.monotonic()
            code = job.main(["--inventory-manifest", manifest, "--results", f"/tmp/est-{tag}", "--estimate"])
            seconds = time.monotonic() - started
            counts = {k: v - before.get(k, 0) for k, v in proxy.counts().items() if v != before.get(k, 0)}
            print(f"estimate over {rows:,} rows: exit {code}, {seconds:.1f} s (inventory written in {written:.1f} s); "
                  f"requests {counts}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
