"""IAM in the test bed (s3lake_testbed.iam_corrections): each behaviour, with plain moto (IAM switched on with
/moto-api/reset-auth) for contrast where moto differs."""

from __future__ import annotations

import sys
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from botocore.exceptions import ClientError
from s3lake import aws
from s3lake_testbed import iam, replication
from s3lake_testbed.moto import DUMMY_CREDENTIALS, free_port
from s3lake_testbed.process import LoopbackProcess
from s3lake_testbed.seed import make_bucket, make_kms_key


def allow(*actions: str, resource="*", condition=None) -> dict:
    statement = {"Sid": "Test", "Effect": "Allow", "Action": list(actions), "Resource": resource}
    if condition:
        statement["Condition"] = condition
    return {"Version": "2012-10-17", "Statement": [statement]}


def code_of(call) -> str:
    try:
        call()
    except ClientError as exc:
        return aws.error_code(exc)
    return "OK"


def denied(code: str) -> bool:
    return code in ("AccessDenied", "403")


class PlainMoto(LoopbackProcess):
    """Stock ``moto.server`` (none of the test bed's corrections), on its own port: its IAM switch
    (/moto-api/reset-auth) is global, so it is not the session's shared ``plain_moto``."""

    name = "plain moto server"

    def __init__(self) -> None:
        self.port = free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")

    def start(self) -> str:
        import os

        env = {**os.environ, **DUMMY_CREDENTIALS}
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        return self._launch(command, env, lambda: urllib.request.urlopen(f"{self.url}/moto-api/").read(), 60)

    def reset_auth(self, free_requests: int) -> None:
        """moto's switch: IAM applies after ``free_requests`` more requests (0: from now on)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset-auth", data=str(free_requests).encode(),
                                         method="POST", headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request).read()


@pytest.fixture(scope="module")
def plain_moto_iam():
    server = PlainMoto()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["plain", "strict"])
def bed(request, moto_server, monkeypatch):
    """A fresh IAM world: "plain" = stock moto with IAM switched on after set-up, "strict" = the test bed.

    ``bed.principal(policy)`` is set up with admin credentials; ``bed.on()`` switches IAM on (plain only).
    """
    if request.param == "plain":
        server = request.getfixturevalue("plain_moto_iam")
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        aws._cache.clear()
        request.addfinalizer(aws._cache.clear)

    class Bed:
        mode = request.param

        @staticmethod
        def principal(policy):
            return iam.create_principal(policy)

        @staticmethod
        def on():
            if request.param == "plain":
                request.getfixturevalue("plain_moto_iam").reset_auth(0)

    yield Bed
    if request.param == "plain":
        request.getfixturevalue("plain_moto_iam").reset_auth(10 ** 9)  # IAM off again for the next test


def test_get_bucket_ownership_controls_is_authorized_as_its_own_action_not_list_bucket(bed, unique):
    s3 = aws.s3()
    bucket = make_bucket(f"iam-own-{unique}", ownership="BucketOwnerPreferred")
    own = bed.principal(allow("s3:GetBucketOwnershipControls", resource=f"arn:aws:s3:::{bucket}")).client("s3")
    lister = bed.principal(allow("s3:ListBucket", resource=f"arn:aws:s3:::{bucket}")).client("s3")
    assert s3.get_bucket_ownership_controls(Bucket=bucket)
    bed.on()

    got = (code_of(lambda: own.get_bucket_ownership_controls(Bucket=bucket)),
           code_of(lambda: lister.get_bucket_ownership_controls(Bucket=bucket)))

    assert got == {"plain": ("AccessDenied", "OK"), "strict": ("OK", "AccessDenied")}[bed.mode]


def test_head_and_get_of_a_missing_key_are_403_without_list_bucket_and_404_with_it(bed, unique):
    bucket = make_bucket(f"iam-miss-{unique}")
    reader = bed.principal(allow("s3:GetObject", resource=f"arn:aws:s3:::{bucket}/*")).client("s3")
    both = {"Version": "2012-10-17", "Statement": [
        allow("s3:GetObject", resource=f"arn:aws:s3:::{bucket}/*")["Statement"][0],
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:aws:s3:::{bucket}"}]}
    lister = bed.principal(both).client("s3")
    bed.on()

    got = [code_of(lambda c=c: c.head_object(Bucket=bucket, Key="nope")) for c in (reader, lister)]
    got += [code_of(lambda c=c: c.get_object(Bucket=bucket, Key="nope")) for c in (reader, lister)]

    assert got == {"plain": ["404", "404", "NoSuchKey", "NoSuchKey"],
                   "strict": ["403", "404", "AccessDenied", "NoSuchKey"]}[bed.mode]


def test_object_lock_headers_are_returned_only_with_get_object_retention_and_legal_hold(bed, unique):
    s3 = aws.s3()
    bucket = f"iam-lock-{unique}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    until = (datetime.now(timezone.utc) + timedelta(days=3)).replace(microsecond=0)
    s3.put_object(Bucket=bucket, Key="k", Body=b"x", ObjectLockMode="GOVERNANCE", ObjectLockRetainUntilDate=until,
                  ObjectLockLegalHoldStatus="ON", ChecksumAlgorithm="SHA256")
    arn = f"arn:aws:s3:::{bucket}/*"
    reader = bed.principal(allow("s3:GetObject", resource=arn)).client("s3")
    full = bed.principal(allow("s3:GetObject", "s3:GetObjectRetention", "s3:GetObjectLegalHold", resource=arn))
    full = full.client("s3")
    bed.on()

    def lock(response):
        return tuple(response.get(k) for k in ("ObjectLockMode", "ObjectLockRetainUntilDate",
                                                "ObjectLockLegalHoldStatus"))

    got = [lock(c.head_object(Bucket=bucket, Key="k")) for c in (reader, full)]
    got += [lock(c.get_object(Bucket=bucket, Key="k")) for c in (reader, full)]

    shown = ("GOVERNANCE", until, "ON")
    assert got == {"plain": [shown] * 4, "strict": [(None, None, None), shown] * 2}[bed.mode]


def test_glue_statements_scoped_to_the_catalog_database_and_table_are_honoured(bed, unique):
    glue = aws.glue()
    db = f"iamdb_{unique}"
    glue.create_database(DatabaseInput={"Name": db})
    for t in ("mine", "other"):
        glue.create_table(DatabaseName=db, TableInput={"Name": t})
    base = "arn:aws:glue:us-east-1:123456789012"
    resources = [f"{base}:catalog", f"{base}:database/{db}", f"{base}:table/{db}/mine"]
    scoped = bed.principal(allow("glue:GetTable", resource=resources)).client("glue")
    no_catalog = bed.principal(allow("glue:GetTable", resource=resources[1:])).client("glue")
    bed.on()

    got = (code_of(lambda: scoped.get_table(DatabaseName=db, Name="mine")),
           code_of(lambda: scoped.get_table(DatabaseName=db, Name="other")),
           code_of(lambda: no_catalog.get_table(DatabaseName=db, Name="mine")))

    # plain moto checks Glue calls against resource "*": no table-scoped statement ever matches
    assert got == {"plain": ("403",) * 3,
                   "strict": ("OK", "AccessDeniedException", "AccessDeniedException")}[bed.mode]


def test_a_list_bucket_statement_conditioned_on_the_prefix_allows_that_prefix_only(bed, unique):
    bucket = make_bucket(f"iam-pfx-{unique}")
    lister = bed.principal(allow("s3:ListBucket", resource=f"arn:aws:s3:::{bucket}",
                                 condition={"StringLike": {"s3:prefix": ["in/*"]}})).client("s3")
    bed.on()

    got = (code_of(lambda: lister.list_objects_v2(Bucket=bucket, Prefix="in/x")),
           code_of(lambda: lister.list_objects_v2(Bucket=bucket, Prefix="out/")),
           code_of(lambda: lister.list_objects_v2(Bucket=bucket)))

    # plain moto ignores a StringLike condition: the statement allows every prefix
    assert got == {"plain": ("OK",) * 3, "strict": ("OK", "AccessDenied", "AccessDenied")}[bed.mode]


def test_a_secure_string_read_needs_the_parameter_arn_and_kms_decrypt_on_its_key_via_ssm(moto_server, unique):
    key = make_kms_key()
    name = f"/s3lake/{unique}/hmac"
    aws.client("ssm").put_parameter(Name=name, Value="k", Type="SecureString", KeyId=key)
    param_arn = f"arn:aws:ssm:us-east-1:123456789012:parameter{name}"
    decrypt = {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": key,
               "Condition": {"StringEquals": {"kms:ViaService": "ssm.us-east-1.amazonaws.com"}}}
    full = allow("ssm:GetParameter", resource=param_arn)
    full["Statement"].append(decrypt)

    got = [code_of(lambda p=p: iam.create_principal(p).client("ssm").get_parameter(Name=name, WithDecryption=True))
           for p in (full, allow("ssm:GetParameter", resource=param_arn),
                     allow("ssm:GetParameter", resource=param_arn + "-other"))]

    assert got == ["OK", "AccessDeniedException", "AccessDeniedException"]


def calls_bucket(s3, bucket: str) -> tuple[str, str, str]:
    """An Object Lock (so versioned) bucket with ACLs enabled, a tagged object ``k``, an SSE-KMS object
    ``kms`` and an open upload of ``k``: (the version of ``k``, the KMS key, the upload id)."""
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls={
        "Rules": [{"ObjectOwnership": "BucketOwnerPreferred"}]})
    version = s3.put_object(Bucket=bucket, Key="k", Body=b"x" * 10, Tagging="a=1")["VersionId"]
    kms = make_kms_key()
    s3.put_object(Bucket=bucket, Key="kms", Body=b"x", ServerSideEncryption="aws:kms", SSEKMSKeyId=kms)
    return version, kms, s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]


# Every S3 call the jobs make, with the IAM actions the Service Authorization Reference lists for it.
@pytest.fixture
def objects(moto_server, unique, s3):
    """``calls_bucket`` with a part uploaded, an SSE-KMS upload, versioning on and a replication rule."""
    bucket = f"iam-calls-{unique}"
    version, kms, upload = calls_bucket(s3, bucket)
    etag = s3.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=1, Body=b"p")["ETag"]
    kms_upload = s3.create_multipart_upload(Bucket=bucket, Key="k", ServerSideEncryption="aws:kms",
                                            SSEKMSKeyId=kms)["UploadId"]
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    replication.put_replication(bucket, [replication.rule("all")])
    return bucket, version, kms, (upload, etag, kms_upload)


def s3_calls(bucket: str, version: str, kms: str, owner: str = "", upload: tuple = ("", "", "")) -> list:
    b = f"arn:aws:s3:::{bucket}"
    o = f"{b}/k"
    until = datetime.now(timezone.utc) + timedelta(days=1)
    upload, etag, kms_upload = upload
    return [
        ("CompleteMultipartUpload", lambda c: c.complete_multipart_upload(
            Bucket=bucket, Key="k", UploadId=upload, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]}),
         [("s3:PutObject", o)]),
        ("HeadObject If-Match", lambda c: c.head_object(Bucket=bucket, Key="k", IfMatch="*"), [("s3:GetObject", o)]),
        ("GetObjectAcl", lambda c: c.get_object_acl(Bucket=bucket, Key="k"), [("s3:GetObjectAcl", o)]),
        ("UploadPart", lambda c: c.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=3, Body=b"p"),
         [("s3:PutObject", o)]),
        ("UploadPartCopy by version", lambda c: c.upload_part_copy(
            Bucket=bucket, Key="k", UploadId=upload, PartNumber=2,
            CopySource={"Bucket": bucket, "Key": "k", "VersionId": version}),
         [("s3:PutObject", o), ("s3:GetObjectVersion", o)]),
        ("UploadPartCopy of the current version", lambda c: c.upload_part_copy(
            Bucket=bucket, Key="k", UploadId=upload, PartNumber=4, CopySource={"Bucket": bucket, "Key": "k"},
            CopySourceIfMatch="*"),
         [("s3:PutObject", o), ("s3:GetObject", o)]),
        ("CopyObject onto itself, current version, tags copied", lambda c: c.copy_object(
            Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k"}, CopySourceIfMatch="*",
            MetadataDirective="REPLACE", Metadata={"m": "2"}, GrantFullControl=owner),
         [("s3:PutObject", o), ("s3:GetObject", o), ("s3:GetObjectTagging", o), ("s3:PutObjectTagging", o),
          ("s3:PutObjectAcl", o)]),
        ("AbortMultipartUpload", lambda c: c.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload),
         [("s3:AbortMultipartUpload", o)]),
        ("PutObject with Object Lock", lambda c: c.put_object(
            Bucket=bucket, Key="k", Body=b"z", ChecksumAlgorithm="SHA256", ObjectLockMode="GOVERNANCE",
            ObjectLockRetainUntilDate=until, ObjectLockLegalHoldStatus="ON"),
         [("s3:PutObject", o), ("s3:PutObjectRetention", o), ("s3:PutObjectLegalHold", o)]),
        ("HeadObject", lambda c: c.head_object(Bucket=bucket, Key="k"), [("s3:GetObject", o)]),
        ("HeadObject version", lambda c: c.head_object(Bucket=bucket, Key="k", VersionId=version),
         [("s3:GetObjectVersion", o)]),
        ("GetObject KMS", lambda c: c.get_object(Bucket=bucket, Key="kms"),
         [("s3:GetObject", f"{b}/kms"), ("kms:Decrypt", kms)]),
        ("GetObjectAcl version", lambda c: c.get_object_acl(Bucket=bucket, Key="k", VersionId=version),
         [("s3:GetObjectVersionAcl", o)]),
        ("GetObjectTagging", lambda c: c.get_object_tagging(Bucket=bucket, Key="k"), [("s3:GetObjectTagging", o)]),
        ("GetObjectTagging version", lambda c: c.get_object_tagging(Bucket=bucket, Key="k", VersionId=version),
         [("s3:GetObjectVersionTagging", o)]),
        ("PutObjectTagging version", lambda c: c.put_object_tagging(
            Bucket=bucket, Key="k", VersionId=version, Tagging={"TagSet": [{"Key": "a", "Value": "2"}]}),
         [("s3:PutObjectVersionTagging", o)]),
        ("ListMultipartUploads", lambda c: c.list_multipart_uploads(Bucket=bucket, Prefix="k"),
         [("s3:ListBucketMultipartUploads", b)]),
        ("GetBucketOwnershipControls", lambda c: c.get_bucket_ownership_controls(Bucket=bucket),
         [("s3:GetBucketOwnershipControls", b)]),
        ("GetBucketAcl", lambda c: c.get_bucket_acl(Bucket=bucket), [("s3:GetBucketAcl", b)]),
        ("ListObjectsV2", lambda c: c.list_objects_v2(Bucket=bucket, Prefix="k"), [("s3:ListBucket", b)]),
        ("CopyObject onto itself, by version, tags copied", lambda c: c.copy_object(
            Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k", "VersionId": version},
            MetadataDirective="REPLACE", Metadata={"m": "1"}, GrantFullControl=owner),
         [("s3:PutObject", o), ("s3:GetObjectVersion", o), ("s3:GetObjectVersionTagging", o),
          ("s3:PutObjectTagging", o), ("s3:PutObjectAcl", o)]),
        ("PutObject with tags, grants, KMS", lambda c: c.put_object(
            Bucket=bucket, Key="k", Body=b"y", Tagging="a=1", GrantFullControl=owner,
            ServerSideEncryption="aws:kms", SSEKMSKeyId=kms),
         [("s3:PutObject", o), ("s3:PutObjectTagging", o), ("s3:PutObjectAcl", o), ("kms:GenerateDataKey", kms)]),
        ("CreateMultipartUpload KMS", lambda c: c.create_multipart_upload(
            Bucket=bucket, Key="k", ServerSideEncryption="aws:kms", SSEKMSKeyId=kms),
         [("s3:PutObject", o), ("kms:GenerateDataKey", kms)]),
        ("UploadPart into a KMS upload", lambda c: c.upload_part(
            Bucket=bucket, Key="k", UploadId=kms_upload, PartNumber=1, Body=b"p"),
         [("s3:PutObject", o), ("kms:Decrypt", kms)]),
        ("UploadPartCopy of the current version, If-Match", lambda c: c.upload_part_copy(
            Bucket=bucket, Key="k", UploadId=upload, PartNumber=4, CopySource={"Bucket": bucket, "Key": "k"},
            CopySourceIfMatch="*"),
         [("s3:PutObject", o), ("s3:GetObject", o)]),
        ("CopyObject onto itself, current version, If-Match, tags copied", lambda c: c.copy_object(
            Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k"}, CopySourceIfMatch="*",
            MetadataDirective="REPLACE", Metadata={"m": "2"}, RequestPayer="requester"),
         [("s3:PutObject", o), ("s3:GetObject", o), ("s3:GetObjectTagging", o), ("s3:PutObjectTagging", o)]),
        ("CopyObject onto itself, tags replaced", lambda c: c.copy_object(
            Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k"}, MetadataDirective="REPLACE",
            Metadata={"m": "3"}, TaggingDirective="REPLACE", Tagging="b=2"),
         [("s3:PutObject", o), ("s3:GetObject", o), ("s3:PutObjectTagging", o)]),
        ("GetBucketVersioning", lambda c: c.get_bucket_versioning(Bucket=bucket), [("s3:GetBucketVersioning", b)]),
        ("GetBucketReplication", lambda c: c.get_bucket_replication(Bucket=bucket),
         [("s3:GetReplicationConfiguration", b)]),
        ("DeleteObject version", lambda c: c.delete_object(Bucket=bucket, Key="k", VersionId="nope"),
         [("s3:DeleteObjectVersion", o)]),
    ]


CALL_NAMES = [name for name, _, _ in s3_calls("b", "v", "k")]


@pytest.mark.parametrize("name", CALL_NAMES)
def test_each_s3_call_of_the_jobs_needs_exactly_its_documented_actions(objects, name):
    bucket, version, kms, upload = objects
    owner = f'id="{aws.s3().get_bucket_acl(Bucket=bucket)["Owner"]["ID"]}"'
    _, call, needs = next(c for c in s3_calls(bucket, version, kms, owner, upload) if c[0] == name)

    def policy(pairs):
        pairs = pairs or [("s3:GetBucketTagging", f"arn:aws:s3:::{bucket}")]  # IAM refuses an empty policy
        return {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": a, "Resource": r} for a, r in pairs]}

    with_all = code_of(lambda: call(iam.create_principal(policy(needs)).client("s3")))
    without_one = {a: code_of(lambda n=n: call(iam.create_principal(policy([x for x in needs if x != n]))
                                            .client("s3"))) for n in needs for a in [n[0]]}

    assert not denied(with_all), with_all
    assert {a: denied(c) for a, c in without_one.items()} == {a: True for a, _ in needs}


# What plain moto authorizes instead: (call name, the actions moto checks, does moto refuse the documented set?)
MOTO_CHECKS = [
    ("HeadObject version", ["s3:GetObject"], True),
    ("GetObjectAcl version", ["s3:GetObjectVersion"], True),
    ("GetObjectTagging version", ["s3:GetObjectVersion"], True),
    ("GetObject KMS", ["s3:GetObject"], False),
    ("CopyObject onto itself, by version, tags copied", ["s3:PutObject"], False),
    ("PutObject with tags, grants, KMS", ["s3:PutObject"], False),
    ("UploadPartCopy by version", ["s3:PutObject"], False),
]


@pytest.mark.parametrize("name, moto_actions, moto_refuses_documented", MOTO_CHECKS)
def test_plain_moto_checks_other_actions_than_aws_for_the_jobs_calls(bed, s3, unique, name, moto_actions,
                                                                     moto_refuses_documented):
    bucket = f"iam-moto-{unique}"
    version, kms, upload = calls_bucket(s3, bucket)
    owner = f'id="{s3.get_bucket_acl(Bucket=bucket)["Owner"]["ID"]}"'
    _, call, needs = next(c for c in s3_calls(bucket, version, kms, owner, (upload, "", "")) if c[0] == name)
    documented = bed.principal({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": a, "Resource": r} for a, r in needs]}).client("s3")
    mapped = bed.principal(allow(*moto_actions)).client("s3")
    bed.on()

    got = (denied(code_of(lambda: call(documented))), denied(code_of(lambda: call(mapped))))

    assert got == {"plain": (moto_refuses_documented, False), "strict": (False, True)}[bed.mode]
