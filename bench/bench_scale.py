"""Scale: what a copy-in-place run costs per object in client CPU and memory, and what its checkpoints cost.

The job (``bench/scale_job.py``) runs under ``spark-submit --master local[2]`` against a canned-answer S3
endpoint (``bench/canned_s3.py``: answers from memory, its own CPU measured apart), over generated
inventories of 10^5 rows (10^4 candidates) and 10^6 rows (10^5 candidates). A sampler reads the run's
processes in /proc: CPU seconds of the Python workers and of the JVM, peak RSS of each task's Python worker
and of the driver. The same job under the previous release (a git worktree of ``PREVIOUS``: results
written once at the end, no checkpoints) is the baseline, measured in the same run.

``S3LAKE_BENCH_SCALE=0.1`` scales the row counts down for a quick look.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from s3lake_testbed.process import process_tree

from bench.common import ROOT, WORKDIR, cpu_seconds

PREVIOUS = "5b8bcf0"  # the release before checkpoints (stop 27)
OBJECTS_PER_SECOND_TARGET = 3500  # S3's write limit per partitioned prefix
SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def kind(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
    if "java" in cmd.split(" ", 1)[0]:
        return "jvm"
    if "pyspark.daemon" in cmd or "pyspark/worker" in cmd:
        return "worker"
    if "scale_job.py" in cmd:
        return "driver"
    return "other"


class Sampler:
    """Max CPU seconds and peak RSS per process of a run, sampled every 0.2 s."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for pid in process_tree(self.root):
                try:
                    entry = self.seen.setdefault(pid, {"kind": kind(pid), "cpu": 0.0, "rss": 0.0})
                    entry["cpu"] = max(entry["cpu"], cpu_seconds(pid))
                    entry["rss"] = max(entry["rss"], peak_rss_mb(pid))
                except (OSError, ValueError, IndexError):
                    continue

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def total(self, which: str, what: str = "cpu") -> float:
        values = [e[what] for e in self.seen.values() if e["kind"] == which]
        return (sum(values) if what == "cpu" else max(values, default=0.0))


def worktree(rev: str) -> Path | None:
    path = WORKDIR / f"tree-{rev}"
    if (path / "lib").is_dir():
        return path
    made = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
                          capture_output=True, text=True)
    return path if made.returncode == 0 else None


def run(tree: Path, rows: int, candidates: int, endpoint: str, server_pid: int, label: str) -> dict:
    results = WORKDIR / "scale" / f"{label}-{rows}"
    subprocess.run(["rm", "-rf", str(results)], check=True)
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "PYTHONPATH": f"{tree / 'lib'}:{ROOT}",
           "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    cmd = [str(SPARK_SUBMIT), "--master", "local[2]", "--driver-memory", "2g", "--conf", "spark.ui.enabled=false",
           "--conf", "spark.ui.showConsoleProgress=false", str(ROOT / "bench" / "scale_job.py"),
           str(rows), str(candidates), str(results), "4"]
    server0 = cpu_seconds(server_pid)
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    with Sampler(proc.pid) as sampler:
        output, _ = proc.communicate()
    wall = time.monotonic() - started
    line = next((x for x in output.splitlines() if x.startswith("SCALE ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"scale run {label} {rows} failed:\n{output[-3000:]}")
    out = json.loads(line[len("SCALE "):])
    out.update(label=label, wall=round(wall, 1), server_cpu=round(cpu_seconds(server_pid) - server0, 1))
    for name in ("worker", "jvm", "driver"):
        out[f"{name}_cpu"] = round(sampler.total(name), 1)
        out[f"{name}_peak_mb"] = round(sampler.total(name, "rss"), 1)
    return out


def show(r: dict) -> str:
    n = r["objects"]
    cp = r.get("checkpoints") or {}
    return (f"  {r['label']:<9} {r['rows']:>9,} rows {n:>8,} candidates  {r['seconds']:>6.1f} s  "
            f"workers {1000 * r['worker_cpu'] / n:5.2f} ms/object  JVM {1000 * r['jvm_cpu'] / n:5.2f} ms/object  "
            f"(endpoint {1000 * r['server_cpu'] / n:4.2f})  task peak RSS {r['worker_peak_mb']:.0f} MB  "
            f"driver: python {r['driver_peak_mb']:.0f} MB, JVM RSS {r['jvm_peak_mb']:.0f} MB, heap peak "
            f"{r['heap_peak_mb']:.0f} MB, after GC {r['heap_after_gc_mb']:.0f} MB  "
            f"checkpoint requests {cp.get('requests', 0):,} ({100 * cp.get('requests', 0) / max(1, r['requests']):.3f}%"
            f" of {r['requests']:,}), files {cp.get('files', 0)}")


def main() -> int:
    scale = float(os.environ.get("S3LAKE_BENCH_SCALE", "1"))
    WORKDIR.mkdir(exist_ok=True)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bench.canned_s3", "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    server.stdout.readline()
    endpoint = f"http://127.0.0.1:{port}"
    sizes = [(int(10**5 * scale), int(10**4 * scale)), (int(10**6 * scale), int(10**5 * scale))]
    runs = []
    try:
        for rows, candidates in sizes:
            runs.append(run(ROOT, rows, candidates, endpoint, server.pid, "this"))
            print(show(runs[-1]), flush=True)
        previous = worktree(PREVIOUS)
        if previous is None:
            print(f"  (no baseline: cannot make a worktree of {PREVIOUS})")
        else:
            rows, candidates = sizes[-1]
            runs.append(run(previous, rows, candidates, endpoint, server.pid, "previous"))
            print(show(runs[-1]), flush=True)
    finally:
        server.terminate()
    small, big = runs[0], runs[1]
    per_object = (big["worker_cpu"] + big["jvm_cpu"]) / big["objects"]
    print(f"\n  driver from {small['rows']:,} to {big['rows']:,} rows: python peak {small['driver_peak_mb']:.0f} -> "
          f"{big['driver_peak_mb']:.0f} MB, JVM heap after GC {small['heap_after_gc_mb']:.0f} -> "
          f"{big['heap_after_gc_mb']:.0f} MB, JVM RSS {small['jvm_peak_mb']:.0f} -> {big['jvm_peak_mb']:.0f} MB")
    print(f"  client CPU {1000 * per_object:.2f} ms/object (workers + JVM): {OBJECTS_PER_SECOND_TARGET:,} objects/s "
          f"needs {OBJECTS_PER_SECOND_TARGET * per_object:.1f} cores")
    if len(runs) > 2:
        base = runs[2]
        print(f"  against the previous release ({PREVIOUS}), same inventory: "
              f"time x{big['seconds'] / base['seconds']:.3f}, "
              f"worker CPU x{big['worker_cpu'] / base['worker_cpu']:.3f}, "
              f"JVM CPU x{big['jvm_cpu'] / base['jvm_cpu']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
