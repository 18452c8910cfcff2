"""The Batch Replication route of copy in place: plan, one manifest and one job per bucket, follow, collect.

1. **Plan** (Spark tasks): every candidate gets a row; skips are decided as copy in place decides them
   (:mod:`s3lake.replication.batch_plan`), the others are ``ELIGIBLE`` with the version to replicate.
   The skip rows are committed to the run's results folder at once.
2. **Manifest** per source bucket, written once (:mod:`s3lake.replication.batch_manifest`), streamed from
   the tasks' rows in key order, never held whole on the driver.
3. **Job** per bucket: CreateJob with a token derived from the run id and the manifest
   (:mod:`s3lake.replication.batch_jobs`); a rerun re-attaches.
4. **Follow**: a progress line per job every ``progress_interval`` from DescribeJob, until each is over;
   ``wait=False`` returns after creating them (a rerun of the same run id follows and collects).
5. **Collect**: the completion report's rows become result rows (read in Spark tasks, one per report file);
   manifest lines the report lacks (a job Failed or Cancelled before them) become FAILED rows, so every
   candidate has exactly one row.

The run's state (manifests, jobs, what was collected) is ``_s3lake_batch.json`` in the run's folder, beside
the rows; the folder is this driver's while it runs (:class:`~s3lake.objects.runs.RunLock`).
"""

from __future__ import annotations

import io
import json
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from s3lake import aws
from s3lake.errors import ConfigError
from s3lake.objects import checkpoints, results, runs, stores
from s3lake.objects.buckets import bucket_info
from s3lake.objects.checkpoints import CheckpointOptions
from s3lake.objects.driver import bounded_map, default_partitions, spread, task_identity
from s3lake.replication import batch_jobs, batch_manifest, batch_plan, batch_report
from s3lake.replication.scope import Scope

RUN_KIND = "copy-in-place/batch-replication"
STATE = "_s3lake_batch.json"
ELIGIBLE_FILES = "_eligible"  # hidden (Spark and Athena skip "_" names): the rows that went into manifests
ROWS_PER_FILE = 200_000


@dataclass(frozen=True)
class BatchSettings:
    run_id: str
    location: str  # the run's s3://bucket/prefix (run_location): <location>/<bucket>/manifest.csv, .../report/
    role_arn: str | None
    dry_run: bool = False
    wait: bool = True
    concurrency: int = 32
    scopes: Mapping[str, Scope] | None = None
    progress_interval: float = 30.0


def _say(line: str) -> None:
    print(f"s3lake: {line}", file=sys.stderr, flush=True)


def run_location(results_path: str, run_id: str, location: str | None) -> str:
    """Where this run's manifests and reports go: ``<location>/<run id>``, by default
    ``<results>/run_id=<id>/_batch`` when the results are on S3 (Spark does not read ``_`` folders as rows)."""
    if location:
        try:
            aws.split_s3_url(location if location.startswith("s3://") else "")
        except ValueError:
            raise ConfigError(f"--batch-location must be an s3:// URL, got {location!r}") from None
        return f"{location.rstrip('/')}/{run_id}"
    if results_path.startswith(("s3://", "s3a://", "s3n://")):
        return f"s3://{results_path.split('://', 1)[1].rstrip('/')}/run_id={run_id}/_batch"
    raise ConfigError("--method batch-replication needs --batch-location s3://BUCKET/PREFIX when --results is "
                      "not on S3 (the job reads its manifest from S3 and writes its report there)")


def locations(settings: BatchSettings, bucket: str) -> tuple[str, str, str]:
    """(bucket, manifest key, report prefix) of one source bucket's job."""
    where, prefix = aws.split_s3_url(settings.location)
    base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
    return where, f"{base}{bucket}/manifest.csv", f"{base}{bucket}/report"


# ------------------------------------------------------------------------------------ task side


def write_rows(store: stores.Store, name: str, rows: Iterable[tuple]) -> int:
    """Commit result rows as Parquet files ``<name>-<n>.parquet``; returns the rows written."""
    fields, schema = list(results.FIELDS), checkpoints.arrow_schema()
    batch: list[tuple] = []
    n = files = 0
    for row in rows:
        batch.append(row)
        if len(batch) >= ROWS_PER_FILE:
            store.put(f"{name}-{files:04d}.parquet", checkpoints.parquet_bytes(batch, fields, schema))
            n, files, batch = n + len(batch), files + 1, []
    if batch or not files:  # chunk 0 even when empty: a retried task's file replaces its first attempt's
        store.put(f"{name}-{files:04d}.parquet", checkpoints.parquet_bytes(batch, fields, schema))
        n += len(batch)
    return n


# ------------------------------------------------------------------------------------ state


def load_state(store: stores.Store) -> dict[str, Any] | None:
    found = store.get(STATE)
    return json.loads(found[0]) if found else None


def save_state(store: stores.Store, state: Mapping[str, Any]) -> None:
    store.put(STATE, json.dumps(state, indent=1, sort_keys=True).encode())


# ------------------------------------------------------------------------------------ driver side


def plan(spark: SparkSession, candidates: DataFrame, settings: BatchSettings, store: stores.Store,
         results_path: str, partitions: int | None, generation: str) -> tuple[DataFrame, int]:
    """Plan every candidate in tasks and commit its row: skips as results, ``ELIGIBLE`` ones to the run's
    hidden ``_eligible-*`` files (what the manifests and the unreported rows are made from). Candidates an
    earlier driver of this run planned are not planned again. Returns (the ELIGIBLE rows, driver requests)."""
    if next(store.names("part-"), None) is not None or next(store.names(ELIGIBLE_FILES), None) is not None:
        done = results.read_run(spark, results_path, settings.run_id).select("bucket", "key")
        done = done.unionByName(eligible_rows(spark, store, settings.run_id).select("bucket", "key"))
        candidates = candidates.join(done, ["bucket", "key"], "left_anti")
    candidates = candidates.persist()  # three passes below: read the inventory once
    buckets = sorted(r.bucket for r in candidates.select("bucket").distinct().collect())
    owners, driver_requests = {}, 0
    for name in buckets:
        info, n = bucket_info(name, True)
        owners[name], driver_requests = info.owner_id, driver_requests + n
    count = candidates.count()
    tasks = partitions or default_partitions(count, spark.sparkContext.defaultParallelism)
    scopes, run_id, dry_run, concurrency = settings.scopes, settings.run_id, settings.dry_run, settings.concurrency
    status_at = results.FIELDS.index("status")

    def plan_partition(rows: Iterable[Any]) -> Iterator[int]:
        def one(row: Any) -> tuple:
            c = row.asDict()
            scope = scopes.get(c["bucket"]) if scopes is not None else None
            return batch_plan.plan(c, run_id, scope, owners.get(c["bucket"]), dry_run)

        planned = list(bounded_map(one, rows, concurrency))
        name = f"{generation}-{task_identity()[0]:05d}"
        yield write_rows(store, f"part-plan-{name}", (r for r in planned if r[status_at] != batch_plan.ELIGIBLE))
        write_rows(store, f"{ELIGIBLE_FILES}-{name}", (r for r in planned if r[status_at] == batch_plan.ELIGIBLE))

    if count:
        spread(candidates, tasks).rdd.mapPartitions(plan_partition).collect()
    candidates.unpersist()
    return eligible_rows(spark, store, run_id), driver_requests


def eligible_rows(spark: SparkSession, store: stores.Store, run_id: str) -> DataFrame:
    """The run's ELIGIBLE rows (read from its hidden files in tasks, one per file)."""
    names = sorted(store.names(ELIGIBLE_FILES))

    def read(chunk: Iterable[str]) -> Iterator[tuple]:
        import pyarrow.parquet as pq

        for name in chunk:
            found = store.get(name)
            if found is None:
                continue
            table = pq.read_table(io.BytesIO(found[0]))
            columns = [table.column(f).to_pylist() if f in table.column_names else [run_id] * table.num_rows
                       for f in results.FIELDS]  # run_id: the folder names it, the files do not hold it
            yield from zip(*columns)

    rdd = spark.sparkContext.parallelize(names, max(1, len(names))).mapPartitions(read)
    return spark.createDataFrame(rdd, results.SCHEMA)


def write_manifests(eligible: DataFrame, settings: BatchSettings, say: Callable[[str], None]) -> dict[str, Any]:
    """One manifest per bucket with eligible objects, in key order; {bucket: manifest state}."""
    counts = dict(eligible.groupBy("bucket").count().collect())
    out: dict[str, Any] = {}
    for bucket in sorted(counts):
        where, key, report = locations(settings, bucket)
        rows = eligible.where(F.col("bucket") == bucket).select("key", "version_id").orderBy("key")
        lines = (batch_manifest.line(bucket, r.key, r.version_id) for r in rows.toLocalIterator())
        manifest = batch_manifest.write_once(where, key, lines)
        objects = manifest.objects if manifest.created else counts[bucket]
        say(f"manifest s3://{where}/{key}: {objects:,} objects"
            + ("" if manifest.created else " (written by an earlier driver of this run: used as it is)"))
        out[bucket] = {"manifest_bucket": where, "manifest_key": key, "etag": manifest.etag, "objects": objects,
                       "report_prefix": report}
    return out


def _manifest(entry: Mapping[str, Any]) -> batch_manifest.Manifest:
    return batch_manifest.Manifest(entry["manifest_bucket"], entry["manifest_key"], entry["etag"],
                                   entry["objects"], False)


def create_jobs(state: dict[str, Any], settings: BatchSettings, store: stores.Store,
                say: Callable[[str], None]) -> None:
    """CreateJob for every bucket that has no job yet (idempotent by token), recorded in the state."""
    for bucket, entry in sorted(state["buckets"].items()):
        if entry.get("job_id"):
            continue
        request = batch_jobs.create_request(state["account"], settings.run_id, _manifest(entry),
                                            entry["manifest_bucket"], entry["report_prefix"], settings.role_arn or "",
                                            state.get("partition", "aws"))
        found = batch_jobs.find(state["account"], request["Description"])
        entry["job_id"] = found or batch_jobs.create(request)
        save_state(store, state)
        how = "found by its token: created by an earlier driver of this run" if found else "created"
        say(f"batch job {entry['job_id']} for {bucket} {how}: {entry['objects']:,} objects "
            f"(S3ReplicateObject, report s3://{entry['manifest_bucket']}/{entry['report_prefix']}/)")


def collect(spark: SparkSession, run_id: str, bucket: str, entry: dict[str, Any], job: Mapping[str, Any],
            store: stores.Store, results_path: str, generation: str) -> int:
    """Commit the report's rows and a FAILED row for each manifest line it lacks; returns rows written."""
    report_bucket = entry["manifest_bucket"]
    job_id = entry["job_id"]
    summary = job.get("ProgressSummary") or {}
    ran = (summary.get("NumberOfTasksSucceeded") or 0) + (summary.get("NumberOfTasksFailed") or 0)
    manifest = None
    if ran or job.get("Status") == "Complete":  # S3 writes a report once a task ran
        manifest = batch_report.load_manifest(report_bucket, f"{entry['report_prefix']}/job-{job_id}/manifest.json",
                                              required=job.get("Status") == "Complete")
    files = batch_report.report_files(manifest, report_bucket) if manifest else []
    written = 0
    if files:
        def read(indexed: Iterable[tuple[int, tuple[str, str]]]) -> Iterator[int]:
            for i, where in indexed:
                yield write_rows(store, f"part-report-{job_id}-{i:05d}", batch_report.rows_of(run_id, [where]))

        written = sum(spark.sparkContext.parallelize(list(enumerate(files)), len(files)).mapPartitions(read)
                      .collect())
    # every eligible object gets a row, whatever the report held (a job ended early, a report unreadable)
    return written + _unreported(spark, run_id, bucket, entry, job, store, results_path, generation)


def _unreported(spark: SparkSession, run_id: str, bucket: str, entry: Mapping[str, Any], job: Mapping[str, Any],
                store: stores.Store, results_path: str, generation: str) -> int:
    """FAILED rows for the bucket's eligible objects that have no row (the job ended before their task)."""
    listed = eligible_rows(spark, store, run_id).where(F.col("bucket") == bucket).select("bucket", "key", "version_id")
    have = results.read_run(spark, results_path, run_id).where(F.col("bucket") == bucket).select("bucket", "key")
    missing = listed.join(have, ["bucket", "key"], "left_anti")
    status = job.get("Status") or "Unknown"
    reasons = "; ".join(f"{r.get('FailureCode')}: {r.get('FailureReason')}" for r in job.get("FailureReasons") or [])
    code, message = f"Job{status}", f"batch job {entry['job_id']} ended {status} before this task" + (
        f" ({reasons})" if reasons else "")
    job_id = entry["job_id"]

    def commit(rows: Iterable[Any]) -> Iterator[int]:
        out = (results.row(run_id, batch_plan.JOB, r.bucket, r.key, results.FAILED, version_id=r.version_id,
                           error_code=code, error_message=message, requests=0) for r in rows)
        yield write_rows(store, f"part-unreported-{job_id}-{generation}-{task_identity()[0]:05d}", out)

    return sum(missing.rdd.mapPartitions(commit).collect())


def run(spark: SparkSession, candidates: DataFrame, settings: BatchSettings, results_path: str,
        partitions: int | None = None, checkpoint: CheckpointOptions | None = None,
        say: Callable[[str], None] = _say) -> dict[str, Any]:
    """The whole route for one run id; returns the summary of the run's rows (``pending`` jobs left)."""
    started = time.monotonic()
    run_dir = f"{results_path.rstrip('/')}/run_id={settings.run_id}"
    store = stores.store_for(run_dir)
    driver_requests = 0
    pending: list[str] = []
    generation = uuid.uuid4().hex[:8]  # this driver's: names of the files it commits
    with runs.RunLock(store, settings.run_id, RUN_KIND, settings.dry_run, checkpoint):
        state = load_state(store)
        if state is None:
            eligible, driver_requests = plan(spark, candidates, settings, store, results_path, partitions,
                                             generation)
            if settings.dry_run:
                return _summary(spark, results_path, settings.run_id, started, driver_requests, [])
            account, partition = batch_jobs.caller()
            eligible = eligible.persist()  # counted, sampled for the sort and streamed: read the files once
            state = {"run_id": settings.run_id, "account": account, "partition": partition,
                     "buckets": write_manifests(eligible, settings, say)}
            eligible.unpersist()
            save_state(store, state)
        elif settings.dry_run:
            return _summary(spark, results_path, settings.run_id, started, 0, [])
        else:
            say(f"run {settings.run_id}: manifests already written; following their jobs")
        create_jobs(state, settings, store, say)
        open_jobs = {b: e["job_id"] for b, e in state["buckets"].items() if not e.get("collected")}
        if not open_jobs:
            return _summary(spark, results_path, settings.run_id, started, driver_requests, [])
        if settings.wait:
            finals = batch_jobs.follow(state["account"], open_jobs, settings.progress_interval, say)
        else:
            finals = {b: batch_jobs.describe(state["account"], j) for b, j in open_jobs.items()}
            for b, job in sorted(finals.items()):
                say(batch_jobs.progress_line(b, job))
        for bucket, job in sorted(finals.items()):
            if job.get("Status") not in batch_jobs.TERMINAL:
                pending.append(f"{job.get('JobId')} ({bucket}, {job.get('Status')})")
                continue
            entry = state["buckets"][bucket]
            rows = collect(spark, settings.run_id, bucket, entry, job, store, results_path, generation)
            entry["collected"] = job.get("Status")
            save_state(store, state)
            say(f"batch job {entry['job_id']} ({bucket}) {job.get('Status')}: {rows:,} result rows from its report")
    return _summary(spark, results_path, settings.run_id, started, driver_requests, pending)


def _summary(spark: SparkSession, results_path: str, run_id: str, started: float, driver_requests: int,
             pending: list[str]) -> dict[str, Any]:
    written = results.read_run(spark, results_path, run_id)
    summary = results.summarize(results.summary_rows(written), time.monotonic() - started, driver_requests)
    summary["pending"] = pending
    summary["driver_requests"] = driver_requests
    return summary
