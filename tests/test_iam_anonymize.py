"""The anonymization pass end to end as a principal holding only conf/iam/anonymize.json (placeholders filled).

One run over a versioned SSE-KMS bucket (--source listing, rules and HMAC key from S3 and SSM, a multipart
output, an unchanged large object whose upload is aborted, --purge-noncurrent); the server audits each decision.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from s3lake import aws
from s3lake.anonymize import job as anon
from s3lake.objects import results
from s3lake_testbed import iam
from s3lake_testbed.seed import make_bucket, make_kms_key

from jobs import anonymize as job

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
EMR_ONLY = {"ReadLaunchArtifacts", "ListLaunchArtifacts", "WriteClusterLogs", "SparkGlueMetastoreDefaultDatabase",
            "ResultsObjects", "ResultsListing", "ResultsMultipartUploads"}
# Statements the run below cannot use: an inventory input (copy-in-place's tests cover the same statements),
# Object Lock (covered for copy-in-place; the same HEAD/GET rule applies).
NOT_IN_THIS_RUN = {"ReadInventoryTable", "ReadInventoryFiles", "KeepObjectLock"}
# Re-registering the same run id updates its partition: exercised by test_iam_copy_in_place's re-run.
RERUN_ONLY = {("RegisterResultsTable", "glue:UpdatePartition")}
RESULTS_TABLE = "iam_anon_results.anonymize_results"


def big_lines(secret: bool) -> bytes:
    line = json.dumps({"file_contents": "secret" if secret else "", "pad": "x" * 900}).encode() + b"\n"
    return line * (6 * MIB // len(line) + 1)


def policy(bucket: str, rules_bucket: str, kms: str, ssm_kms: str, param: str) -> dict:
    return iam.fill_placeholders(iam.load_policy("anonymize"), {
        "REGION": "us-east-1", "ACCOUNT_ID": iam.ACCOUNT_ID,
        "ARTIFACTS_BUCKET": "artifacts-unused", "ARTIFACTS_PREFIX": "launch",
        "LOG_BUCKET": "logs-unused", "LOG_PREFIX": "logs",
        "INVENTORY_DATABASE": "unused_db", "INVENTORY_TABLE": "unused_table",
        "INVENTORY_BUCKET": "inventory-unused", "INVENTORY_PREFIX": "inventory",
        "DATA_BUCKET": bucket, "DATA_PREFIX": "in/", "DATA_KMS_KEY_ID": kms.rsplit("/", 1)[-1],
        "RULES_BUCKET": rules_bucket, "RULES_KEY": "rules/security-lake.json",
        "HMAC_PARAMETER_NAME": param.lstrip("/"), "SSM_KMS_KEY_ID": ssm_kms.rsplit("/", 1)[-1],
        "RESULTS_BUCKET": "results-unused", "RESULTS_PREFIX": "results",
        "RESULTS_DATABASE": RESULTS_TABLE.split(".")[0],
    })


@pytest.fixture(scope="module")
def lake(moto_server):
    s3 = aws.s3()
    u = uuid.uuid4().hex[:10]
    bucket = make_bucket(f"iam-anon-{u}", versioned=True)
    rules_bucket = make_bucket(f"iam-anon-rules-{u}")
    s3.put_object(Bucket=rules_bucket, Key="rules/security-lake.json",
                  Body=(ROOT / "conf/anonymize/security-lake.json").read_bytes())
    kms, ssm_kms = make_kms_key(), make_kms_key()
    param = f"/s3lake/{u}/hmac"
    aws.client("ssm").put_parameter(Name=param, Value="test-key", Type="SecureString", KeyId=ssm_kms)
    owner = f'id="{s3.get_bucket_acl(Bucket=bucket)["Owner"]["ID"]}"'
    secret = b'{"file_contents": "c2VjcmV0", "user": {"email": "a@example.com"}}\n'
    s3.put_object(Bucket=bucket, Key="in/secret.json", Body=secret, ServerSideEncryption="aws:kms",
                  SSEKMSKeyId=kms, Tagging="keep=me", GrantFullControl=owner, Metadata={"m": "1"})
    s3.put_object(Bucket=bucket, Key="in/clean.json", Body=b'{"n": 1}\n', Tagging="a=1")
    s3.put_object(Bucket=bucket, Key="in/big.json", Body=big_lines(True), ServerSideEncryption="aws:kms",
                  SSEKMSKeyId=kms)
    s3.put_object(Bucket=bucket, Key="in/big-clean.json", Body=big_lines(False))
    unversioned = make_bucket(f"iam-anon-uv-{u}")
    s3.put_object(Bucket=unversioned, Key="in/secret.json", Body=secret, Tagging="keep=me", GrantFullControl=owner)
    # unchanged, unversioned: tagged by a conditional self-copy (TaggingDirective=REPLACE), not PutObjectTagging
    s3.put_object(Bucket=unversioned, Key="in/clean.json", Body=b'{"n": 1}\n', Tagging="a=1", GrantFullControl=owner)
    return {"bucket": bucket, "kms": kms, "param": param, "unversioned": unversioned,
            "policy": policy(bucket, rules_bucket, kms, ssm_kms, param),
            # The shipped rules file names fields this data lacks: unmatched rules are expected here.
            "args": ["--allow-unmatched-rules", "--source", f"s3://{bucket}/in/", "--rules",
                     f"s3://{rules_bucket}/rules/security-lake.json",
                     "--hmac-key-param", param, "--min-age", "0s", "--part-size", str(5 * MIB),
                     "--purge-noncurrent"]}


def run_as(spark, tmp, name, principal_policy, args):
    audit = tmp / f"{name}.audit.jsonl"
    principal = iam.create_principal(principal_policy, audit=audit)
    with iam.acting_as(principal, spark):
        code = job.main([*args, "--results", str(tmp / name), "--run-id", name])
    rows = {r.key: (r.status, r.error_code) for r in results.read_run(spark, str(tmp / name), name).collect()}
    return code, rows, iam.read_audit(audit)


def for_bucket(lake: dict, bucket: str) -> tuple[dict, list]:
    """The lake's policy and arguments, for another data bucket."""
    return (json.loads(json.dumps(lake["policy"]).replace(lake["bucket"], bucket)),
            [a.replace(lake["bucket"], bucket) for a in lake["args"]])


@pytest.fixture(scope="module")
def shipped(spark, lake, tmp_path_factory):
    """The versioned lake, then an unversioned bucket (no version ids: the other half of each action pair)."""
    tmp = tmp_path_factory.mktemp("iam-anon")
    first = run_as(spark, tmp, "anon", lake["policy"], [*lake["args"], "--results-table", RESULTS_TABLE])
    second = run_as(spark, tmp, "anon_uv", *for_bucket(lake, lake["unversioned"]))
    return first, second


@pytest.fixture(scope="module")
def audit(shipped):
    return shipped[0][2] + shipped[1][2]


def test_the_shipped_policy_rewrites_tags_and_streams_multipart_outputs(shipped, lake, s3, glue):
    code, rows, _ = shipped[0]
    assert (code, rows) == (0, {
        "in/secret.json": (anon.ANONYMIZED, None), "in/clean.json": (anon.TAGGED, None),
        "in/big.json": (anon.ANONYMIZED, None), "in/big-clean.json": (anon.TAGGED, None)})
    head = s3.head_object(Bucket=lake["bucket"], Key="in/secret.json")
    assert head["SSEKMSKeyId"] == lake["kms"] and head["Metadata"]["m"] == "1"
    assert s3.list_multipart_uploads(Bucket=lake["bucket"]).get("Uploads", []) == []
    assert shipped[1][:2] == (0, {"in/secret.json": (anon.ANONYMIZED, None), "in/clean.json": (anon.TAGGED, None)})
    tag_set = s3.get_object_tagging(Bucket=lake["unversioned"], Key="in/clean.json")["TagSet"]
    assert {t["Key"]: t["Value"] for t in tag_set} == {"a": "1", **dict([anon.Settings.processed_tag])}
    database, table = RESULTS_TABLE.split(".")
    parts = glue.get_partitions(DatabaseName=database, TableName=table)["Partitions"]
    assert [p["Values"] for p in parts] == [["anon"]]


def test_no_request_of_the_runs_was_denied(audit):
    assert [(d["action"], d["resource"]) for d in audit if not d["allowed"] and d["kind"] == "request"] == []


def test_every_action_the_policy_grants_was_needed_by_a_request(audit, lake):
    unused = {(sid, a) for sid, a in iam.granted_actions(lake["policy"]) - iam.used_actions(audit)
              if sid not in EMR_ONLY | NOT_IN_THIS_RUN}
    assert unused == RERUN_ONLY


def test_without_list_bucket_multipart_uploads_on_the_data_bucket_multipart_outputs_fail(spark, lake, tmp_path):
    s3 = aws.s3()
    bucket = make_bucket(f"iam-anon-nl-{uuid.uuid4().hex[:10]}", versioned=True)
    s3.put_object(Bucket=bucket, Key="in/big.json", Body=big_lines(True))
    shipped_policy, args = for_bucket(lake, bucket)
    crippled = iam.without_statement(shipped_policy, "DataBucketListing", "s3:ListBucketMultipartUploads")

    code, rows, _ = run_as(spark, tmp_path, "nl", crippled, args)

    assert rows == {"in/big.json": (anon.FAILED, "AccessDenied")}
