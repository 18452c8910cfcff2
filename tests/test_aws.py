from __future__ import annotations

import os
import pickle

import pytest
from s3lake import aws


def test_client_honours_endpoint_url_and_is_cached_per_process(moto_server):
    first = aws.s3()
    assert first.meta.endpoint_url == os.environ["AWS_ENDPOINT_URL"]  # the session's proxy in front of moto
    assert aws.s3() is first
    assert first.meta.config.retries["mode"] == "standard"
    assert first.meta.config.max_pool_connections >= 32


def test_service_specific_endpoint_wins(monkeypatch, moto_server):
    monkeypatch.setenv("AWS_ENDPOINT_URL_GLUE", "http://127.0.0.1:1")
    assert aws.glue().meta.endpoint_url == "http://127.0.0.1:1"
    assert aws.s3().meta.endpoint_url == os.environ["AWS_ENDPOINT_URL"]


def test_max_attempts_is_configurable(monkeypatch, moto_server):
    monkeypatch.setenv("S3LAKE_MAX_ATTEMPTS", "3")
    assert aws.s3().meta.config.retries["total_max_attempts"] == 3


def test_clients_are_built_inside_tasks_not_shipped(spark):
    def endpoint(_):
        from s3lake import aws as remote_aws

        yield remote_aws.s3().meta.endpoint_url

    got = spark.sparkContext.parallelize([1, 2], 2).mapPartitions(endpoint).collect()
    assert got == [aws.endpoint_url("s3")] * 2
    with pytest.raises((TypeError, pickle.PicklingError, AttributeError)):
        pickle.dumps(aws.s3())


@pytest.mark.parametrize(
    "url,expected",
    [("s3://b/k/x y", ("b", "k/x y")), ("s3a://b/", ("b", "")), ("s3://b", ("b", ""))],
)
def test_split_s3_url(url, expected):
    assert aws.split_s3_url(url) == expected


def test_split_s3_url_rejects_other_schemes():
    with pytest.raises(ValueError, match="not an s3:// URL"):
        aws.split_s3_url("/tmp/x")


def test_request_payer_is_requester_or_nothing_and_gives_clients_of_its_own(moto_server):
    from s3lake.errors import ConfigError

    plain = aws.s3()
    with pytest.raises(ConfigError, match="--request-payer must be 'requester'"):
        aws.use_request_payer("owner")
    aws.use_request_payer("requester")
    try:
        assert aws.s3() is not plain and aws.s3() is aws.s3()
    finally:
        aws.use_request_payer(None)
    assert aws.s3() is plain


def test_a_process_that_switches_credentials_gets_new_clients(monkeypatch, moto_server):
    first = aws.s3()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "another-principal")
    assert aws.s3() is not first
