"""The test bed: one moto server per session on a free loopback port, one local[2] SparkSession."""

from __future__ import annotations

import os
import sys
import uuid

import pytest
from s3lake.testbed import MotoServer


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """The session's moto server; the environment points boto3, pyarrow and the AWS CLI at it."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = MotoServer(log_path=str(log))
    server.start()
    saved = {k: os.environ.get(k) for k in server.environ()}
    os.environ.update(server.environ())
    yield server.url
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def spark(moto_server):
    """Depends on moto_server so Python workers inherit AWS_ENDPOINT_URL when they fork."""
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("s3lake-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "2g")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def s3(moto_server):
    from s3lake import aws

    return aws.s3()


@pytest.fixture
def glue(moto_server):
    from s3lake import aws

    return aws.glue()


@pytest.fixture
def unique():
    """A short unique suffix for bucket/table names, so tests never share state in the server."""
    return uuid.uuid4().hex[:10]
