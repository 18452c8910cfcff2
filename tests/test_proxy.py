"""The loopback proxy in front of moto: operation names, latency, counts, faults, pass-through."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import threading
import time
import urllib.request
import zlib

import boto3
import botocore.retries.standard
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
from s3lake_testbed.proxy import (
    OBJECT_WRITES,
    FaultPlan,
    LimitPlan,
    ProxyProcess,
    S3Proxy,
    TokenBuckets,
    s3_operation,
)


def client(url: str, service: str = "s3", attempts: int = 1, pool: int = 10):
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        config=Config(retries={"mode": "standard", "total_max_attempts": attempts},
                      max_pool_connections=pool),
    )


@pytest.fixture
def proxy(moto_server):
    p = S3Proxy(moto_server)
    p.start()
    yield p
    p.stop()


@pytest.fixture
def bucket(s3, unique):
    """A bucket created directly in moto (not through the proxy)."""
    name = f"proxy-{unique}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def no_backoff(monkeypatch):
    """botocore retries immediately, so retry tests stay fast."""
    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount", lambda self, ctx: 0)


def error_code(exc: ClientError) -> str:
    return exc.response["Error"]["Code"]


# ---------------------------------------------------------------------------------- classification

COPY = {"x-amz-copy-source": "/b/src"}


@pytest.mark.parametrize(
    "method,path,query,headers,expected",
    [
        ("GET", "/", "", {}, "ListBuckets"),
        ("HEAD", "/bkt", "", {}, "HeadBucket"),
        ("PUT", "/bkt", "", {}, "CreateBucket"),
        ("DELETE", "/bkt", "", {}, "DeleteBucket"),
        ("GET", "/bkt", "list-type=2&prefix=a%2F", {}, "ListObjectsV2"),
        ("GET", "/bkt/", "list-type=2", {}, "ListObjectsV2"),
        ("GET", "/bkt", "prefix=a", {}, "ListObjects"),
        ("GET", "/bkt", "versions&prefix=a", {}, "ListObjectVersions"),
        ("GET", "/bkt", "uploads", {}, "ListMultipartUploads"),
        ("GET", "/bkt", "location", {}, "GetBucketLocation"),
        ("GET", "/bkt", "ownershipControls", {}, "GetBucketOwnershipControls"),
        ("PUT", "/bkt", "ownershipControls", {}, "PutBucketOwnershipControls"),
        ("GET", "/bkt", "versioning", {}, "GetBucketVersioning"),
        ("PUT", "/bkt", "versioning", {}, "PutBucketVersioning"),
        ("GET", "/bkt", "acl", {}, "GetBucketAcl"),
        ("PUT", "/bkt", "tagging", {}, "PutBucketTagging"),
        ("DELETE", "/bkt", "lifecycle", {}, "DeleteBucketLifecycle"),
        ("GET", "/bkt", "lifecycle", {}, "GetBucketLifecycleConfiguration"),
        ("GET", "/bkt", "policyStatus", {}, "GetBucketPolicyStatus"),
        ("GET", "/bkt", "object-lock", {}, "GetObjectLockConfiguration"),
        ("POST", "/bkt", "delete", {}, "DeleteObjects"),
        ("HEAD", "/bkt/a/b.parquet", "", {}, "HeadObject"),
        ("GET", "/bkt/a/b.parquet", "", {}, "GetObject"),
        ("GET", "/bkt/a/b.parquet", "versionId=3", {}, "GetObject"),
        ("PUT", "/bkt/a/b.parquet", "", {}, "PutObject"),
        ("PUT", "/bkt/a/b.parquet", "", COPY, "CopyObject"),
        ("PUT", "/bkt/k", "", {"X-Amz-Copy-Source": "b/src"}, "CopyObject"),
        ("DELETE", "/bkt/k", "", {}, "DeleteObject"),
        ("GET", "/bkt/k", "acl", {}, "GetObjectAcl"),
        ("PUT", "/bkt/k", "acl", {}, "PutObjectAcl"),
        ("GET", "/bkt/k", "tagging", {}, "GetObjectTagging"),
        ("PUT", "/bkt/k", "tagging", {}, "PutObjectTagging"),
        ("DELETE", "/bkt/k", "tagging", {}, "DeleteObjectTagging"),
        ("GET", "/bkt/k", "retention", {}, "GetObjectRetention"),
        ("PUT", "/bkt/k", "legal-hold", {}, "PutObjectLegalHold"),
        ("GET", "/bkt/k", "attributes", {}, "GetObjectAttributes"),
        ("POST", "/bkt/k", "uploads", {}, "CreateMultipartUpload"),
        ("PUT", "/bkt/k", "partNumber=2&uploadId=u", {}, "UploadPart"),
        ("PUT", "/bkt/k", "partNumber=2&uploadId=u", COPY, "UploadPartCopy"),
        ("POST", "/bkt/k", "uploadId=u", {}, "CompleteMultipartUpload"),
        ("DELETE", "/bkt/k", "uploadId=u", {}, "AbortMultipartUpload"),
        ("GET", "/bkt/k", "uploadId=u", {}, "ListParts"),
        ("POST", "/", "", {"X-Amz-Target": "AWSGlue.GetTable"}, "GetTable"),
        ("POST", "/", "", {"x-amz-target": "TrentService.Decrypt"}, "Decrypt"),
        ("POST", "/", "", {"X-Amz-Target": "AmazonSSM.GetParameter"}, "GetParameter"),
        ("GET", "/", "Action=GetCallerIdentity&Version=2011-06-15", {}, "GetCallerIdentity"),
        ("GET", "/moto-api/data.json", "", {}, "MotoApi"),
        ("PATCH", "/bkt/k", "", {}, "Unknown"),
    ],
)
def test_s3_operation(method, path, query, headers, expected):
    assert s3_operation(method, path, query, headers) == expected


def test_s3_operation_accepts_parsed_queries_and_paths_with_query_strings():
    assert s3_operation("GET", "/bkt?list-type=2", {"list-type": ["2"]}) == "ListObjectsV2"
    assert s3_operation("put", "/bkt/k", {"uploadId": "u", "partNumber": "1"}) == "UploadPart"
    msg = http.client.HTTPMessage()
    msg["X-AMZ-COPY-SOURCE"] = "b/k"
    assert s3_operation("PUT", "/bkt/k", None, msg) == "CopyObject"


def test_fault_plan_validates_rates_and_is_seeded():
    with pytest.raises(ValueError):
        FaultPlan(slowdown=0.7, drop_after=0.5)
    plan = FaultPlan(seed=5, slowdown=0.3, internal_error=0.2, drop_before=0.1, drop_after=0.1)
    first = plan.preview(200)
    assert first == plan.preview(200)
    assert first != FaultPlan(seed=6, slowdown=0.3, internal_error=0.2, drop_before=0.1,
                              drop_after=0.1).preview(200)
    assert set(first) == {None, "slowdown", "internal_error", "drop_before", "drop_after"}
    assert FaultPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    assert FaultPlan(operations=["PutObject"]).applies_to("PutObject")
    assert not FaultPlan(operations=OBJECT_WRITES).applies_to("GetObject")


# ---------------------------------------------------------------------------------- latency, counts


def test_latency_is_added(moto_server, bucket):
    with S3Proxy(moto_server, latency=0.15) as url:
        s3 = client(url)
        for _ in range(2):  # the first request also pays for the connection; the second must not be cheap
            start = time.monotonic()
            s3.head_bucket(Bucket=bucket)
            assert time.monotonic() - start >= 0.15


def test_counts_by_operation(proxy, bucket, s3):
    s3p = client(proxy.url)
    s3p.put_object(Bucket=bucket, Key="a", Body=b"hello")
    s3p.head_object(Bucket=bucket, Key="a")
    s3p.copy_object(Bucket=bucket, Key="b", CopySource={"Bucket": bucket, "Key": "a"})
    s3p.get_object_acl(Bucket=bucket, Key="b")
    s3p.put_object_tagging(Bucket=bucket, Key="b", Tagging={"TagSet": [{"Key": "t", "Value": "1"}]})
    s3p.get_object_tagging(Bucket=bucket, Key="b")
    upload = s3p.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    part1 = s3p.upload_part(Bucket=bucket, Key="m", UploadId=upload, PartNumber=1, Body=b"x" * (5 << 20))
    part2 = s3p.upload_part_copy(Bucket=bucket, Key="m", UploadId=upload, PartNumber=2,
                                 CopySource={"Bucket": bucket, "Key": "a"})
    s3p.complete_multipart_upload(
        Bucket=bucket, Key="m", UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part1["ETag"]},
                                   {"PartNumber": 2, "ETag": part2["CopyPartResult"]["ETag"]}]},
    )
    aborted = s3p.create_multipart_upload(Bucket=bucket, Key="n")["UploadId"]
    s3p.abort_multipart_upload(Bucket=bucket, Key="n", UploadId=aborted)
    s3p.list_objects_v2(Bucket=bucket)
    s3p.list_object_versions(Bucket=bucket)
    s3p.head_bucket(Bucket=bucket)
    with pytest.raises(ClientError):
        s3p.get_bucket_ownership_controls(Bucket=bucket)
    s3p.get_object(Bucket=bucket, Key="m")
    s3p.delete_object(Bucket=bucket, Key="b")
    assert proxy.counts() == {
        "PutObject": 1, "HeadObject": 1, "CopyObject": 1, "GetObjectAcl": 1, "PutObjectTagging": 1,
        "GetObjectTagging": 1, "CreateMultipartUpload": 2, "UploadPart": 1, "UploadPartCopy": 1,
        "CompleteMultipartUpload": 1, "AbortMultipartUpload": 1, "ListObjectsV2": 1,
        "ListObjectVersions": 1, "HeadBucket": 1, "GetBucketOwnershipControls": 1, "GetObject": 1,
        "DeleteObject": 1,
    }
    assert s3.get_object(Bucket=bucket, Key="m")["ContentLength"] == (5 << 20) + 5

    with proxy.window() as w:
        s3p.head_object(Bucket=bucket, Key="a")
        s3p.head_object(Bucket=bucket, Key="m")
        s3p.list_objects_v2(Bucket=bucket)
    assert w.counts == {"HeadObject": 2, "ListObjectsV2": 1} and w.total == 3
    assert proxy.counts()["HeadObject"] == 3  # a window does not reset
    proxy.reset_counts()
    assert proxy.counts() == {}


def test_control_endpoints_are_not_forwarded_or_counted(proxy, bucket):
    client(proxy.url).head_bucket(Bucket=bucket)
    with urllib.request.urlopen(f"{proxy.url}/__proxy__/counts") as r:
        assert json.loads(r.read())["counts"] == {"HeadBucket": 1}
    assert proxy.counts() == {"HeadBucket": 1}


def test_json_protocol_services_pass_through_and_are_counted(proxy):
    glue = client(proxy.url, "glue")
    glue.get_databases()
    client(proxy.url, "kms").list_keys()
    assert proxy.counts() == {"GetDatabases": 1, "ListKeys": 1}
    proxy.configure(faults=FaultPlan(slowdown=1.0, operations={"GetDatabases"}))
    with pytest.raises(ClientError) as err:
        glue.get_databases()
    assert error_code(err.value) == "ThrottlingException"


def test_many_concurrent_keep_alive_clients(proxy, bucket, s3):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    s3p = client(proxy.url, pool=32)
    errors = []

    def work():
        try:
            for _ in range(15):
                s3p.head_object(Bucket=bucket, Key="k")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert proxy.counts() == {"HeadObject": 24 * 15}


# ---------------------------------------------------------------------------------- faults


def test_slowdown_is_an_s3_error_without_retries(proxy, bucket, s3):
    proxy.configure(faults=FaultPlan(slowdown=1.0, operations=OBJECT_WRITES))
    s3p = client(proxy.url)
    with pytest.raises(ClientError) as err:
        s3p.put_object(Bucket=bucket, Key="k", Body=b"data")
    assert error_code(err.value) == "SlowDown"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0  # never forwarded
    s3p.list_objects_v2(Bucket=bucket)  # not an object write: not faulted
    assert proxy.fault_counts() == {("slowdown", "PutObject"): 1}
    assert proxy.counts() == {"PutObject": 1, "ListObjectsV2": 1}


def test_internal_error(proxy, bucket):
    proxy.configure(faults=FaultPlan(internal_error=1.0))
    with pytest.raises(ClientError) as err:
        client(proxy.url).list_objects_v2(Bucket=bucket)
    assert error_code(err.value) == "InternalError"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500


def test_retries_get_through_a_partial_slowdown(proxy, bucket, s3, no_backoff):
    plan = FaultPlan(seed=3, slowdown=0.4, operations={"PutObject"})
    proxy.configure(faults=plan)
    s3p = client(proxy.url, attempts=10)
    for i in range(20):
        s3p.put_object(Bucket=bucket, Key=f"k{i}", Body=b"data")
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 20
    faults = proxy.fault_counts()[("slowdown", "PutObject")]
    assert faults > 0
    assert proxy.counts() == {"PutObject": 20 + faults}
    expected = [(i, "PutObject", k) for i, k in enumerate(plan.preview(20 + faults)) if k]
    assert proxy.fault_log() == expected


def test_drop_before_never_reaches_upstream(proxy, bucket, s3):
    proxy.configure(faults=FaultPlan(drop_before=1.0, operations={"PutObject"}))
    with pytest.raises(HTTPClientError):
        client(proxy.url).put_object(Bucket=bucket, Key="k", Body=b"data")
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    assert proxy.fault_counts() == {("drop_before", "PutObject"): 1}


def test_drop_after_applies_the_write_but_loses_the_response(proxy, bucket, s3):
    proxy.configure(faults=FaultPlan(drop_after=1.0, operations={"PutObject"}))
    s3p = client(proxy.url)
    with pytest.raises(HTTPClientError):
        s3p.put_object(Bucket=bucket, Key="k", Body=b"applied")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"applied"
    assert proxy.fault_counts() == {("drop_after", "PutObject"): 1}
    assert s3p.get_object(Bucket=bucket, Key="k")["Body"].read() == b"applied"  # the client recovers


def test_truncate_sends_half_the_body_then_closes(proxy, bucket, s3):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x" * 100_000)
    proxy.configure(faults=FaultPlan(truncate=1.0, operations={"GetObject", "PutObject"}))
    s3p = client(proxy.url)
    response = s3p.get_object(Bucket=bucket, Key="k")
    assert response["ContentLength"] == 100_000
    with pytest.raises((HTTPClientError, IncompleteReadError)):
        b"".join(response["Body"].iter_chunks(1 << 20))
    with pytest.raises(HTTPClientError):
        s3p.put_object(Bucket=bucket, Key="p", Body=b"applied")  # no body to cut: lost as with drop_after
    assert s3.get_object(Bucket=bucket, Key="p")["Body"].read() == b"applied"
    assert proxy.fault_counts() == {("truncate", "GetObject"): 1, ("truncate", "PutObject"): 1}


def test_deny_answers_access_denied_for_matching_keys_and_operations_only(proxy, bucket, s3):
    s3.put_object(Bucket=bucket, Key="open/a", Body=b"a")
    s3.put_object(Bucket=bucket, Key="secret/ä b", Body=b"b")
    plan = FaultPlan(seed=1, deny_keys=r"^secret/", deny_operations={"GetObject", "CopyObject"})
    assert FaultPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    proxy.configure(faults=plan)
    s3p = client(proxy.url, attempts=5)
    with pytest.raises(ClientError) as err:
        s3p.get_object(Bucket=bucket, Key="secret/ä b")
    assert error_code(err.value) == "AccessDenied"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError):
        s3p.copy_object(Bucket=bucket, Key="secret/ä b", CopySource={"Bucket": bucket, "Key": "open/a"})
    assert s3p.head_object(Bucket=bucket, Key="secret/ä b")["ContentLength"] == 1  # HEAD is not denied
    assert s3p.get_object(Bucket=bucket, Key="open/a")["Body"].read() == b"a"
    assert s3.get_object(Bucket=bucket, Key="secret/ä b")["Body"].read() == b"b"  # the copy never reached moto
    assert proxy.fault_counts() == {("access_denied", "GetObject"): 1, ("access_denied", "CopyObject"): 1}
    assert proxy.fault_log() == []  # no random draw was made
    with pytest.raises(ValueError):
        FaultPlan(deny_keys="(")


def test_deny_with_every_operation_on_a_proxy_process(moto_server, bucket, s3):
    s3.put_object(Bucket=bucket, Key="k/1", Body=b"x")
    with ProxyProcess(moto_server, faults=FaultPlan(deny_keys="^k/")) as url:
        s3p = client(url)
        with pytest.raises(ClientError) as err:
            s3p.head_object(Bucket=bucket, Key="k/1")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert s3p.list_objects_v2(Bucket=bucket)["KeyCount"] == 1  # not an object request


def _outcomes(upstream: str, plan: FaultPlan, bucket: str, n: int) -> list:
    with S3Proxy(upstream, faults=plan) as url:
        s3p = client(url)
        got = []
        for _ in range(n):
            try:
                s3p.get_object(Bucket=bucket, Key="k")["Body"].read()
                got.append("ok")
            except ClientError as exc:
                got.append(error_code(exc))
            except HTTPClientError:
                got.append("dropped")
        return got


def test_same_seed_same_fault_sequence(moto_server, bucket, s3):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    rates = dict(slowdown=0.2, internal_error=0.1, drop_before=0.1, drop_after=0.1)
    first = _outcomes(moto_server, FaultPlan(seed=11, **rates), bucket, 30)
    assert first == _outcomes(moto_server, FaultPlan(seed=11, **rates), bucket, 30)
    names = {None: "ok", "slowdown": "SlowDown", "internal_error": "InternalError",
             "drop_before": "dropped", "drop_after": "dropped"}
    assert first == [names[k] for k in FaultPlan(seed=11, **rates).preview(30)]
    assert first != _outcomes(moto_server, FaultPlan(seed=12, **rates), bucket, 30)


# ---------------------------------------------------------------------------------- pass-through


def test_large_multipart_upload_is_byte_identical(proxy, bucket, s3):
    data = os.urandom(50 << 20)
    s3p = client(proxy.url, pool=8)
    transfer = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)
    s3p.upload_fileobj(io.BytesIO(data), bucket, "big", Config=transfer)
    assert proxy.counts() == {"CreateMultipartUpload": 1, "UploadPart": 7, "CompleteMultipartUpload": 1}
    digest = hashlib.sha256(data).hexdigest()
    assert hashlib.sha256(s3.get_object(Bucket=bucket, Key="big")["Body"].read()).hexdigest() == digest
    body = s3p.get_object(Bucket=bucket, Key="big")["Body"].read()  # a large response, streamed back
    assert hashlib.sha256(body).hexdigest() == digest


def _raw_put(url: str, path: str, body, headers: dict, chunked: bool = False) -> int:
    host, port = url.rsplit("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("PUT", path, body=body, headers=headers, encode_chunked=chunked)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_chunked_and_aws_chunked_bodies_pass_through(proxy, moto_server, bucket, s3):
    # Transfer-Encoding: chunked, many chunks, some large.
    pieces = [os.urandom(n) for n in (1, 70000, 3 << 20, 5)]
    assert _raw_put(proxy.url, f"/{bucket}/chunked", iter(pieces), {}, chunked=True) == 200
    assert s3.get_object(Bucket=bucket, Key="chunked")["Body"].read() == b"".join(pieces)

    # Content-Encoding: aws-chunked (framing inside a Content-Length body, checksum trailer):
    # through the proxy the result must be what moto makes of it directly.
    payload = b"hello aws-chunked"
    crc = base64.b64encode(zlib.crc32(payload).to_bytes(4, "big")).decode()
    body = b"%x\r\n%s\r\n0\r\nx-amz-checksum-crc32:%s\r\n\r\n" % (len(payload), payload, crc.encode())
    headers = {
        "Content-Encoding": "aws-chunked",
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "x-amz-decoded-content-length": str(len(payload)),
        "x-amz-trailer": "x-amz-checksum-crc32",
        "Content-Length": str(len(body)),
    }
    direct = _raw_put(moto_server, f"/{bucket}/direct", body, headers)
    proxied = _raw_put(proxy.url, f"/{bucket}/proxied", body, headers)
    assert proxied == direct == 200
    got = s3.get_object(Bucket=bucket, Key="proxied")["Body"].read()
    assert got == s3.get_object(Bucket=bucket, Key="direct")["Body"].read() == payload
    assert proxy.counts() == {"PutObject": 2}


# ---------------------------------------------------------------------------------- per-prefix limits


@pytest.mark.parametrize("plan, key, prefix", [
    (LimitPlan(), "logs/2024/a.json", "logs/"),
    (LimitPlan(), "a.json", ""),
    (LimitPlan(prefix_depth=2), "logs/2024/a.json", "logs/2024/"),
    (LimitPlan(prefix_depth=2), "logs/a.json", "logs/"),
    (LimitPlan(prefix_depth=0), "logs/a.json", ""),
    (LimitPlan(prefix_regex=r"[0-9a-f]{2}"), "7f/x", "7f"),
    (LimitPlan(prefix_regex=r"[0-9a-f]{2}"), "zz/x", ""),
])
def test_a_keys_prefix_is_its_first_folders_or_what_the_regex_matches(plan, key, prefix):
    assert plan.prefix(key) == prefix


def test_limits_keep_s3s_write_to_read_ratio_scaled():
    plan = LimitPlan(scale=0.01)
    assert (plan.rate("write"), plan.rate("read")) == (35.0, 55.0)
    with pytest.raises(ValueError):
        LimitPlan(scale=0)
    with pytest.raises(ValueError):
        LimitPlan(prefix_regex="(")


def test_token_bucket_allows_its_depth_then_its_rate():
    now = [0.0]
    buckets = TokenBuckets(clock=lambda: now[0])
    assert [buckets.take("p", 10.0, 3.0) for _ in range(4)] == [True, True, True, False]
    now[0] += 0.1  # one token refilled
    assert [buckets.take("p", 10.0, 3.0) for _ in range(2)] == [True, False]
    assert buckets.take("other", 10.0, 3.0)  # buckets are independent
    now[0] += 100
    assert sum(buckets.take("p", 10.0, 3.0) for _ in range(10)) == 3  # never more than the depth


def test_requests_over_a_prefixs_limit_get_slowdown_per_class_and_prefix(moto_server, bucket, s3):
    # 3.5 writes/s and 5.5 reads/s per prefix, 1 s deep: the 5th write in a burst is over the limit
    with S3Proxy(moto_server, limits=LimitPlan(scale=0.001, burst=1.0)) as url:
        s3p = client(url)
        outcomes = []
        for i in range(6):
            try:
                s3p.put_object(Bucket=bucket, Key=f"a/{i}", Body=b"x")
                outcomes.append("ok")
            except ClientError as exc:
                assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 503
                outcomes.append(error_code(exc))
        assert outcomes[:3] == ["ok"] * 3 and "SlowDown" in outcomes[3:]
        s3p.put_object(Bucket=bucket, Key="b/0", Body=b"x")  # another prefix: its own bucket
        s3p.get_object(Bucket=bucket, Key="a/0")["Body"].read()  # reads: their own bucket too
        throttled_keys = [f"a/{i}" for i, o in enumerate(outcomes) if o != "ok"]
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert not listed & set(throttled_keys)  # a throttled request never reaches upstream


def test_a_throttled_head_is_a_bodyless_503(moto_server, bucket, s3):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    with S3Proxy(moto_server, limits=LimitPlan(scale=0.0001)) as url:  # 0.55 reads/s, depth 1
        host, port = url.split("//")[1].split(":")
        statuses = []
        for _ in range(2):
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("HEAD", f"/{bucket}/k")
            response = conn.getresponse()
            statuses.append((response.status, response.read()))
            conn.close()
    assert statuses[0][0] != 503 and statuses[1] == (503, b"")  # (the first: moto's answer to an unsigned HEAD)


def test_per_second_counts_and_limit_counts_show_every_s3_request(moto_server, bucket):
    p = S3Proxy(moto_server, limits=LimitPlan(scale=0.001, burst=1.0))
    with p as url:
        s3p = client(url)
        for i in range(8):
            try:
                s3p.put_object(Bucket=bucket, Key=f"c/{i}", Body=b"x")
            except ClientError:
                pass
        counts = p.limit_counts()
        rows = p.per_second()
    assert counts[("write", "allowed")] + counts[("write", "throttled")] == 8
    assert counts[("write", "throttled")] >= 4
    assert sum(r[2] for r in rows) == 8 and sum(r[3] for r in rows) == counts[("write", "throttled")]
    assert all(r[1] == 0 for r in rows)


def test_a_blackout_throttles_everything_for_its_stretch_on_a_proxy_process(moto_server, bucket):
    proc = ProxyProcess(moto_server, limits=LimitPlan(scale=10.0))
    url = proc.start()
    try:
        s3p = client(url)
        s3p.put_object(Bucket=bucket, Key="k", Body=b"x")
        proc.configure(blackout=1.0)
        with pytest.raises(ClientError) as err:
            s3p.get_object(Bucket=bucket, Key="k")
        assert error_code(err.value) == "SlowDown"
        time.sleep(1.1)
        assert s3p.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"
        proc.configure(limits=LimitPlan(scale=0.0001))
        s3p.get_object(Bucket=bucket, Key="k")["Body"].read()
        with pytest.raises(ClientError):
            s3p.get_object(Bucket=bucket, Key="k")
        assert proc.limit_counts()[("read", "throttled")] == 2
        proc.configure(limits=None)
        s3p.get_object(Bucket=bucket, Key="k")["Body"].read()
        s3p.put_object(Bucket=bucket, Key="dark/k", Body=b"x")
        proc.configure(blackout=1.0, blackout_prefix=f"{bucket}/dark/")
        time.sleep(1.1)  # a prefixed stretch starts at its first request, not at configure
        s3p.get_object(Bucket=bucket, Key="k")["Body"].read()  # other keys are served
        with pytest.raises(ClientError):
            s3p.get_object(Bucket=bucket, Key="dark/k")
        time.sleep(1.1)
        assert s3p.get_object(Bucket=bucket, Key="dark/k")["Body"].read() == b"x"
    finally:
        proc.stop()
    assert "--limit-scale" in ProxyProcess(moto_server, limits=LimitPlan(prefix_regex="x")).command()


# ---------------------------------------------------------------------------------- subprocess


def test_proxy_process(moto_server, bucket, s3, tmp_path):
    with ProxyProcess(moto_server, latency=0.0, log_path=str(tmp_path / "proxy.log")) as url:
        pass
    proc = ProxyProcess(moto_server, faults=FaultPlan(seed=1, drop_after=0.0001, operations={"X"}))
    url = proc.start()
    try:
        s3p = client(url)
        s3p.put_object(Bucket=bucket, Key="k", Body=b"data")
        s3p.head_object(Bucket=bucket, Key="k")
        assert proc.counts() == {"PutObject": 1, "HeadObject": 1}
        with proc.window() as w:
            s3p.get_object(Bucket=bucket, Key="k")["Body"].read()
        assert w.counts == {"GetObject": 1}
        proc.reset()
        assert proc.counts() == {}
        proc.configure(faults=FaultPlan(slowdown=1.0, operations={"HeadObject"}))
        with pytest.raises(ClientError) as err:
            s3p.head_object(Bucket=bucket, Key="k")
        assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert proc.fault_counts() == {("slowdown", "HeadObject"): 1}
        assert proc.fault_log() == [(0, "HeadObject", "slowdown")]
        proc.configure(faults=None, latency=0.05)
        start = time.monotonic()
        s3p.head_object(Bucket=bucket, Key="k")
        assert time.monotonic() - start >= 0.05
    finally:
        proc.stop()
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"data"
