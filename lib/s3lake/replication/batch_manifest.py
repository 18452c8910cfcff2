"""The CSV manifest of a Batch Replication job, written once per run and bucket.

Format ``S3BatchOperations_CSV_20180820`` with the fields ``Bucket, Key, VersionId``: keys URL-encoded,
the null version named by the literal ``null``, never an empty field
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/batch-ops-create-job.html#specify-batchjob-manifest).
The manifest is written with SSE-S3 whatever the bucket's default encryption: a job whose role cannot
decrypt an SSE-KMS manifest fails while preparing, before any object is replicated.

Written *create-once* (``If-None-Match: *``): the manifest is the run's definition. A driver that dies after
writing it finds it on the rerun and uses it as it is (with its ETag), so the rerun's CreateJob carries the
same client token and re-attaches to the same job instead of creating a second one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable
from urllib.parse import quote

from s3lake import aws

PART = 16 * 1024 * 1024  # a multipart manifest above this: 10,000 parts hold 160 GB (~2*10^9 lines)
FIELDS = ["Bucket", "Key", "VersionId"]
FORMAT = "S3BatchOperations_CSV_20180820"


@dataclass(frozen=True)
class Manifest:
    bucket: str
    key: str
    etag: str
    objects: int  # lines; -1 when the manifest was found already written (not counted again)
    created: bool  # False: it existed (a rerun), and this run uses it as it is

    def arn(self, partition: str = "aws") -> str:
        return f"arn:{partition}:s3:::{self.bucket}/{self.key}"


def line(bucket: str, key: str, version_id: str | None) -> bytes:
    """One manifest line: the key URL-encoded (commas, quotes and newlines cannot break the CSV)."""
    return f"{bucket},{quote(key, safe='/')},{version_id or 'null'}\n".encode()


def existing(bucket: str, key: str, denied_is_missing: bool = False) -> Manifest | None:
    """The manifest already written at ``key`` (HEAD), or None. Without s3:ListBucket S3 answers a HEAD of a
    missing key 403: ``denied_is_missing`` takes that for "not there" (the create-once write still decides)."""
    try:
        head = aws.s3().head_object(Bucket=bucket, Key=key)
    except Exception as exc:  # noqa: BLE001
        missing = ("404", "NoSuchKey", "NotFound") + (("403", "AccessDenied") if denied_is_missing else ())
        if aws.error_code(exc) in missing:
            return None
        raise
    return Manifest(bucket, key, head["ETag"].strip('"'), -1, False)


def _refused(exc: BaseException) -> bool:
    return aws.error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def write_once(bucket: str, key: str, lines: Iterable[bytes]) -> Manifest:
    """Stream ``lines`` into ``s3://bucket/key`` unless it exists (then the existing one is returned)."""
    s3 = aws.s3()
    found = existing(bucket, key, denied_is_missing=True)  # a rerun: never stream it again only to be refused
    if found is not None:
        return found
    buffer, count, parts, upload = bytearray(), 0, [], None
    try:
        for item in lines:
            buffer += item
            count += 1
            if len(buffer) >= PART:
                if upload is None:  # the Complete's If-None-Match refuses it if the manifest exists
                    upload = s3.create_multipart_upload(Bucket=bucket, Key=key, ServerSideEncryption="AES256",
                                                        ContentType="text/csv")["UploadId"]
                n = len(parts) + 1
                etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n,
                                      Body=bytes(buffer))["ETag"]
                parts.append({"PartNumber": n, "ETag": etag})
                buffer.clear()
        if upload is None:
            answer = s3.put_object(Bucket=bucket, Key=key, Body=bytes(buffer), IfNoneMatch="*",
                                   ServerSideEncryption="AES256", ContentType="text/csv")
        else:
            if buffer or not parts:
                n = len(parts) + 1
                etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n,
                                      Body=bytes(buffer))["ETag"]
                parts.append({"PartNumber": n, "ETag": etag})
            answer = s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, IfNoneMatch="*",
                                                  MultipartUpload={"Parts": parts})
            upload = None
    except Exception as exc:  # noqa: BLE001
        if upload is not None:
            try:
                s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
            except Exception:  # noqa: BLE001 - the refusal below matters; a lifecycle rule ends stray parts
                pass
        if _refused(exc):
            found = existing(bucket, key)
            if found is not None:
                return found
        raise
    return Manifest(bucket, key, answer["ETag"].strip('"'), count, True)
