"""Seeded buckets with every attribute kind the jobs must keep (tests, ``make demo``, ``make bench``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from s3lake import aws

from s3lake_testbed.inventory import WrittenDelivery, inventory_row, write_inventory
from s3lake_testbed.seed import make_bucket, make_kms_key, writer

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTH_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"
OTHER_ACCOUNT = "79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be"
AWKWARD_KEYS = (
    "awkward/with space and+plus.txt",
    "awkward/percent%25 & amp?query=1.txt",
    "awkward/ünïcödé-東京-😀.txt",
    'awkward/quote"comma,semicolon;.txt',
)


@dataclass
class Scenario:
    bucket: str
    kms_key: str
    keys: dict[str, str]  # role -> key
    delivery: WrittenDelivery | None = None


def owner_id(bucket: str) -> str:
    return aws.s3().get_bucket_acl(Bucket=bucket)["Owner"]["ID"]


def rich_objects(bucket: str, kms_key: str) -> dict[str, dict[str, Any]]:
    """PutObject parameters per role: each object exercises different attributes."""
    owner = owner_id(bucket)
    full = f'id="{owner}"'
    return {
        "kms": dict(
            Key="data/kms-object.json", Body=b'{"a": 1}\n' * 50, ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_key,
            BucketKeyEnabled=True, ContentType="application/json", CacheControl="max-age=60",
            ContentDisposition='attachment; filename="x.json"', ContentLanguage="en-GB",
            Expires=datetime(2030, 1, 1, tzinfo=timezone.utc), Metadata={"team": "data", "origin": "upload"},
            Tagging="classification=internal&owner=data%20team", StorageClass="STANDARD_IA",
            GrantFullControl=full, GrantRead=f'uri="{ALL_USERS}"',
        ),
        "sse_s3": dict(
            Key="data/sse-s3.csv.gz", Body=b"\x1f\x8b" + b"gz" * 500, ServerSideEncryption="AES256",
            ContentType="text/csv", ContentEncoding="gzip", WebsiteRedirectLocation="/moved/here.html",
            Metadata={"k": "v"}, StorageClass="ONEZONE_IA", GrantFullControl=full,
            GrantReadACP=f'id="{OTHER_ACCOUNT}"', GrantRead=f'uri="{AUTH_USERS}", id="{OTHER_ACCOUNT}"',
        ),
        "plain": dict(Key="data/plain.bin", Body=b"plain" * 100, Tagging="a=1"),
        "intelligent": dict(Key="data/it.parquet", Body=b"PAR1" * 100, StorageClass="INTELLIGENT_TIERING",
                            ContentType="application/octet-stream"),
        "archived": dict(Key="archive/old.log", Body=b"old log\n" * 10, StorageClass="GLACIER"),
        **{f"awkward{i}": dict(Key=k, Body=f"awkward {i}".encode(), ContentType="text/plain; charset=utf-8",
                               Metadata={"idx": str(i)}, GrantFullControl=full, GrantRead=f'uri="{ALL_USERS}"')
           for i, k in enumerate(AWKWARD_KEYS)},
    }


def seed_rich_bucket(bucket: str, *, inventory_bucket: str | None = None, table: str | None = None,
                     versioned: bool = True, ownership: str | None = None, fmt: str = "CSV",
                     kms_key: str | None = None) -> Scenario:
    """A bucket holding :func:`rich_objects`, plus its inventory delivery (and Glue table) if asked."""
    make_bucket(bucket, versioned=versioned, ownership=ownership)
    kms_key = kms_key or make_kms_key()
    s3 = aws.s3()
    keys = {}
    for role, params in rich_objects(bucket, kms_key).items():
        if ownership == "BucketOwnerEnforced":
            params = {k: v for k, v in params.items() if not k.startswith("Grant")}
        writer().put_object(Bucket=bucket, **params)
        keys[role] = params["Key"]
    scenario = Scenario(bucket, kms_key, keys)
    if inventory_bucket:
        rows = [inventory_row(s3, bucket, key) for key in keys.values()]
        scenario.delivery = write_inventory(inventory_bucket, bucket, rows, fmt=fmt, table=table)
    return scenario
