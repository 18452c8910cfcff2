from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import pytest
from chispa import assert_df_equality
from s3lake import inventory
from s3lake.errors import InventoryError
from s3lake_testbed.inventory import DEFAULT_FIELDS, write_inventory
from s3lake_testbed.seed import make_bucket

AWKWARD_KEYS = [
    "plain/file.txt",
    "with space/and+plus.txt",
    "percent%20literal%.csv",
    "unicode/naïve-東京-😀.json",
    "amp&query?x=1#frag",
    'quote"single\'.txt',
    "comma,separated,key",
    "nested/dir/ trailing space ",
]
T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
ACL = base64.b64encode(
    json.dumps(
        {"version": "2022-11-10", "status": "AVAILABLE",
         "grants": [{"permission": "READ", "type": "Group", "uri": "http://acs.amazonaws.com/groups/global/AllUsers"}]}
    ).encode()
).decode()


def sample_rows() -> list[dict]:
    rows = []
    for i, key in enumerate(AWKWARD_KEYS):
        rows.append({
            "key": key,
            "version_id": f"v{i}",
            "is_latest": True,
            "is_delete_marker": False,
            "size": 1000 + i,
            "last_modified_date": T0,
            "e_tag": f"etag{i:02d}",
            "storage_class": ["STANDARD", "STANDARD_IA", "GLACIER", "INTELLIGENT_TIERING"][i % 4],
            "is_multipart_uploaded": i % 3 == 0,
            "replication_status": ["", "FAILED", "COMPLETED", "PENDING"][i % 4],
            "encryption_status": ["SSE-S3", "SSE-KMS", "NOT-SSE", "DSSE-KMS"][i % 4],
            "object_lock_retain_until_date": T0 if i == 1 else None,
            "object_lock_mode": "GOVERNANCE" if i == 1 else "",
            "object_lock_legal_hold_status": "OFF",
            "intelligent_tiering_access_tier": "ARCHIVE_ACCESS" if i % 4 == 3 else "",
            "bucket_key_status": "ENABLED" if i % 2 else "DISABLED",
            "checksum_algorithm": "SHA256" if i == 2 else "",
            "object_access_control_list": ACL,
            "object_owner": "owner-canonical-id",
        })
    # all-versions inventory: an older version and a delete marker for the first key
    rows.append({**rows[0], "version_id": "v-old", "is_latest": False, "e_tag": "etag-old"})
    rows.append({
        "key": AWKWARD_KEYS[0], "version_id": "v-dm", "is_latest": False, "is_delete_marker": True,
        "last_modified_date": T0,
    })
    return rows


def expected_frame(spark, rows, source_bucket, fields=DEFAULT_FIELDS):
    out = []
    for row in rows:
        full = {"bucket": source_bucket}
        for column in inventory.COLUMNS:
            value = row.get(column) if column in fields else None
            full.setdefault(column, None if value == "" else value)
        out.append(tuple(full[c] for c in inventory.COLUMNS))
    return spark.createDataFrame(out, inventory.SCHEMA)


@pytest.fixture
def buckets(moto_server, unique):
    return make_bucket(f"inv-dest-{unique}"), f"inv-src-{unique}"


@pytest.mark.parametrize("fmt", ["CSV", "ORC", "Parquet"])
def test_reads_every_format_through_glue_table_with_awkward_keys(spark, buckets, unique, fmt):
    dest, src = buckets
    rows = sample_rows()
    write_inventory(dest, src, rows, fmt=fmt, files=2, table=f"inv_{unique}.{fmt.lower()}_inventory")

    delivery, frame = inventory.read(spark, table=f"inv_{unique}.{fmt.lower()}_inventory")

    assert delivery.file_format == fmt and len(delivery.data_files) == 2
    assert frame.rdd.getNumPartitions() == 2  # one task per data file
    assert_df_equality(frame, expected_frame(spark, rows, src), ignore_row_order=True)


def test_reads_a_manifest_url_directly(spark, buckets):
    dest, src = buckets
    rows = sample_rows()[:3]
    written = write_inventory(dest, src, rows, fmt="CSV")

    delivery, frame = inventory.read(spark, manifest=written.manifest_url)

    assert delivery.source_bucket == src
    assert delivery.delivery_id == f"{src}/daily/2026-11-24T00-00Z"
    assert_df_equality(frame, expected_frame(spark, rows, src), ignore_row_order=True)


def test_fields_the_report_lacks_are_null_and_empty_replication_status_is_null(spark, buckets):
    dest, src = buckets
    fields = ("bucket", "key", "size", "replication_status")
    rows = [
        {"key": "a b", "size": 1, "replication_status": ""},
        {"key": "c", "size": 2, "replication_status": "FAILED"},
    ]
    written = write_inventory(dest, src, rows, fmt="CSV", fields=fields)

    _, frame = inventory.read(spark, manifest=written.manifest_url)

    assert_df_equality(frame, expected_frame(spark, rows, src, fields), ignore_row_order=True)
    assert frame.where("replication_status IS NULL").count() == 1


def test_defaults_to_the_latest_partition(spark, buckets, unique):
    dest, src = buckets
    table = f"inv_{unique}.daily"
    old = [{"key": "old", "size": 1}]
    new = [{"key": "new", "size": 2}]
    write_inventory(dest, src, old, table=table, when=datetime(2026, 11, 1, tzinfo=timezone.utc))
    write_inventory(dest, src, new, table=table, when=datetime(2026, 11, 2, tzinfo=timezone.utc))

    latest, latest_frame = inventory.read(spark, table=table)
    older, older_frame = inventory.read(spark, table=table, dt="2026-11-01-00-00")

    assert latest.dt == "2026-11-02-00-00"
    assert [r.key for r in latest_frame.collect()] == ["new"]
    assert [r.key for r in older_frame.collect()] == ["old"]
    assert older.delivery_id != latest.delivery_id


def test_all_versions_rows_can_be_filtered_to_live_objects(spark, buckets):
    dest, src = buckets
    written = write_inventory(dest, src, sample_rows(), fmt="Parquet")
    _, frame = inventory.read(spark, manifest=written.manifest_url)

    live = frame.where("is_latest AND NOT is_delete_marker")

    assert live.count() == len(AWKWARD_KEYS)
    assert frame.where("is_delete_marker").select("version_id").collect()[0][0] == "v-dm"


def test_manifest_disagreeing_with_table_columns_is_trusted(spark, buckets, unique, caplog):
    dest, src = buckets
    table = f"inv_{unique}.drift"
    write_inventory(dest, src, [{"key": "k", "size": 5}], table=table, fields=("bucket", "key", "size"))
    # a later delivery adds a field the table does not declare
    write_inventory(dest, src, [{"key": "k", "size": 5, "storage_class": "GLACIER"}], table=table,
                    fields=("bucket", "key", "size", "storage_class"), when=datetime(2026, 11, 30, tzinfo=timezone.utc))

    with caplog.at_level("WARNING"):
        _, frame = inventory.read(spark, table=table)

    assert frame.select("storage_class").collect()[0][0] == "GLACIER"
    assert "trusting the manifest" in caplog.text


# --------------------------------------------------------------------------------------- bad input


def test_unknown_table_is_a_clear_error(moto_server, unique):
    with pytest.raises(InventoryError, match=rf"no Glue table nodb_{unique}\.t"):
        inventory.resolve(table=f"nodb_{unique}.t")


def test_table_name_without_database_is_a_clear_error(moto_server):
    with pytest.raises(InventoryError, match="DATABASE.TABLE"):
        inventory.resolve(table="justatable")


def test_unknown_partition_names_the_latest(moto_server, buckets, unique):
    dest, src = buckets
    write_inventory(dest, src, [{"key": "k"}], table=f"inv_{unique}.t")
    with pytest.raises(InventoryError, match=r"no partition dt=2020-01-01-00-00 \(latest is dt=2026-11-24-00-00\)"):
        inventory.resolve(table=f"inv_{unique}.t", dt="2020-01-01-00-00")


def test_missing_manifest_is_a_clear_error(moto_server, s3, buckets, unique):
    dest, src = buckets
    written = write_inventory(dest, src, [{"key": "k"}], table=f"inv_{unique}.t")
    s3.delete_object(Bucket=dest, Key=written.manifest_url.split("/", 3)[3])
    with pytest.raises(InventoryError, match=r"no manifest\.json at s3://.*/2026-11-24T00-00Z/manifest\.json"):
        inventory.resolve(table=f"inv_{unique}.t")


def test_missing_data_file_is_a_clear_error(moto_server, s3, buckets):
    dest, src = buckets
    written = write_inventory(dest, src, [{"key": "k"}], files=1)
    s3.delete_object(Bucket=dest, Key=written.data_files[0].split("/", 3)[3])
    with pytest.raises(InventoryError, match="data file listed in .* is missing"):
        inventory.resolve(manifest=written.manifest_url)


def test_manifest_checksum_mismatch_is_a_clear_error(moto_server, s3, buckets):
    dest, src = buckets
    written = write_inventory(dest, src, [{"key": "k"}])
    checksum_key = written.manifest_url.split("/", 3)[3].replace("manifest.json", "manifest.checksum")
    s3.put_object(Bucket=dest, Key=checksum_key, Body=b"0" * 32)
    with pytest.raises(InventoryError, match="does not match manifest.checksum"):
        inventory.resolve(manifest=written.manifest_url)


def test_unknown_format_is_a_clear_error(moto_server, s3, buckets):
    dest, src = buckets
    written = write_inventory(dest, src, [{"key": "k"}])
    key = written.manifest_url.split("/", 3)[3]
    manifest = json.loads(s3.get_object(Bucket=dest, Key=key)["Body"].read())
    manifest["fileFormat"] = "Avro"
    raw = json.dumps(manifest).encode()
    s3.put_object(Bucket=dest, Key=key, Body=raw)
    s3.delete_object(Bucket=dest, Key=key.replace("manifest.json", "manifest.checksum"))
    with pytest.raises(InventoryError, match="unknown inventory fileFormat 'Avro'"):
        inventory.resolve(manifest=written.manifest_url)


def test_exactly_one_inventory_source_is_required(moto_server):
    with pytest.raises(InventoryError, match="exactly one"):
        inventory.resolve()
    with pytest.raises(InventoryError, match="exactly one"):
        inventory.resolve(table="a.b", manifest="s3://x/manifest.json")


@pytest.mark.parametrize(
    "fmt,schema,expected",
    [
        ("CSV", "Bucket, Key, Size, ETag, LastModifiedDate", ["bucket", "key", "size", "e_tag", "last_modified_date"]),
        ("ORC", "struct<bucket:string,key:string,size:bigint,e_tag:string>", ["bucket", "key", "size", "e_tag"]),
        ("Parquet", "message s3.inventory { required binary bucket (STRING); required binary key (STRING); "
                    "optional int64 size; optional boolean is_latest; }", ["bucket", "key", "size", "is_latest"]),
    ],
)
def test_parse_file_schema(fmt, schema, expected):
    assert inventory.parse_file_schema(fmt, schema) == (expected, [])


def test_parse_file_schema_reports_unknown_fields():
    assert inventory.parse_file_schema("CSV", "Bucket, Key, SomethingNew") == (["bucket", "key"], ["SomethingNew"])
