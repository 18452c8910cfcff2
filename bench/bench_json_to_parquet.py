"""json_to_parquet vs a naive Spark job vs DuckDB on 1,000,000 Firehose-style records.

8 gzipped NDJSON files (a nested struct, an array, a 10-200 character text) are generated once into
``.bench/json_to_parquet/input``; each engine converts them to Parquet partitioned by ``dt`` with the
Spark session already warm. Set ``BENCH_JSON_RECORDS`` to change the size.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".bench" / "json_to_parquet"
FILES = 8


def _inputs(records: int) -> list[str]:
    from s3lake.demo.json_to_parquet import write_firehose_files

    src = WORK / f"input-{records}"
    marker = src / "_COMPLETE"
    if not marker.exists():
        shutil.rmtree(src, ignore_errors=True)
        t0 = time.perf_counter()
        write_firehose_files(str(src), records, FILES)
        marker.write_text("ok")
        print(f"generated {records:,} records in {time.perf_counter() - t0:.1f}s", flush=True)
    return sorted(str(p) for p in src.glob("*.json.gz"))


def _session():
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(os.environ.get("BENCH_SPARK_MASTER", "local[2]"))
        .appName("bench-json-to-parquet")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "3g")
        .config("spark.sql.shuffle.partitions", "8")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _run_job(spark, inputs: list[str], out: str, reuse: bool = True) -> None:
    from s3lake.demo.json_to_parquet import SCHEMA_FILE
    from s3lake.json_to_parquet import Options, convert, load_schema

    convert(spark, Options(inputs=inputs, output=out, schema=load_schema(str(SCHEMA_FILE)),
                           timestamp_field="event_time", partition_by=["dt"], reuse_shuffle=reuse))


def _run_naive(spark, inputs: list[str], out: str) -> None:
    from pyspark.sql import functions as F

    df = spark.read.json(inputs)  # schema inference: a full extra pass over the data
    num = F.col("event_time").cast("double")
    ts = F.coalesce(
        F.timestamp_seconds(F.when(num >= 1e11, num / 1000).otherwise(num)), F.to_timestamp("event_time")
    )
    df.withColumn("dt", F.date_format(ts, "yyyy-MM-dd")).write.mode("overwrite").partitionBy("dt").parquet(out)


def _run_duckdb(inputs: list[str], out: str) -> None:
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 2")
    files = "[" + ", ".join(f"'{p}'" for p in inputs) + "]"
    columns = (
        "{event_id: 'VARCHAR', event_type: 'VARCHAR', event_time: 'VARCHAR', "
        "user: 'STRUCT(id BIGINT, country VARCHAR, device STRUCT(os VARCHAR, version VARCHAR))', "
        "tags: 'VARCHAR[]', amount: 'DOUBLE', message: 'VARCHAR'}"
    )
    con.execute(f"""
        COPY (
          SELECT *, strftime(CASE
              WHEN regexp_full_match(event_time, '-?[0-9]+(\\.[0-9]+)?') THEN
                CASE WHEN abs(CAST(event_time AS DOUBLE)) >= 1e11
                     THEN to_timestamp(CAST(event_time AS DOUBLE) / 1000)
                     ELSE to_timestamp(CAST(event_time AS DOUBLE)) END
              ELSE TRY_CAST(event_time AS TIMESTAMPTZ) END AT TIME ZONE 'UTC', '%Y-%m-%d') AS dt
          FROM read_ndjson({files}, columns = {columns}, compression = 'gzip')
        ) TO '{out}' (FORMAT parquet, PARTITION_BY (dt), OVERWRITE_OR_IGNORE)
    """)
    con.close()


def main() -> int:
    records = int(os.environ.get("BENCH_JSON_RECORDS", "1000000"))
    inputs = _inputs(records)
    out = WORK / "out"
    shutil.rmtree(out, ignore_errors=True)
    spark = _session()
    # Warm the JVM/JIT and the Python workers on a small slice before timing anything.
    warm = WORK / "warm"
    _run_job(spark, inputs[:1], str(warm / "job"))
    _run_naive(spark, inputs[:1], str(warm / "naive"))
    results = {
        "json_to_parquet": _timed(lambda: _run_job(spark, inputs, str(out / "job"))),
        "j2p --reread-input": _timed(lambda: _run_job(spark, inputs, str(out / "job-reread"), reuse=False)),
        "naive spark": _timed(lambda: _run_naive(spark, inputs, str(out / "naive"))),
        "duckdb": _timed(lambda: _run_duckdb(inputs, str(out / "duckdb"))),
    }
    rows = spark.read.parquet(str(out / "job")).count()
    if rows != records:
        print(f"json_to_parquet wrote {rows} rows, expected {records}", file=sys.stderr)
        return 1
    print(f"{records:,} records, {FILES} gzipped NDJSON files, {os.cpu_count()} cores")
    for name, secs in results.items():
        print(f"  {name:18s} {secs:7.2f} s  {records / secs:12,.0f} records/s")
    job = records / results["json_to_parquet"]
    print(f"  json_to_parquet / duckdb      = {job / (records / results['duckdb']):.2f}x (target >= 0.5x)")
    print(f"  json_to_parquet / naive spark = {job / (records / results['naive spark']):.2f}x")
    print(f"  --reread-input / duckdb       = {results['duckdb'] / results['j2p --reread-input']:.2f}x")
    shutil.rmtree(warm, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
