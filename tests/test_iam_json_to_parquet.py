"""JSON to Parquet end to end as a principal holding only conf/iam/json-to-parquet.json (placeholders filled).

Spark's own file I/O is local in tests (the S3 statements are for EMRFS/S3A on the cluster); the Glue calls go
to the test bed: the schema from a Glue table, the output table created, then its partitions added and updated.
"""

from __future__ import annotations

import gzip
import json
import uuid

import pytest
from s3lake import aws
from s3lake_testbed import iam
from s3lake_testbed.seed import make_glue_database

from jobs import json_to_parquet as job

# Spark I/O statements (EMRFS/S3A on the cluster; local paths here) and the cluster's own statements.
NOT_IN_TESTS = {"ReadLaunchArtifacts", "ListLaunchArtifacts", "WriteClusterLogs", "SparkGlueMetastoreDefaultDatabase",
                "ReadInput", "ListInput", "WriteOutputAndBadRecords", "ListOutputAndBadRecords",
                "ListOutputMultipartUploads", "OutputKmsKey"}
LINES = [json.dumps({"id": str(i), "ts": f"2024-05-0{1 + i % 3}T10:00:00Z"}) for i in range(9)]


def policy(db: str, table: str, schema_db: str, schema_table: str) -> dict:
    return iam.fill_placeholders(iam.load_policy("json-to-parquet"), {
        "REGION": "us-east-1", "ACCOUNT_ID": iam.ACCOUNT_ID,
        "ARTIFACTS_BUCKET": "artifacts-unused", "ARTIFACTS_PREFIX": "launch",
        "LOG_BUCKET": "logs-unused", "LOG_PREFIX": "logs",
        "INPUT_BUCKET": "input-unused", "INPUT_PREFIX": "in/", "OUTPUT_BUCKET": "output-unused",
        "OUTPUT_PREFIX": "out", "BAD_RECORDS_PREFIX": "bad", "OUTPUT_KMS_KEY_ID": "unused",
        "TABLE_DATABASE": db, "TABLE_NAME": table, "SCHEMA_DATABASE": schema_db, "SCHEMA_TABLE": schema_table,
    })


@pytest.fixture(scope="module")
def catalog(moto_server):
    u = uuid.uuid4().hex[:10]
    db, schema_db = make_glue_database(f"iam_j2p_{u}"), make_glue_database(f"iam_j2p_schema_{u}")
    aws.glue().create_table(DatabaseName=schema_db, TableInput={"Name": "events_schema", "StorageDescriptor": {
        "Columns": [{"Name": "id", "Type": "string"}, {"Name": "ts", "Type": "string"}]}})
    return db, schema_db


def run_as(spark, tmp, name, principal_policy, db, schema_db):
    (tmp / "in").mkdir(exist_ok=True)
    (tmp / "in" / "a.json.gz").write_bytes(gzip.compress(("\n".join(LINES) + "\n").encode()))
    audit = tmp / f"{name}.audit.jsonl"
    principal = iam.create_principal(principal_policy, audit=audit)
    argv = ["--input", str(tmp / "in"), "--output", str(tmp / "out"), "--timestamp-field", "ts",
            "--schema-table", f"{schema_db}.events_schema", "--table", f"{db}.events"]
    with iam.acting_as(principal, spark):
        codes = [job.main(argv), job.main(argv)]  # the second run updates the partitions the first created
    return codes, iam.read_audit(audit)


@pytest.fixture(scope="module")
def shipped(spark, catalog, tmp_path_factory):
    db, schema_db = catalog
    shipped_policy = policy(db, "events", schema_db, "events_schema")
    return (*run_as(spark, tmp_path_factory.mktemp("iam-j2p"), "j2p", shipped_policy, db, schema_db),
            shipped_policy)


def test_the_shipped_policy_registers_the_table_and_its_partitions(shipped, catalog, glue):
    codes, _, _ = shipped
    assert codes == [0, 0]
    parts = glue.get_partitions(DatabaseName=catalog[0], TableName="events")["Partitions"]
    assert sorted(p["Values"][0] for p in parts) == ["2024-05-01", "2024-05-02", "2024-05-03"]


def test_no_request_was_denied_and_every_glue_action_granted_was_needed(shipped):
    _, audit, shipped_policy = shipped
    assert [(d["action"], d["resource"]) for d in audit if not d["allowed"] and d["kind"] == "request"] == []
    unused = {(sid, a) for sid, a in iam.granted_actions(shipped_policy) - iam.used_actions(audit)
              if sid not in NOT_IN_TESTS}
    assert unused == set()


def test_without_the_schema_table_statement_the_run_stops_before_writing_anything(spark, catalog, tmp_path,
                                                                                    capsys):
    db, schema_db = catalog
    crippled = iam.without_statement(policy(db, "events", schema_db, "events_schema"), "GlueSchemaTable")

    codes, _ = run_as(spark, tmp_path, "nos", crippled, db, schema_db)
    assert codes == [2, 2]
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"s3lake: error: --schema-table {schema_db}.events_schema: cannot read the Glue table: " \
                      "AccessDeniedException"

    audit = iam.read_audit(tmp_path / "nos.audit.jsonl")
    assert {(d["action"], d["resource"].rsplit(":", 1)[-1]) for d in audit if not d["allowed"]} == {
        ("glue:GetTable", f"database/{schema_db}")}
    assert not (tmp_path / "out").exists()
