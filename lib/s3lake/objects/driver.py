"""How a per-object job runs: the driver (bucket lookups once, candidates spread over tasks, results
written once, progress lines), paced concurrency inside a task (:mod:`s3lake.objects.pacing`), and the per-object
request count.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

from s3lake.objects import pacing, progress
from s3lake.objects.buckets import BucketInfo, bucket_info
from s3lake.objects.shares import Shares

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
                   bucket_counts: Mapping[str, int] | None = None, concurrency: int = 32,
                   pace: pacing.PaceOptions | None = None) -> tuple[dict[str, Any], Any]:
    """The driver side of an object job: look up each bucket once, spread the candidates over tasks,
    write the result rows once (that single action does the object writes: the mapped frame is never
    recomputed), then summarize this run's partition. Returns (summary, results DataFrame).

    ``bucket_counts`` (candidates per bucket), when the caller already knows them (a listing made on the
    driver), saves the counting job; otherwise the candidates are cached and counted in one pass.

    Every task runs paced per prefix (``pace``: the run-wide caps, of which the driver grants each running
    task a share; the object deadline; at most ``concurrency`` objects in flight, fewer per prefix while
    it is throttled) and reports its tallies to the driver, which prints a progress line every
    ``pace.progress_interval`` seconds. The summary adds the request attempts, the throttled ones, the
    seconds task threads spent waiting and the prefixes throttled most.
    """
    from s3lake.objects import results

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
    slots = spark.sparkContext.defaultParallelism
    tasks = partitions or default_partitions(count, slots)
    pace = pace or pacing.PaceOptions()
    settings = pace.task_settings(concurrency, tasks)
    totals = spark.sparkContext.accumulator({}, progress.totals_param())
    status_at = results.FIELDS.index("status")
    coordinator = Shares() if settings.capped else None
    with progress.Monitor(count, pace.progress_interval, host=progress.driver_host(spark),
                          shares=coordinator) as monitor:
        address = monitor.address

        def paced_partition(rows: Iterable[Any]) -> Iterator[tuple]:
            with pacing.task(settings) as pacer, progress.task_reporter(
                    address, pacer.snapshot, on_share=pacer.set_share if settings.capped else None,
                    fallback=settings.share) as reporter:
                for row in process_partition(rows, infos):
                    reporter.done(row[status_at])
                    yield row
                snapshot = pacer.snapshot()
                totals.add({**{name: snapshot[name] for name in progress.TOTAL_FIELDS},
                            "prefixes": progress.merge_prefixes({}, pacer.most_throttled(50))})

        rdd = spread(candidates, tasks).rdd.mapPartitions(paced_partition)
        results.write(spark.createDataFrame(rdd, results.SCHEMA), results_path)
    if cached:
        candidates.unpersist()
    written = results.read_run(spark, results_path, run_id)
    summary = results.summarize(results.summary_rows(written), time.monotonic() - started, driver_requests)
    summary.update(pacing_summary(totals.value))
    return summary, written


def spread(candidates: Any, tasks: int) -> Any:
    """``tasks`` partitions by a hash of the object, each in the order of another hash: every task holds
    an even share of every prefix (so its share of a prefix's cap is its share of the run) and works
    through its prefixes interleaved from its first object, not one prefix after another as an
    inventory lists them (sorted by key). Deterministic, so a retried task gets the same objects."""
    from pyspark.sql import functions as F

    place = F.xxhash64(F.col("bucket"), F.col("key"))
    order = F.xxhash64(F.col("key"), F.col("bucket"), F.lit("s3lake-order"))
    return candidates.repartition(tasks, place).sortWithinPartitions(order)


def pacing_summary(totals: Mapping[str, Any]) -> dict[str, Any]:
    """The summary's pacing fields from the tasks' totals."""
    attempts = int(totals.get("requests", 0))
    throttled = int(totals.get("throttled", 0))
    return {"attempts": attempts, "throttled": throttled,
            "throttled_share": round(throttled / attempts, 4) if attempts else 0.0,
            "waited_seconds": round(float(totals.get("waited", 0.0)), 1),
            "throttled_prefixes": [{"prefix": name, "requests": req, "throttled": thr}
                                   for name, req, thr in progress.top_prefixes(totals.get("prefixes") or {})]}


def bounded_map(fn: Callable[[Any], R], items: Iterable[Any], concurrency: int) -> Iterator[R]:
    """``fn`` over ``items`` with at most ``concurrency`` calls in flight, results as they finish.

    A sliding window, not batches: one slow object (a retry, a multipart copy) never idles the others.
    Inside a paced task the window adapts (:func:`s3lake.objects.pacing.paced_map`, ``concurrency`` at most).
    """
    pacer = pacing.current()
    if pacer is not None:
        yield from pacing.paced_map(fn, items, pacer, concurrency)
        return
    it = iter(items)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        pending = {pool.submit(fn, item) for item in itertools.islice(it, concurrency)}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
            for item in itertools.islice(it, len(done)):
                pending.add(pool.submit(fn, item))
