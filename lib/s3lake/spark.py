"""SparkSession access for the jobs: no master is set here (spark-submit or the caller decides)."""

from __future__ import annotations

from pyspark.sql import SparkSession


def get_session(app_name: str) -> SparkSession:
    """The active session, or a new one named ``app_name``; UTC so timestamps never drift."""
    spark = SparkSession.builder.appName(app_name).getOrCreate()
    spark.conf.set("spark.sql.session.timeZone", "UTC")
    return spark
