"""A principal holding only a shipped IAM policy, and running code as it (end-to-end tests as the job's role).

:func:`create_principal` fills the placeholders of ``conf/iam/<job>.json``, creates an EC2-trusted role with that
one inline policy in the local endpoint and assumes it (an EMR node's instance profile hands out the same kind
of session credentials). In the test bed's moto server (:mod:`s3lake_testbed.iam_corrections`) requests signed
with those credentials are authorized as IAM would; everything signed with the dummy set-up credentials is not,
so IAM is "on" for the principal from the moment it exists and set-up stays unaffected.

:func:`acting_as` switches the driver (``os.environ`` and :mod:`s3lake.aws`' client cache) and, given a
SparkSession, the Python workers Spark starts from then on to the principal's credentials: PySpark hands
``SparkContext.environment`` to every Python worker it launches, and keeps one worker pool per environment.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from s3lake import aws

from s3lake_testbed.iam_corrections import AUDIT_TAG

POLICY_DIR = Path(__file__).resolve().parents[2] / "conf" / "iam"
ACCOUNT_ID = "123456789012"  # moto's default account
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
EC2_TRUST = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
}
_PLACEHOLDER = re.compile(r"\b(?:[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|REGION)\b")


class PolicyError(ValueError):
    """A policy with placeholders left unfilled, or a statement that is not there."""


@dataclass(frozen=True)
class Principal:
    role_name: str
    role_arn: str
    policy: dict
    access_key_id: str
    secret_access_key: str
    session_token: str

    def environ(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
                "AWS_SESSION_TOKEN": self.session_token}

    def client(self, service: str) -> Any:
        """A boto3 client signed as this principal (not cached; for tests' own calls)."""
        import boto3

        return boto3.session.Session(**{k.lower(): v for k, v in self.environ().items()}).client(
            service, endpoint_url=aws.endpoint_url(service), config=aws.client_config())


def load_policy(job: str, policy_dir: Path = POLICY_DIR) -> dict:
    """``conf/iam/<job>.json`` as shipped."""
    return json.loads((policy_dir / f"{job}.json").read_text())


def fill_placeholders(policy: dict, values: Mapping[str, str]) -> dict:
    """``policy`` with each UPPER_CASE placeholder replaced; refuses to leave one unfilled."""
    text = json.dumps(policy)
    names = set(_PLACEHOLDER.findall(text))
    missing = sorted(names - set(values))
    if missing:
        raise PolicyError(f"placeholders without a value: {', '.join(missing)}")
    pattern = re.compile("|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)))
    return json.loads(pattern.sub(lambda m: values[m.group(0)], text)) if names else json.loads(text)


def without_statement(policy: dict, sid: str, action: str | None = None) -> dict:
    """``policy`` minus statement ``sid`` (or minus only ``action`` from it): to show that a test needs it."""
    kept, found = [], False
    for statement in policy["Statement"]:
        if statement.get("Sid") != sid:
            kept.append(statement)
            continue
        found = True
        if action is None:
            continue
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        if action not in actions:
            raise PolicyError(f"statement {sid} has no action {action}")
        if len(actions) > 1:
            kept.append({**statement, "Action": [a for a in actions if a != action]})
    if not found:
        raise PolicyError(f"no statement {sid}")
    return {**policy, "Statement": kept}


def create_principal(policy: dict, name: str | None = None, audit: str | Path | None = None) -> Principal:
    """A role holding only ``policy`` (inline), assumed: its session credentials are the principal's.

    With ``audit`` (a file) the server appends each authorization decision for it: see :func:`read_audit`.
    """
    name = name or f"s3lake-job-{uuid.uuid4().hex[:10]}"
    iam, sts = aws.client("iam"), aws.client("sts")
    tags = [{"Key": AUDIT_TAG, "Value": str(audit)}] if audit else []
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(EC2_TRUST), Tags=tags)["Role"]["Arn"]
    iam.put_role_policy(RoleName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
    creds = sts.assume_role(RoleArn=arn, RoleSessionName="i-0s3lake", DurationSeconds=43200)["Credentials"]
    return Principal(name, arn, policy, creds["AccessKeyId"], creds["SecretAccessKey"], creds["SessionToken"])


def create_role(name: str | None, policy: dict, *, trust: dict | None = None,
                audit: str | Path | None = None) -> str:
    """A role (not assumed) holding ``policy`` inline and trusting ``trust`` (default: the shipped
    ``batch-replication-job-role-trust.json``, S3 Batch Operations); returns its ARN, e.g. a job's RoleArn.

    With ``audit`` the server appends each decision it makes for the role (see :func:`read_audit`).
    """
    name = name or f"s3lake-role-{uuid.uuid4().hex[:10]}"
    trust = trust if trust is not None else load_policy("batch-replication-job-role-trust")
    iam = aws.client("iam")
    tags = [{"Key": AUDIT_TAG, "Value": str(audit)}] if audit else []
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust), Tags=tags)["Role"]["Arn"]
    iam.put_role_policy(RoleName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
    return arn


def read_audit(path: str | Path) -> list[dict]:
    """The decisions the server recorded: ``{"action", "resource", "allowed", "sids"}`` per check."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def used_actions(decisions: list[dict]) -> set[tuple[str, str]]:
    """(Sid, action) pairs of the policy that allowed at least one request."""
    return {(sid, d["action"]) for d in decisions if d["allowed"] for sid in d["sids"]}


def granted_actions(policy: dict) -> set[tuple[str, str]]:
    """(Sid, action) pairs a policy grants (Allow statements)."""
    pairs = set()
    for s in policy["Statement"]:
        if s.get("Effect") == "Allow":
            pairs |= {(s.get("Sid", ""), a) for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])}
    return pairs


def _set(environ: Any, values: Mapping[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            environ.pop(k, None)
        else:
            environ[k] = v


@contextmanager
def acting_as(principal: Principal, spark: Any = None) -> Iterator[Principal]:
    """Within the block, the driver's clients and newly started Spark Python workers sign as ``principal``."""
    saved_os = {k: os.environ.get(k) for k in CREDENTIAL_VARIABLES}
    env = spark.sparkContext.environment if spark is not None else None
    saved_spark = {k: env.get(k) for k in CREDENTIAL_VARIABLES} if env is not None else {}
    _set(os.environ, principal.environ())
    if env is not None:
        _set(env, principal.environ())
    aws._cache.clear()
    try:
        yield principal
    finally:
        _set(os.environ, saved_os)
        if env is not None:
            _set(env, saved_spark)
        aws._cache.clear()
