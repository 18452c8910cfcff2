"""``copy_in_place.py --method batch-replication --no-wait`` over generated all-versions inventories of
10^5 and 10^6 rows: plan, one manifest, CreateJob. Time against ``--estimate`` on the same inventory (the
same inventory read: the baseline of this run), and the driver's peak memory as the manifest grows (it is
streamed from the tasks' rows, never held whole).

The inventory names a version for every row, so the plan makes no object request; the test bed's job then
works in the moto server's background (its objects do not exist: SrcObjectNotFound), unmeasured.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
from s3lake import aws
from s3lake_testbed import MotoServer, iam
from s3lake_testbed.process import process_tree
from s3lake_testbed.seed import make_bucket

from bench.bench_estimate import generated_table, source_bucket
from bench.bench_scale import peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"
SIZES = (100_000, 1_000_000)


def _versioned(source: str, start: int, stop: int) -> pa.Table:
    table = generated_table(source, start, stop)
    ids = pa.array([f"v{i:012d}" for i in range(start, stop)])
    return table.set_column(table.schema.get_field_index("version_id"), "version_id", ids)


def _inventory(inv: str, source: str, rows: int) -> str:
    import bench.bench_estimate as est

    original = est.generated_table
    est.generated_table = _versioned  # the same generator, with a version id on every row
    try:
        return est.write_generated_inventory(inv, source, rows)
    finally:
        est.generated_table = original


def _submit(args: list[str]) -> tuple[float, float, str]:
    """(seconds, the driver Python's peak RSS in MB, output) of one spark-submit."""
    cmd = [str(SPARK_SUBMIT), "--master", "local[2]", "--driver-memory", "2g", "--conf", "spark.ui.enabled=false",
           "--conf", "spark.ui.showConsoleProgress=false", str(ROOT / "jobs" / "copy_in_place.py"), *args]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, cwd=ROOT)
    peak = {"mb": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            for pid in process_tree(proc.pid):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        cmd_line = fh.read().split(b"\0")
                    if b"java" not in cmd_line[0] and any(b"copy_in_place.py" in c for c in cmd_line):
                        peak["mb"] = max(peak["mb"], peak_rss_mb(pid))
                except OSError:
                    continue

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    output, _ = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise RuntimeError(f"copy_in_place {' '.join(args[-6:])} failed:\n{output[-3000:]}")
    return time.monotonic() - started, peak["mb"], output


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    server = MotoServer(log_path=str(work / "moto.log"))
    with server:
        os.environ.update(server.environ())
        rows_out = []
        for rows in SIZES:
            source = source_bucket(f"bench-batch-{rows}")
            inv = make_bucket(f"bench-batch-inv-{rows}")
            location = make_bucket(f"bench-batch-loc-{rows}")
            role = iam.create_role(f"bench-batch-{rows}", iam.fill_placeholders(
                iam.load_policy("batch-replication-job-role"), {
                    "DATA_BUCKET": source, "DATA_PREFIX": "", "MANIFEST_BUCKET": location, "MANIFEST_PREFIX": "batch",
                    "RESULTS_BUCKET": location, "RESULTS_PREFIX": "batch"}))
            manifest = _inventory(inv, source, rows)
            base = ["--inventory-manifest", manifest, "--results", str(work / f"r{rows}")]
            estimate_s, estimate_mb, _ = _submit([*base, "--estimate"])
            batch_s, batch_mb, output = _submit([*base, "--run-id", "bench", "--method", "batch-replication",
                                                 "--batch-role-arn", role, "--batch-location",
                                                 f"s3://{location}/batch", "--no-wait"])
            head = aws.s3().head_object(Bucket=location, Key=f"batch/bench/{source}/manifest.csv")
            lines = next((int(x.split(": ")[-1].split()[0].replace(",", "")) for x in output.splitlines()
                          if "s3lake: manifest" in x), -1)
            rows_out.append((rows, lines, head["ContentLength"], head["ETag"].count("-"), estimate_s, batch_s,
                             estimate_mb, batch_mb))
    print("batch-replication --no-wait (plan, manifest, CreateJob) against --estimate on the same inventory:")
    print(f"  {'rows':>9} {'manifest lines':>15} {'MiB':>6} {'parts':>5} {'estimate s':>11} {'batch s':>8} "
          f"{'ratio':>6} {'driver MB est/batch':>20}")
    for rows, lines, size, multipart, est_s, batch_s, est_mb, batch_mb in rows_out:
        parts = "multi" if multipart else "1"
        print(f"  {rows:>9,} {lines:>15,} {size / 2 ** 20:>6.1f} {parts:>5} {est_s:>11.1f} {batch_s:>8.1f} "
              f"{batch_s / est_s:>6.2f} {est_mb:>9.0f} / {batch_mb:<9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
