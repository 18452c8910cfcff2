"""The committer guard (s3lake.parquet.committer) against both shipped EMR configurations and the unsafe variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from s3lake.errors import ConfigError
from s3lake.parquet import committer as c

ROOT = Path(__file__).resolve().parent.parent
LINES = {"emr-7": "emrfs", "emr-spark-8": "s3a"}  # line -> the connector its configuration ships

# A real FileCommitProtocol subclass that is not one of EMR's: Spark 4 validates the class when the key is set
# (INVALID_CONF_VALUE.REQUIREMENT: "Class must be loadable and subclass of ...FileCommitProtocol").
FOREIGN_PROTOCOL = "org.apache.spark.internal.io.HadoopMapReduceCommitProtocol"


def shipped(line: str) -> dict[str, str | None]:
    """The effective committer settings of conf/emr-configurations-<line>.json (spark.hadoop.* -> Hadoop keys)."""
    conf = json.loads((ROOT / "conf" / f"emr-configurations-{line}.json").read_text())
    props = next(x["Properties"] for x in conf if x["Classification"] == "spark-defaults")
    return {k: props.get(k, props.get(f"spark.hadoop.{k}")) for k in c.COMMITTER_KEYS}


@pytest.mark.parametrize("line", sorted(LINES))
@pytest.mark.parametrize("mode", ["dynamic-overwrite", "append"])
def test_each_shipped_configuration_is_a_safe_combination(line, mode):
    conf = shipped(line)
    assert c.s3_connector(conf) == LINES[line]
    assert conf["spark.sql.sources.commitProtocolClass"] == c.EMR_COMMIT_PROTOCOL
    assert conf["spark.speculation"] == "false"
    assert conf["fs.s3.impl.disable.cache"] == "false"
    assert c.committer_conflicts(conf, on_emr=True, mode=mode) == []


def test_emr_7_pins_emrfs_and_its_committer():
    conf = shipped("emr-7")
    assert conf["fs.s3.impl"] == c.EMRFS  # emr-7.10+ would otherwise serve s3:// with S3A
    assert conf["spark.sql.parquet.output.committer.class"] == c.EMR_PARQUET_COMMITTER
    assert conf["spark.sql.parquet.fs.optimized.committer.optimization-enabled"] == "true"


def test_emr_spark_8_uses_s3a_with_the_magic_commit_protocol():
    conf = shipped("emr-spark-8")
    assert conf["fs.s3.impl"] == c.S3A
    assert conf[c.LEVERAGE_MAGIC] == "true" and conf[c.MAGIC_ENABLED] == "true"
    assert conf["spark.sql.parquet.output.committer.class"] is None  # an EMRFS class, meaningless on S3A


def test_unset_fs_s3_impl_is_s3a_the_default_since_emr_7_10():
    assert c.s3_connector({"fs.s3.impl": None}) == "s3a"
    conf = {**shipped("emr-spark-8"), "fs.s3.impl": None}
    assert c.committer_conflicts(conf, on_emr=True, mode="dynamic-overwrite") == []


@pytest.mark.parametrize(
    "setting",
    [
        {"spark.sql.parquet.output.committer.class": "org.apache.parquet.hadoop.ParquetOutputCommitter"},
        {"spark.sql.sources.commitProtocolClass": c.SPARK_COMMIT_PROTOCOL},
        {"spark.sql.sources.commitProtocolClass": FOREIGN_PROTOCOL},
        {"spark.sql.parquet.fs.optimized.committer.optimization-enabled": "false"},
        {"fs.s3.impl.disable.cache": "true"},
        {"fs.s3.impl": "com.example.MyFileSystem"},
    ],
)
def test_settings_that_silently_disable_the_emrfs_committer_are_refused(setting):
    conf = {**shipped("emr-7"), **setting}
    assert c.committer_conflicts(conf, on_emr=True, mode="dynamic-overwrite")


@pytest.mark.parametrize(
    "setting",
    [
        {"spark.sql.sources.commitProtocolClass": c.SPARK_COMMIT_PROTOCOL},
        {"spark.sql.sources.commitProtocolClass": None},
        {c.LEVERAGE_MAGIC: "false"},
        {c.MAGIC_ENABLED: "FALSE"},
        {"spark.speculation": "true"},
        {"fs.s3.impl.disable.cache": "true"},
    ],
)
@pytest.mark.parametrize("mode", ["dynamic-overwrite", "append"])
def test_settings_that_leave_s3a_without_the_magic_committer_are_refused(setting, mode):
    conf = {**shipped("emr-spark-8"), **setting}
    problems = c.committer_conflicts(conf, on_emr=True, mode=mode)
    assert problems and all(isinstance(p, str) and "\n" not in p for p in problems)


def test_emr_7_line_switched_to_s3a_must_bring_the_magic_protocol_settings_along():
    """emr-7 configuration with fs.s3.impl=S3A: its EMRFS committer class is moot, the protocol still needed."""
    conf = {**shipped("emr-7"), "fs.s3.impl": c.S3A}
    assert c.committer_conflicts(conf, on_emr=True, mode="append") == []
    assert c.committer_conflicts({**conf, c.LEVERAGE_MAGIC: "false"}, on_emr=True, mode="append")


def test_append_on_emrfs_does_not_need_the_commit_protocol():
    conf = {**shipped("emr-7"), "spark.sql.sources.commitProtocolClass": None}
    assert c.committer_conflicts(conf, on_emr=True, mode="append") == []
    assert c.committer_conflicts(conf, on_emr=True, mode="dynamic-overwrite") == [
        f"spark.sql.sources.commitProtocolClass=None (need {c.EMR_COMMIT_PROTOCOL})"
    ]


def test_off_emr_only_the_portable_checks_apply():
    assert c.committer_conflicts({}, on_emr=False, mode="dynamic-overwrite") == []
    assert c.committer_conflicts({"spark.speculation": "true"}, on_emr=False, mode="append") == [
        "spark.speculation=true without the EMRFS S3-optimized committer"
    ]
    assert c.committer_conflicts({"fs.s3.impl": "x.Y"}, on_emr=False, mode="append") == []


def test_the_local_session_passes_and_is_left_untouched(spark):
    before = {k: spark.conf.get(k, None) for k in c.COMMITTER_KEYS if k.startswith("spark.sql")}
    conf, on_emr = c.session_conf(spark)
    assert on_emr is False  # plain pyspark has none of EMR's commit classes
    assert set(conf) == set(c.COMMITTER_KEYS)
    c.check_committer(spark, "dynamic-overwrite")
    assert {k: spark.conf.get(k, None) for k in before} == before


def test_a_loadable_foreign_commit_protocol_is_refused_with_one_line(spark):
    spark.conf.set("spark.sql.sources.commitProtocolClass", FOREIGN_PROTOCOL)
    try:
        with pytest.raises(ConfigError, match=f"commitProtocolClass={FOREIGN_PROTOCOL}") as err:
            c.check_committer(spark, "dynamic-overwrite")
        assert "\n" not in str(err.value)
    finally:
        spark.conf.unset("spark.sql.sources.commitProtocolClass")
    c.check_committer(spark, "dynamic-overwrite")


def test_json_to_parquet_keeps_calling_the_guard():
    from s3lake.parquet import convert

    assert convert.check_committer is c.check_committer
