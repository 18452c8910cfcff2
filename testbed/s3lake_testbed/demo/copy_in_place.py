"""Demo of the copy-in-place job: a seeded versioned bucket and its inventory; both routes priced
(``--estimate``), the copy run, then the Batch Replication route on a second bucket (no new version)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from s3lake.objects import results
from s3lake.replication.copy_in_place import MARKER

from s3lake_testbed import iam
from s3lake_testbed.replication import replicate_everything
from s3lake_testbed.scenarios import seed_rich_bucket
from s3lake_testbed.seed import make_bucket, object_state

ROOT = Path(__file__).resolve().parents[3]
KEPT = ("content_type", "cache_control", "content_disposition", "content_encoding", "content_language", "expires",
        "website_redirect_location", "storage_class", "sse", "kms_key", "bucket_key", "tags", "size", "sha256",
        "owner", "grants")


def attribute_check(before: dict, after: dict, run_id: str) -> list[str]:
    """Differences that a copy in place must not make (the marker and one new version are expected)."""
    problems = [name for name in KEPT if before.get(name) != after.get(name)]
    if {**before["metadata"], MARKER: run_id} != after["metadata"] and before["metadata"] != after["metadata"]:
        problems.append("metadata")
    return problems


def _submit(spark_submit: str, args: list[str]) -> subprocess.CompletedProcess:
    job = str(ROOT / "jobs" / "copy_in_place.py")
    cmd = [spark_submit, "--master", "local[2]", "--conf", "spark.ui.enabled=false",
           "--conf", "spark.ui.showConsoleProgress=false", "--driver-java-options", "-Dlog4j.rootLogger=WARN",
           job, *args]
    print("$ " + " ".join(cmd[:1] + ["..."] + cmd[cmd.index(job):]), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout, end="")
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
    return proc


def run_batch(workdir: str, spark_submit: str, inv: str) -> int:
    """The same kind of bucket through ``--method batch-replication``: one job, no version written."""
    scenario = seed_rich_bucket("demo-batch", inventory_bucket=inv, table="s3lake_demo.demo_batch_inventory")
    replicate_everything(scenario.bucket)
    location = make_bucket("demo-batch-jobs")
    role = iam.create_role("s3lake-demo-batch-replication", iam.fill_placeholders(
        iam.load_policy("batch-replication-job-role"), {
            "DATA_BUCKET": scenario.bucket, "DATA_PREFIX": "", "MANIFEST_BUCKET": location, "MANIFEST_PREFIX": "batch",
            "RESULTS_BUCKET": location, "RESULTS_PREFIX": "batch"}))
    before = {key: object_state(scenario.bucket, key, with_acl=False) for key in scenario.keys.values()}
    results_path = os.path.join(workdir, "batch-replication-results")
    proc = _submit(spark_submit, ["--inventory-table", scenario.delivery.table, "--results", results_path,
                                  "--run-id", "demo-batch", "--method", "batch-replication", "--batch-role-arn", role,
                                  "--batch-location", f"s3://{location}/batch", "--progress-interval", "1"])
    print(proc.stderr[proc.stderr.find("s3lake: manifest"):].strip() if "s3lake: manifest" in proc.stderr else "")
    if proc.returncode != 0:
        return proc.returncode
    changed = [key for key, old in before.items()
               if object_state(scenario.bucket, key, with_acl=False) != old]
    print(f"no new version, every attribute as it was: {'yes' if not changed else 'NO: ' + ', '.join(changed)}")
    return 1 if changed else 0


def run(workdir: str, spark_submit: str | None = None) -> int:
    """Seed, run ``jobs/copy_in_place.py`` through spark-submit, print the summary and the attribute check."""
    spark_submit = spark_submit or str(Path(sys.executable).parent / "spark-submit")
    inv = make_bucket("demo-inventory")
    scenario = seed_rich_bucket("demo-data", inventory_bucket=inv, table="s3lake_demo.demo_data_inventory")
    replicate_everything(scenario.bucket)  # the job copies only what a replication rule takes
    before = {key: object_state(scenario.bucket, key) for key in scenario.keys.values()}
    print(f"seeded s3://{scenario.bucket}: {len(before)} objects (SSE-KMS, SSE-S3, ACL grants, tags, metadata, "
          f"system headers, storage classes, awkward keys, one archived); inventory table "
          f"{scenario.delivery.table} dt={scenario.delivery.dt}", flush=True)
    results_path = os.path.join(workdir, "copy-in-place-results")
    run_id = "demo"
    priced = _submit(spark_submit, ["--inventory-table", scenario.delivery.table, "--results", results_path,
                                    "--estimate"])
    if priced.returncode != 0:
        return priced.returncode
    proc = _submit(spark_submit, ["--inventory-table", scenario.delivery.table, "--results", results_path,
                                  "--run-id", run_id])
    if proc.returncode != 0:
        return proc.returncode
    import pyarrow.parquet as pq

    statuses = {r["key"]: r["status"] for r in pq.read_table(results_path, filters=[("run_id", "=", run_id)])
                .select(["key", "status"]).to_pylist()}
    print("\nbefore/after attribute check (HEAD fields, ACL owner+grants, tags, bytes, versions):")
    failures = 0
    for key, old in before.items():
        new = object_state(scenario.bucket, key)
        problems = attribute_check(old, new, run_id)
        added = new["versions"] - old["versions"]
        expected_versions = 1 if statuses.get(key) == "COPIED" else 0
        if added != expected_versions:
            problems.append(f"versions +{added}")
        failures += bool(problems)
        verdict = "all attributes kept" if not problems else "CHANGED: " + ", ".join(problems)
        print(f"  {statuses.get(key, '?'):<18} +{added} version  {verdict:<22} {key}")
    print(f"results: {results_path}/run_id={run_id} ({len(statuses)} rows, schema {len(results.FIELDS)} columns)")
    print("\nthe Batch Replication route, on a second bucket:")
    return 1 if failures else run_batch(workdir, spark_submit, inv)
