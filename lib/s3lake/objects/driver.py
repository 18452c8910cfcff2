"""How a per-object job runs: the driver (a run resumed, bucket lookups once, candidates spread over tasks
that commit their rows as they go, progress lines), paced concurrency inside a task
(:mod:`s3lake.objects.pacing`), and the per-object request count.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

from s3lake.objects import checkpoints, pacing, progress, runs, stores
from s3lake.objects.buckets import BucketInfo, bucket_info
from s3lake.objects.checkpoints import CheckpointOptions
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
                   pace: pacing.PaceOptions | None = None, *, job: str = "", dry_run: bool = False,
                   checkpoint: CheckpointOptions | None = None) -> tuple[dict[str, Any], Any]:
    """The driver side of an object job: resume the run, look up each bucket once, spread the candidates
    left over tasks that commit their rows as they go, then summarize this run's partition. Returns
    (summary, results DataFrame).

    The run's folder ``<results>/run_id=<id>/`` is this driver's while it runs (:class:`~s3lake.objects.runs.RunLock`).
    Candidates with a committed row are not worked again (``summary["resumed"]``); the tasks commit rows
    every ``checkpoint.interval`` seconds and claim their chunks (:mod:`s3lake.objects.checkpoints`), so an
    abort loses one interval's rows at most and no two attempts work one object.

    ``bucket_counts`` (candidates per bucket), when the caller already knows them and nothing is resumed,
    saves the counting job; otherwise the candidates left are cached and counted in one pass.

    Every task runs paced per prefix (``pace``: the run-wide caps, of which the driver grants each running
    task a share; the object deadline; at most ``concurrency`` objects in flight, fewer per prefix while
    it is throttled) and reports its tallies to the driver, which prints a progress line every
    ``pace.progress_interval`` seconds. The summary adds the request attempts, the throttled ones, the
    seconds task threads spent waiting and the prefixes throttled most.
    """
    from s3lake.objects import results

    started = time.monotonic()
    checkpoint = checkpoint or CheckpointOptions()
    run_dir = f"{results_path.rstrip('/')}/run_id={run_id}"
    store = stores.store_for(run_dir)
    with runs.RunLock(store, run_id, job, dry_run, checkpoint):
        resumed = 0
        if next(store.names("part-"), None) is not None:
            committed = results.read_run(spark, results_path, run_id).select("bucket", "key")
            resumed = committed.count()
            candidates = candidates.join(committed, ["bucket", "key"], "left_anti")
            bucket_counts = None
        cached = bucket_counts is None
        if cached:
            candidates = candidates.persist()
            bucket_counts = dict(candidates.groupBy("bucket").count().collect())
        count = sum(bucket_counts.values())
        if resumed:
            print(f"s3lake: resuming run {run_id}: {resumed:,} objects have committed rows, {count:,} to go",
                  file=sys.stderr, flush=True)
        infos, driver_requests = {}, 0
        for name in sorted(bucket_counts):
            infos[name], n = bucket_info(name, copy_acls)
            driver_requests += n
        slots = spark.sparkContext.defaultParallelism
        tasks = partitions or default_partitions(count, slots)
        pace = pace or pacing.PaceOptions()
        settings = pace.task_settings(concurrency, tasks)
        totals = spark.sparkContext.accumulator({}, progress.totals_param())
        status_at = results.FIELDS.index("status")
        fields = list(results.FIELDS)
        generation = uuid.uuid4().hex[:8]
        coordinator = Shares() if settings.capped else None
        with progress.Monitor(count, pace.progress_interval, host=progress.driver_host(spark),
                              shares=coordinator, resumed=resumed) as monitor:
            address = monitor.address

            def paced_partition(rows: Iterable[Any]) -> Iterator[dict]:
                partition, holder = task_identity()
                chunks = checkpoints.TaskCheckpoints(store, f"{generation}-{partition:05d}", holder, fields,
                                                     checkpoint)
                with chunks, pacing.task(settings) as pacer, progress.task_reporter(
                        address, pacer.snapshot, on_share=pacer.set_share if settings.capped else None,
                        fallback=settings.share) as reporter:
                    for row in process_partition(chunks.feed(rows), infos):
                        chunks.done(row)
                        reporter.done(row[status_at])
                    snapshot = pacer.snapshot()
                    totals.add({**{name: snapshot[name] for name in progress.TOTAL_FIELDS},
                                "prefixes": progress.merge_prefixes({}, pacer.most_throttled(50))})
                yield dataclasses.asdict(chunks.stats)

            task_stats = spread(candidates, tasks).rdd.mapPartitions(paced_partition).collect()
        if cached:
            candidates.unpersist()
    written = results.read_run(spark, results_path, run_id)
    summary = results.summarize(results.summary_rows(written), time.monotonic() - started, driver_requests)
    summary.update(pacing_summary(totals.value))
    summary["resumed"] = resumed
    summary["driver_requests"] = driver_requests
    summary["checkpoints"] = checkpoint_summary(task_stats)
    return summary, written


def task_identity() -> tuple[int, str]:
    """(partition, holder name) of the running Spark task attempt (a thread's, outside Spark)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    tag = uuid.uuid4().hex[:6]
    if ctx is None:
        return 0, f"local-{threading.get_ident()}-{tag}"
    return ctx.partitionId(), (f"stage {ctx.stageId()} partition {ctx.partitionId()} attempt "
                               f"{ctx.attemptNumber()} task {ctx.taskAttemptId()} ({tag})")


def checkpoint_summary(stats: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The tasks' checkpoint tallies, summed (the stats of the attempts that finished)."""
    out: dict[str, Any] = {}
    for one in stats:
        for name, value in one.items():
            out[name] = out.get(name, 0) + value
    if "waited" in out:
        out["waited"] = round(out["waited"], 1)
    return out


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
