"""The test bed's identity-policy evaluation and the shipped policies' placeholders (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from s3lake_testbed import iam
from s3lake_testbed.iam_corrections import evaluate, is_allowed

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "arn:aws:s3:::data"
VIA_S3 = "s3.us-east-1.amazonaws.com"


def doc(*statements):
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(action, resource, **extra):
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def test_an_applicable_deny_wins_over_any_allow():
    docs = [doc(allow("s3:*", "*")), doc({"Effect": "Deny", "Action": "s3:DeleteObject*", "Resource": "*"})]
    assert is_allowed(docs, "s3:GetObject", f"{BUCKET}/k")
    assert not is_allowed(docs, "s3:DeleteObjectVersion", f"{BUCKET}/k")


def test_actions_match_case_insensitively_and_resources_by_wildcard():
    docs = [doc(allow("S3:getobject", f"{BUCKET}/in/*"))]
    assert is_allowed(docs, "s3:GetObject", f"{BUCKET}/in/a/b.json")
    assert not is_allowed(docs, "s3:GetObject", f"{BUCKET}/out/a.json")
    assert not is_allowed(docs, "s3:GetObjectVersion", f"{BUCKET}/in/a.json")


def test_not_action_and_not_resource():
    docs = [doc({"Effect": "Allow", "NotAction": "s3:Delete*", "NotResource": f"{BUCKET}/secret/*"})]
    assert is_allowed(docs, "s3:GetObject", f"{BUCKET}/k")
    assert not is_allowed(docs, "s3:DeleteObject", f"{BUCKET}/k")
    assert not is_allowed(docs, "s3:GetObject", f"{BUCKET}/secret/k")


@pytest.mark.parametrize("condition, context, expected", [
    ({"StringLike": {"s3:prefix": ["in/*"]}}, {"s3:prefix": "in/x"}, True),
    ({"StringLike": {"s3:prefix": ["in/*"]}}, {"s3:prefix": "out/"}, False),
    ({"StringLike": {"s3:prefix": ["in/*"]}}, {}, False),                      # a missing key fails
    ({"StringLikeIfExists": {"s3:prefix": ["in/*"]}}, {}, True),               # ... unless IfExists
    ({"StringNotEquals": {"s3:prefix": "x"}}, {}, True),                       # negated: missing passes
    ({"StringEquals": {"kms:ViaService": VIA_S3}}, {"kms:ViaService": VIA_S3}, True),
    ({"StringEquals": {"kms:ViaService": VIA_S3}}, {"kms:ViaService": "ssm.us-east-1.amazonaws.com"}, False),
    ({"Null": {"s3:prefix": "true"}}, {}, True),
    ({"NumericLessThan": {"s3:max-keys": "10"}}, {"s3:max-keys": "5"}, False),  # not emulated: never applies
])
def test_conditions_on_the_request_context(condition, context, expected):
    docs = [doc(allow("s3:ListBucket", BUCKET, Condition=condition))]
    assert is_allowed(docs, "s3:ListBucket", BUCKET, context) is expected


def test_an_allow_whose_condition_fails_is_no_deny():
    docs = [doc(allow("s3:ListBucket", BUCKET, Condition={"StringLike": {"s3:prefix": "in/*"}}),
                allow("s3:ListBucket", BUCKET))]
    assert evaluate(docs, "s3:ListBucket", BUCKET, {"s3:prefix": "out/"}) == (True, [""])


@pytest.mark.parametrize("job", ["copy-in-place", "anonymize", "json-to-parquet"])
def test_every_placeholder_of_the_shipped_policies_is_documented_and_filled(job):
    readme = (ROOT / "conf/README.md").read_text()
    names = set(iam._PLACEHOLDER.findall(json.dumps(iam.load_policy(job))))
    undocumented = {n for n in names if f"`{n}" not in readme and f"`{n.split('_')[0]}_*`" not in readme}
    assert names and undocumented == set()
    filled = iam.fill_placeholders(iam.load_policy(job), {n: "x" for n in names})
    assert not iam._PLACEHOLDER.findall(json.dumps(filled))
    with pytest.raises(iam.PolicyError, match="placeholders without a value"):
        iam.fill_placeholders(iam.load_policy(job), {})


def test_without_statement_removes_an_action_or_a_statement_and_refuses_unknown_ones():
    policy = doc({"Sid": "A", **allow(["s3:GetObject", "s3:PutObject"], "*")}, {"Sid": "B", **allow("s3:X", "*")})
    assert iam.without_statement(policy, "A", "s3:PutObject")["Statement"][0]["Action"] == ["s3:GetObject"]
    assert [s["Sid"] for s in iam.without_statement(policy, "B")["Statement"]] == ["A"]
    with pytest.raises(iam.PolicyError):
        iam.without_statement(policy, "C")
    with pytest.raises(iam.PolicyError):
        iam.without_statement(policy, "A", "s3:DeleteObject")
