"""copy_in_place with the bucket's replication configuration: scope, price, --from-report, Glue results."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

from s3lake.objects import results
from s3lake.replication import copy_in_place as cip
from s3lake.replication import report as rr
from s3lake_testbed.inventory import inventory_row, write_inventory
from s3lake_testbed.replication import put_replication, replicate_everything, rule
from s3lake_testbed.seed import count_versions, make_bucket, make_kms_key, object_state

from jobs import copy_in_place as job
from jobs import replication_report as report_job

MIB = 1024 * 1024


def run_job(*args):
    return job.main([str(a) for a in args])


def statuses(spark, path, run_id):
    return {r.key: (r.status, r.requests) for r in results.read_run(spark, str(path), run_id).collect()}


def later(hours=1):
    return (datetime.now(timezone.utc) + timedelta(hours=hours)).replace(second=0, microsecond=0)


SCOPED = {  # key -> tags
    "logs/a.log": None,
    "data/both.json": "a=1&b=2",
    "data/half.json": "a=1",
    "data/none.json": None,
    "tagged/yes.bin": "replicate=yes",
    "off/x.bin": None,
    "elsewhere/x.bin": "replicate=yes",
}


def scoped_bucket(s3, name):
    bucket = make_bucket(name, versioned=True)
    put_replication(bucket, [
        rule("logs", prefix="logs/", priority=1),
        rule("data", prefix="data/", tags={"a": "1", "b": "2"}, priority=2),
        rule("tagged", prefix="tagged/", tags={"replicate": "yes"}, priority=3),
        rule("off", prefix="off/", enabled=False, priority=4),
    ])
    for key, tags in SCOPED.items():
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode(), **({"Tagging": tags} if tags else {}))
    return bucket


# -------------------------------------------------------------------------------------------- scope


def test_only_objects_an_enabled_rule_takes_are_copied_and_tags_are_read_only_where_needed(
        spark, moto_server, unique, tmp_path, s3, s3_proxy):
    bucket = scoped_bucket(s3, f"sc-{unique}")
    inv = make_bucket(f"sc-inv-{unique}")
    delivery = write_inventory(inv, bucket, [inventory_row(s3, bucket, k) for k in SCOPED])
    before = {k: object_state(bucket, k) for k in SCOPED}

    with s3_proxy.window() as w:
        assert run_job("--inventory-manifest", delivery.manifest_url, "--results", tmp_path / "r",
                       "--run-id", "s1") == 0

    assert statuses(spark, tmp_path / "r", "s1") == {
        "logs/a.log": (cip.COPIED, 3),                    # HEAD, GetObjectAcl, CopyObject
        "data/both.json": (cip.COPIED, 4),                # + GetObjectTagging: the And rule needs the tags
        "tagged/yes.bin": (cip.COPIED, 4),
        "data/half.json": (cip.SKIPPED_OUT_OF_SCOPE, 2),  # HEAD, GetObjectTagging
        "data/none.json": (cip.SKIPPED_OUT_OF_SCOPE, 1),  # TagCount 0: no tagging request
        "off/x.bin": (cip.SKIPPED_OUT_OF_SCOPE, 0),       # only a disabled rule: decided without a request
        "elsewhere/x.bin": (cip.SKIPPED_OUT_OF_SCOPE, 0),
    }
    assert w.counts["GetObjectTagging"] == 3 and w.counts["CopyObject"] == 3
    assert w.counts["GetBucketReplication"] == 1 and w.counts["GetBucketVersioning"] == 1
    for key in ("data/half.json", "data/none.json", "off/x.bin", "elsewhere/x.bin"):
        assert object_state(bucket, key) == before[key], key


def test_a_second_delivery_does_not_copy_out_of_scope_objects_again(spark, moto_server, unique, tmp_path, s3):
    bucket = scoped_bucket(s3, f"sc2-{unique}")
    inv = make_bucket(f"sc2-inv-{unique}")
    first = write_inventory(inv, bucket, [inventory_row(s3, bucket, k) for k in SCOPED])
    assert run_job("--inventory-manifest", first.manifest_url, "--results", tmp_path / "r") == 0
    copied = {"logs/a.log", "data/both.json", "tagged/yes.bin"}
    # the next day's delivery: replication took the copies, the out-of-scope objects still have no status
    rows = [inventory_row(s3, bucket, k, replication_status="COMPLETED" if k in copied else None) for k in SCOPED]
    second = write_inventory(inv, bucket, rows, when=datetime(2026, 11, 25, tzinfo=timezone.utc))
    versions = {k: count_versions(bucket, k) for k in SCOPED}

    assert run_job("--inventory-manifest", second.manifest_url, "--results", tmp_path / "r") == 0

    run_id = cip.default_run_id(f"{bucket}/daily/2026-11-25T00-00Z")
    assert {k: s for k, (s, _) in statuses(spark, tmp_path / "r", run_id).items()} == {
        k: cip.SKIPPED_OUT_OF_SCOPE for k in SCOPED if k not in copied}
    assert {k: count_versions(bucket, k) for k in SCOPED} == versions


def test_a_bucket_without_replication_or_versioning_is_refused_in_one_line(
        spark, moto_server, unique, tmp_path, s3, capsys):
    plain = make_bucket(f"nr-{unique}")
    versioned = make_bucket(f"nrv-{unique}", versioned=True)
    inv = make_bucket(f"nr-inv-{unique}")
    for bucket in (plain, versioned):
        s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    deliveries = {b: write_inventory(inv, b, [inventory_row(s3, b, "k")]) for b in (plain, versioned)}
    capsys.readouterr()

    assert run_job("--inventory-manifest", deliveries[plain].manifest_url, "--results", tmp_path / "r") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"s3lake: error: bucket {plain}: versioning is never enabled, so nothing replicates")
    assert run_job("--inventory-manifest", deliveries[versioned].manifest_url, "--results", tmp_path / "r") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"s3lake: error: bucket {versioned} has no replication configuration: a copy would only add versions "
        "(configure replication first, or pass --no-replication-check)")
    assert not (tmp_path / "r").exists() and count_versions(versioned, "k") == 1

    assert run_job("--inventory-manifest", deliveries[versioned].manifest_url, "--results", tmp_path / "r",
                   "--run-id", "anyway", "--no-replication-check") == 0
    assert statuses(spark, tmp_path / "r", "anyway") == {"k": (cip.COPIED, 3)}


# -------------------------------------------------------------------------------------------- price

LINE = re.compile(r"^  (\w+)\s+(\d+) requests \((put|get|free); (\d+) made by this run\)$")


def estimate_lines(text):
    would, made = {}, {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            would[m.group(1)], made[m.group(1)] = int(m.group(2)), int(m.group(4))
    return would, made


def test_dry_run_estimate_equals_the_requests_the_real_run_then_makes_at_the_proxy(
        spark, moto_server, unique, tmp_path, s3, s3_proxy, capsys):
    bucket = make_bucket(f"pr-{unique}", versioned=True)
    put_replication(bucket, [rule("data", prefix="data/", priority=1, kms=True),
                             rule("tagged", tags={"replicate": "yes"}, priority=2)])
    kms = make_kms_key()
    s3.put_object(Bucket=bucket, Key="data/kms.json", Body=b"{}", ServerSideEncryption="aws:kms", SSEKMSKeyId=kms)
    s3.put_object(Bucket=bucket, Key="data/ia.csv", Body=b"a,b", StorageClass="STANDARD_IA")
    s3.put_object(Bucket=bucket, Key="data/big.bin", Body=b"\0" * (11 * MIB), Tagging="x=1")
    s3.put_object(Bucket=bucket, Key="other/tagged", Body=b"t", Tagging="replicate=yes")
    s3.put_object(Bucket=bucket, Key="other/untagged", Body=b"u")
    s3.put_object(Bucket=bucket, Key="other/wrong", Body=b"w", Tagging="replicate=no")
    keys = ["data/kms.json", "data/ia.csv", "data/big.bin", "other/tagged", "other/untagged", "other/wrong"]
    inv = make_bucket(f"pr-inv-{unique}")
    delivery = write_inventory(inv, bucket, [inventory_row(s3, bucket, k) for k in keys])
    args = ["--inventory-manifest", delivery.manifest_url, "--results", tmp_path / "r",
            "--multipart-threshold", 5 * MIB]
    capsys.readouterr()

    with s3_proxy.window() as dry:
        assert run_job(*args, "--run-id", "dry", "--dry-run") == 0
    out = capsys.readouterr().out
    with s3_proxy.window() as real:
        assert run_job(*args, "--run-id", "real") == 0

    would, made = estimate_lines(out)
    assert would["CopyObject"] == 3 and would["UploadPartCopy"] == 3 and made.get("CopyObject") == 0
    inventory_reads = {"GetObject", "HeadObject"}  # the inventory's manifest and data files, in both runs
    for op in set(would) | set(real.counts) | set(dry.counts):
        if op in inventory_reads:
            continue
        assert real.counts.get(op, 0) == would.get(op, 0), op
        assert dry.counts.get(op, 0) == made.get(op, 0), op
    assert dry.counts.get("GetObject") == real.counts.get("GetObject") and "GetObject" not in would
    assert real.counts["HeadObject"] - would["HeadObject"] == dry.counts["HeadObject"] - made["HeadObject"]
    assert would["HeadObject"] == made["HeadObject"] == len(keys)
    assert "  KMS requests                            2" in out
    assert "  new versions STANDARD_IA                1 objects, 3 B" in out
    assert re.search(r"^  one-time total +USD [\d,]+\.\d+$", out, re.M)
    assert statuses(spark, tmp_path / "r", "real")["other/wrong"][0] == cip.SKIPPED_OUT_OF_SCOPE


def test_a_price_table_that_does_not_parse_is_one_line_and_nothing_is_touched(
        spark, moto_server, unique, tmp_path, s3, capsys):
    bucket = replicate_everything(make_bucket(f"pt-{unique}"))
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    delivery = write_inventory(make_bucket(f"pt-inv-{unique}"), bucket, [inventory_row(s3, bucket, "k")])
    bad = tmp_path / "prices.json"
    bad.write_text('{"region": "eu-west-1", ')
    capsys.readouterr()

    assert run_job("--inventory-manifest", delivery.manifest_url, "--results", tmp_path / "r", "--dry-run",
                   "--prices", bad) == 2

    assert capsys.readouterr().err.strip().startswith(f"s3lake: error: price table {bad}: not valid JSON (")
    assert not (tmp_path / "r").exists() and count_versions(bucket, "k") == 1


# -------------------------------------------------------------------------------------- from report


def test_from_report_copies_exactly_the_failed_objects(spark, moto_server, unique, tmp_path, s3, glue):
    bucket = replicate_everything(make_bucket(f"fr-{unique}"))
    keys = [f"k{i}" for i in range(6)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    inv = make_bucket(f"fr-inv-{unique}")
    first = write_inventory(inv, bucket, [inventory_row(s3, bucket, k) for k in keys])
    results_path = str(tmp_path / "lake" / "results")
    db = f"fr_{unique}"
    assert run_job("--inventory-manifest", first.manifest_url, "--results", results_path, "--run-id", "r1",
                   "--results-table", f"{db}.copy_results") == 0
    failed = {"k1", "k4"}
    rows = [inventory_row(s3, bucket, k, replication_status="FAILED" if k in failed else "COMPLETED") for k in keys]
    later_delivery = write_inventory(inv, bucket, rows, when=later())
    assert report_job.main(["--results", results_path, "--run-id", "r1", "--inventory-manifest",
                            later_delivery.manifest_url, "--results-table", f"{db}.replication_report"]) == 1
    report = f"{rr.default_report_path(results_path)}/run_id=r1"
    versions = {k: count_versions(bucket, k) for k in keys}

    assert run_job("--from-report", report, "--results", results_path, "--run-id", "retry") == 0

    assert statuses(spark, results_path, "retry") == {k: (cip.COPIED, 3) for k in failed}
    assert {k: count_versions(bucket, k) - versions[k] for k in keys} == {k: int(k in failed) for k in keys}
    meta = s3.head_object(Bucket=bucket, Key="k1")["Metadata"]
    assert meta[cip.MARKER] == "retry"
    readme_queries_run(glue, db, "r1")


def readme_queries_run(glue, db, run_id):
    """The README's Athena queries, as written, over the tables the jobs registered (DuckDB plays Athena)."""
    import pytest

    duckdb = pytest.importorskip("duckdb")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    sql = readme.split("**Results in Athena.**", 1)[1].split("```sql", 1)[1].split("```", 1)[0]
    con = duckdb.connect()
    con.execute("CREATE SCHEMA s3lake")
    for table in ("copy_results", "replication_report"):
        location = glue.get_table(DatabaseName=db, Name=table)["Table"]["StorageDescriptor"]["Location"]
        con.execute(f"CREATE VIEW s3lake.{table} AS SELECT * FROM "
                    f"read_parquet('{location.rstrip('/')}/*/*.parquet', hive_partitioning = true)")
    answers = []
    for statement in (q for q in sql.split(";") if q.strip().replace("-", "").strip()):
        answers.append(con.execute(re.sub(r"'cip-[^']+'", f"'{run_id}'", statement)).fetchall())
    assert answers[0] == [("COPIED", 6, 12, 18)]
    assert sorted(answers[1]) == [("COMPLETED", 4), ("FAILED", 2)]
    assert sorted(r[1] for r in answers[2]) == ["k1", "k4"]


# ---------------------------------------------------------------------------------------- Glue table


def test_results_table_registers_the_run_partition_for_athena(spark, moto_server, unique, tmp_path, s3, glue):
    bucket = replicate_everything(make_bucket(f"gt-{unique}"))
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    delivery = write_inventory(make_bucket(f"gt-inv-{unique}"), bucket, [inventory_row(s3, bucket, "k")])
    table = f"s3lake_{unique}.copy_results"

    for run_id in ("a", "b", "b"):
        assert run_job("--inventory-manifest", delivery.manifest_url, "--results", tmp_path / "r",
                       "--run-id", run_id, "--results-table", table) == 0

    meta = glue.get_table(DatabaseName=f"s3lake_{unique}", Name="copy_results")["Table"]
    assert [k["Name"] for k in meta["PartitionKeys"]] == ["run_id"]
    assert [c["Name"] for c in meta["StorageDescriptor"]["Columns"]] == [
        f for f in results.FIELDS if f != "run_id"]
    parts = glue.get_partitions(DatabaseName=f"s3lake_{unique}", TableName="copy_results")["Partitions"]
    assert sorted((p["Values"][0], p["StorageDescriptor"]["Location"]) for p in parts) == [
        ("a", f"{tmp_path / 'r'}/run_id=a/"), ("b", f"{tmp_path / 'r'}/run_id=b/")]
    assert Path(f"{tmp_path / 'r'}/run_id=b").is_dir()


def test_from_report_over_a_missing_report_is_one_line(spark, moto_server, tmp_path, capsys):
    assert run_job("--from-report", tmp_path / "no-report", "--results", tmp_path / "r") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"s3lake: error: cannot read the replication report at {tmp_path / 'no-report'}: ")
    assert "\n" not in err and not (tmp_path / "r").exists()


def test_anonymize_results_table_registers_its_run(spark, moto_server, unique, tmp_path, s3, glue):
    from jobs import anonymize as anonymize_job

    bucket = make_bucket(f"an-gt-{unique}")
    s3.put_object(Bucket=bucket, Key="a.json", Body=b'{"file_contents": "secret"}\n')
    rules = Path(__file__).resolve().parents[1] / "conf" / "anonymize" / "file-contents.json"

    assert anonymize_job.main(["--source", f"s3://{bucket}/", "--rules", str(rules), "--results",
                               str(tmp_path / "r"), "--run-id", "an1", "--min-age", "0", "--dry-run",
                               "--results-table", f"an_{unique}.anonymize_results"]) == 0

    parts = glue.get_partitions(DatabaseName=f"an_{unique}", TableName="anonymize_results")["Partitions"]
    assert [(p["Values"], p["StorageDescriptor"]["Location"]) for p in parts] == [
        (["an1"], f"{tmp_path / 'r'}/run_id=an1/")]
