"""How a per-object job runs: the driver (bucket lookups once, candidates spread over tasks, results
written once), bounded concurrency inside a task, and the per-object request count.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

from s3lake.bucket_lookup import BucketInfo, bucket_info

R = TypeVar("R")


class Counter:
    """S3 requests made for one object (thread-confined)."""

    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()

    def add(self, k: int = 1) -> None:
        with self._lock:
            self.n += k


def default_partitions(candidates: int, parallelism: int) -> int:
    """Enough tasks to use every core, and more for big inventories so one task stays a few minutes."""
    return max(1, min(candidates, max(parallelism, math.ceil(candidates / 50000))))


def run_per_object(spark: Any, candidates: Any, results_path: str, run_id: str, partitions: int | None,
                   copy_acls: bool, process_partition: Callable[[Iterable[Any], Mapping[str, BucketInfo]],
                                                                Iterator[tuple]],
                   bucket_counts: Mapping[str, int] | None = None) -> tuple[dict[str, Any], Any]:
    """The driver side of an object job: look up each bucket once, spread the candidates over tasks,
    write the result rows once (that single action does the object writes: the mapped frame is never
    recomputed), then summarize this run's partition. Returns (summary, results DataFrame).

    ``bucket_counts`` (candidates per bucket), when the caller already knows them (a listing made on the
    driver), saves the counting job; otherwise the candidates are cached and counted in one pass.
    """
    from s3lake import results

    started = time.monotonic()
    cached = bucket_counts is None
    if cached:
        candidates = candidates.persist()
        bucket_counts = dict(candidates.groupBy("bucket").count().collect())
    infos, driver_requests = {}, 0
    for name in sorted(bucket_counts):
        infos[name], n = bucket_info(name, copy_acls)
        driver_requests += n
    count = sum(bucket_counts.values())
    tasks = partitions or default_partitions(count, spark.sparkContext.defaultParallelism)
    rdd = candidates.repartition(tasks).rdd.mapPartitions(lambda rows: process_partition(rows, infos))
    results.write(spark.createDataFrame(rdd, results.SCHEMA), results_path)
    if cached:
        candidates.unpersist()
    written = results.read_run(spark, results_path, run_id)
    summary = results.summarize(results.summary_rows(written), time.monotonic() - started, driver_requests)
    return summary, written


def bounded_map(fn: Callable[[Any], R], items: Iterable[Any], concurrency: int) -> Iterator[R]:
    """``fn`` over ``items`` with at most ``concurrency`` calls in flight, results as they finish.

    A sliding window, not batches: one slow object (a retry, a multipart copy) never idles the others.
    """
    it = iter(items)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        pending = {pool.submit(fn, item) for item in itertools.islice(it, concurrency)}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
            for item in itertools.islice(it, len(done)):
                pending.add(pool.submit(fn, item))
