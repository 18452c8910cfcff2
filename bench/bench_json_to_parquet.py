"""json_to_parquet against the bare pipeline, and how a day's rows are split over write tasks.

Inputs (generated once into ``.bench/json_to_parquet/``, gzipped Firehose-style NDJSON with a nested
struct, an array and a 10-200 character text): 1,000,000 records over seven event days in 8 files, and
400,000 records of one event day in 16 files (``BENCH_JSON_RECORDS`` scales both). One untimed run
of each pipeline on the whole input warms the JVM first.

1. Cost of the checks: the job (parse with the corrupt-record column, bad-record counts and quarantine,
   unknown fields, batches, REBALANCE, dynamic overwrite) against the bare pipeline (read with the
   schema -> the same event-day column -> the same REBALANCE -> partitioned Parquet, no checks), both at
   the same target file size, in ``BENCH_ROUNDS`` (6) paired rounds of alternating order. The ratios
   (wall time, and the driver JVM's CPU time) are the medians of the rounds' ratios. ``--reread-input``
   (no shuffle reuse) and DuckDB are reference lines.
2. The write's split, with ``--target-file-size`` scaled down to the bench's data: tasks, files and the
   largest task's share of the rows, for the job and for the former strategy (``repartition`` by the
   partition column: every row of a day in one task), on the single-day and the seven-day input. A
   file's name carries the number of the task that wrote it (``part-<task>-...``).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".bench" / "json_to_parquet"
TARGET = 4 * 1024 * 1024  # bytes; the job's default is 256 MiB


def _inputs(records: int, files: int, days: int) -> list[str]:
    from s3lake_testbed.demo.json_to_parquet import write_firehose_files

    src = WORK / (f"input-{records}" if days == 7 else f"input-{records}-{days}d-{files}f")
    marker = src / "_COMPLETE"
    if not marker.exists():
        shutil.rmtree(src, ignore_errors=True)
        t0 = time.perf_counter()
        write_firehose_files(str(src), records, files, days=days)
        marker.write_text("ok")
        print(f"generated {records:,} records ({days} days, {files} files) in {time.perf_counter() - t0:.1f}s",
              flush=True)
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
        # One read task per (unsplittable gzip) file, as on a cluster with many more input bytes per core:
        # AQE splits a partition along map outputs, so the read's task count bounds the write's split.
        .config("spark.sql.files.maxPartitionBytes", "1m")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _jvm_cpu(spark) -> float | None:
    """CPU seconds (user + system) the local driver JVM has used so far; None where it is not a child
    of this process (another master). In local mode every task runs in it and this bench uses no
    Python workers, so this is all the work done: a steadier measure than wall time on a shared VM."""
    proc = getattr(spark.sparkContext._gateway, "proc", None)
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (AttributeError, OSError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _shuffle_bytes(spark) -> int | None:
    """Shuffle bytes written so far in this application, from Spark's status store (not public API:
    a bench's measurement only); None where it cannot be read."""
    try:
        sc = spark.sparkContext
        no_quantiles = sc._gateway.new_array(sc._gateway.jvm.double, 0)
        stages = sc._jsc.sc().statusStore().stageList(None, False, False, no_quantiles, None)
        return sum(stages.apply(i).shuffleWriteBytes() for i in range(stages.size()))
    except Exception:  # noqa: BLE001 - py4j errors of another Spark version
        return None


def _measured(spark, fn) -> tuple[float, float | None]:
    """(wall seconds, JVM CPU seconds or None) of ``fn()``."""
    c0 = _jvm_cpu(spark)
    wall = _timed(fn)
    c1 = _jvm_cpu(spark)
    return wall, (c1 - c0 if c0 is not None and c1 is not None else None)


def _schema():
    from s3lake.parquet.options import load_schema
    from s3lake_testbed.demo.json_to_parquet import SCHEMA_FILE

    return load_schema(str(SCHEMA_FILE))


def _run_job(spark, inputs: list[str], out: str, reuse: bool = True) -> None:
    from s3lake.parquet.convert import convert
    from s3lake.parquet.options import Options

    convert(spark, Options(inputs=inputs, output=out, schema=_schema(), timestamp_field="event_time",
                           partition_by=["dt"], reuse_shuffle=reuse, target_file_size=TARGET))


def _run_bare(spark, inputs: list[str], out: str, strategy: str = "rebalance") -> None:
    """Read with the schema -> dt -> the write's shuffle -> partitioned Parquet; no checks."""
    from pyspark.sql import functions as F
    from s3lake.parquet.read import _event_ts
    from s3lake.parquet.write import advisory_size, rebalanced

    schema = _schema()
    df = spark.read.schema(schema).json(inputs)
    df = df.withColumn("dt", F.date_format(_event_ts(F.col("event_time"), schema["event_time"].dataType),
                                           "yyyy-MM-dd"))
    with advisory_size(spark, TARGET):
        df = rebalanced(df, ["dt"]) if strategy == "rebalance" else df.repartition("dt")
        df.write.mode("overwrite").partitionBy("dt").parquet(out)


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


def split(out: Path) -> dict:
    """Tasks, files, the largest task's share of the rows and the mean file size of a written dataset."""
    import pyarrow.parquet as pq

    rows: Counter = Counter()
    files = sorted(out.rglob("*.parquet"))
    for f in files:
        rows[f.name.split("-")[1]] += pq.ParquetFile(f).metadata.num_rows
    total = sum(rows.values())
    size = sum(f.stat().st_size for f in files)
    days = len({f.parent for f in files})
    return {"tasks": len(rows), "files": len(files), "days": days, "largest": max(rows.values()) / total,
            "mb": size / 2 ** 20, "file_mb": size / len(files) / 2 ** 20}


def main() -> int:
    records = int(os.environ.get("BENCH_JSON_RECORDS", "1000000"))
    week = _inputs(records, 8, 7)
    day = _inputs(records * 2 // 5, 16, 1)
    out = WORK / "out"
    shutil.rmtree(out, ignore_errors=True)
    spark = _session()
    # Warm the JVM (JIT, heap sizes) with one untimed run of each on the whole input: with only a slice,
    # the first timed round still paid for warming up.
    warm = WORK / "warm"
    _run_job(spark, week, str(warm / "job"))
    _run_bare(spark, week, str(warm / "bare"))
    # Paired rounds in alternating order (job first, then bare first, ...): the JIT and the OS page cache
    # favour whichever runs second, and one pair on a shared machine says little. The ratios reported
    # are the medians of the rounds' ratios, in wall time and in the JVM's CPU time.
    rounds = int(os.environ.get("BENCH_ROUNDS", "6"))
    pairs: list[tuple[tuple[float, float | None], tuple[float, float | None]]] = []

    def job():
        return _measured(spark, lambda: _run_job(spark, week, str(out / "job")))

    def bare():
        return _measured(spark, lambda: _run_bare(spark, week, str(out / "bare")))

    for i in range(rounds):
        if i % 2 == 0:
            j = job()
            b = bare()
        else:
            b = bare()
            j = job()
        pairs.append((j, b))
    wall_ratios = sorted(j[0] / b[0] for j, b in pairs)
    cpu_ratios = sorted(j[1] / b[1] for j, b in pairs if j[1] and b[1])
    times = {
        "json_to_parquet": statistics.median(j[0] for j, _ in pairs),
        "bare pipeline": statistics.median(b[0] for _, b in pairs),
        "j2p --reread-input": _timed(lambda: _run_job(spark, week, str(out / "job-reread"), reuse=False)),
        "duckdb": _timed(lambda: _run_duckdb(week, str(out / "duckdb"))),
    }
    rows = spark.read.parquet(str(out / "job")).count()
    if rows != records:
        print(f"json_to_parquet wrote {rows} rows, expected {records}", file=sys.stderr)
        return 1
    before = _shuffle_bytes(spark)
    _run_job(spark, day, str(out / "day-job"))
    after = _shuffle_bytes(spark)
    _run_bare(spark, day, str(out / "day-before"), strategy="repartition")
    _run_bare(spark, week, str(out / "week-before"), strategy="repartition")

    print(f"{records:,} records over 7 days, 8 gzipped NDJSON files, {os.cpu_count()} cores, local[2]")
    for name, secs in times.items():
        print(f"  {name:20s} {secs:7.2f} s  {records / secs:12,.0f} records/s")
    print(f"  (json_to_parquet and bare pipeline: medians of {rounds} paired rounds, alternating order)")
    for i, ((jw, jc), (bw, bc)) in enumerate(pairs):
        cpu = f"  cpu job {jc:6.1f} s  bare {bc:6.1f} s  ratio {jc / bc:.2f}x" if jc and bc else ""
        print(f"    round {i + 1} ({'job first ' if i % 2 == 0 else 'bare first'}): job {jw:6.2f} s  bare {bw:6.2f} s  "
              f"ratio {jw / bw:.2f}x{cpu}")
    print(f"  json_to_parquet / bare pipeline = {statistics.median(wall_ratios):.2f}x wall time, median of {rounds} "
          f"rounds (range {wall_ratios[0]:.2f}-{wall_ratios[-1]:.2f}; target <= 1.3x)")
    if cpu_ratios:
        print(f"  json_to_parquet / bare pipeline = {statistics.median(cpu_ratios):.2f}x JVM CPU time "
              f"(range {cpu_ratios[0]:.2f}-{cpu_ratios[-1]:.2f})")
    print(f"  json_to_parquet / duckdb        = {times['json_to_parquet'] / times['duckdb']:.2f}x time (reference)")
    print(f"write split, target file size {TARGET / 2 ** 20:.0f} MiB "
          "(tasks / files / largest task's share of rows / mean file):")
    cases = [("single day, job (REBALANCE)", "day-job"), ("single day, before (repartition)", "day-before"),
             ("seven days, job (REBALANCE)", "job"), ("seven days, before (repartition)", "week-before")]
    for name, sub in cases:
        s = split(out / sub)
        print(f"  {name:34s} {s['tasks']:3d} tasks {s['files']:3d} files ({s['days']} days) "
              f"largest {s['largest']:6.1%}  {s['file_mb']:5.1f} MiB/file of {s['mb']:.0f} MiB "
              f"(size / target = {s['mb'] * 2 ** 20 / TARGET:.1f})")
    if before is not None and after is not None:
        from s3lake.parquet.write import SHUFFLE_BYTES_PER_PARQUET_BYTE

        parquet = split(out / "day-job")["mb"]
        shuffled = (after - before) / 2 ** 20
        print(f"  single day: the write's shuffle {shuffled:.1f} MiB for {parquet:.1f} MiB of Parquet = "
              f"{shuffled / parquet:.2f} shuffle bytes per Parquet byte (the job assumes "
              f"{SHUFFLE_BYTES_PER_PARQUET_BYTE})")
    shutil.rmtree(warm, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
