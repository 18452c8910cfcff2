"""Every job on real producers' JSON (tests/data/: Zeek, nginx, CloudTrail, Twitter, GitHub; sources and
licences in tests/data/README.md), checked value by value against the same file read with the json module."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from pyspark.sql import types as T
from s3lake.objects import results
from s3lake.parquet import convert as j2p
from s3lake.parquet.options import APPEND, Options
from s3lake_testbed.seed import make_bucket

from jobs import anonymize as anon_job
from jobs import copy_in_place as copy_job

DATA = Path(__file__).resolve().parent / "data"
HMAC_KEY = "real-data-key"


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------- an independent schema


EMPTY = object()  # an empty object: nothing to store, so it tells nothing about the field's type


def _kind(value):
    if value is None:
        return T.NullType()
    if isinstance(value, bool):
        return T.BooleanType()
    if isinstance(value, int):
        return T.LongType()
    if isinstance(value, float):
        return T.DoubleType()
    if isinstance(value, str):
        return T.StringType()
    if isinstance(value, dict):
        fields = [(k, _kind(v)) for k, v in value.items()]
        kept = [T.StructField(k, t) for k, t in fields if t is not EMPTY]
        return T.StructType(kept) if kept else EMPTY
    element = _merge([_kind(v) for v in value])
    return T.ArrayType(element if element is not None else T.NullType())


def _merge(types):
    """One type for several JSON values, or None when they disagree or never hold anything storable (the
    field is left out: the job ignores it and counts it as unknown)."""
    types = [t for t in types if t is not EMPTY]
    if not types:
        return None
    typed = [t for t in types if not isinstance(t, T.NullType)]
    if not typed:
        return T.StringType()  # only ever null
    first = typed[0]
    if all(isinstance(t, T.StructType) for t in typed):
        order, fields = [], {}
        for t in typed:
            for f in t.fields:
                if f.name not in fields:
                    order.append(f.name)
                fields.setdefault(f.name, []).append(f.dataType)
        merged = [(n, _merge(fields[n])) for n in order]
        kept = [T.StructField(n, t) for n, t in merged if t is not None]
        return T.StructType(kept) if kept else None
    if all(isinstance(t, T.ArrayType) for t in typed):
        element = _merge([t.elementType for t in typed])
        return T.ArrayType(element) if element is not None else None
    if {type(t) for t in typed} <= {T.LongType, T.DoubleType}:
        return T.DoubleType() if any(isinstance(t, T.DoubleType) for t in typed) else T.LongType()
    return first if all(type(t) is type(first) for t in typed) else None


def infer(values) -> T.StructType:
    """The schema of a list of JSON objects by plain Python: a field whose values disagree in type, or that
    only ever holds {}, is left out (the job ignores and counts it)."""
    return _merge([_kind(v) for v in values]) or T.StructType([])


def project(value, dt):
    """A JSON value as the job should store it under ``dt`` (missing fields are null)."""
    if value is None:
        return None
    if isinstance(dt, T.StructType):
        return {f.name: project(value.get(f.name), f.dataType) for f in dt.fields}
    if isinstance(dt, T.ArrayType):
        return [project(v, dt.elementType) for v in value]
    if isinstance(dt, T.DoubleType):
        return float(value)
    return value


def canonical(record) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False)


# ---------------------------------------------------------------------------- JSON to Parquet


def utc_day(text_or_epoch, fmt=None) -> str:
    if fmt is None and isinstance(text_or_epoch, (int, float)):
        when = datetime.fromtimestamp(text_or_epoch, timezone.utc)
    elif fmt is None:
        when = datetime.fromisoformat(text_or_epoch.replace("Z", "+00:00"))
    else:
        when = datetime.strptime(text_or_epoch, fmt)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d")


SAMPLES = {
    # file, --timestamp-field, --timestamp-format(s), the record's time as Python reads it
    "zeek-conn": ("zeek/conn.jsonl", "ts", [], lambda r: utc_day(r["ts"])),
    "zeek-dns": ("zeek/dns.jsonl", "ts", [], lambda r: utc_day(r["ts"])),
    "nginx": ("nginx/access.jsonl", "time", ["dd/MMM/yyyy:HH:mm:ss Z"],
              lambda r: utc_day(r["time"], "%d/%b/%Y:%H:%M:%S %z")),
    "cloudtrail": ("cloudtrail/events.jsonl", "@timestamp", [], lambda r: utc_day(r["@timestamp"])),
    "twitter": ("twitter/statuses.jsonl", "created_at", ["EEE MMM dd HH:mm:ss Z yyyy"],
                lambda r: utc_day(r["created_at"], "%a %b %d %H:%M:%S %z %Y")),
    "twitter-nested-time": ("twitter/statuses.jsonl", "user.created_at", ["EEE MMM dd HH:mm:ss Z yyyy"],
                            lambda r: utc_day(r["user"]["created_at"], "%a %b %d %H:%M:%S %z %Y")),
    "github": ("github/events.jsonl", "created_at", [], lambda r: utc_day(r["created_at"])),
}


def read_output(path: Path) -> list[dict]:
    partitioning = ds.partitioning(pa.schema([("dt", pa.string())]), flavor="hive")
    return ds.dataset(str(path), format="parquet", partitioning=partitioning).to_table().to_pylist()


@pytest.mark.parametrize("sample", sorted(SAMPLES))
def test_json_to_parquet_keeps_every_value_of_real_producers_output(spark, tmp_path, sample):
    file, ts_field, formats, day = SAMPLES[sample]
    source = records(DATA / file)
    schema = infer(source)
    out = tmp_path / "out"
    summary = j2p.convert(spark, Options(
        inputs=[str(DATA / file)], output=str(out), schema=schema, timestamp_field=ts_field,
        timestamp_formats=formats, mode=APPEND, unknown_fields_sample=1, max_bad_fraction=0.0))

    assert (summary["input_records"], summary["bad_records"], summary["written_records"]) == (
        len(source), 0, len(source))
    names = [f.name for f in schema.fields]
    got = sorted(canonical(r) for r in read_output(out))
    want = sorted(canonical({**{n: project(r.get(n), schema[n].dataType) for n in names}, "dt": day(r)})
                  for r in source)
    assert got == want


def test_dotted_zeek_names_are_kept_exactly_in_parquet_and_glue_and_reach_dedup(spark, tmp_path, glue, unique):
    source = records(DATA / "zeek" / "conn.jsonl")
    schema = infer(source)
    database = f"real_{unique}"
    glue.create_database(DatabaseInput={"Name": database})
    out = tmp_path / "out"
    inputs = []
    for copy in ("a", "b"):  # the same records delivered twice
        (tmp_path / copy).mkdir()
        inputs.append(str(tmp_path / copy / "conn.json"))
        Path(inputs[-1]).write_bytes((DATA / "zeek" / "conn.jsonl").read_bytes())
    summary = j2p.convert(spark, Options(
        inputs=inputs, output=str(out), schema=schema, timestamp_field="ts",
        dedup_keys=["uid", "`id.orig_h`"], mode=APPEND, table=f"{database}.conn", unknown_fields_sample=1))

    assert summary["unknown_fields_ignored"] == 0  # every dotted key is a known field, none is "unknown"
    unique_keys = {(r["uid"], r["id.orig_h"]) for r in source}
    assert summary["written_records"] == len(unique_keys) and summary["duplicates_dropped"] == len(source)
    table = glue.get_table(DatabaseName=database, Name="conn")["Table"]
    assert [c["Name"] for c in table["StorageDescriptor"]["Columns"]] == [f.name for f in schema.fields]
    assert {"id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p"} <= set(read_output(out)[0])


# ---------------------------------------------------------------------------- anonymize


def H(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)
    return hmac.new(HMAC_KEY.encode(), text.encode("utf-8"), hashlib.sha256).hexdigest()


# Per sample: the rules, and the same change written out by hand on a json.loads record (returning how
# many fields each rule changed).
def _zeek(r):
    n = {"id.orig_h": 0, "`id.resp_h`": 0}
    if r.get("id.orig_h") is not None:
        r["id.orig_h"], n["id.orig_h"] = H(r["id.orig_h"]), 1
    if r.get("id.resp_h") is not None:
        r["id.resp_h"], n["`id.resp_h`"] = None, 1
    return n


def _github(r):
    n = {"payload.commits[].author.email": 0, "actor.avatar_url": 0}
    for commit in (r.get("payload") or {}).get("commits") or []:
        author = commit.get("author")
        if isinstance(author, dict) and author.get("email") is not None:
            author["email"] = H(author["email"])
            n["payload.commits[].author.email"] += 1
    if isinstance(r.get("actor"), dict) and "avatar_url" in r["actor"]:
        del r["actor"]["avatar_url"]
        n["actor.avatar_url"] += 1
    return n


def _cloudtrail(r):
    n = {"userIdentity.accessKeyId": 0, "sourceIPAddress": 0}
    ident = r.get("userIdentity")
    if isinstance(ident, dict) and ident.get("accessKeyId") is not None:
        ident["accessKeyId"] = H(ident["accessKeyId"])
        n["userIdentity.accessKeyId"] = 1
    if r.get("sourceIPAddress") not in (None, ""):
        r["sourceIPAddress"], n["sourceIPAddress"] = "", 1
    return n


def _twitter(r):
    n = {"user.screen_name": 0, "user.profile_image_url": 0}
    user = r.get("user")
    if isinstance(user, dict):
        if user.get("screen_name") is not None:
            user["screen_name"], n["user.screen_name"] = H(user["screen_name"]), 1
        if "profile_image_url" in user:
            del user["profile_image_url"]
            n["user.profile_image_url"] = 1
    return n


def _nginx(r):
    if r.get("remote_ip") is not None:
        r["remote_ip"] = None
        return {"remote_ip": 1}
    return {"remote_ip": 0}


ANON = {
    "zeek/conn.jsonl": ([{"path": "id.orig_h", "action": "hmac"}, {"path": "`id.resp_h`", "action": "null"}], _zeek),
    "github/events.jsonl": ([{"path": "payload.commits[].author.email", "action": "hmac"},
                             {"path": "actor.avatar_url", "action": "drop"}], _github),
    "cloudtrail/events.jsonl": ([{"path": "userIdentity.accessKeyId", "action": "hmac"},
                                 {"path": "sourceIPAddress", "action": "blank"}], _cloudtrail),
    "twitter/statuses.jsonl": ([{"path": "user.screen_name", "action": "hmac"},
                                {"path": "user.profile_image_url", "action": "drop"}], _twitter),
    "nginx/access.jsonl": ([{"path": "remote_ip", "action": "null"}], _nginx),
}


def test_anonymize_changes_exactly_the_named_fields_of_real_records(spark, moto_server, s3, tmp_path, unique,
                                                                     monkeypatch, capsys):
    bucket = make_bucket(f"real-anon-{unique}", versioned=True)
    rules = [rule for spec, _ in ANON.values() for rule in spec]
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps(rules))
    for name in ANON:
        s3.put_object(Bucket=bucket, Key=f"in/{name}", Body=(DATA / name).read_bytes())
    monkeypatch.setenv("S3LAKE_HMAC_KEY", HMAC_KEY)

    code = anon_job.main(["--source", f"s3://{bucket}/in/", "--rules", str(rules_file), "--results",
                          str(tmp_path / "results"), "--run-id", "real", "--min-age", "0s"])

    assert code == 0, capsys.readouterr().err
    rows = {r["key"]: r for r in results.read_run(spark, str(tmp_path / "results"), "real").collect()}
    for name, (_, by_hand) in ANON.items():
        expected, counts = [], {}
        for record in records(DATA / name):
            for rule, n in by_hand(record).items():
                counts[rule] = counts.get(rule, 0) + n
            expected.append(record)
        body = s3.get_object(Bucket=bucket, Key=f"in/{name}")["Body"].read().decode("utf-8")
        assert [json.loads(line) for line in body.splitlines()] == expected, name
        row = rows[f"in/{name}"]
        assert row["status"] == "ANONYMIZED", (name, row["error_message"])
        assert json.loads(row["fields_changed"]) == {k: v for k, v in counts.items() if v}, name


def test_a_rule_that_reaches_nothing_in_real_data_is_named_and_the_run_exits_1(spark, moto_server, s3, tmp_path,
                                                                               unique, capsys):
    bucket = make_bucket(f"real-miss-{unique}")
    s3.put_object(Bucket=bucket, Key="in/conn.json", Body=(DATA / "zeek" / "conn.jsonl").read_bytes())
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps([{"path": "id.orig_h", "action": "null"},
                                      {"path": "id.orig_hh", "action": "null"}]))  # a typo
    args = ["--source", f"s3://{bucket}/in/", "--rules", str(rules_file), "--min-age", "0s", "--dry-run"]

    code = anon_job.main([*args, "--results", str(tmp_path / "r1"), "--run-id", "miss"])
    out = capsys.readouterr()
    assert code == 1
    assert "rule(s) id.orig_hh reached no field in the 1 objects scanned" in out.err
    assert "id.orig_h   50 / 50" in out.out and "id.orig_hh  0 / 0   <- matched no field" in out.out
    assert anon_job.main([*args, "--results", str(tmp_path / "r2"), "--run-id", "miss2",
                          "--allow-unmatched-rules"]) == 0
    assert s3.get_object(Bucket=bucket, Key="in/conn.json")["Body"].read() == (DATA / "zeek/conn.jsonl").read_bytes()


# ---------------------------------------------------------------------------- copy in place


def test_copy_in_place_keeps_real_bodies_byte_for_byte(spark, moto_server, s3, tmp_path, unique):
    from s3lake_testbed.inventory import inventory_row, write_inventory
    from s3lake_testbed.replication import replicate_everything

    bucket = make_bucket(f"real-copy-{unique}", versioned=True)
    replicate_everything(bucket)
    files = sorted(p for p in DATA.rglob("*.jsonl"))
    rows = []
    for path in files:
        key = f"real/{path.parent.name}/{path.name}"
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(), ContentType="application/x-ndjson")
        rows.append(inventory_row(s3, bucket, key))
    delivery = write_inventory(make_bucket(f"real-inv-{unique}"), bucket, rows)

    code = copy_job.main(["--inventory-manifest", delivery.manifest_url, "--results", str(tmp_path / "results"),
                          "--run-id", f"real-{uuid.uuid4().hex[:6]}"])

    assert code == 0
    for path in files:
        key = f"real/{path.parent.name}/{path.name}"
        versions = s3.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
        assert len(versions) == 2
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == path.read_bytes()
