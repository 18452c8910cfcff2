"""The S3 committer guard: refuse Spark settings that would make a Parquet write to S3 skip EMR's committers.

Two safe combinations are shipped, one per EMR line (conf/emr-configurations-<line>.json):

* **EMRFS pinned** (emr-7.x): ``fs.s3.impl=EmrFileSystem``, the EMRFS S3-optimized committer and the
  S3-optimized commit protocol (``SQLEmrOptimizedCommitProtocol``), which also covers dynamic partition
  overwrite. Sources: emr-spark-s3-optimized-committer.html, emr-spark-committer-reqs.html,
  emr-spark-s3-optimized-commit-protocol.html, emr-spark-commit-protocol-reqs.html (EMR Release Guide).
* **S3A** (emr-spark-8.1.x): the default for ``s3://`` since emr-7.10.0 on every EMR deployment, EMR
  Serverless included (emr-s3a-migrate.html); emr-spark-8.1.0 lists no EMRFS among its applications
  (emr-spark810-release.html). EMR's ``SQLEmrOptimizedCommitProtocol`` hands the write to its
  MagicCommitProtocol (MagicV2 committer) unless
  ``...SQLEmrOptimizedCommitProtocol.leverageMagicCommitProtocol=false`` or the S3A magic committer is
  switched off (emr-spark-magic-commit-protocol.html, s3a-magicv2-committer.html).

Everything else that EMR would silently accept and then write through a rename-based committer (another
protocol or committer class, the optimization off, the FileSystem cache disabled, an unknown ``s3://``
implementation, speculation without the EMRFS committer) is refused with one line.
"""

from __future__ import annotations

from typing import Mapping

from pyspark.sql import SparkSession

from s3lake.errors import ConfigError

EMR_PARQUET_COMMITTER = "com.amazon.emr.committer.EmrOptimizedSparkSqlParquetOutputCommitter"
EMR_COMMIT_PROTOCOL = "org.apache.spark.sql.execution.datasources.SQLEmrOptimizedCommitProtocol"
SPARK_COMMIT_PROTOCOL = "org.apache.spark.sql.execution.datasources.SQLHadoopMapReduceCommitProtocol"
EMRFS = "com.amazon.ws.emr.hadoop.fs.EmrFileSystem"
S3A = "org.apache.hadoop.fs.s3a.S3AFileSystem"
LEVERAGE_MAGIC = f"spark.sql.execution.datasources.{EMR_COMMIT_PROTOCOL.rsplit('.', 1)[1]}.leverageMagicCommitProtocol"
MAGIC_ENABLED = "fs.s3a.committer.magic.enabled"

COMMITTER_KEYS = (
    "spark.sql.parquet.fs.optimized.committer.optimization-enabled",
    "spark.sql.parquet.output.committer.class",
    "spark.sql.sources.commitProtocolClass",
    "spark.sql.sources.partitionOverwriteMode",
    "spark.speculation",
    LEVERAGE_MAGIC,
    "fs.s3.impl",
    "fs.s3.impl.disable.cache",
    MAGIC_ENABLED,
)
CONNECTORS = ("emrfs", "s3a")
DYNAMIC_OVERWRITE = "dynamic-overwrite"  # the write mode that needs EMR's commit protocol on EMRFS


def _false(value: str | None) -> bool:
    return (value or "").strip().lower() == "false"


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def s3_connector(conf: Mapping[str, str | None]) -> str:
    """``emrfs``, ``s3a`` or ``other``: what serves ``s3://`` (unset is S3A, the default since emr-7.10.0)."""
    impl = conf.get("fs.s3.impl")
    if impl in (None, "", S3A):
        return "s3a"
    return "emrfs" if impl == EMRFS else "other"


def committer_conflicts(conf: Mapping[str, str | None], *, on_emr: bool, mode: str) -> list[str]:
    """The settings in ``conf`` that would make the write skip EMR's S3 committers (empty: safe).

    ``mode`` is how the write commits: ``dynamic-overwrite`` (dynamic partition overwrite, as
    json_to_parquet's replace-batches and rebuild-partitions write) or ``append``.

    ``conf`` maps the keys in COMMITTER_KEYS to their effective values (None = unset); ``on_emr`` says
    whether EMR's commit classes are on the classpath (off EMR only the portable checks apply).
    """
    problems = []
    if _false(conf.get("spark.sql.parquet.fs.optimized.committer.optimization-enabled")):
        problems.append("spark.sql.parquet.fs.optimized.committer.optimization-enabled=false")
    protocol = conf.get("spark.sql.sources.commitProtocolClass")
    if protocol and protocol not in (EMR_COMMIT_PROTOCOL, SPARK_COMMIT_PROTOCOL):
        problems.append(f"spark.sql.sources.commitProtocolClass={protocol}")
    if _true(conf.get("fs.s3.impl.disable.cache")):
        problems.append("fs.s3.impl.disable.cache=true")
    speculation = _true(conf.get("spark.speculation"))
    if not on_emr:
        if speculation:
            # Without the EMRFS committer, speculative tasks can duplicate output (SPARK-10063).
            problems.append("spark.speculation=true without the EMRFS S3-optimized committer")
        return problems

    connector = s3_connector(conf)
    if connector == "other":
        problems.append(f"fs.s3.impl={conf.get('fs.s3.impl')} (s3:// must be served by {EMRFS} or {S3A})")
        return problems
    if connector == "emrfs":
        committer = conf.get("spark.sql.parquet.output.committer.class")
        if committer and committer != EMR_PARQUET_COMMITTER:
            problems.append(f"spark.sql.parquet.output.committer.class={committer}")
        if mode == DYNAMIC_OVERWRITE and protocol != EMR_COMMIT_PROTOCOL:
            problems.append(f"spark.sql.sources.commitProtocolClass={protocol} (need {EMR_COMMIT_PROTOCOL})")
        return problems

    # S3A: only EMR's protocol reaches the magic committer, in every mode.
    if protocol != EMR_COMMIT_PROTOCOL:
        problems.append(f"spark.sql.sources.commitProtocolClass={protocol} (on S3A need {EMR_COMMIT_PROTOCOL})")
    if _false(conf.get(LEVERAGE_MAGIC)):
        problems.append(f"{LEVERAGE_MAGIC}=false (S3A would commit by renaming)")
    if _false(conf.get(MAGIC_ENABLED)):
        problems.append(f"{MAGIC_ENABLED}=false (S3A would commit by renaming)")
    if speculation:
        # The MagicV2 committer writes a task's files into the output at task commit.
        problems.append("spark.speculation=true with the S3A magic committer")
    return problems


def _class_exists(spark: SparkSession, name: str) -> bool:
    try:
        spark.sparkContext._jvm.java.lang.Class.forName(name)
        return True
    except Exception:  # noqa: BLE001 - py4j wraps ClassNotFoundException
        return False


def session_conf(spark: SparkSession) -> tuple[dict[str, str | None], bool]:
    """The effective committer-related settings and whether EMR's commit classes are on the classpath."""
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    conf: dict[str, str | None] = {}
    for key in COMMITTER_KEYS:
        if key.startswith("fs."):
            conf[key] = hadoop.get(key)
        elif key == "spark.speculation":
            conf[key] = spark.sparkContext.getConf().get(key, None)
        else:
            conf[key] = spark.conf.get(key, None)
    # emr-7.x has both classes; a line without EMRFS (S3A only) still has EMR's commit protocol.
    on_emr = _class_exists(spark, EMR_COMMIT_PROTOCOL) or _class_exists(spark, EMR_PARQUET_COMMITTER)
    return conf, on_emr


def check_committer(spark: SparkSession, mode: str) -> None:
    """Raise ConfigError (one line) if this session's settings would skip EMR's S3 committers."""
    conf, on_emr = session_conf(spark)
    problems = committer_conflicts(conf, on_emr=on_emr, mode=mode)
    if problems:
        raise ConfigError(
            "settings that disable the S3-optimized committer: " + "; ".join(problems)
            + " (see conf/emr-configurations-<line>.json)"
        )


__all__ = [
    "COMMITTER_KEYS",
    "EMRFS",
    "EMR_COMMIT_PROTOCOL",
    "EMR_PARQUET_COMMITTER",
    "S3A",
    "SPARK_COMMIT_PROTOCOL",
    "check_committer",
    "committer_conflicts",
    "s3_connector",
    "session_conf",
]
