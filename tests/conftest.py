"""The test bed: one strict moto server per session (moto plus the S3 behaviours it lacks,
:mod:`s3lake_testbed.strict_s3`) on a free loopback port behind a fault proxy, one local[2] SparkSession;
a plain moto server, started only if a test asks for ``plain_moto``."""

from __future__ import annotations

import os
import uuid

import pytest
from s3lake_testbed import MotoServer


@pytest.fixture(scope="session")
def _testbed(tmp_path_factory):
    """The session's strict moto server and, in front of it, a fault proxy (no latency, no faults by default).

    The environment points boto3, pyarrow and the AWS CLI at the proxy, so Spark's Python workers (which
    inherit the environment once, when they start) route through it too; tests that inject faults
    configure the ``s3_proxy`` fixture and must set its faults back to None.
    """
    from s3lake_testbed.proxy import ProxyProcess

    logs = tmp_path_factory.mktemp("moto")
    server = MotoServer(log_path=str(logs / "moto.log"), strict=True)
    server.start()
    proxy = ProxyProcess(server.url, log_path=str(logs / "proxy.log"))
    try:
        proxy.start()
    except BaseException:
        server.stop()
        raise
    env = {**server.environ(), **proxy.environ()}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield server, proxy
    proxy.stop()
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def moto_server(_testbed):
    """The moto server's own URL (bypasses the proxy); ``AWS_ENDPOINT_URL`` is the proxy's."""
    return _testbed[0].url


@pytest.fixture(scope="session")
def plain_moto(tmp_path_factory):
    """URL of a plain (not strict) moto server of its own, for tests that show what moto lacks.

    Not in the environment: talk to it with clients built for its URL.
    """
    server = MotoServer(log_path=str(tmp_path_factory.mktemp("plain-moto") / "moto.log"), strict=False)
    yield server.start()
    server.stop()


@pytest.fixture(scope="session")
def s3_proxy(_testbed):
    """The session's :class:`~s3lake_testbed.proxy.ProxyProcess` between every client and moto."""
    return _testbed[1]


@pytest.fixture(scope="session")
def spark(moto_server):
    """Depends on moto_server so Python workers inherit AWS_ENDPOINT_URL when they fork."""
    from s3lake_testbed.spark import local_session

    session = local_session("s3lake-tests")
    yield session
    session.stop()


@pytest.fixture
def proxy(s3_proxy):
    """The session proxy, counts cleared; faults, limits and latency are always switched off afterwards."""
    s3_proxy.configure(faults=None, limits=None, latency=0.0)
    s3_proxy.reset()
    yield s3_proxy
    s3_proxy.configure(faults=None, limits=None, latency=0.0)


@pytest.fixture(scope="module")
def direct(moto_server):
    """An S3 client on moto itself (past the proxy, its faults and limits): what tests seed and check with."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1",
                        config=Config(max_pool_connections=16, retries={"mode": "standard", "total_max_attempts": 3}))


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


@pytest.fixture
def hook():
    """Register botocore event handlers on this process's cached clients; removed afterwards."""
    registered = []

    def add(client, event, handler):
        client.meta.events.register(event, handler)
        registered.append((client, event, handler))

    yield add
    for client, event, handler in registered:
        client.meta.events.unregister(event, handler)
