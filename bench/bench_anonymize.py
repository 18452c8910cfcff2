"""anonymize vs a naive baseline behind a 20 ms latency proxy: 2,000 small objects and one 200 MB object.

The baseline (per object, sequentially inside each of 2 Spark partitions): GET the whole body,
json.loads/json.dumps every line setting ``file_contents`` to "", PUT with ``Tagging=PROCESSED=True``.
The job runs through :func:`s3lake.anonymize.job.run` (results written, as in production) with the shipped
``conf/anonymize/file-contents.json``. Each side gets its own copy of the data (``base/`` and ``job/``).

Targets: >= 5x the baseline's objects/s on the small objects, >= the baseline's MB/s on the large one,
and the large-object task's peak RSS under 256 MB above its idle size (``VmHWM - VmRSS`` at task start,
per task, via ``S3LAKE_TASK_STATS_DIR``). ``BENCH_ANON_SMALL`` / ``BENCH_ANON_LARGE_MB`` change the sizes.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import endpoint_ceiling

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".bench" / "anonymize"
LATENCY = 0.02
BUCKET = "bench-anonymize"
TARGET_SMALL_RATIO = 5.0
MEMORY_LIMIT_MB = 256


def _small_body(rng: random.Random, i: int) -> bytes:
    lines = []
    for j in range(rng.randint(2, 6)):
        lines.append(json.dumps({
            "id": f"{i}-{j}", "user": {"email": f"user{rng.randrange(10**6)}@example.com"},
            "file_contents": base64.b64encode(rng.getrandbits(8 * 150).to_bytes(150, "big")).decode(),
            "size": rng.randrange(10**6),
        }))
    return ("\n".join(lines) + "\n").encode()


def _large_file(path: Path, megabytes: int) -> Path:
    """~``megabytes`` MB of 1.1 KB lines: 300 characters of file_contents, 700 of payload."""
    if path.exists() and path.stat().st_size >= megabytes * 1_000_000:
        return path
    rng = random.Random(11)
    tmp = path.with_suffix(".tmp")
    written = 0
    with open(tmp, "wb") as fh:
        i = 0
        while written < megabytes * 1_000_000:
            block = []
            for _ in range(1000):
                i += 1
                block.append(json.dumps({
                    "id": i, "user": {"email": f"u{i}@example.com", "ip": f"10.0.{i % 256}.{i % 199}"},
                    "file_contents": base64.b64encode(rng.getrandbits(8 * 225).to_bytes(225, "big")).decode(),
                    "payload": base64.b64encode(rng.getrandbits(8 * 525).to_bytes(525, "big")).decode(),
                }).encode() + b"\n")
            data = b"".join(block)
            fh.write(data)
            written += len(data)
    os.replace(tmp, path)
    return path


def _seed(small: int, large: Path) -> None:
    from s3lake import aws
    from s3lake_testbed.seed import make_bucket

    s3 = aws.s3()
    make_bucket(BUCKET, ownership="BucketOwnerEnforced")
    rng = random.Random(5)
    bodies = [_small_body(rng, i) for i in range(small)]

    def put(item):
        side, i = item
        s3.put_object(Bucket=BUCKET, Key=f"{side}/small/{i:05d}.json", Body=bodies[i],
                      ContentType="application/x-ndjson")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, [(side, i) for side in ("base", "job") for i in range(small)]))
    for side in ("base", "job"):
        s3.upload_file(str(large), BUCKET, f"{side}/large/big.json",
                       ExtraArgs={"ContentType": "application/x-ndjson"})


def _session():
    from s3lake_testbed.spark import local_session

    return local_session("bench-anonymize", master=os.environ.get("BENCH_SPARK_MASTER", "local[2]"))


def _baseline(spark, prefix: str) -> float:
    """The naive job from the issue; returns seconds."""
    from s3lake import aws

    keys = [o["Key"] for page in aws.s3().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for o in page.get("Contents", [])]

    def naive(part):
        import json as _json

        from s3lake import aws as _aws
        from s3lake.anonymize import task_stats

        stats = task_stats.TaskStats(os.environ["S3LAKE_TASK_STATS_DIR"])
        s3 = _aws.s3()
        for key in part:
            body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            out = []
            for line in body.decode("utf-8").splitlines():
                record = _json.loads(line)
                record["file_contents"] = ""
                out.append(_json.dumps(record))
            data = ("\n".join(out) + "\n").encode("utf-8")
            s3.put_object(Bucket=BUCKET, Key=key, Body=data, Tagging="PROCESSED=True")
            stats.objects += 1
            stats.max_size = max(stats.max_size, len(body))
            yield key
        stats.write()

    t0 = time.perf_counter()
    done = spark.sparkContext.parallelize(keys, 2).mapPartitions(naive).count()
    assert done == len(keys)
    return time.perf_counter() - t0


def _job(spark, prefix: str, run_id: str) -> tuple[float, dict]:
    from s3lake.anonymize import job, rules, sources

    ruleset = rules.load(str(ROOT / "conf/anonymize/file-contents.json"))
    settings = job.Settings(run_id=run_id, rules=ruleset, min_age=0, concurrency=32)
    t0 = time.perf_counter()
    candidates, counts = sources.source_candidates(spark, f"s3://{BUCKET}/{prefix}")
    summary, _ = job.run(spark, candidates, settings, str(WORK / "results"), bucket_counts=counts)
    return time.perf_counter() - t0, summary


def _task_peak_mb(stats_dir: Path) -> float:
    """Peak RSS above the task's start of the task that handled the largest object."""
    tasks = [json.loads(p.read_text()) for p in stats_dir.glob("task-*.json")]
    for p in stats_dir.glob("task-*.json"):
        p.unlink()
    big = max(tasks, key=lambda t: t["max_size"])
    return (big["hwm_kb"] - big["rss_start_kb"]) / 1024


def main() -> int:
    from s3lake_testbed import MotoServer
    from s3lake_testbed.proxy import ProxyProcess

    small = int(os.environ.get("BENCH_ANON_SMALL", "2000"))
    large_mb = int(os.environ.get("BENCH_ANON_LARGE_MB", "200"))
    WORK.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(WORK / "results", ignore_errors=True)
    stats_dir = WORK / "task-stats"
    shutil.rmtree(stats_dir, ignore_errors=True)
    stats_dir.mkdir()
    large = _large_file(WORK / f"large-{large_mb}mb.json", large_mb)
    size_mb = large.stat().st_size / 1e6
    status = 0
    moto = MotoServer(log_path=str(WORK / "moto.log"))
    with moto as upstream:
        os.environ.update({k: v for k, v in MotoServer().environ().items() if k != "AWS_ENDPOINT_URL"})
        os.environ["AWS_ENDPOINT_URL"] = upstream
        t0 = time.perf_counter()
        _seed(small, large)
        print(f"seeded {small} small objects and {size_mb:.0f} MB twice in {time.perf_counter() - t0:.1f}s",
              flush=True)
        proxy = ProxyProcess(upstream, latency=LATENCY, log_path=str(WORK / "proxy.log"))
        proxy.moto = moto
        with proxy as proxy_url:
            os.environ["AWS_ENDPOINT_URL"] = proxy_url
            os.environ["S3LAKE_TASK_STATS_DIR"] = str(stats_dir)
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            spark = _session()
            # Warm the JVM and the Python workers (objects under warm/ are tiny).
            from s3lake import aws

            for i in range(4):
                aws.s3().put_object(Bucket=BUCKET, Key=f"warm/{i}.json", Body=b'{"file_contents": "x"}\n')
            _job(spark, "warm/", "warm")
            spark.sparkContext.parallelize(range(2), 2).count()

            base_small = _baseline(spark, "base/small/")
            job_small, summary = _job(spark, "job/small/", "small")
            _task_peak_mb(stats_dir)
            base_large = _baseline(spark, "base/large/")
            base_mem = _task_peak_mb(stats_dir)
            job_large, large_summary = _job(spark, "job/large/", "large")
            job_mem = _task_peak_mb(stats_dir)
            spark.stop()
            ceiling, moto_cores = endpoint_ceiling(proxy, BUCKET, "warm/0.json")
    ok_small = summary["statuses"] == {"ANONYMIZED": small}
    ok_large = large_summary["statuses"] == {"ANONYMIZED": 1}
    if not (ok_small and ok_large):
        print(f"unexpected statuses: {summary['statuses']} {large_summary['statuses']}", file=sys.stderr)
        status = 1
    small_ratio = base_small / job_small
    print(f"{small} small objects + one {size_mb:.0f} MB object, {LATENCY * 1000:.0f} ms proxy latency, "
          f"{os.cpu_count()} cores")
    print(f"  small baseline   {small / base_small:8.1f} objects/s  ({base_small:.1f} s)")
    print(f"  small anonymize  {small / job_small:8.1f} objects/s  ({job_small:.1f} s, "
          f"{summary['requests_per_object']} S3 requests/object)")
    print(f"  ratio            {small_ratio:8.2f}x (target >= {TARGET_SMALL_RATIO:.0f}x)")
    print(f"  the emulated S3's ceiling, same run: {ceiling:.0f} HeadObject/s (moto at {moto_cores:.2f} cores); "
          f"{TARGET_SMALL_RATIO:.0f}x the baseline at 2 requests/object needs "
          f"{2 * TARGET_SMALL_RATIO * small / base_small:.0f} GET/PUT requests/s, s3lake drove "
          f"{summary['requests_per_object'] * small / job_small:.0f}")
    print(f"  large baseline   {size_mb / base_large:8.1f} MB/s  ({base_large:.1f} s, task peak +{base_mem:.0f} MB)")
    print(f"  large anonymize  {size_mb / job_large:8.1f} MB/s  ({job_large:.1f} s, task peak +{job_mem:.0f} MB, "
          f"target < {MEMORY_LIMIT_MB} MB)")
    print(f"  ratio            {base_large / job_large:8.2f}x (target >= 1x)")
    if small_ratio < TARGET_SMALL_RATIO or base_large < job_large or job_mem >= MEMORY_LIMIT_MB:
        print("bench anonymize: a target was missed", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
