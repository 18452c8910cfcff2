"""The local SparkSession used by the tests, ``make demo`` and ``make bench`` (never by the jobs)."""

from __future__ import annotations

import os
import sys


def local_session(app: str, *, master: str = "local[2]", shuffle_partitions: int = 2,
                  driver_memory: str = "2g"):
    """``local[2]``, UI off, UTC; Python workers run this interpreter (the venv's), bound to loopback.

    Call it after ``AWS_ENDPOINT_URL`` is set: Python workers inherit the environment when they start.
    """
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master(master)
        .appName(app)
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", driver_memory)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session
