"""launch_emr.sh, run for real with the real AWS CLI against the session's moto server.

Everything is asserted through the S3 and EMR APIs of that server (or, for what moto does not store, such
as the auto-termination policy, through the exact command --dry-run prints).
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "launch_emr.sh"
BOOTSTRAP = ROOT / "bootstrap" / "install-s3lake.sh"
CONFIGURATIONS = ROOT / "conf" / "emr-configurations-emr-7.json"
CONFIGURATIONS_8 = ROOT / "conf" / "emr-configurations-emr-spark-8.json"
PACK = ROOT / "bootstrap" / "pack-serverless-venv.sh"
ROLE = "arn:aws:iam::123456789012:role/s3lake-job-runtime"  # moto's account: it refuses cross-account roles
BIN = Path(sys.executable).parent  # the venv's bin: python3 and the AWS CLI from the test extra

# Arguments that a naive shell script or the CLI's shorthand syntax would split, expand or mangle.
TRICKY_ARGS = [
    "--input", "s3://in/dir with spaces/",
    "--where", "it's, \"quoted\" = a,b",
    "--json", '{"k": [1, 2], "x": "$HOME *"}',
    "--glob", "*.json",
    "--unicode", "caf\u00e9",
    "--empty", "",
]


def job_file(job: str) -> Path:
    return ROOT / "jobs" / (job.replace("-", "_") + ".py")


def require_job(job: str) -> None:
    if not job_file(job).is_file():
        pytest.skip(f"{job_file(job).relative_to(ROOT)} is not in this tree yet")


@pytest.fixture(scope="module")
def build_cache(tmp_path_factory):
    """Wheels built from identical sources are reused across this module's runs (S3LAKE_BUILD_CACHE)."""
    return str(tmp_path_factory.mktemp("wheel-cache"))


@pytest.fixture
def env(moto_server, build_cache):
    """The environment for the script: the moto server, dummy credentials and the venv's aws first."""
    if shutil.which("aws", path=str(BIN)) is None:
        pytest.skip("the AWS CLI (awscli, in the test extra) is not installed in this venv")
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e["AWS_EC2_METADATA_DISABLED"] = "true"
    e["S3LAKE_POLL_SECONDS"] = "1"
    e["S3LAKE_BUILD_CACHE"] = build_cache
    e.pop("AWS_PROFILE", None)
    return e


@pytest.fixture
def dead(env, tmp_path):
    """No credentials and an endpoint that refuses connections: any AWS call would fail the run."""
    empty = tmp_path / "empty"
    empty.write_text("")
    e = {k: v for k, v in env.items() if k not in {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}}
    e.update(AWS_SHARED_CREDENTIALS_FILE=str(empty), AWS_CONFIG_FILE=str(empty), AWS_ENDPOINT_URL="http://127.0.0.1:9")
    return e


@pytest.fixture
def emr(moto_server):
    from s3lake import aws

    return aws.client("emr")


@pytest.fixture
def bucket(s3, unique):
    name = f"artifacts-{unique}"
    s3.create_bucket(Bucket=name)
    return name


def launch(env, *args, cwd=None, timeout=180):
    return subprocess.run(
        [str(SCRIPT), *args], env=env, cwd=cwd or "/", capture_output=True, text=True, timeout=timeout
    )


def printed(stdout: str) -> dict[str, str]:
    """``key: value`` lines the script prints after submitting."""
    out = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep and key in {"artifacts", "cluster", "step", "console", "logs", "stderr"}:
            out[key] = value.strip()
    return out


def printed_value(proc: subprocess.Popen, key: str, timeout: float = 90) -> str:
    """The value of the first ``key: value`` line a running launch prints (within ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith(f"{key}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(proc.stderr.read() if proc.poll() is not None else f"no {key} printed")


@contextmanager
def launched(args: list[str], env: dict) -> Iterator[subprocess.Popen]:
    """launch_emr.sh running in the background with its output piped; killed if still running after."""
    proc = subprocess.Popen([str(SCRIPT), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def dry_run_commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines() if line.startswith("aws ")]


def option(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def cluster_ids(emr) -> set[str]:
    return {c["Id"] for page in emr.get_paginator("list_clusters").paginate() for c in page["Clusters"]}


def conf_files() -> list[str]:
    """The conf/ data files the step ships with --files (not the EMR configurations, IAM or READMEs)."""
    conf = ROOT / "conf"
    found = [p for p in conf.rglob("*") if p.is_file() and "__pycache__" not in p.parts
             and p.relative_to(conf).parts[0] != "iam"
             and not (p.parent == conf and (p.name.startswith("emr-configurations") or p.name.startswith("README")))]
    return sorted((p.relative_to(conf).as_posix() for p in found), key=lambda rel: rel.rsplit("/", 1)[-1])


def expected_step_args(prefix: str, job: str, job_args: list[str]) -> list[str]:
    files = ",".join(f"{prefix}/conf/{rel}" for rel in conf_files())
    return [
        "spark-submit", "--deploy-mode", "cluster",
        *(["--files", files] if files else []),
        "--py-files", f"{prefix}/s3lake-0.1.0.zip",
        f"{prefix}/jobs/{job_file(job).name}",
        *job_args,
    ]


def assert_product_only(archive: zipfile.ZipFile) -> None:
    """The uploaded wheel or --py-files zip holds exactly the product's modules (lib/s3lake, every
    sub-package), no test-bed or demo module, and none of its modules imports moto or the test bed."""
    from tests.test_layout import FORBIDDEN_IN_PRODUCT, imported_modules

    lib = ROOT / "lib"
    modules = {n for n in archive.namelist() if n.endswith(".py")}
    assert modules == {p.relative_to(lib).as_posix() for p in (lib / "s3lake").rglob("*.py")}
    assert not [n for n in archive.namelist() if {"testbed", "s3lake_testbed", "demo"} & set(n.split("/"))]
    for name in sorted(modules):
        imports = imported_modules(archive.read(name).decode("utf-8"))
        assert not [m for m in imports if m.split(".")[0] in FORBIDDEN_IN_PRODUCT], name


def test_creates_a_cluster_with_the_uploaded_build_and_one_exact_step(env, s3, emr, bucket, unique):
    job = "copy-in-place"
    require_job(job)
    result = launch(env, job, "--artifacts", f"s3://{bucket}/releases/", "--tags", f"team=data,run={unique}",
                    "--", *TRICKY_ARGS)
    assert result.returncode == 0, result.stderr
    out = printed(result.stdout)
    prefix = out["artifacts"].rstrip("/")
    assert prefix.startswith(f"s3://{bucket}/releases/s3lake/0.1.0-")
    cluster_id, step_id = out["cluster"], out["step"]
    assert cluster_id.startswith("j-") and step_id.startswith("s-")
    assert out["console"] == (
        f"https://console.aws.amazon.com/emr/home?region=us-east-1#/clusterDetails/{cluster_id}"
    )
    assert out["logs"] == f"s3://{bucket}/releases/logs/{cluster_id}/"
    assert out["stderr"] == f"s3://{bucket}/releases/logs/{cluster_id}/steps/{step_id}/stderr.gz"

    # Artifacts: one versioned prefix holding the wheel, the --py-files zip, the entry point, bootstrap/, conf/.
    key_prefix = prefix[len(f"s3://{bucket}/"):] + "/"
    keys = {o["Key"][len(key_prefix):] for o in s3.list_objects_v2(Bucket=bucket, Prefix="releases/")["Contents"]}
    for name in ["s3lake-0.1.0-py3-none-any.whl", "s3lake-0.1.0.zip", f"jobs/{job_file(job).name}",
                 "bootstrap/install-s3lake.sh", "bootstrap/requirements.txt", "conf/emr-configurations-emr-7.json",
                 "build-info.json"]:
        assert name in keys, sorted(keys)

    def body(name: str) -> bytes:
        return s3.get_object(Bucket=bucket, Key=key_prefix + name)["Body"].read()

    assert body(f"jobs/{job_file(job).name}") == job_file(job).read_bytes()
    assert body("bootstrap/install-s3lake.sh") == BOOTSTRAP.read_bytes()
    with zipfile.ZipFile(io.BytesIO(body("s3lake-0.1.0.zip"))) as zf:
        names = set(zf.namelist())
        assert {"s3lake/__init__.py", "s3lake/aws.py"} <= names
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
        assert_product_only(zf)
    with zipfile.ZipFile(io.BytesIO(body("s3lake-0.1.0-py3-none-any.whl"))) as whl:
        assert "s3lake/aws.py" in whl.namelist()
        assert any(n.endswith(".dist-info/METADATA") for n in whl.namelist())
        assert_product_only(whl)

    # The cluster.
    cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    assert cluster["ReleaseLabel"] == "emr-7.14.0"
    assert [a["Name"] for a in cluster["Applications"]] == ["Spark"]
    assert cluster["Configurations"] == json.loads(CONFIGURATIONS.read_text())
    assert cluster["AutoTerminate"] is True
    assert cluster["LogUri"] == f"s3://{bucket}/releases/logs/"
    assert cluster["ServiceRole"] == "EMR_DefaultRole"
    assert cluster["Ec2InstanceAttributes"]["IamInstanceProfile"] == "EMR_EC2_DefaultRole"
    tags = {t["Key"]: t["Value"] for t in cluster["Tags"]}
    assert tags["team"] == "data" and tags["run"] == unique
    assert tags["s3lake:job"] == job and prefix.endswith(tags["s3lake:build"])
    assert emr.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"] == [{
        "Name": "install-s3lake",
        "ScriptPath": f"{prefix}/bootstrap/install-s3lake.sh",
        "Args": [f"{prefix}/s3lake-0.1.0-py3-none-any.whl", f"{prefix}/bootstrap/requirements.txt", "python3.9"],
    }]
    groups = {g["InstanceGroupType"]: g for g in emr.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"]}
    assert set(groups) == {"MASTER", "CORE"}
    assert groups["CORE"]["RequestedInstanceCount"] == 2
    assert {g["InstanceType"] for g in groups.values()} == {"m6g.xlarge"}

    # The step: the job arguments arrive exactly as given.
    steps = emr.list_steps(ClusterId=cluster_id)["Steps"]
    assert [s["Id"] for s in steps] == [step_id]
    assert steps[0]["Config"]["Jar"] == "command-runner.jar"
    assert steps[0]["Config"]["Args"] == expected_step_args(prefix, job, TRICKY_ARGS)
    assert steps[0]["ActionOnFailure"] == "TERMINATE_CLUSTER"


def test_keep_alive_sets_an_idle_termination_policy_instead_of_auto_terminate(env, emr, bucket, unique):
    job = "copy-in-place"
    require_job(job)
    args = [job, "--artifacts", f"s3://{bucket}/rel", "--keep-alive", "--idle-timeout", "1800",
            "--release-label", "emr-spark-8.1.0", "--python", "3.13", "--instance-type", "m7g.2xlarge",
            "--core-count", "3",
            "--spot-task-count", "2", "--log-uri", f"s3://{bucket}/emr-logs", "--ec2-role", "s3lake-copy",
            "--service-role", "s3lake-emr", "--tags", f"run={unique}", "--", "--flag"]
    result = launch(env, *args)
    assert result.returncode == 0, result.stderr
    out = printed(result.stdout)
    cluster = emr.describe_cluster(ClusterId=out["cluster"])["Cluster"]
    assert cluster["AutoTerminate"] is False
    assert cluster["ReleaseLabel"] == "emr-spark-8.1.0"
    assert cluster["Configurations"] == json.loads(CONFIGURATIONS_8.read_text())  # S3A + magic commit protocol
    bootstrap = emr.list_bootstrap_actions(ClusterId=out["cluster"])["BootstrapActions"][0]
    assert bootstrap["Args"][-1] == "python3.13"
    assert cluster["LogUri"] == f"s3://{bucket}/emr-logs"
    assert out["stderr"] == f"s3://{bucket}/emr-logs/{out['cluster']}/steps/{out['step']}/stderr.gz"
    assert cluster["ServiceRole"] == "s3lake-emr"
    assert cluster["Ec2InstanceAttributes"]["IamInstanceProfile"] == "s3lake-copy"
    groups = {
        g["InstanceGroupType"]: g for g in emr.list_instance_groups(ClusterId=out["cluster"])["InstanceGroups"]
    }
    assert groups["CORE"]["RequestedInstanceCount"] == 3
    assert groups["TASK"]["RequestedInstanceCount"] == 2 and groups["TASK"]["Market"] == "SPOT"
    assert {g["InstanceType"] for g in groups.values()} == {"m7g.2xlarge"}
    step = emr.list_steps(ClusterId=out["cluster"])["Steps"][0]
    assert step["ActionOnFailure"] == "CONTINUE"  # a failed step leaves a kept-alive cluster up
    assert step["Config"]["Args"][-1] == "--flag"

    # moto does not store the auto-termination policy (GetAutoTerminationPolicy fails there), so the
    # command line that sets it is asserted from --dry-run.
    dry = launch(env, *args[:-2], "--dry-run")
    assert dry.returncode == 0, dry.stderr
    create = [c for c in dry_run_commands(dry.stdout) if c[3:5] == ["emr", "create-cluster"]][0]
    assert "--no-auto-terminate" in create and "--auto-terminate" not in create
    assert option(create, "--auto-termination-policy") == "IdleTimeout=1800"


def test_adds_the_step_to_a_running_cluster(env, emr, bucket, unique):
    job = "copy-in-place"
    require_job(job)
    cluster_id = emr.run_job_flow(
        Name=f"running-{unique}",
        ReleaseLabel="emr-7.13.0",
        LogUri=f"s3n://{bucket}/running-logs/",
        Instances={"MasterInstanceType": "m6g.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
        JobFlowRole="EMR_EC2_DefaultRole",
        ServiceRole="EMR_DefaultRole",
    )["JobFlowId"]
    before = cluster_ids(emr)
    result = launch(env, job, "--artifacts", f"s3://{bucket}/rel", "--cluster-id", cluster_id, "--",
                    *TRICKY_ARGS)
    assert result.returncode == 0, result.stderr
    out = printed(result.stdout)
    assert cluster_ids(emr) == before  # no new cluster
    assert out["cluster"] == cluster_id
    steps = emr.list_steps(ClusterId=cluster_id)["Steps"]
    assert [s["Id"] for s in steps] == [out["step"]]
    assert steps[0]["Config"]["Args"] == expected_step_args(out["artifacts"].rstrip("/"), job, TRICKY_ARGS)
    assert steps[0]["ActionOnFailure"] == "CONTINUE"
    assert out["stderr"] == f"s3://{bucket}/running-logs/{cluster_id}/steps/{out['step']}/stderr.gz"

    # Options that only shape a new cluster are refused with --cluster-id.
    refused = launch(env, job, "--artifacts", f"s3://{bucket}/rel", "--cluster-id", cluster_id,
                     "--release-label", "emr-7.0.0")
    assert refused.returncode == 2
    assert "--release-label only applies when creating a cluster" in refused.stderr
    assert emr.list_steps(ClusterId=cluster_id)["Steps"] == steps


@pytest.mark.parametrize("job", ["copy-in-place", "anonymize", "json-to-parquet"])
def test_dry_run_prints_every_command_and_touches_nothing(dead, s3, emr, bucket, job):
    require_job(job)
    clusters_before = cluster_ids(emr)
    buckets_before = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    result = launch(dead, job, "--artifacts", f"s3://{bucket}/rel", "--dry-run", "--wait", "--",
                    *TRICKY_ARGS)
    assert result.returncode == 0, result.stderr
    commands = dry_run_commands(result.stdout)
    verbs = [c[3:5] for c in commands]
    assert verbs == [["sts", "get-caller-identity"], ["s3", "cp"], ["s3", "cp"],
                     ["emr", "create-cluster"], ["emr", "list-steps"], ["emr", "describe-step"]]
    create = commands[3]
    assert option(create, "--release-label") == "emr-7.14.0"
    assert option(create, "--configurations") == f"file://{CONFIGURATIONS}"
    assert "--auto-terminate" in create
    step = json.loads(option(create, "--steps"))[0]
    prefix = commands[2][-1].rstrip("/")
    assert step["Args"] == expected_step_args(prefix, job, TRICKY_ARGS)
    assert step["ActionOnFailure"] == "TERMINATE_CLUSTER"
    bootstrap = json.loads(option(create, "--bootstrap-actions"))[0]
    assert bootstrap["Path"] == f"{prefix}/bootstrap/install-s3lake.sh"

    assert cluster_ids(emr) == clusters_before
    assert {b["Name"] for b in s3.list_buckets()["Buckets"]} == buckets_before
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_dry_run_with_cluster_id_prints_add_steps(env, emr, bucket):
    require_job("copy-in-place")
    before = cluster_ids(emr)
    result = launch(env, "copy-in-place", "--artifacts", f"s3://{bucket}/rel", "--cluster-id", "j-ABCDEF123",
                    "--dry-run", "--", "a b")
    assert result.returncode == 0, result.stderr
    commands = dry_run_commands(result.stdout)
    assert [c[3:5] for c in commands][-2:] == [["emr", "describe-cluster"], ["emr", "add-steps"]]
    add = commands[-1]
    assert option(add, "--cluster-id") == "j-ABCDEF123"
    step = json.loads(option(add, "--steps"))[0]
    assert step["Args"][-1] == "a b" and step["ActionOnFailure"] == "CONTINUE"
    assert cluster_ids(emr) == before


def test_wait_fails_when_the_step_does_not_complete(env, emr, bucket, unique):
    """moto never finishes a step, so end the cluster under it: --wait must exit 1 and say where stderr is."""
    require_job("copy-in-place")
    with launched(["copy-in-place", "--artifacts", f"s3://{bucket}/rel", "--wait", "--tags", f"run={unique}"],
                  env) as proc:
        cluster_id = printed_value(proc, "cluster")
        time.sleep(1.5)  # let it poll at least once while the step is RUNNING
        assert proc.poll() is None
        emr.terminate_job_flows(JobFlowIds=[cluster_id])
        rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "is RUNNING" in err
    assert f"cluster {cluster_id} TERMINATED before step" in err
    assert f"s3://{bucket}/rel/logs/{cluster_id}/steps/s-" in err and "stderr.gz" in err


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    assert lines[0] == result.stderr.splitlines()[-1]
    return lines[0]


def test_unknown_job(env, bucket):
    result = launch(env, "copy-everything", "--artifacts", f"s3://{bucket}/rel")
    assert result.returncode == 2
    assert result.stderr == (
        "launch_emr.sh: error: unknown job 'copy-everything' "
        "(expected one of: copy-in-place, anonymize, json-to-parquet)\n"
    )


def test_missing_artifacts(env):
    result = launch(env, "anonymize", "--", "--source", "s3://x/")
    assert result.returncode == 2
    assert result.stderr.startswith("launch_emr.sh: error: missing --artifacts")
    assert result.stderr.count("\n") == 1


def test_no_aws_cli_on_path(env, bucket, tmp_path):
    require_job("copy-in-place")
    path = "/usr/bin:/bin"
    if shutil.which("aws", path=path):
        pytest.skip("this machine has an aws on /usr/bin:/bin")
    result = launch({**env, "PATH": path}, "copy-in-place", "--artifacts", f"s3://{bucket}/rel")
    assert result.returncode == 2
    assert result.stderr.startswith("launch_emr.sh: error: the AWS CLI ('aws') is not on PATH")
    assert result.stderr.count("\n") == 1


def test_missing_credentials(env, bucket, tmp_path):
    require_job("copy-in-place")
    empty = tmp_path / "empty"
    empty.write_text("")
    bare = {k: v for k, v in env.items()
            if k not in {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"}
            and not k.startswith("AWS_CONTAINER_")}
    bare.update(AWS_SHARED_CREDENTIALS_FILE=str(empty), AWS_CONFIG_FILE=str(empty))
    result = launch(bare, "copy-in-place", "--artifacts", f"s3://{bucket}/rel")
    assert result.returncode == 2
    assert result.stderr.startswith("launch_emr.sh: error: no AWS credentials found")
    assert result.stderr.count("\n") == 1


def test_a_bucket_it_cannot_write(env, s3, emr, unique):
    require_job("copy-in-place")
    before = cluster_ids(emr)
    result = launch(env, "copy-in-place", "--artifacts", f"s3://no-such-bucket-{unique}/rel")
    assert result.returncode == 2
    line = _error_line(result)
    assert line.startswith(f"launch_emr.sh: error: cannot write to s3://no-such-bucket-{unique}/rel/s3lake/")
    assert "NoSuchBucket" in line
    assert cluster_ids(emr) == before


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "missing JOB"),
        (["anonymize", "--artifacts", "bucket/prefix"], "--artifacts must be s3://bucket[/prefix]"),
        (["anonymize", "--artifacts", "s3://b-1/p", "--core-count", "two"], "--core-count must be a whole"),
        (["anonymize", "--artifacts", "s3://b-1/p", "--idle-timeout", "600"], "--idle-timeout needs --keep-alive"),
        (["anonymize", "--artifacts", "s3://b-1/p", "--tags", "novalue"], "--tags wants k=v"),
        (["anonymize", "--artifacts", "s3://b-1/p", "--frobnicate"], "unknown option --frobnicate"),
        (["anonymize", "extra", "--artifacts", "s3://b-1/p"], "unexpected argument 'extra'"),
    ],
)
def test_other_bad_input_is_one_line(env, args, message):
    result = launch(env, *args)
    assert result.returncode == 2
    assert result.stderr.startswith(f"launch_emr.sh: error: {message}"), result.stderr
    assert result.stderr.count("\n") == 1


def test_bootstrap_fails_the_node_loudly(env, s3, bucket, tmp_path):
    """A wheel that cannot be fetched stops the bootstrap with a FAILED line and a non-zero status."""
    s3.put_object(Bucket=bucket, Key="rel/requirements.txt", Body=b"")
    result = subprocess.run(
        [str(BOOTSTRAP), f"s3://{bucket}/rel/s3lake-0.1.0-py3-none-any.whl", f"s3://{bucket}/rel/requirements.txt"],
        env={**env, "S3LAKE_HOME": str(tmp_path / "home")}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "install-s3lake: FAILED" in result.stderr
    assert not (tmp_path / "home" / "installed").exists()

    usage = subprocess.run([str(BOOTSTRAP)], env=env, capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "FAILED: usage" in usage.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (Debian: shellcheck)")
def test_scripts_are_shellcheck_clean():
    result = subprocess.run(["shellcheck", str(SCRIPT), str(BOOTSTRAP), str(PACK)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", [CONFIGURATIONS, CONFIGURATIONS_8], ids=["emr-7", "emr-spark-8"])
def test_emr_configurations_are_valid(path):
    conf = {c["Classification"]: c for c in json.loads(path.read_text())}
    assert {"spark-defaults", "spark-env", "spark-hive-site"} <= set(conf)
    export = {c["Classification"]: c for c in conf["spark-env"]["Configurations"]}["export"]["Properties"]
    assert export["PYSPARK_PYTHON"] == "/opt/s3lake/venv/bin/python3"  # where install-s3lake.sh installs
    assert "/opt/s3lake" in BOOTSTRAP.read_text()
    assert conf["spark-hive-site"]["Properties"]["hive.metastore.client.factory.class"] == (
        "com.amazonaws.glue.catalog.metastore.AWSGlueDataCatalogHiveClientFactory"
    )
    for c in conf.values():
        assert all(isinstance(v, str) for v in c.get("Properties", {}).values())


@pytest.mark.parametrize("job", ["copy-in-place", "anonymize", "json-to-parquet", "replication-report"])
def test_iam_policy_documents(job):
    """Valid policy JSON, placeholders only (no account ids), each statement explained in conf/README.md."""
    text = (ROOT / "conf" / "iam" / f"{job}.json").read_text()
    doc = json.loads(text)
    assert doc["Version"] == "2012-10-17"
    sids = [s["Sid"] for s in doc["Statement"]]
    assert len(sids) == len(set(sids))
    assert not re.search(r"\d{12}", text), "use the ACCOUNT_ID placeholder, not an account id"
    readme = (ROOT / "conf" / "README.md").read_text()
    for statement in doc["Statement"]:
        assert statement["Effect"] == "Allow" and statement["Action"] and statement["Resource"]
        assert "*" not in statement["Action"] and all(":" in a and "*" not in a for a in statement["Action"])
        assert statement["Sid"] in readme, statement["Sid"]


# ------------------------------------------------------------------------------------------- release lines

@pytest.mark.parametrize("label", ["emr-6.15.0", "emr-7.9.0", "emr-spark-8.0.0", "emr-spark-9.0.0", "7.14.0"])
@pytest.mark.parametrize("how", [[], ["--serverless-create", "s3lake", "--execution-role-arn", ROLE]],
                         ids=["cluster", "serverless-create"])
def test_an_unsupported_release_label_is_one_line_and_uploads_nothing(env, s3, emr, bucket, label, how):
    require_job("copy-in-place")
    before = cluster_ids(emr)
    result = launch(env, "copy-in-place", "--artifacts", f"s3://{bucket}/rel", "--release-label", label, *how)
    assert result.returncode == 2
    assert _error_line(result).startswith(f"launch_emr.sh: error: unsupported release label '{label}'")
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert cluster_ids(emr) == before


@pytest.mark.parametrize("label, python", [("emr-7.14.0", "3.13"), ("emr-spark-8.1.0", "3.9"), ("emr-7.14.0", "3")])
def test_a_python_the_line_does_not_ship_is_refused(env, bucket, label, python):
    result = launch(env, "anonymize", "--artifacts", f"s3://{bucket}/rel", "--release-label", label,
                    "--python", python)
    assert result.returncode == 2
    assert f"--python {python} is not a Python of" in _error_line(result)


# ----------------------------------------------------------------------------------------- EMR Serverless

@pytest.fixture
def serverless(moto_server):
    """The EMR Serverless client; the job runtime role :data:`ROLE` exists (launch_emr.sh checks it)."""
    from s3lake import aws

    iam = aws.client("iam")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "emr-serverless.amazonaws.com"}}]}
    try:
        iam.create_role(RoleName=ROLE.rsplit("/", 1)[1], AssumeRolePolicyDocument=json.dumps(trust))
    except iam.exceptions.EntityAlreadyExistsException:
        pass
    return aws.client("emr-serverless")


@pytest.fixture
def app(serverless, unique):
    """A Spark application on the default line (moto creates it STARTED)."""
    return serverless.create_application(name=f"s3lake-{unique}", releaseLabel="emr-7.14.0", type="SPARK")[
        "applicationId"]


@pytest.fixture
def venv_archive(tmp_path):
    """A stand-in for the packed environment (building a real one needs PyPI; see the pack test below)."""
    path = tmp_path / "env.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("bin/python")
        body = b"#!/bin/sh\nexec python3 \"$@\"\n"
        info.size, info.mode = len(body), 0o755
        tar.addfile(info, io.BytesIO(body))
    return path


def job_runs(serverless, app_id: str) -> list[dict]:
    return serverless.list_job_runs(applicationId=app_id)["jobRuns"]


def expected_overrides(conf_path: Path, log_uri: str) -> dict:
    conf = {c["Classification"]: c for c in json.loads(conf_path.read_text())}
    props = {k: v for k, v in conf["spark-defaults"]["Properties"].items() if not k.startswith("spark.yarn.")}
    props.update({f"spark.hadoop.{k}": v for k, v in conf["spark-hive-site"]["Properties"].items()})
    return {"applicationConfiguration": [{"classification": "spark-defaults", "properties": props}],
            "monitoringConfiguration": {"s3MonitoringConfiguration": {"logUri": log_uri}}}


def expected_submit_parameters(prefix: str, venv_url: str) -> str:
    files = ",".join(f"{prefix}/conf/{rel}" for rel in conf_files())
    return " ".join([
        *(["--files", files] if files else []),
        "--conf", f"spark.archives={venv_url}#environment",
        "--conf", "spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON=./environment/bin/python",
        "--conf", "spark.emr-serverless.driverEnv.PYSPARK_PYTHON=./environment/bin/python",
        "--conf", "spark.executorEnv.PYSPARK_PYTHON=./environment/bin/python",
    ])


def test_serverless_runs_the_uploaded_job_in_the_packed_environment(env, s3, serverless, bucket, app, venv_archive,
                                                                   unique):
    job = "json-to-parquet"
    require_job(job)
    result = launch(env, job, "--artifacts", f"s3://{bucket}/rel", "--serverless", app, "--execution-role-arn", ROLE,
                    "--venv-archive", str(venv_archive), "--tags", f"run={unique}", "--", *TRICKY_ARGS)
    assert result.returncode == 0, result.stderr
    out = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in result.stdout.splitlines())}
    prefix = out["artifacts"].rstrip("/")
    assert out["application"] == app
    run_id = out["job run"]
    assert out["release"] == "emr-7.14.0 (Python 3.9, X86_64)"
    assert out["stderr"] == f"s3://{bucket}/rel/logs/applications/{app}/jobs/{run_id}/SPARK_DRIVER/stderr.gz"

    run = serverless.get_job_run(applicationId=app, jobRunId=run_id)["jobRun"]
    assert run["executionRole"] == ROLE
    assert run["name"] == f"s3lake {job} {prefix.rsplit('/', 1)[1]}"
    venv_url = f"{prefix}/s3lake-0.1.0-python3.9-x86_64.tar.gz"
    assert run["jobDriver"] == {"sparkSubmit": {
        "entryPoint": f"{prefix}/jobs/{job_file(job).name}",
        "entryPointArguments": TRICKY_ARGS,  # exactly as given: a list, never re-split
        "sparkSubmitParameters": expected_submit_parameters(prefix, venv_url),
    }}
    assert run["configurationOverrides"] == expected_overrides(CONFIGURATIONS, f"s3://{bucket}/rel/logs/")
    assert run["tags"]["run"] == unique and run["tags"]["s3lake:job"] == job

    key_prefix = prefix[len(f"s3://{bucket}/"):] + "/"
    keys = {o["Key"][len(key_prefix):] for o in s3.list_objects_v2(Bucket=bucket, Prefix=key_prefix)["Contents"]}
    assert {f"jobs/{job_file(job).name}", "s3lake-0.1.0-python3.9-x86_64.tar.gz"} <= keys
    body = s3.get_object(Bucket=bucket, Key=key_prefix + "s3lake-0.1.0-python3.9-x86_64.tar.gz")["Body"].read()
    assert body == venv_archive.read_bytes()


def test_serverless_create_makes_an_application_on_the_release_label_then_runs(env, serverless, bucket, unique,
                                                                               venv_archive):
    require_job("copy-in-place")
    name = f"s3lake-new-{unique}"
    result = launch(env, "copy-in-place", "--artifacts", f"s3://{bucket}/rel", "--serverless-create", name,
                    "--architecture", "ARM64", "--python", "3.11", "--execution-role-arn", ROLE,
                    "--log-uri", f"s3://{bucket}/sl-logs", "--venv-archive", str(venv_archive))
    assert result.returncode == 0, result.stderr
    apps = [a for a in serverless.list_applications()["applications"] if a["name"] == name]
    assert len(apps) == 1 and apps[0]["releaseLabel"] == "emr-7.14.0" and apps[0]["type"].upper() == "SPARK"
    runs = job_runs(serverless, apps[0]["id"])
    assert len(runs) == 1
    run = serverless.get_job_run(applicationId=apps[0]["id"], jobRunId=runs[0]["id"])["jobRun"]
    assert "python3.11-arm64.tar.gz#environment" in run["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"]
    assert run["configurationOverrides"]["monitoringConfiguration"] == {
        "s3MonitoringConfiguration": {"logUri": f"s3://{bucket}/sl-logs"}}


def test_serverless_wait_exits_0_on_success(env, serverless, bucket, app, venv_archive):
    require_job("copy-in-place")
    result = launch(env, "copy-in-place", "--artifacts", f"s3://{bucket}/rel", "--serverless", app,
                    "--execution-role-arn", ROLE, "--venv-archive", str(venv_archive), "--wait")
    assert result.returncode == 0, result.stderr
    assert "is SUCCESS" in result.stderr  # moto finishes every job run at once


def test_serverless_wait_exits_1_when_the_run_is_cancelled(env, serverless, bucket, app, venv_archive):
    require_job("copy-in-place")
    with launched(["copy-in-place", "--artifacts", f"s3://{bucket}/rel", "--serverless", app,
                   "--execution-role-arn", ROLE, "--venv-archive", str(venv_archive), "--wait"],
                  {**env, "S3LAKE_POLL_SECONDS": "3"}) as proc:
        run_id = printed_value(proc, "job run")
        serverless.cancel_job_run(applicationId=app, jobRunId=run_id)  # before its first poll
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"job run {run_id} CANCELLED" in err
    assert f"applications/{app}/jobs/{run_id}/SPARK_DRIVER/stderr.gz" in err


@pytest.mark.parametrize("state_change", ["stop", "terminate"])
def test_serverless_refuses_an_application_not_created_or_started(env, s3, serverless, bucket, app, state_change):
    require_job("copy-in-place")
    serverless.stop_application(applicationId=app)
    if state_change == "terminate":
        serverless.delete_application(applicationId=app)
    result = launch(env, "copy-in-place", "--artifacts", f"s3://{bucket}/rel", "--serverless", app,
                    "--execution-role-arn", ROLE)
    assert result.returncode == 2
    state = "STOPPED" if state_change == "stop" else "TERMINATED"
    assert _error_line(result) == (
        f"launch_emr.sh: error: EMR Serverless application {app} is {state} (a job run needs CREATED or STARTED)")
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_serverless_refuses_an_execution_role_that_does_not_exist_and_creates_nothing(env, s3, serverless, bucket,
                                                                                    app):
    require_job("copy-in-place")
    missing = "arn:aws:iam::123456789012:role/service-role/s3lake-no-such-role"
    apps_before = serverless.list_applications()["applications"]
    for how in (["--serverless", app], ["--serverless-create", "s3lake-new"]):
        result = launch(env, "copy-in-place", "--artifacts", f"s3://{bucket}/rel", *how,
                        "--execution-role-arn", missing)
        assert result.returncode == 2
        assert _error_line(result) == (f"launch_emr.sh: error: --execution-role-arn {missing}: no such IAM role in "
                                       "this account (nothing was uploaded or created)")
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0  # a job run starts after the upload
    assert serverless.list_applications()["applications"] == apps_before


def test_serverless_goes_on_with_one_warning_when_the_caller_may_not_read_the_role(env, serverless, bucket, app,
                                                                                  venv_archive):
    from s3lake_testbed import iam

    require_job("copy-in-place")
    principal = iam.create_principal({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Effect": "Deny", "Action": "iam:GetRole", "Resource": "*"}]})
    result = launch({**env, **principal.environ()}, "copy-in-place", "--artifacts", f"s3://{bucket}/rel",
                    "--serverless", app, "--execution-role-arn", ROLE, "--venv-archive", str(venv_archive))
    assert result.returncode == 0, result.stderr
    assert f"warning: cannot check that --execution-role-arn {ROLE} exists (iam:GetRole denied); going on" in \
        result.stderr
    assert len(job_runs(serverless, app)) == 1


def test_serverless_refuses_a_label_other_than_the_applications(env, s3, bucket, app):
    require_job("copy-in-place")
    result = launch(env, "copy-in-place", "--artifacts", f"s3://{bucket}/rel", "--serverless", app,
                    "--execution-role-arn", ROLE, "--release-label", "emr-spark-8.1.0")
    assert result.returncode == 2
    assert "runs emr-7.14.0, not --release-label emr-spark-8.1.0" in _error_line(result)
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--serverless", "00abcdef12345678"], "EMR Serverless needs --execution-role-arn"),
        (["--serverless-create", "x"], "EMR Serverless needs --execution-role-arn"),
        (["--serverless", "00abcdef12345678", "--execution-role-arn", "s3lake-role"], "--execution-role-arn must be"),
        (["--serverless", "00abcdef12345678", "--execution-role-arn", ROLE, "--instance-type", "m7g.xlarge"],
         "--instance-type is an EMR on EC2 option"),
        (["--serverless", "bad id", "--execution-role-arn", ROLE], "--serverless takes an application id"),
        (["--serverless", "00abcdef12345678", "--serverless-create", "x", "--execution-role-arn", ROLE],
         "--serverless and --serverless-create exclude each other"),
        (["--execution-role-arn", ROLE], "--execution-role-arn only applies with --serverless"),
        (["--serverless-create", "x", "--execution-role-arn", ROLE, "--architecture", "RISCV"],
         "--architecture must be X86_64 or ARM64"),
        (["--serverless", "00abcdef12345678", "--execution-role-arn", ROLE, "--architecture", "ARM64"],
         "--architecture only applies with --serverless-create"),
    ],
)
def test_serverless_bad_input_is_one_line_and_uploads_nothing(env, s3, bucket, args, message):
    result = launch(env, "anonymize", "--artifacts", f"s3://{bucket}/rel", *args)
    assert result.returncode == 2
    assert _error_line(result).startswith(f"launch_emr.sh: error: {message}"), result.stderr
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_serverless_dry_run_on_emr_spark_8_prints_the_calls_and_touches_nothing(dead, s3, serverless, bucket):
    require_job("anonymize")
    apps_before = serverless.list_applications()["applications"]
    result = launch(dead, "anonymize", "--artifacts", f"s3://{bucket}/rel", "--serverless-create", "s3lake-spark4",
                    "--release-label", "emr-spark-8.1.0", "--execution-role-arn", ROLE, "--dry-run", "--wait",
                    "--", *TRICKY_ARGS)
    assert result.returncode == 0, result.stderr
    commands = dry_run_commands(result.stdout)
    assert [c[3:5] for c in commands] == [
        ["sts", "get-caller-identity"], ["iam", "get-role"], ["emr-serverless", "create-application"],
        ["s3", "cp"], ["s3", "cp"], ["emr-serverless", "start-job-run"], ["emr-serverless", "get-job-run"]]
    assert option(commands[1], "--role-name") == "s3lake-job-runtime"
    create, start = commands[2], commands[5]
    assert option(create, "--release-label") == "emr-spark-8.1.0" and option(create, "--type") == "SPARK"
    prefix = commands[4][-1].rstrip("/")
    driver = json.loads(option(start, "--job-driver"))["sparkSubmit"]
    assert driver["entryPointArguments"] == TRICKY_ARGS
    assert driver["sparkSubmitParameters"] == expected_submit_parameters(
        prefix, f"{prefix}/s3lake-0.1.0-python3.11-x86_64.tar.gz")
    overrides = json.loads(option(start, "--configuration-overrides"))
    assert overrides == expected_overrides(CONFIGURATIONS_8, f"s3://{bucket}/rel/logs/")
    assert overrides["applicationConfiguration"][0]["properties"]["spark.hadoop.fs.s3.impl"] == (
        "org.apache.hadoop.fs.s3a.S3AFileSystem")
    assert "pack-serverless-venv.sh" in result.stdout  # the environment it would pack, as a comment
    assert serverless.list_applications()["applications"] == apps_before
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_pack_serverless_venv_builds_an_environment_spark_can_unpack(env, tmp_path):
    """Offline (no index): only the s3lake wheel, installed for this Python; bin/python imports it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "lib", src / "lib", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(src)], check=True, capture_output=True, timeout=180)
    wheel = next(wheels.glob("s3lake-*.whl"))
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# nothing: offline\n")
    pyv = f"{sys.version_info.major}.{sys.version_info.minor}"
    out = tmp_path / "env.tar.gz"
    result = subprocess.run([str(PACK), str(wheel), str(reqs), pyv, "X86_64", str(out)],
                            env={**env, "PIP_NO_INDEX": "1", "PYTHON": sys.executable},
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    unpacked = tmp_path / "environment"
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        tar.extractall(unpacked)
    assert {"./bin/python", "./lib/site-packages/s3lake/__init__.py"} <= names
    probe = subprocess.run([str(unpacked / "bin" / "python"), "-c", "import s3lake, sys; print(s3lake.__file__)"],
                           env={**env, "PYTHONPATH": ""}, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip().startswith(str(unpacked / "lib" / "site-packages"))

    bad = subprocess.run([str(PACK), str(wheel), str(reqs), pyv, "SPARC", str(out)], env=env,
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "ARCH must be X86_64 or ARM64" in bad.stderr


@pytest.mark.parametrize("python", ["3.9", "3.11", "3.13"])
def test_bootstrap_requirements_pin_every_package_once_for_each_line_python(python):
    from packaging.requirements import Requirement

    env = {"python_version": python, "python_full_version": python + ".0"}
    pins: dict[str, str] = {}
    for raw in (ROOT / "bootstrap" / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        assert req.name not in pins, f"{req.name} pinned twice for Python {python}"
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", line
        pins[req.name] = specs[0].version
    assert {"boto3", "botocore", "pyarrow", "pandas", "numpy"} <= set(pins)
    numpy_major_minor = tuple(int(x) for x in pins["numpy"].split(".")[:2])
    minor = int(python.split(".")[1])
    assert numpy_major_minor >= ((2, 1) if minor >= 13 else (1, 22))  # numpy < 2.1 has no 3.13 wheels


def test_serverless_job_runtime_policy_is_valid_and_every_statement_is_explained():
    text = (ROOT / "conf" / "iam" / "emr-serverless-job-runtime.json").read_text()
    doc = json.loads(text)
    assert doc["Version"] == "2012-10-17"
    sids = [s["Sid"] for s in doc["Statement"]]
    assert len(sids) == len(set(sids))
    assert not re.search(r"\d{12}", text), "use the ACCOUNT_ID placeholder, not an account id"
    readme = (ROOT / "README.md").read_text()
    for statement in doc["Statement"]:
        assert statement["Effect"] == "Allow" and statement["Action"] and statement["Resource"]
        assert all(":" in a and "*" not in a for a in statement["Action"])
        assert statement["Sid"] in readme, statement["Sid"]


def test_serverless_dry_run_on_an_existing_application_reads_it_first(dead, bucket):
    require_job("copy-in-place")
    result = launch(dead, "copy-in-place", "--artifacts", f"s3://{bucket}/rel", "--serverless", "00abcdef12345678",
                    "--release-label", "emr-spark-8.1.0", "--python", "3.13", "--execution-role-arn", ROLE,
                    "--dry-run")
    assert result.returncode == 0, result.stderr
    commands = dry_run_commands(result.stdout)
    assert [c[3:5] for c in commands] == [
        ["sts", "get-caller-identity"], ["emr-serverless", "get-application"], ["iam", "get-role"],
        ["s3", "cp"], ["s3", "cp"], ["emr-serverless", "start-job-run"]]
    start = commands[-1]
    assert option(start, "--application-id") == "00abcdef12345678"
    assert option(start, "--execution-role-arn") == ROLE
    assert "python3.13-x86_64.tar.gz#environment" in option(start, "--job-driver")
