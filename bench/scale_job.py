"""The scale benchmark's job (``spark-submit bench/scale_job.py ROWS CANDIDATES RESULTS PARTITIONS``): copy in
place over a generated inventory of ROWS rows of which CANDIDATES are unreplicated, against the endpoint in
AWS_ENDPOINT_URL. Prints one JSON line of the run's figures (the driver's own memory among them)."""

from __future__ import annotations

import inspect
import json
import resource
import sys
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from s3lake.replication import copy_in_place as cip


def inventory(spark: SparkSession, rows: int, candidates: int):
    every = max(1, rows // candidates)
    status = F.when(F.col("id") % every == 0, F.lit(None).cast("string")).otherwise(F.lit("COMPLETED"))
    return spark.range(rows).select(
        F.lit("bench").alias("bucket"),
        F.format_string("d=%02d/part-%09d.json", F.col("id") % 97, F.col("id")).alias("key"),
        F.lit(None).cast("string").alias("version_id"), F.lit(True).alias("is_latest"),
        F.lit(False).alias("is_delete_marker"), F.lit(1024).cast("long").alias("size"),
        F.lit(None).cast("string").alias("e_tag"), F.lit("STANDARD").alias("storage_class"),
        status.alias("replication_status"), F.lit("SSE-S3").alias("encryption_status"),
        F.lit(None).cast("string").alias("object_access_control_list"),
        F.lit(None).cast("string").alias("object_owner"), F.lit(None).cast("string").alias("checksum_algorithm"),
    )


def heap(spark: SparkSession) -> dict:
    jvm = spark.sparkContext._jvm
    management = jvm.java.lang.management.ManagementFactory
    peak = sum(pool.getPeakUsage().getUsed() for pool in management.getMemoryPoolMXBeans()
               if str(pool.getType()) == "Heap memory")
    jvm.java.lang.System.gc()
    used = management.getMemoryMXBean().getHeapMemoryUsage().getUsed()
    return {"heap_peak_mb": round(peak / 2**20, 1), "heap_after_gc_mb": round(used / 2**20, 1)}


def main(argv: list[str]) -> int:
    rows, candidates, results, partitions = int(argv[0]), int(argv[1]), argv[2], int(argv[3])
    spark = SparkSession.builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    frame = cip.select_candidates(inventory(spark, rows, candidates), {None})
    settings = cip.Settings(run_id="scale", concurrency=32)
    kwargs = {}
    if "checkpoint" in inspect.signature(cip.run).parameters:
        from s3lake.objects.checkpoints import CheckpointOptions

        kwargs["checkpoint"] = CheckpointOptions(interval=float(argv[4]) if len(argv) > 4 else 60.0)
    started = time.monotonic()
    summary, _ = cip.run(spark, frame, settings, results, partitions, **kwargs)
    seconds = time.monotonic() - started
    out = {"rows": rows, "objects": summary["objects"], "statuses": summary["statuses"], "seconds": round(seconds, 1),
           "requests": summary["requests"], "checkpoints": summary.get("checkpoints", {}),
           "driver_python_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    out.update(heap(spark))
    print("SCALE " + json.dumps(out), flush=True)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
