"""Per-object outcome rows shared by the object jobs (copy-in-place, anonymize), and their summary.

Results are a Parquet dataset under ``--results``, one ``run_id=<id>`` partition per run, whose files the
tasks commit as they go (:mod:`s3lake.objects.checkpoints`); re-running the same run id resumes it.
"""

from __future__ import annotations

import sys
import uuid
from collections import Counter
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from s3lake.errors import ConfigError, ResultsPathError
from s3lake.objects.progress import format_prefixes

SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("job", T.StringType(), False),
    T.StructField("bucket", T.StringType(), False),
    T.StructField("key", T.StringType(), False),
    T.StructField("version_id", T.StringType()),
    T.StructField("status", T.StringType(), False),
    T.StructField("error_code", T.StringType()),
    T.StructField("error_message", T.StringType()),
    T.StructField("size", T.LongType()),
    T.StructField("storage_class", T.StringType()),
    T.StructField("encryption", T.StringType()),
    T.StructField("kms_key_id", T.StringType()),
    T.StructField("new_version_id", T.StringType()),
    T.StructField("requests", T.IntegerType()),
    T.StructField("bytes_in", T.LongType()),
    T.StructField("bytes_out", T.LongType()),
    T.StructField("records_changed", T.LongType()),
    T.StructField("fields_changed", T.StringType()),  # anonymize: JSON {rule: fields it changed}
    T.StructField("fields_matched", T.StringType()),  # anonymize: JSON {rule: fields its path reached}
    T.StructField("finished_at", T.TimestampType()),
])
FIELDS = SCHEMA.fieldNames()
FAILED = "FAILED"


def row(run_id: str, job: str, bucket: str, key: str, status: str, **values: Any) -> tuple:
    """One result row as a tuple in :data:`SCHEMA` order (unknown names are a bug, so they raise)."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise TypeError(f"unknown result fields: {sorted(unknown)}")
    values.setdefault("finished_at", datetime.now(timezone.utc))
    if values.get("error_message"):
        values["error_message"] = str(values["error_message"])[:1000]
    full = {"run_id": run_id, "job": job, "bucket": bucket, "key": key, "status": status, **values}
    return tuple(full.get(name) for name in FIELDS)


def check_run_id(run_id: str) -> str:
    """A run id names a ``run_id=...`` partition and a metadata marker value: no '/' or '='."""
    if not run_id or "/" in run_id or "=" in run_id:
        raise ConfigError(f"--run-id must not be empty or contain '/' or '=': {run_id!r}")
    return run_id


def check_writable(spark: SparkSession, path: str) -> None:
    """Fail fast (before any object is touched) when ``path`` cannot be written, via Hadoop's FileSystem.

    Leaves nothing behind: the probe file is deleted, and so is the folder when the probe created it.
    """
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    folder = jvm.org.apache.hadoop.fs.Path(path.rstrip("/"))
    probe = jvm.org.apache.hadoop.fs.Path(f"{path.rstrip('/')}/_s3lake_write_probe_{uuid.uuid4().hex}")
    try:
        fs = probe.getFileSystem(conf)
        existed = fs.exists(folder)
        fs.create(probe, True).close()
        fs.delete(probe, False)
        if not existed:
            fs.delete(folder, True)
    except Exception as exc:  # noqa: BLE001 - py4j wraps the Java exception
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        java = getattr(exc, "java_exception", None)
        if java is not None:
            message = f"{java.getClass().getSimpleName()}: {java.getMessage()}"
        raise ResultsPathError(f"cannot write results to {path}: {message}") from None


def read_run(spark: SparkSession, path: str, run_id: str) -> DataFrame:
    """One run's rows (the ``run_id=<id>`` partition; bookkeeping files starting with ``_`` are not read)."""
    return spark.read.schema(SCHEMA).parquet(path).where(F.col("run_id") == run_id)


def summarize(rows: Iterable[Mapping[str, Any]], seconds: float, extra_requests: int = 0) -> dict[str, Any]:
    """Counts per status, objects/s and S3 requests per object over a run's result rows."""
    counts: Counter[str] = Counter()
    requests = extra_requests
    objects = 0
    for r in rows:
        counts[r["status"]] += int(r.get("n", 1))
        requests += int(r.get("requests") or 0)
        objects += int(r.get("n", 1))
    return {
        "objects": objects,
        "statuses": dict(sorted(counts.items())),
        "seconds": round(seconds, 3),
        "objects_per_second": round(objects / seconds, 1) if seconds > 0 else None,
        "requests": requests,
        "requests_per_object": round(requests / objects, 3) if objects else 0.0,
    }


def summary_rows(results: DataFrame) -> list[dict[str, Any]]:
    """Status counts and request totals, aggregated in Spark (results can be millions of rows)."""
    grouped = results.groupBy("status").agg(F.count(F.lit(1)).alias("n"), F.sum("requests").alias("requests"))
    return [r.asDict() for r in grouped.collect()]


def format_summary(title: str, summary: Mapping[str, Any]) -> str:
    lines = [f"{title}: {summary['objects']} objects in {summary['seconds']} s "
             f"({summary['objects_per_second']} objects/s, {summary['requests_per_object']} S3 requests/object)"]
    for status, n in summary["statuses"].items():
        lines.append(f"  {status:<22} {n}")
    if summary.get("resumed"):
        lines.append(f"  resumed: {summary['resumed']} of these objects had rows committed by an earlier driver "
                     "of this run; no request was made for them")
    if "attempts" in summary:
        lines.append(f"  S3 request attempts {summary['attempts']}, {summary['throttled']} throttled "
                     f"({100 * summary['throttled_share']:.1f}%); task threads waited {summary['waited_seconds']} s "
                     "(backoff and rate cap, summed)")
    top = summary.get("throttled_prefixes") or []
    if top:
        named = {t["prefix"]: [t["requests"], t["throttled"]] for t in top}
        lines.append(f"  throttled most: {format_prefixes(named)}")
    return "\n".join(lines)


def report(title: str, summary: Mapping[str, Any], max_failures: int, path: str, run_id: str) -> int:
    """Print the run's summary; exit status 1 when more objects FAILED than ``max_failures`` allows."""
    print(format_summary(title, summary), flush=True)
    failed = summary["statuses"].get(FAILED, 0)
    if failed > max_failures:
        print(f"s3lake: {failed} objects FAILED (more than --max-failures {max_failures}); "
              f"see {path.rstrip('/')}/run_id={run_id}", file=sys.stderr)
        return 1
    return 0
