from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
from datetime import datetime
from pathlib import Path

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F
from pyspark.sql import types as T
from s3lake import glue_catalog
from s3lake.errors import ConfigError
from s3lake.parquet import arrival_batches, read, write
from s3lake.parquet import convert as j2p
from s3lake.parquet.options import REBUILD_PARTITIONS, Options, parse_partition_by, validate
from s3lake_testbed.seed import make_glue_database

ROOT = Path(__file__).resolve().parents[1]

SCHEMA = T.StructType([
    T.StructField("id", T.StringType()),
    T.StructField("ts", T.StringType()),
    T.StructField("user", T.StructType([
        T.StructField("uid", T.LongType()),
        T.StructField("geo", T.StructType([T.StructField("cc", T.StringType())])),
    ])),
    T.StructField("tags", T.ArrayType(T.StringType())),
])
DATA_COLS = [f.name for f in SCHEMA.fields]

GOOD = [
    '{"id":"a","ts":1714525200000,"user":{"uid":1,"geo":{"cc":"DE"}},"tags":["x","y"]}',   # epoch ms
    '{"id":"b","ts":1714608000,"user":{"uid":2,"geo":null},"tags":[]}',                     # epoch s
    '{"id":"c","ts":"2024-05-01T23:30:00-02:00","user":null,"extra":1,"more":{"k":2}}',     # ISO + drift
    '{"id":"d","ts":"2024-05-03T10:00:00Z","tags":["z"]}',                                   # ISO, Z
]
BAD = [
    '{"id":"e","ts":1714608000,"user":{"uid":"not-a-number"}}',  # nested type mismatch
    '{"id":"f","ts":1714608000,"tags":"not-an-array"}',          # array type mismatch
    '{"id":"g", "ts": 17146',                                    # broken JSON
    '{"id":"h","user":{"uid":3}}',                               # no timestamp
    '{"id":"i","ts":"yesterday"}',                               # unparseable timestamp
]


def lines_df(spark, lines):
    return spark.createDataFrame([(v, "f.json") for v in lines], f"value string, {read.FILE} string")


def write_input(directory: Path, name: str, lines, *, gz: bool = True) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (name + (".json.gz" if gz else ".json"))
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return str(path)


def options(tmp_path: Path, inputs, **kw) -> Options:
    base = dict(inputs=inputs, output=str(tmp_path / "out"), schema=SCHEMA, timestamp_field="ts",
                partition_by=["dt"], max_bad_fraction=1.0, unknown_fields_sample=1)
    base.update(kw)
    return Options(**base)


def layout(root: Path) -> dict[str, int]:
    """partition dir -> number of Parquet files under it."""
    found: dict[str, int] = {}
    for f in root.rglob("*.parquet"):
        found[str(f.parent.relative_to(root))] = found.get(str(f.parent.relative_to(root)), 0) + 1
    return found


def test_parses_nested_fields_and_all_timestamp_styles_and_flags_bad_records(spark):
    got = read.with_partitions(read.parse_records(lines_df(spark, GOOD + BAD), SCHEMA, "ts"), ["dt"])
    got = got.select("id", "user", "tags", "dt", read.REASON, read.UNKNOWN).orderBy("id")
    user = T.StructType(SCHEMA["user"].dataType.fields)
    expected = spark.createDataFrame(
        [
            ("a", (1, ("DE",)), ["x", "y"], "2024-05-01", None, 0),
            ("b", (2, None), [], "2024-05-02", None, 0),
            ("c", None, None, "2024-05-02", None, 2),
            ("d", None, ["z"], "2024-05-03", None, 0),
            (None, None, None, None, read.BAD_MALFORMED, 0),
            ("e", (None, None), None, None, read.BAD_MALFORMED, 0),
            ("f", None, None, None, read.BAD_MALFORMED, 0),
            ("h", (3, None), None, None, read.BAD_TS_MISSING, 0),
            ("i", None, None, None, read.BAD_TS_UNPARSEABLE, 0),
        ],
        T.StructType([
            T.StructField("id", T.StringType()), T.StructField("user", user),
            T.StructField("tags", T.ArrayType(T.StringType())), T.StructField("dt", T.StringType()),
            T.StructField(read.REASON, T.StringType()), T.StructField(read.UNKNOWN, T.IntegerType(), False),
        ]),
    ).orderBy("id")
    assert_df_equality(got, expected, ignore_nullable=True, ignore_row_order=True)


def test_bad_rows_keep_their_raw_line_and_good_rows_do_not(spark):
    got = read.parse_records(lines_df(spark, GOOD[:1] + BAD[2:3]), SCHEMA, "ts").select(read.RAW)
    expected = spark.createDataFrame([(None,), (BAD[2],)], f"{read.RAW} string")
    assert_df_equality(got, expected, ignore_nullable=True, ignore_row_order=True)



def test_blank_and_whitespace_lines_are_skipped_and_other_lines_are_kept(spark):
    lines = ["", "   ", "\t \t", GOOD[0], " " + GOOD[1], "[1, 2]", "null", BAD[2]]
    got = read.parse_records(lines_df(spark, lines), SCHEMA, "ts").select("id", read.REASON)
    expected = spark.createDataFrame(
        [("a", None), ("b", None), (None, read.BAD_MALFORMED), (None, read.BAD_MALFORMED), (None, read.BAD_MALFORMED)],
        f"id string, {read.REASON} string")
    assert_df_equality(got, expected, ignore_nullable=True, ignore_row_order=True)

def test_unknown_fields_are_counted_in_a_deterministic_sample_of_the_records(spark):
    lines = [f'{{"id":"{i}","ts":1714525200,"extra":{i}}}' for i in range(2000)]
    first = read.parse_records(lines_df(spark, lines), SCHEMA, "ts", unknown_fields_sample=16)
    counted = first.where(F.col(read.UNKNOWN).isNotNull())
    assert 2000 / 16 * 0.7 < counted.count() < 2000 / 16 * 1.3
    assert counted.where(F.col(read.UNKNOWN) != 1).count() == 0  # each counted record has its one extra field
    again = read.parse_records(lines_df(spark, lines), SCHEMA, "ts", unknown_fields_sample=16)
    assert_df_equality(again.where(F.col(read.UNKNOWN).isNotNull()), counted, ignore_row_order=True)


def test_partition_columns_year_month_day_hour_in_utc(spark):
    df = read.parse_records(lines_df(spark, GOOD[2:3]), SCHEMA, "ts")
    got = read.with_partitions(df, ["year", "month", "day", "hour"]).select("year", "month", "day", "hour")
    expected = spark.createDataFrame([("2024", "05", "02", "01")], "year string, month string, day string, hour string")
    assert_df_equality(got, expected, ignore_nullable=True)


def test_dedup_keeps_the_earliest_record_per_key(spark):
    lines = [
        '{"id":"a","ts":"2024-05-01T10:00:00Z","tags":["late"]}',
        '{"id":"a","ts":"2024-05-01T09:00:00Z","tags":["early"]}',
        '{"id":"b","ts":"2024-05-01T09:00:00Z","tags":["only"]}',
    ]
    df = read.parse_records(lines_df(spark, lines), SCHEMA, "ts")
    got = read.dedup(df, ["id"], DATA_COLS).select("id", "tags")
    expected = spark.createDataFrame([("a", ["early"]), ("b", ["only"])], "id string, tags array<string>")
    assert_df_equality(got, expected, ignore_nullable=True, ignore_row_order=True)


def test_writes_partitions_quarantines_bad_records_and_a_rerun_is_identical(spark, tmp_path):
    inputs = [write_input(tmp_path / "in", "part-1", GOOD[:2] + BAD), write_input(tmp_path / "in", "part-2", GOOD[2:])]
    opts = options(tmp_path, inputs, max_records_per_file=1)

    first = j2p.convert(spark, opts)
    out = Path(opts.output)
    files_first = layout(out)
    data_first = spark.read.parquet(opts.output).orderBy("id").collect()
    second = j2p.convert(spark, opts)

    assert first == second
    assert first["input_records"] == 9 and first["bad_records"] == 5 and first["written_records"] == 4
    assert first["bad_by_reason"] == {read.BAD_MALFORMED: 3, read.BAD_TS_MISSING: 1, read.BAD_TS_UNPARSEABLE: 1}
    assert first["unknown_fields_ignored"] == 2 and first["records_with_unknown_fields"] == 1
    assert first["records_checked_for_unknown_fields"] == 4
    # one record per file (--max-records-per-file 1): 2024-05-02 holds b and c; no empty files. The input
    # is not in the arrival layout: one batch, named by its --input arguments.
    batch = "batch=" + first["batches"][0]
    assert first["batches"] == [arrival_batches.input_batch_id(inputs)]
    assert files_first == {f"dt=2024-05-01/{batch}": 1, f"dt=2024-05-02/{batch}": 2,
                           f"dt=2024-05-03/{batch}": 1} == layout(out)
    assert spark.read.parquet(opts.output).orderBy("id").collect() == data_first
    assert [r["id"] for r in data_first] == ["a", "b", "c", "d"]

    bad_dir = Path(first["bad_records_path"])
    assert bad_dir == tmp_path / "out_bad_records" and [p.name for p in bad_dir.iterdir() if p.is_dir()] == [batch]
    bad = spark.read.json(str(bad_dir)).drop("batch")
    expected = spark.createDataFrame(
        [(Path(inputs[0]).name, reason, detail, raw) for raw, reason, detail in zip(
            BAD, [read.BAD_MALFORMED] * 3 + [read.BAD_TS_MISSING, read.BAD_TS_UNPARSEABLE],
            [None] * 4 + ["tried: epoch seconds/milliseconds; ISO-8601"])],
        "input_file string, reason string, detail string, record string",
    )
    got = bad.withColumn("input_file", F.element_at(F.split("input_file", "/"), -1))
    assert_df_equality(got, expected, ignore_nullable=True, ignore_row_order=True, ignore_column_order=True)


def test_rebuild_partitions_replaces_whole_event_partitions_the_input_touches(spark, tmp_path):
    first = write_input(tmp_path / "in1", "x", GOOD[:2])    # 2024-05-01, 2024-05-02
    j2p.convert(spark, options(tmp_path, [first], mode=REBUILD_PARTITIONS))
    replacement = write_input(tmp_path / "in2", "y", ['{"id":"b2","ts":1714608000}'])  # 2024-05-02 only
    j2p.convert(spark, options(tmp_path, [replacement], mode=REBUILD_PARTITIONS))
    got = spark.read.parquet(str(tmp_path / "out")).select("id", F.col("dt").cast("string"))
    expected = spark.createDataFrame([("a", "2024-05-01"), ("b2", "2024-05-02")], "id string, dt string")
    assert_df_equality(got, expected, ignore_nullable=True, ignore_row_order=True)


def test_a_big_day_is_written_by_several_tasks_and_small_days_by_one_each(spark, tmp_path):
    def day_rows(n: int, days: int, parts: int):
        day = F.concat(F.lit("2024-05-0"), (F.col("id") % days + 1).cast("string"))
        return spark.range(0, n, 1, parts).select("id", day.alias("dt"), F.sha2(F.col("id").cast("string"), 256)
                                                   .alias("pad"))  # incompressible: AQE counts shuffle bytes

    before = spark.conf.get(write.ADVISORY_SIZE, None)
    big, small = day_rows(8000, 1, 4), day_rows(90, 3, 4)  # 4 map tasks each
    with write.advisory_size(spark, 64 * 1024):
        write.for_writing(big, ["id", "pad"], ["dt"]).write.partitionBy("dt").parquet(str(tmp_path / "big"))
        write.for_writing(small, ["id", "pad"], ["dt"]).write.partitionBy("dt").parquet(str(tmp_path / "small"))
    assert spark.conf.get(write.ADVISORY_SIZE, None) == before
    assert layout(tmp_path / "big") == {"dt=2024-05-01": 4}  # repartition(dt) wrote 1
    assert layout(tmp_path / "small") == {"dt=2024-05-01": 1, "dt=2024-05-02": 1, "dt=2024-05-03": 1}
    got = spark.read.parquet(str(tmp_path / "big")).select("id", F.col("dt").cast("string"), "pad")
    assert_df_equality(got, big, ignore_row_order=True, ignore_nullable=True)


def test_too_many_bad_records_fails_without_touching_the_output(spark, tmp_path):
    inputs = [write_input(tmp_path / "in", "bad", GOOD[:1] + BAD)]
    with pytest.raises(read.TooManyBadRecords, match="5 of 6 records are bad"):
        j2p.convert(spark, options(tmp_path, inputs, max_bad_fraction=0.5))
    assert not (tmp_path / "out").exists()
    assert len(list((tmp_path / "out_bad_records").rglob("*.json"))) == 1


def test_dedup_key_end_to_end(spark, tmp_path):
    dup = ['{"id":"a","ts":1714525200000}', '{"id":"a","ts":1714525200000}', '{"id":"z","ts":1714525200}']
    summary = j2p.convert(spark, options(tmp_path, [write_input(tmp_path / "in", "d", dup, gz=False)],
                                         dedup_keys=["id"], reuse_shuffle=False))
    assert (summary["written_records"], summary["duplicates_dropped"]) == (2, 1)


def test_registers_glue_table_and_partitions(spark, tmp_path, glue, unique):
    db = make_glue_database(f"lake_{unique}")
    table = f"{db}.events"
    opts = options(tmp_path, [write_input(tmp_path / "in", "g", GOOD)], table=table)
    summary = j2p.convert(spark, opts)
    assert summary["glue"] == {"created": 3, "updated": 0}
    assert j2p.convert(spark, opts)["glue"] == {"created": 0, "updated": 3}

    meta = glue.get_table(DatabaseName=db, Name="events")["Table"]
    sd = meta["StorageDescriptor"]
    assert meta["TableType"] == "EXTERNAL_TABLE"
    assert meta["PartitionKeys"] == [{"Name": "dt", "Type": "string"}, {"Name": "batch", "Type": "string"}]
    assert sd["Location"] == opts.output + "/"
    assert sd["SerdeInfo"]["SerializationLibrary"] == "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
    assert sd["InputFormat"] == "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
    assert sd["Columns"] == [
        {"Name": "id", "Type": "string"},
        {"Name": "ts", "Type": "string"},
        {"Name": "user", "Type": "struct<uid:bigint,geo:struct<cc:string>>"},
        {"Name": "tags", "Type": "array<string>"},
    ]
    parts = glue.get_partitions(DatabaseName=db, TableName="events")["Partitions"]
    b = summary["batches"][0]
    assert sorted((p["Values"], p["StorageDescriptor"]["Location"]) for p in parts) == [
        (["2024-05-01", b], f"{opts.output}/dt=2024-05-01/batch={b}/"),
        (["2024-05-02", b], f"{opts.output}/dt=2024-05-02/batch={b}/"),
        (["2024-05-03", b], f"{opts.output}/dt=2024-05-03/batch={b}/"),
    ]
    for part in parts:  # every registered partition location holds data
        assert list(Path(part["StorageDescriptor"]["Location"]).glob("*.parquet"))
    assert glue_catalog.schema_from_table(table) == SCHEMA


def _job():
    spec = importlib.util.spec_from_file_location("job_json_to_parquet", ROOT / "jobs" / "json_to_parquet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "schema_text,message",
    [
        (None, "s3lake: error: cannot read schema file"),
        ("{not json", "s3lake: error: schema file .* is not valid JSON"),
        ('{"type": "struct", "fields": [{"name": "a"}]}', "s3lake: error: schema file .* is not a Spark StructType"),
    ],
)
def test_bad_schema_gives_one_clear_line(tmp_path, capsys, schema_text, message):
    schema = tmp_path / "schema.json"
    if schema_text is not None:
        schema.write_text(schema_text)
    argv = ["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--schema", str(schema),
            "--timestamp-field", "ts"]
    assert _job().main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert __import__("re").match(message, err)


def test_cli_converts_with_the_shipped_example_schema(spark, tmp_path, capsys):
    import random

    from s3lake_testbed.demo.json_to_parquet import firehose_record

    rng = random.Random(1)
    path = write_input(tmp_path / "in", "fh", [json.dumps(firehose_record(rng, i)) for i in range(30)])
    argv = ["--input", os.path.dirname(path), "--output", str(tmp_path / "o"),
            "--schema", str(ROOT / "conf" / "schemas" / "firehose-events.json"),
            "--timestamp-field", "event_time", "--partition-by", "year/month/day", "--dedup-key", "event_id"]
    assert _job().main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["json_to_parquet"]
    assert (summary["input_records"], summary["bad_records"], summary["written_records"]) == (30, 0, 30)
    assert all(p.name.startswith("day=") for p in (tmp_path / "o").glob("year=2024/month=05/*"))


def test_invalid_options_are_config_errors():
    with pytest.raises(ConfigError, match="--partition-by"):
        parse_partition_by("week")
    with pytest.raises(ConfigError, match="--timestamp-field"):
        validate(Options(inputs=["x"], output="o", schema=SCHEMA, timestamp_field="nope"))
    with pytest.raises(ConfigError, match="DB.TABLE"):
        glue_catalog.split_table_name("no_dot")


# ------------------------------------------------------------------ any field name JSON allows

ODD_NAMES = ["id.orig_h", "a b", "x[0]", "q`t", 'say "hi"', "été", "0lead", "_u", "Case", "case"]


def test_any_field_name_json_allows_lands_in_parquet_exactly_and_reaches_time_and_dedup(spark, tmp_path):
    schema = T.StructType([T.StructField(n, T.StringType()) for n in ODD_NAMES] + [
        T.StructField("when.at", T.StructType([T.StructField("t s", T.StringType())]))])
    rows = [{**{n: f"{n}-{i % 2}" for n in ODD_NAMES}, "when.at": {"t s": f"2024-05-0{1 + i % 2}T00:00:00Z"}}
            for i in range(4)]
    src = tmp_path / "in.json"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = j2p.convert(spark, Options(
        inputs=[str(src)], output=str(tmp_path / "out"), schema=schema, timestamp_field="`when.at`.t s",
        dedup_keys=["`id.orig_h`", "`q``t`", "Case"], mode=REBUILD_PARTITIONS, unknown_fields_sample=1))
    assert (summary["bad_records"], summary["unknown_fields_ignored"], summary["written_records"]) == (0, 0, 2)
    import pyarrow.parquet as pq

    got = pq.read_table(str(tmp_path / "out")).to_pylist()
    assert sorted(got, key=lambda r: r["Case"]) == [
        {**{n: f"{n}-{i}" for n in ODD_NAMES}, "when.at": {"t s": f"2024-05-0{1 + i}T00:00:00Z"},
         "dt": f"2024-05-0{1 + i}"} for i in range(2)]


@pytest.mark.parametrize("change, message", [
    (dict(table="db.t"), "differ only in case: Glue and Athena fold names"),
    (dict(timestamp_field="nope"), "--timestamp-field 'nope' is not a field of the schema"),
    (dict(dedup_keys=["`a.b`.c"]), "--dedup-key '`a.b`.c' is not a field"),
    (dict(timestamp_field="a.b"), "is ambiguous: the schema has `a.b` and `a`.`b`; say which with backticks"),
    (dict(timestamp_formats=["dd MMM EEE yyyy"]), "a day of the week (E) can only be the first field"),
])
def test_names_and_paths_the_job_cannot_honour_are_refused_before_reading(change, message):
    schema = T.StructType([T.StructField("Case", T.StringType()), T.StructField("case", T.StringType()),
                           T.StructField("a.b", T.StringType()),
                           T.StructField("a", T.StructType([T.StructField("b", T.StringType())]))])
    opts = Options(**{"inputs": ["x"], "output": "o", "schema": schema, "timestamp_field": "`a.b`", **change})
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(opts)


def test_a_pattern_spark_rejects_is_one_line_before_reading(spark, tmp_path):
    opts = options(tmp_path, [str(tmp_path / "missing")], timestamp_formats=["yyyy-MM-dd'T"])
    with pytest.raises(ConfigError, match="is not a Spark datetime pattern"):
        j2p.convert(spark, opts)


def test_timestamps_as_producers_write_them_and_what_an_unparseable_one_was_tried_as(spark, tmp_path):
    schema = T.StructType([T.StructField("id", T.StringType()), T.StructField("t", T.StringType())])
    lines = ['{"id":"tw","t":"Sun Aug 31 00:29:15 +0000 2014"}', '{"id":"clf","t":"10/Oct/2000:13:55:36 -0700"}',
             '{"id":"frac","t":"1409444955.25"}', '{"id":"iso","t":"2014-08-31T00:29:15Z"}',
             '{"id":"bad","t":"31.08.2014"}']
    got = read.parse_records(lines_df(spark, lines), schema, "t", timestamp_formats=[
        "EEE MMM dd HH:mm:ss Z yyyy", "dd/MMM/yyyy:HH:mm:ss Z"]).select("id", read.TS, read.REASON)
    assert {r["id"]: (r[read.TS], r[read.REASON]) for r in got.collect()} == {
        "tw": (datetime(2014, 8, 31, 0, 29, 15), None), "clf": (datetime(2000, 10, 10, 20, 55, 36), None),
        "frac": (datetime(2014, 8, 31, 0, 29, 15, 250000), None), "iso": (datetime(2014, 8, 31, 0, 29, 15), None),
        "bad": (None, read.BAD_TS_UNPARSEABLE)}
    assert read.formats_tried(["EEE MMM dd HH:mm:ss Z yyyy"]) == (
        "'EEE MMM dd HH:mm:ss Z yyyy'; epoch seconds/milliseconds; ISO-8601")
