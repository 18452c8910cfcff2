"""Shared bench plumbing: moto + latency proxy in their own processes, a warm local Spark session."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import boto3
from s3lake_testbed import MotoServer
from s3lake_testbed.proxy import ProxyProcess
from s3lake_testbed.spark import local_session

ROOT = Path(__file__).resolve().parents[1]
WORKDIR = ROOT / ".bench"


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process (Linux /proc), to show where a CPU-bound run spends it."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class EndpointCpu:
    """CPU used by the local endpoint (moto + proxy processes) between start() and stop()."""

    def __init__(self, *procs) -> None:
        self.pids = [p._proc.pid for p in procs]
        self.seconds = 0.0

    def __enter__(self) -> EndpointCpu:
        self._t0 = sum(cpu_seconds(pid) for pid in self.pids)
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = sum(cpu_seconds(pid) for pid in self.pids) - self._t0


@contextmanager
def aws_behind_proxy(latency: float) -> Iterator[tuple[str, ProxyProcess]]:
    """moto, and a proxy adding ``latency`` s per request; AWS_ENDPOINT_URL points at the proxy."""
    WORKDIR.mkdir(exist_ok=True)
    moto = MotoServer(log_path=str(WORKDIR / "moto.log"))
    with moto as upstream:
        os.environ.update(moto.environ())
        proxy = ProxyProcess(upstream, latency=latency, log_path=str(WORKDIR / "proxy.log"))
        with proxy:
            os.environ["AWS_ENDPOINT_URL"] = proxy.url
            proxy.moto = moto  # so benchmarks can read the endpoint's CPU use
            yield upstream, proxy


def direct_client(upstream: str):
    """A client that bypasses the proxy (for seeding: no latency, not counted)."""
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=upstream, config=Config(max_pool_connections=32))


def _head_loop(url: str, bucket: str, key: str, seconds: float, threads: int, queue) -> None:
    import threading

    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=url, config=Config(max_pool_connections=threads))
    stop = time.monotonic() + seconds
    counts = [0] * threads

    def loop(i: int) -> None:
        while time.monotonic() < stop:
            s3.head_object(Bucket=bucket, Key=key)
            counts[i] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    queue.put(sum(counts))


def endpoint_ceiling(proxy, bucket: str, key: str, seconds: float = 4.0, processes: int = 2,
                     threads: int = 32) -> tuple[float, float]:
    """(HeadObject/s, moto's cores) with ``processes`` x ``threads`` clients HEADing one object through
    the proxy as fast as it answers: the most requests/s this machine's emulated S3 serves."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # the parent runs Spark's py4j threads: no fork
    queue = ctx.Queue()
    procs = [ctx.Process(target=_head_loop, args=(proxy.url, bucket, key, seconds, threads, queue))
             for _ in range(processes)]
    moto_pid = proxy.moto._proc.pid
    for p in procs:
        p.start()
    time.sleep(0.5)  # let the clients start (imports) before measuring the window
    cpu0, t0 = cpu_seconds(moto_pid), time.monotonic()
    total = sum(queue.get() for _ in procs)
    cpu1, t1 = cpu_seconds(moto_pid), time.monotonic()
    for p in procs:
        p.join()
    return total / seconds, (cpu1 - cpu0) / (t1 - t0)


def parallel(fn, items, workers: int = 16) -> list:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def local_spark():
    """The bench session, warmed up (JVM and a Python worker) before anything is timed."""
    spark = local_session("s3lake-bench", driver_memory="4g")
    spark.range(1000).selectExpr("sum(id)").collect()
    spark.sparkContext.parallelize(range(4), 2).map(lambda x: x).collect()
    return spark


def per_object(counts: dict, objects: int) -> str:
    total = sum(counts.values())
    ops = ", ".join(f"{k} {v / objects:.2f}" for k, v in sorted(counts.items()))
    return f"{total / objects:.2f} requests/object ({ops})"
