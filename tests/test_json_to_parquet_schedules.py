"""JSON to Parquet on a schedule over Firehose arrival-time prefixes: hourly and daily runs, late records
across hour, day and month boundaries, re-runs, overlapping inputs, an hour that arrives a day late, two
sources; after every run the whole table (every record exactly once) and its Glue partitions."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F
from pyspark.sql import types as T
from s3lake.parquet import arrival_batches
from s3lake.parquet import convert as j2p
from s3lake.parquet.options import REBUILD_PARTITIONS, Options
from s3lake_testbed.seed import make_glue_database

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = T.StructType([T.StructField("id", T.StringType()), T.StructField("ts", T.StringType())])

# Firehose arrival hour -> (file, [(id, event time)]). Records near a boundary arrive in the next hour:
# b1 is late across an hour, c1 across a day and a month (arrives 2024-06-01 00, happened 2024-05-31).
ARRIVALS = {
    "2024/05/31/22": {"f0": [("a1", "2024-05-31T22:10:00Z")], "f1": [("a2", "2024-05-31T22:59:59Z")]},
    "2024/05/31/23": {"f0": [("b1", "2024-05-31T22:59:58Z")], "f1": [("b2", "2024-05-31T23:30:00Z")]},
    "2024/06/01/00": {"f0": [("c1", "2024-05-31T23:59:59Z")], "f1": [("c2", "2024-06-01T00:00:01Z")]},
    "2024/06/01/01": {"f0": [("d1", "2024-06-01T00:59:00Z")], "f1": [("d2", "2024-06-01T01:05:00Z"),
                                                                     ("d3", "2024-06-01T01:06:00Z")]},
}


def arrive(raw: Path, hour: str) -> None:
    """Firehose delivers one arrival hour: its objects appear under ``raw/YYYY/MM/DD/HH/``."""
    for name, records in ARRIVALS[hour].items():
        path = raw / hour / f"stream-1-{hour.replace('/', '-')}-{name}.json.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress("".join(json.dumps({"id": i, "ts": t}) + "\n" for i, t in records).encode()))


def expected_rows(hours) -> list[tuple[str, str]]:
    return sorted((i, t[:10]) for h in hours for recs in ARRIVALS[h].values() for i, t in recs)


def options(out: Path, inputs, **kw) -> Options:
    return Options(inputs=[str(i) for i in inputs], output=str(out), schema=SCHEMA, timestamp_field="ts", **kw)


def table(spark, out: Path):
    return spark.read.parquet(str(out)).select("id", F.col("dt").cast("string").alias("dt"))


def assert_table(spark, out: Path, hours) -> None:
    """The whole table equals every record of ``hours``, each exactly once, in its event day."""
    expected = spark.createDataFrame(expected_rows(hours), "id string, dt string")
    assert_df_equality(table(spark, out), expected, ignore_row_order=True, ignore_nullable=True)


def hour_batch(raw: Path, hour: str) -> str:
    return arrival_batches.batch_id(f"{raw.resolve().as_uri()}/{hour}/x.json.gz")


def expected_partitions(raw: Path, hours) -> list[list[str]]:
    return sorted({(t[:10], hour_batch(raw, h)) for h in hours for recs in ARRIVALS[h].values() for _, t in recs})


def glue_partitions(glue, table_name: str) -> list[list[str]]:
    db, name = table_name.split(".")
    parts = glue.get_partitions(DatabaseName=db, TableName=name)["Partitions"]
    for p in parts:  # every registered location holds data
        assert list(Path(p["StorageDescriptor"]["Location"]).glob("*.parquet")), p["Values"]
    return sorted(tuple(p["Values"]) for p in parts)


def parquet_files(out: Path) -> dict[str, int]:
    """partition directory -> number of Parquet files in it."""
    found: dict[str, int] = {}
    for p in out.rglob("*.parquet"):
        found[str(p.parent.relative_to(out))] = found.get(str(p.parent.relative_to(out)), 0) + 1
    return found


def test_hourly_runs_keep_late_records_across_hour_day_and_month_exactly_once(spark, tmp_path, glue, unique):
    raw, out = tmp_path / "raw", tmp_path / "events"
    name = f"{make_glue_database(f'sched_{unique}')}.events"
    seen: list[str] = []
    for hour in ARRIVALS:
        arrive(raw, hour)
        summary = j2p.convert(spark, options(out, [raw / hour], table=name))
        seen.append(hour)
        assert summary["batches"] == [hour_batch(raw, hour)]
        assert_table(spark, out, seen)
        assert glue_partitions(glue, name) == expected_partitions(raw, seen)
    # dt=2024-05-31 is fed by three arrival hours, one of them on the next day (and month)
    assert sorted(p.name for p in (out / "dt=2024-05-31").iterdir()) == [
        f"batch={hour_batch(raw, h)}" for h in ("2024/05/31/22", "2024/05/31/23", "2024/06/01/00")]


def test_daily_runs_rerun_and_an_overlapping_hourly_run_keep_every_record_once(spark, tmp_path, glue, unique):
    raw, out = tmp_path / "raw", tmp_path / "events"
    name = f"{make_glue_database(f'daily_{unique}')}.events"
    for hour in ARRIVALS:
        arrive(raw, hour)
    day1, day2 = ["2024/05/31/22", "2024/05/31/23"], ["2024/06/01/00", "2024/06/01/01"]

    j2p.convert(spark, options(out, [raw / "2024/05/31"], table=name))
    assert_table(spark, out, day1)
    assert glue_partitions(glue, name) == expected_partitions(raw, day1)
    files = parquet_files(out)

    # the same input again: the same rows, as many files in the same partitions (rewritten), nothing added
    j2p.convert(spark, options(out, [raw / "2024/05/31"], table=name))
    assert_table(spark, out, day1)
    assert parquet_files(out) == files

    # an hourly run over an hour the daily run already converted replaces that hour's batch only
    j2p.convert(spark, options(out, [raw / "2024/05/31/23"], table=name))
    assert_table(spark, out, day1)

    # the next day brings c1, late for 2024-05-31: it joins the day instead of replacing it
    j2p.convert(spark, options(out, [f"{raw}/2024/06/01/*"], table=name))
    assert_table(spark, out, day1 + day2)
    assert glue_partitions(glue, name) == expected_partitions(raw, day1 + day2)


def test_an_hour_that_arrives_a_day_late_is_added_by_rerunning_its_day(spark, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "events"
    arrive(raw, "2024/05/31/22")
    j2p.convert(spark, options(out, [raw / "2024/05/31"]))     # hour 23 has not arrived yet
    arrive(raw, "2024/06/01/00")
    j2p.convert(spark, options(out, [raw / "2024/06/01"]))
    assert_table(spark, out, ["2024/05/31/22", "2024/06/01/00"])

    arrive(raw, "2024/05/31/23")                                # a day late
    summary = j2p.convert(spark, options(out, [raw / "2024/05/31"]))
    assert summary["batches"] == sorted([hour_batch(raw, "2024/05/31/22"), hour_batch(raw, "2024/05/31/23")])
    assert_table(spark, out, ["2024/05/31/22", "2024/05/31/23", "2024/06/01/00"])


def test_a_run_over_part_of_an_arrival_hour_is_refused_before_writing(spark, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "events"
    arrive(raw, "2024/05/31/23")
    j2p.convert(spark, options(out, [raw / "2024/05/31/23"]))
    files = parquet_files(out)
    one = sorted((raw / "2024/05/31/23").iterdir())[0]
    with pytest.raises(arrival_batches.BatchError, match=r"reads 1 of the 2 files of arrival hour"):
        j2p.convert(spark, options(out, [one]))
    assert parquet_files(out) == files
    assert_table(spark, out, ["2024/05/31/23"])


def test_the_same_hour_of_two_sources_are_two_batches(spark, tmp_path):
    out = tmp_path / "events"
    for source in ("us", "eu"):
        arrive(tmp_path / source, "2024/05/31/23")
        j2p.convert(spark, options(out, [tmp_path / source / "2024/05/31/23"]))
    assert hour_batch(tmp_path / "us", "2024/05/31/23") != hour_batch(tmp_path / "eu", "2024/05/31/23")
    got = table(spark, out)
    expected = spark.createDataFrame(expected_rows(["2024/05/31/23"]) * 2, "id string, dt string")
    assert_df_equality(got, expected, ignore_row_order=True, ignore_nullable=True)


def test_rebuild_partitions_mode_replaces_whole_days_and_keeps_the_flat_layout(spark, tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "events"
    for hour in ARRIVALS:
        arrive(raw, hour)
    j2p.convert(spark, options(out, [raw], mode=REBUILD_PARTITIONS))
    assert_table(spark, out, list(ARRIVALS))
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["dt=2024-05-31", "dt=2024-06-01"]
    assert not list(out.rglob("batch=*"))
    # what the issue reported: a later input's few late records replace the whole day
    j2p.convert(spark, options(out, [raw / "2024/06/01/00"], mode=REBUILD_PARTITIONS))
    expected = spark.createDataFrame([("c1", "2024-05-31"), ("c2", "2024-06-01")], "id string, dt string")
    assert_df_equality(table(spark, out), expected, ignore_row_order=True, ignore_nullable=True)


def _job():
    spec = importlib.util.spec_from_file_location("job_json_to_parquet", ROOT / "jobs" / "json_to_parquet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("pattern", ["2024/05/31/23", "2024/05/31/23/*.gz", "2024/05/31/0*"])
def test_a_scheduled_input_that_matches_no_file_is_one_line_and_exit_2(tmp_path, capsys, pattern):
    raw = tmp_path / "raw"
    (raw / "2024/05/31/23").mkdir(parents=True)  # the hour's prefix exists but holds nothing yet
    schema = tmp_path / "schema.json"
    schema.write_text(SCHEMA.json())
    out = tmp_path / "events"
    argv = ["--input", f"{raw}/{pattern}", "--output", str(out), "--schema", str(schema), "--timestamp-field", "ts"]
    assert _job().main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("s3lake: error: --input ") and "matches no file" in err[0]
    assert not out.exists() and not Path(f"{out}_bad_records").exists()


def test_arrival_batch_ids_name_the_hour_and_the_source():
    a = arrival_batches.batch_id("s3://raw/stream/2024/05/31/23/stream-1-2024-05-31-23-59-00-x.gz")
    assert a == arrival_batches.batch_id("s3://raw/stream/2024/05/31/23/other.gz")
    assert a.startswith("2024-05-31T23-") and len(a) == len("2024-05-31T23-") + 8
    assert a != arrival_batches.batch_id("s3://raw/other-stream/2024/05/31/23/x.gz")
    assert arrival_batches.batch_id("s3://raw/stream/year=2024/month=05/day=31/hour=23/x.gz").startswith(
        "2024-05-31T23-")
    assert arrival_batches.batch_id("s3://raw/stream/2024/05/31/x.gz") is None
    # the scheme does not matter (file:/x and file:///x are the same directory)
    assert arrival_batches.batch_id("file:/d/2024/05/31/23/x") == arrival_batches.batch_id("file:///d/2024/05/31/23/x")
    with pytest.raises(arrival_batches.BatchError, match="mixes files"):
        arrival_batches.assign(["s3://r/s/2024/05/31/23/x", "s3://r/s/misc/y"], ["s3://r/s/"])
