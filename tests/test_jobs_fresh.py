"""Every command-line option of the three jobs, the way users start them: ``spark-submit`` in a fresh process
(no session, no state from the test run), against the test bed. ``test_every_option_is_started_fresh``
fails when a job gains an option no invocation here passes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from s3lake import aws
from s3lake.objects import results
from s3lake.replication import report
from s3lake_testbed import iam
from s3lake_testbed.inventory import inventory_row, write_inventory
from s3lake_testbed.replication import replicate_everything
from s3lake_testbed.seed import make_bucket, make_glue_database

from jobs import anonymize as anon_job
from jobs import copy_in_place as copy_job
from jobs import json_to_parquet as j2p_job

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"

# The invocations, with {placeholders} the fixtures fill in. Each option of each job appears at least once.
INVOCATIONS = {
    "json_to_parquet": {
        "zeek": ["--input", "{zeek_dir}", "--output", "{out}/zeek", "--schema", "{zeek_schema}",
                 "--timestamp-field", "ts", "--partition-by", "year/month/day", "--table", "{db}.zeek",
                 "--mode", "replace-batches", "--dedup-key", "uid,`id.orig_h`", "--target-file-size", "64m",
                 "--max-records-per-file", "10", "--bad-records", "{out}/zeek_bad", "--max-bad-fraction", "0.5",
                 "--unknown-fields-sample", "1", "--reread-input"],
        "schema_table": ["--input", "{nginx}", "--output", "{out}/nginx", "--schema-table", "{db}.nginx_schema",
                         "--timestamp-field", "time", "--timestamp-format", "yyyy-MM-dd",
                         "--timestamp-format", "dd/MMM/yyyy:HH:mm:ss Z", "--mode", "append"],
        "glue_gone": ["--input", "{nginx}", "--output", "{out}/gone", "--schema-table", "{db}.nginx_schema",
                      "--timestamp-field", "time", "--timestamp-format", "dd/MMM/yyyy:HH:mm:ss Z",
                      "--mode", "rebuild-partitions", "--table", "no_such_database_{unique}.t"],
    },
    "copy_in_place": {
        "dry_run": ["--inventory-table", "{inv_table}", "--inventory-date", "{inv_dt}", "--results", "{out}/c1",
                    "--dry-run", "--run-id", "fresh-dry", "--statuses", "none,FAILED", "--concurrency", "4",
                    "--partitions", "2", "--max-requests-per-second", "200", "--object-deadline", "5m",
                    "--max-requests-per-second-per-prefix", "50", "--prefix-depth", "2", "--prefix-delimiter", "/",
                    "--progress-interval", "1", "--checkpoint-interval", "5", "--acl-from-inventory",
                    "--multipart-threshold", "8388608",
                    "--prices", "conf/prices/us-east-1.json"],
        "copy": ["--inventory-manifest", "{manifest}", "--results", "{out}/c2", "--run-id", "fresh-copy",
                 "--no-copy-acls", "--deadline", "10m", "--max-failures", "0", "--results-table", "{db}.copies",
                 "--request-payer", "requester"],
        "from_report": ["--from-report", "{report}", "--results", "{out}/c3", "--run-id", "fresh-retry",
                        "--no-replication-check"],
        "estimate": ["--inventory-manifest", "{manifest}", "--results", "{out}/c4", "--estimate"],
        "batch": ["--inventory-manifest", "{manifest}", "--results", "{out}/c5", "--run-id", "fresh-batch",
                  "--method", "batch-replication", "--batch-role-arn", "{batch_role}",
                  "--batch-location", "s3://{batch_bucket}/batch", "--no-wait"],
    },
    "anonymize": {
        "source": ["--source", "s3://{anon_bucket}/in/", "--rules", "{rules}", "--results", "{out}/a1",
                   "--run-id", "fresh-anon", "--hmac-key-param", "{param}", "--min-age", "0s",
                   "--processed-tag", "DONE=yes", "--part-size", "5242880", "--purge-noncurrent",
                   "--results-table", "{db}.anon", "--concurrency", "4", "--partitions", "2", "--max-failures", "0",
                   "--max-requests-per-second", "200", "--object-deadline", "5m", "--progress-interval", "1",
                   "--checkpoint-interval", "5",
                   "--request-payer", "requester", "--max-requests-per-second-per-prefix", "50",
                   "--prefix-depth", "1", "--prefix-delimiter", "/"],
        "inventory": ["--inventory-manifest", "{anon_manifest}", "--rules", "{rules}", "--results", "{out}/a2",
                      "--run-id", "fresh-dry", "--dry-run", "--hmac-key-param", "{param}",
                      "--allow-unmatched-rules"],
        "table": ["--inventory-table", "{anon_table}", "--inventory-date", "{anon_dt}", "--rules", "{rules}",
                  "--results", "{out}/a3", "--run-id", "fresh-table", "--dry-run", "--hmac-key-param", "{param}"],
    },
}
PARSERS = {"json_to_parquet": j2p_job.build_parser, "copy_in_place": copy_job.build_parser,
           "anonymize": anon_job.build_parser}


@pytest.mark.parametrize("job", sorted(INVOCATIONS))
def test_every_option_is_started_fresh(job):
    used = {arg for argv in INVOCATIONS[job].values() for arg in argv if arg.startswith("--")}
    missing = [action.option_strings for action in PARSERS[job]()._actions
               if action.option_strings and action.dest != "help" and not set(action.option_strings) & used]
    assert missing == []


def submit(job: str, name: str, values: dict) -> subprocess.CompletedProcess:
    argv = [a.format(**values) for a in INVOCATIONS[job][name]]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "S3LAKE_HMAC_KEY": ""}
    return subprocess.run([str(SPARK_SUBMIT), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
                           str(ROOT / "jobs" / f"{job}.py"), *argv],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The job's one error line (spark-submit runs a Python driver with its stderr joined to stdout)."""
    both = proc.stdout + proc.stderr
    lines = [line for line in both.splitlines() if line.startswith("s3lake: error:")]
    assert len(lines) == 1 and "Traceback" not in both, both[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def bed(moto_server, spark, tmp_path_factory):
    """Buckets, an inventory (table and manifest), an SSM key, a Glue table to take a schema from."""
    unique = os.urandom(4).hex()
    tmp = tmp_path_factory.mktemp("fresh")
    db = make_glue_database(f"fresh_{unique}")
    s3 = aws.s3()

    zeek_dir = tmp / "zeek"
    zeek_dir.mkdir()
    (zeek_dir / "conn.json").write_bytes((DATA / "zeek" / "conn.jsonl").read_bytes())
    zeek_schema = tmp / "zeek-schema.json"
    zeek_schema.write_text(json.dumps({"type": "struct", "fields": [
        {"name": n, "type": t, "nullable": True, "metadata": {}} for n, t in [
            ("ts", "double"), ("uid", "string"), ("id.orig_h", "string"), ("id.orig_p", "long"),
            ("id.resp_h", "string"), ("id.resp_p", "long"), ("proto", "string"), ("orig_bytes", "long")]]}))
    aws.glue().create_table(DatabaseName=db, TableInput={
        "Name": "nginx_schema", "StorageDescriptor": {"Columns": [
            {"Name": "time", "Type": "string"}, {"Name": "remote_ip", "Type": "string"},
            {"Name": "response", "Type": "bigint"}, {"Name": "bytes", "Type": "bigint"}]}})

    copy_bucket = make_bucket(f"fresh-copy-{unique}", versioned=True)
    replicate_everything(copy_bucket)
    for name in ("a.json", "b.json"):
        s3.put_object(Bucket=copy_bucket, Key=f"k/{name}", Body=b'{"n": 1}\n')
    inv = make_bucket(f"fresh-inv-{unique}")
    rows = [inventory_row(s3, copy_bucket, f"k/{n}") for n in ("a.json", "b.json")]
    delivery = write_inventory(inv, copy_bucket, rows, table=f"{db}.inventory")
    report_dir = tmp / "report"
    stamp = datetime.now(timezone.utc)
    spark.createDataFrame([("r1", copy_bucket, "k/a.json", rows[0]["version_id"], 9, "STANDARD", report.FAILED,
                            "FAILED", rows[0]["version_id"], "live", stamp, None, None)], report.SCHEMA) \
        .write.partitionBy("run_id").parquet(str(report_dir))

    anon_bucket = make_bucket(f"fresh-anon-{unique}", versioned=True)
    s3.put_object(Bucket=anon_bucket, Key="in/conn.json", Body=(DATA / "zeek" / "conn.jsonl").read_bytes())
    anon_rows = [inventory_row(s3, anon_bucket, "in/conn.json")]
    anon_delivery = write_inventory(inv, anon_bucket, anon_rows, table=f"{db}.anon_inventory", config_id="anon")
    rules = tmp / "rules.json"
    rules.write_text(json.dumps([{"path": "id.orig_h", "action": "hmac"}, {"path": "`id.resp_h`", "action": "null"}]))
    param = f"/fresh/{unique}/hmac"
    aws.client("ssm").put_parameter(Name=param, Value="fresh-secret", Type="SecureString")
    batch_bucket = make_bucket(f"fresh-batch-{unique}")
    batch_role = iam.create_role(f"fresh-batch-{unique}", iam.fill_placeholders(
        iam.load_policy("batch-replication-job-role"), {
            "DATA_BUCKET": copy_bucket, "DATA_PREFIX": "", "MANIFEST_BUCKET": batch_bucket, "MANIFEST_PREFIX": "batch",
            "RESULTS_BUCKET": batch_bucket, "RESULTS_PREFIX": "batch"}))
    return {"unique": unique, "out": str(tmp / "out"), "db": db, "zeek_dir": str(zeek_dir),
            "batch_bucket": batch_bucket, "batch_role": batch_role,
            "zeek_schema": str(zeek_schema), "nginx": str(DATA / "nginx" / "access.jsonl"),
            "inv_table": delivery.table, "inv_dt": delivery.dt, "manifest": delivery.manifest_url,
            "report": str(report_dir), "copy_bucket": copy_bucket, "anon_bucket": anon_bucket,
            "anon_manifest": anon_delivery.manifest_url, "anon_table": anon_delivery.table,
            "anon_dt": anon_delivery.dt, "rules": str(rules), "param": param}


@pytest.mark.slow
def test_json_to_parquet_options_fresh(bed, glue):
    zeek = submit("json_to_parquet", "zeek", bed)
    assert zeek.returncode == 0, zeek.stderr[-3000:]
    summary = json.loads(zeek.stdout.strip().splitlines()[-1])["json_to_parquet"]
    assert (summary["input_records"], summary["written_records"], summary["bad_records"]) == (50, 50, 0)
    columns = glue.get_table(DatabaseName=bed["db"], Name="zeek")["Table"]["StorageDescriptor"]["Columns"]
    assert [c["Name"] for c in columns][:4] == ["ts", "uid", "id.orig_h", "id.orig_p"]
    assert all(len(list(p.glob("*.parquet"))) >= 1 for p in Path(bed["out"], "zeek").glob("year=*/month=*/day=*/*"))

    # --schema-table under spark-submit: the schema comes from Glue before Spark starts.
    nginx = submit("json_to_parquet", "schema_table", bed)
    assert nginx.returncode == 0, nginx.stderr[-3000:]
    summary = json.loads(nginx.stdout.strip().splitlines()[-1])["json_to_parquet"]
    assert (summary["written_records"], summary["bad_records"]) == (18, 0)

    # Glue gone after the write: one line saying what is written and how to finish, exit 1.
    gone = submit("json_to_parquet", "glue_gone", bed)
    assert gone.returncode == 1, gone.stderr[-3000:]
    line = one_error_line(gone)
    days = {datetime.strptime(json.loads(x)["time"], "%d/%b/%Y:%H:%M:%S %z").astimezone(timezone.utc).date()
            for x in Path(bed["nginx"]).read_text().splitlines()}
    assert f"wrote 18 records in {len(days)} partitions to {bed['out']}/gone" in line
    assert f"no_such_database_{bed['unique']}.t failed (EntityNotFoundException" in line
    assert "rerun this command" in line
    assert list(Path(bed["out"], "gone").glob("dt=*/*.parquet"))


@pytest.mark.slow
def test_copy_in_place_options_fresh(bed, glue, spark):
    dry = submit("copy_in_place", "dry_run", bed)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "WOULD_COPY" in dry.stdout

    copy = submit("copy_in_place", "copy", bed)
    assert copy.returncode == 0, copy.stderr[-3000:]
    rows = results.read_run(spark, f"{bed['out']}/c2", "fresh-copy").collect()
    assert sorted((r["key"], r["status"]) for r in rows) == [("k/a.json", "COPIED"), ("k/b.json", "COPIED")]
    assert glue.get_partitions(DatabaseName=bed["db"], TableName="copies")["Partitions"][0]["Values"] == [
        "fresh-copy"]

    retry = submit("copy_in_place", "from_report", bed)
    assert retry.returncode == 0, retry.stderr[-3000:]
    rows = results.read_run(spark, f"{bed['out']}/c3", "fresh-retry").collect()
    assert [(r["key"], r["status"]) for r in rows] == [("k/a.json", "SKIPPED_CHANGED")]  # copied since

    priced = submit("copy_in_place", "estimate", bed)
    assert priced.returncode == 0, priced.stderr[-3000:]
    assert "cheaper: " in priced.stdout and not Path(bed["out"], "c4").exists()

    # --no-wait returns with the job created; the same command again, once the job is over, collects it
    submitted = submit("copy_in_place", "batch", bed)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    assert "S3ReplicateObject" in submitted.stdout + submitted.stderr
    state = json.loads(Path(bed["out"], "c5", "run_id=fresh-batch", "_s3lake_batch.json").read_text())
    (entry,) = state["buckets"].values()
    control = aws.s3control()
    for _ in range(100):
        if control.describe_job(AccountId=state["account"], JobId=entry["job_id"])["Job"]["Status"] == "Complete":
            break
        time.sleep(0.2)
    collected = submit("copy_in_place", "batch", bed)
    assert collected.returncode == 0, collected.stderr[-3000:]
    rows = results.read_run(spark, f"{bed['out']}/c5", "fresh-batch").collect()
    assert sorted((r["key"], r["status"]) for r in rows) == [("k/a.json", "REPLICATED"), ("k/b.json", "REPLICATED")]


@pytest.mark.slow
def test_anonymize_options_fresh(bed, glue, spark, s3):
    run = submit("anonymize", "source", bed)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = results.read_run(spark, f"{bed['out']}/a1", "fresh-anon").collect()
    assert [(r["key"], r["status"], json.loads(r["fields_changed"])) for r in rows] == [
        ("in/conn.json", "ANONYMIZED", {"id.orig_h": 50, "`id.resp_h`": 50})]
    tags = s3.get_object_tagging(Bucket=bed["anon_bucket"], Key="in/conn.json")["TagSet"]
    assert tags == [{"Key": "DONE", "Value": "yes"}]
    versions = s3.list_object_versions(Bucket=bed["anon_bucket"], Prefix="in/")["Versions"]
    assert len(versions) == 1  # --purge-noncurrent deleted the version read
    assert glue.get_partitions(DatabaseName=bed["db"], TableName="anon")["Partitions"][0]["Values"] == ["fresh-anon"]

    for name in ("inventory", "table"):  # from the inventory: written seconds ago, under the default --min-age
        dry = submit("anonymize", name, bed)
        assert dry.returncode == 0, (name, dry.stderr[-3000:])
        assert "SKIPPED_TOO_YOUNG      1" in dry.stdout, dry.stdout[-2000:]
