"""Strict mode of the test bed: each S3 behaviour moto lacks, shown missing on plain moto and present on
the session's (strict) server. The S3 pages each behaviour follows are cited in s3lake_testbed.strict_s3."""

from __future__ import annotations

import base64
import os
from datetime import datetime, timedelta, timezone
from typing import Callable

import boto3
import pytest
from awscrt import checksums
from botocore.config import Config
from botocore.exceptions import ClientError
from s3lake import aws
from s3lake_testbed import seed, strict_s3

MIB = 1024 * 1024


def client(url: str | None, *, checksums_when: str = "when_supported"):
    config = aws.client_config().merge(Config(request_checksum_calculation=checksums_when))
    return boto3.session.Session().client("s3", endpoint_url=url, config=config)


@pytest.fixture
def servers(plain_moto, moto_server):
    """{"plain": client, "strict": client}; the strict one goes through the session's proxy like every test."""
    return {"plain": client(plain_moto), "strict": client(os.environ["AWS_ENDPOINT_URL"])}


@pytest.fixture
def raw_writers(plain_moto, moto_server):
    """Clients that send no checksum of their own (as Firehose or an older SDK writes)."""
    return {"plain": client(plain_moto, checksums_when="when_required"),
            "strict": client(os.environ["AWS_ENDPOINT_URL"], checksums_when="when_required")}


def each_server(servers: dict, scenario: Callable) -> dict:
    """``scenario(s3, mode)`` run against the plain and the strict server: {mode: what it returned}."""
    return {mode: scenario(s3, mode) for mode, s3 in servers.items()}


def outcome(call: Callable[[], object]) -> tuple[int, str] | str:
    """``"ok"``, or the (HTTP status, error code) S3 answered."""
    try:
        call()
    except ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]
    return "ok"


def crc64nvme(data: bytes) -> str:
    return base64.b64encode(checksums.crc64nvme(data).to_bytes(8, "big")).decode()


def checksum_fields(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k.startswith("Checksum") and k != "ChecksumAlgorithm"}


# 1. default CRC64NVME full-object checksum

def test_an_object_written_without_a_checksum_gets_s3s_default_crc64nvme_only_in_strict_mode(
        servers, raw_writers, unique):
    body, big = b"hello lake\n" * 10, os.urandom(5 * MIB) + b"tail"
    expected = {"ChecksumCRC64NVME": crc64nvme(body), "ChecksumType": "FULL_OBJECT"}
    def scenario(s3, mode):
        bucket = seed_bucket = f"crc-{mode}-{unique}"
        s3.create_bucket(Bucket=seed_bucket)
        put = checksum_fields(raw_writers[mode].put_object(Bucket=bucket, Key="put", Body=body))
        head = checksum_fields(s3.head_object(Bucket=bucket, Key="put", ChecksumMode="ENABLED"))
        get = s3.get_object(Bucket=bucket, Key="put", ChecksumMode="ENABLED")
        get.pop("Body").read()
        copy = checksum_fields(s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "put"})
                               ["CopyObjectResult"])
        upload = raw_writers[mode].create_multipart_upload(Bucket=bucket, Key="mpu")["UploadId"]
        parts = [raw_writers[mode].upload_part(Bucket=bucket, Key="mpu", UploadId=upload, PartNumber=n, Body=chunk)
                 for n, chunk in ((1, big[:5 * MIB]), (2, big[5 * MIB:]))]
        done = checksum_fields(raw_writers[mode].complete_multipart_upload(
            Bucket=bucket, Key="mpu", UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": n + 1, "ETag": p["ETag"]} for n, p in enumerate(parts)]}))
        mpu_head = s3.head_object(Bucket=bucket, Key="mpu", ChecksumMode="ENABLED")
        assert (mpu_head["ContentLength"], s3.head_object(Bucket=bucket, Key="put")["ContentLength"]) == \
            (len(big), len(body))
        return (put, head, checksum_fields(get), copy, done, checksum_fields(mpu_head))
    seen = each_server(servers, scenario)
    assert seen["plain"] == ({}, {}, {}, {}, {}, {})
    mpu = {"ChecksumCRC64NVME": crc64nvme(big), "ChecksumType": "FULL_OBJECT"}
    assert seen["strict"] == (expected, expected, expected, expected, mpu, mpu)


def test_a_client_checksum_is_kept_and_typed_and_a_copy_keeps_the_source_algorithm(servers, unique):
    s3 = servers["strict"]
    bucket = f"crc-client-{unique}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="c", Body=b"abc", ChecksumAlgorithm="CRC32C")
    s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "c"})
    c32c = base64.b64encode(checksums.crc32c(b"abc").to_bytes(4, "big")).decode()
    for key in ("c", "copy"):
        head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        assert checksum_fields(head) == {"ChecksumCRC32C": c32c, "ChecksumType": "FULL_OBJECT"}


def test_multipart_uploads_with_an_algorithm_check_and_return_part_checksums_only_in_strict_mode(servers, unique):
    data = os.urandom(5 * MIB)

    def scenario(s3, mode):
        bucket = f"crc-parts-{mode}-{unique}"
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="src", Body=data)
        upload = s3.create_multipart_upload(Bucket=bucket, Key="dst", ChecksumAlgorithm="CRC32C")["UploadId"]
        wrong = outcome(lambda: s3.upload_part(Bucket=bucket, Key="dst", UploadId=upload, PartNumber=2, Body=b"x",
                                               ChecksumAlgorithm="CRC32"))
        copied = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=upload, PartNumber=1,
                                     CopySource={"Bucket": bucket, "Key": "src"})["CopyPartResult"]
        part = {"PartNumber": 1, "ETag": copied["ETag"]}
        unlisted = outcome(lambda: s3.complete_multipart_upload(Bucket=bucket, Key="dst", UploadId=upload,
                                                                MultipartUpload={"Parts": [part]}))
        return wrong, checksum_fields(copied), unlisted

    seen = each_server(servers, scenario)
    crc32c = base64.b64encode(checksums.crc32c(data).to_bytes(4, "big")).decode()
    assert seen["plain"] == ("ok", {}, "ok")
    assert seen["strict"] == ((400, "InvalidRequest"), {"ChecksumCRC32C": crc32c}, (400, "InvalidRequest"))


def test_a_client_checksum_that_does_not_match_the_bytes_is_bad_digest_only_in_strict_mode(servers, unique):
    def scenario(s3, mode):
        bucket = f"crc-bad-{mode}-{unique}"
        s3.create_bucket(Bucket=bucket)
        upload = s3.create_multipart_upload(Bucket=bucket, Key="m", ChecksumAlgorithm="SHA256")["UploadId"]
        return [outcome(lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"bytes", ChecksumCRC32="AAAAAA==")),
                outcome(lambda: s3.upload_part(Bucket=bucket, Key="m", UploadId=upload, PartNumber=1, Body=b"p",
                                               ChecksumSHA256=base64.b64encode(b"0" * 32).decode())),
                outcome(lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"bytes", ChecksumAlgorithm="CRC32C"))]

    seen = each_server(servers, scenario)
    assert seen["plain"] == ["ok"] * 3
    assert seen["strict"] == [(400, "BadDigest"), (400, "BadDigest"), "ok"]


def test_seeded_fixtures_are_written_without_a_client_checksum_so_they_carry_crc64nvme(moto_server, s3, unique):
    bucket = seed.make_bucket(f"crc-seed-{unique}")
    seed.writer().put_object(Bucket=bucket, Key="k", Body=b"seeded")
    head = s3.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert checksum_fields(head) == {"ChecksumCRC64NVME": crc64nvme(b"seeded"), "ChecksumType": "FULL_OBJECT"}


# 3. SSE-C objects need their key

def test_sse_c_objects_refuse_head_get_and_copy_without_their_key_only_in_strict_mode(servers, unique):
    key, other = os.urandom(32), os.urandom(32)
    def scenario(s3, mode):
        bucket = f"ssec-{mode}-{unique}"
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="secret", Body=b"secret", SSECustomerAlgorithm="AES256", SSECustomerKey=key)
        s3.put_object(Bucket=bucket, Key="plain", Body=b"plain")
        return [
            outcome(lambda: s3.head_object(Bucket=bucket, Key="secret")),
            outcome(lambda: s3.get_object(Bucket=bucket, Key="secret")),
            outcome(lambda: s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "secret"})),
            outcome(lambda: s3.get_object(Bucket=bucket, Key="secret", SSECustomerAlgorithm="AES256",
                                          SSECustomerKey=other)),
            outcome(lambda: s3.get_object(Bucket=bucket, Key="plain", SSECustomerAlgorithm="AES256",
                                          SSECustomerKey=key)),
            outcome(lambda: s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "secret"},
                                           CopySourceSSECustomerAlgorithm="AES256", CopySourceSSECustomerKey=key)),
        ]
    seen = each_server(servers, scenario)
    assert seen["plain"] == ["ok"] * 6
    assert seen["strict"] == [(400, "400"), (400, "InvalidRequest"), (400, "InvalidRequest"),
                              (403, "AccessDenied"), (400, "InvalidRequest"), "ok"]


def test_strict_sse_c_answers_carry_s3s_message_and_headers(s3, unique):
    bucket = seed.make_bucket(f"ssec-msg-{unique}")
    key = os.urandom(32)
    s3.put_object(Bucket=bucket, Key="secret", Body=b"secret", SSECustomerAlgorithm="AES256", SSECustomerKey=key)
    with pytest.raises(ClientError) as error:
        s3.get_object(Bucket=bucket, Key="secret")
    assert error.value.response["Error"]["Message"] == strict_s3.SSE_C_MISSING
    head = s3.head_object(Bucket=bucket, Key="secret", SSECustomerAlgorithm="AES256", SSECustomerKey=key)
    assert (head["SSECustomerAlgorithm"], "ServerSideEncryption" in head) == ("AES256", False)


# 4. a self-copy must change something

def test_a_self_copy_that_changes_nothing_is_invalid_request_only_in_strict_mode(servers, unique):
    def scenario(s3, mode):
        bucket = f"selfcopy-{mode}-{unique}"
        s3.create_bucket(Bucket=bucket)
        # every S3 bucket has default encryption since 2023; plain moto then lets any self-copy through
        s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
        s3.put_object(Bucket=bucket, Key="k", Body=b"same", Metadata={"a": "1"})
        source = {"Bucket": bucket, "Key": "k"}
        return [
            outcome(lambda: s3.copy_object(Bucket=bucket, Key="k", CopySource=source)),
            outcome(lambda: s3.copy_object(Bucket=bucket, Key="k", CopySource=source, MetadataDirective="COPY",
                                           TaggingDirective="REPLACE", Tagging="t=1")),
            outcome(lambda: s3.copy_object(Bucket=bucket, Key="k", CopySource=source, MetadataDirective="REPLACE",
                                           Metadata={"a": "1"})),
            outcome(lambda: s3.copy_object(Bucket=bucket, Key="k", CopySource=source, StorageClass="STANDARD")),
        ]
    seen = each_server(servers, scenario)
    assert seen["plain"] == ["ok"] * 4
    assert seen["strict"] == [(400, "InvalidRequest"), (400, "InvalidRequest"), "ok", "ok"]


def test_a_self_copy_naming_a_version_is_a_regular_copy_in_strict_mode(s3, unique):
    bucket = seed.make_bucket(f"selfcopy-v-{unique}", versioned=True)
    version = s3.put_object(Bucket=bucket, Key="k", Body=b"v1")["VersionId"]
    s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k", "VersionId": version})
    assert seed.count_versions(bucket, "k") == 2


# 5. ACLs disabled on BucketOwnerEnforced buckets

def test_acl_writes_on_a_bucket_owner_enforced_bucket_fail_only_in_strict_mode(servers, unique):
    def scenario(s3, mode):
        bucket = f"enforced-{mode}-{unique}"
        s3.create_bucket(Bucket=bucket, ObjectOwnership="BucketOwnerEnforced")
        s3.put_object(Bucket=bucket, Key="k", Body=b"x")
        owner = s3.get_bucket_acl(Bucket=bucket)["Owner"]["ID"]
        return [
            outcome(lambda: s3.put_object_acl(Bucket=bucket, Key="k", ACL="private")),
            outcome(lambda: s3.put_object(Bucket=bucket, Key="a", Body=b"x", ACL="public-read")),
            outcome(lambda: s3.put_object(Bucket=bucket, Key="a", Body=b"x", GrantFullControl=f'id="{owner}"')),
            outcome(lambda: s3.copy_object(Bucket=bucket, Key="c", CopySource={"Bucket": bucket, "Key": "k"},
                                           GrantRead='uri="http://acs.amazonaws.com/groups/global/AllUsers"')),
            outcome(lambda: s3.create_multipart_upload(Bucket=bucket, Key="m", ACL="authenticated-read")),
            outcome(lambda: s3.put_object(Bucket=bucket, Key="a", Body=b"x", ACL="bucket-owner-full-control")),
            outcome(lambda: s3.get_object_acl(Bucket=bucket, Key="k")),
        ]
    seen = each_server(servers, scenario)
    assert seen["plain"] == ["ok"] * 7
    assert seen["strict"] == [(400, "AccessControlListNotSupported")] * 5 + ["ok", "ok"]


# 6. copy-source conditions

def test_copy_source_conditions_are_enforced_on_copy_and_upload_part_copy_only_in_strict_mode(servers, unique):
    past, future = datetime(2001, 1, 1, tzinfo=timezone.utc), datetime.now(timezone.utc) + timedelta(days=1)
    def scenario(s3, mode):
        bucket = f"cond-{mode}-{unique}"
        s3.create_bucket(Bucket=bucket)
        etag = s3.put_object(Bucket=bucket, Key="src", Body=b"x" * 100)["ETag"]
        source = {"Bucket": bucket, "Key": "src"}
        upload = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]

        def copy(**conditions):
            return outcome(lambda: s3.copy_object(Bucket=bucket, Key="dst", CopySource=source, **conditions))

        def part_copy(**conditions):
            return outcome(lambda: s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=upload, PartNumber=1,
                                                       CopySource=source, **conditions))

        return [
            copy(CopySourceIfMatch='"0123456789abcdef0123456789abcdef"'),
            copy(CopySourceIfUnmodifiedSince=past),
            copy(CopySourceIfModifiedSince=future),
            part_copy(CopySourceIfMatch='"0123456789abcdef0123456789abcdef"'),
            part_copy(CopySourceIfNoneMatch=etag),
            copy(CopySourceIfMatch=etag, CopySourceIfUnmodifiedSince=past),  # if-match holds: S3 copies
            part_copy(CopySourceIfMatch=etag),
        ]
    seen = each_server(servers, scenario)
    assert seen["plain"] == ["ok"] * 7
    assert seen["strict"] == [(412, "PreconditionFailed")] * 5 + ["ok", "ok"]


# 7a. Object Lock retain-until in the past

def test_a_retain_until_date_in_the_past_is_invalid_argument_only_in_strict_mode(servers, unique):
    past = datetime.now(timezone.utc) - timedelta(days=1)
    future = datetime.now(timezone.utc) + timedelta(days=1)
    def scenario(s3, mode):
        bucket = f"lock-{mode}-{unique}"
        s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)

        def put(key, until):
            return outcome(lambda: s3.put_object(Bucket=bucket, Key=key, Body=b"x", ChecksumAlgorithm="CRC32",
                                                 ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=until))

        return [
            put("past", past),
            outcome(lambda: s3.create_multipart_upload(Bucket=bucket, Key="m", ObjectLockMode="GOVERNANCE",
                                                       ObjectLockRetainUntilDate=past)),
            put("future", future),
            outcome(lambda: s3.put_object_retention(Bucket=bucket, Key="future", BypassGovernanceRetention=True,
                                                    Retention={"Mode": "GOVERNANCE", "RetainUntilDate": past})),
        ]
    seen = each_server(servers, scenario)
    assert seen["plain"] == ["ok"] * 4
    assert seen["strict"] == [(400, "InvalidArgument"), (400, "InvalidArgument"), "ok", (400, "InvalidArgument")]


# 7a. moto stricter than S3, undone in strict mode


def test_a_copy_re_sending_lock_headers_needs_no_content_md5_in_strict_mode_as_in_s3(raw_writers, unique):
    """CopyObject has no payload and no Content-MD5 parameter; moto still asks for one (API_CopyObject.html)."""
    future = datetime.now(timezone.utc) + timedelta(days=1)

    def scenario(s3, mode):
        bucket = f"lock-copy-{mode}-{unique}"
        s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
        s3.put_object(Bucket=bucket, Key="k", Body=b"x", ChecksumAlgorithm="CRC32")

        def copy(**lock):
            return outcome(lambda: s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k"},
                                                  MetadataDirective="REPLACE", Metadata={"m": str(len(lock))}, **lock))

        return [copy(ObjectLockLegalHoldStatus="ON"),
                copy(ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=future)]

    seen = each_server(raw_writers, scenario)
    assert seen["plain"] == [(400, "MissingUploadObjectWithObjectLockHeaders")] * 2
    assert seen["strict"] == ["ok", "ok"]


# 9. conditional PutObject, decided atomically

def test_conditional_puts_answer_as_s3_does_and_of_racing_creates_exactly_one_wins(servers, unique):
    from concurrent.futures import ThreadPoolExecutor

    def scenario(s3, mode):
        bucket = f"cput-{mode}-{unique}"
        s3.create_bucket(Bucket=bucket)
        etag = s3.put_object(Bucket=bucket, Key="k", Body=b"one", IfNoneMatch="*")["ETag"]
        answers = [
            outcome(lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"two", IfNoneMatch="*")),
            outcome(lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"two", IfMatch='"0" * 32')),
            outcome(lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"two", IfMatch=etag)),
            outcome(lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"three", IfMatch=etag)),  # stale now
        ]
        winners = []
        with ThreadPoolExecutor(max_workers=16) as pool:
            for race in range(5):
                key = f"race-{race}"
                got = list(pool.map(lambda i, key=key: outcome(
                    lambda: s3.put_object(Bucket=bucket, Key=key, Body=str(i).encode(), IfNoneMatch="*")), range(16)))
                winners.append(got.count("ok"))
        return answers, winners

    strict_answers, strict_winners = scenario(servers["strict"], "strict")
    assert strict_answers == [(412, "PreconditionFailed"), (412, "PreconditionFailed"), "ok",
                              (412, "PreconditionFailed")]
    assert strict_winners == [1] * 5
    missing = servers["strict"]
    bucket = f"cput-strict-{unique}"
    assert outcome(lambda: missing.put_object(Bucket=bucket, Key="absent", Body=b"x", IfMatch='"abc"')) == (
        404, "NoSuchKey")
