"""Survive faults: injected S3 errors, lost responses, failed Spark tasks and a killed run.

Every S3 request of the test session goes through one fault proxy (``s3_proxy``, tests/conftest.py). The
tests here switch on a :class:`FaultPlan` over the object operations (about 15% of them faulted:
503 SlowDown 4%, 500 InternalError 3%, connection dropped before the request reaches S3 3%, response lost
after S3 applied the request 3%, response cut half way through its body 2%), run a job over a few hundred
objects, switch the faults off and check every object's final state, reading versions straight from moto
(past the proxy). Spark task failures and a killed run use spark-submit subprocesses.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator
from unittest import mock

import pytest
from s3lake.anonymize import job as anon
from s3lake.anonymize import writes
from s3lake.objects import results
from s3lake.replication import copy_in_place as cip
from s3lake_testbed import seed
from s3lake_testbed.inventory import inventory_row, write_inventory
from s3lake_testbed.process import process_tree
from s3lake_testbed.proxy import FAULT_KINDS, FaultPlan
from s3lake_testbed.replication import replicate_everything
from s3lake_testbed.scenarios import ALL_USERS, AWKWARD_KEYS, OTHER_ACCOUNT
from s3lake_testbed.seed import make_bucket, make_kms_key, object_state

from jobs import anonymize as anon_job
from jobs import copy_in_place as cip_job
from jobs import json_to_parquet as j2p_job

ROOT = Path(__file__).resolve().parents[1]
SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"
BLANK_RULES = ROOT / "conf/anonymize/file-contents.json"
MIB = 1024 * 1024

#: The S3 object requests the jobs make; bucket-level and Glue/KMS requests are left alone.
OBJECT_OPERATIONS = frozenset({
    "HeadObject", "GetObject", "GetObjectAcl", "GetObjectTagging", "PutObjectTagging", "PutObject", "CopyObject",
    "CreateMultipartUpload", "UploadPart", "UploadPartCopy", "CompleteMultipartUpload", "AbortMultipartUpload",
    "DeleteObject",
})
#: About 15% of object requests faulted.
RATES = {"slowdown": 0.04, "internal_error": 0.03, "drop_before": 0.03, "drop_after": 0.03, "truncate": 0.02}


def fault_plan(seed: int, **extra: Any) -> FaultPlan:
    return FaultPlan(seed=seed, operations=OBJECT_OPERATIONS, **RATES, **extra)


@contextmanager
def faulted(proxy, plan: FaultPlan, observed: dict | None = None) -> Iterator[None]:
    """Faults on inside the block; ``observed`` gets the request and fault counts of the block."""
    proxy.reset()
    proxy.configure(faults=plan)
    try:
        yield
    finally:
        proxy.configure(faults=None)
        if observed is not None:
            observed["counts"] = proxy.counts()
            observed["faults"] = proxy.fault_counts()


def pmap(fn: Callable[[Any], Any], items: Iterable[Any], workers: int = 8) -> list:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))


def states(direct, bucket: str, keys: Iterable[str]) -> dict[str, dict]:
    """:func:`object_state` of each key; versions counted from one listing (moto lists a bucket per call)."""
    keys = list(keys)
    versions = version_counts(direct, bucket)
    with mock.patch.object(seed, "count_versions", lambda b, k: versions.get(k, 0)):
        return dict(zip(keys, pmap(lambda k: object_state(bucket, k), keys, workers=16)))


def version_counts(direct, bucket: str) -> dict[str, int]:
    """Versions (and delete markers) per key, from one listing straight from moto."""
    counts: dict[str, int] = {}
    for page in direct.get_paginator("list_object_versions").paginate(Bucket=bucket):
        for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
            counts[v["Key"]] = counts.get(v["Key"], 0) + 1
    return counts


def results_by_key(spark, path, run_id) -> dict[str, Any]:
    rows = results.read_run(spark, str(path), run_id).collect()
    by_key = {r.key: r for r in rows}
    assert len(by_key) == len(rows), "more than one result row for an object"
    return by_key


def observed_table(title: str, observed: dict) -> str:
    """fault kind | rate | observed, for the log (``pytest -s``) and the issue's note."""
    eligible = sum(n for op, n in observed["counts"].items() if op in OBJECT_OPERATIONS)
    lines = [f"{title}: {eligible} object requests through the proxy"]
    for kind in (*FAULT_KINDS, "access_denied"):
        hits = {op: n for (k, op), n in sorted(observed["faults"].items()) if k == kind}
        if hits or kind in RATES:
            lines.append(f"  {kind:<15} {RATES.get(kind, 0):.0%}  {sum(hits.values()):>4}  {hits}")
    return "\n".join(lines)


def assert_every_kind_happened(observed: dict, lost_writes: Iterable[str]) -> None:
    kinds = {k for k, _ in observed["faults"]}
    assert set(RATES) <= kinds, observed["faults"]
    eligible = sum(n for op, n in observed["counts"].items() if op in OBJECT_OPERATIONS)
    faulted_n = sum(n for (k, _), n in observed["faults"].items() if k in RATES)
    assert 0.08 < faulted_n / eligible < 0.25, (faulted_n, eligible)
    # The case that matters most: a write applied by S3 whose response never came back.
    assert sum(observed["faults"].get(("drop_after", op), 0) for op in lost_writes) >= 1, observed["faults"]


# ------------------------------------------------------------------------------------------ copy in place


def seed_copy_bucket(direct, bucket: str, n: int, kms_key: str, prefix: str = "obj/") -> list[str]:
    """``n`` objects cycling through the attribute kinds copy-in-place must keep."""
    owner = direct.get_bucket_acl(Bucket=bucket)["Owner"]["ID"]
    full = f'id="{owner}"'

    def params(i: int) -> dict[str, Any]:
        key = f"{prefix}{i:04d}.bin"
        body = f"object {i}\n".encode() * (1 + i % 7)
        kind = i % 6
        if kind == 0:
            return dict(Key=key, Body=body)
        if kind == 1:
            return dict(Key=key, Body=body, ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_key, BucketKeyEnabled=True,
                        Metadata={"team": "data", "i": str(i)}, Tagging=f"n={i}&kind=kms", StorageClass="STANDARD_IA",
                        ContentType="application/json", GrantFullControl=full)
        if kind == 2:
            return dict(Key=key, Body=body, ServerSideEncryption="AES256", ContentType="text/csv",
                        CacheControl="max-age=60", GrantFullControl=full, GrantRead=f'uri="{ALL_USERS}"')
        if kind == 3:
            return dict(Key=key, Body=body, Metadata={"origin": "upload"}, ContentLanguage="en-GB", Tagging="a=1",
                        ContentDisposition='attachment; filename="x"', WebsiteRedirectLocation="/moved.html")
        if kind == 4:
            return dict(Key=key, Body=body, StorageClass="INTELLIGENT_TIERING", ContentEncoding="identity",
                        GrantFullControl=full, GrantReadACP=f'id="{OTHER_ACCOUNT}"')
        return dict(Key=AWKWARD_KEYS[(i // 6) % len(AWKWARD_KEYS)].replace("awkward/", f"{prefix}{i:04d}-"),
                    Body=body, ContentType="text/plain; charset=utf-8", Metadata={"idx": str(i)})

    def put(i: int) -> str:
        p = params(i)
        direct.put_object(Bucket=bucket, **p)
        return p["Key"]

    return pmap(put, range(n))


def inventory_for(direct, bucket: str, keys: Iterable[str]) -> str:
    inv = make_bucket(f"{bucket}-inv")
    rows = pmap(lambda k: inventory_row(direct, bucket, k), list(keys))
    return write_inventory(inv, bucket, rows).manifest_url


def copied_once(before: dict, after: dict, run_id: str) -> dict:
    """``after`` minus the copy's effects (the marker, one more version): must equal ``before``."""
    after = dict(after)
    metadata = dict(after.pop("metadata"))
    assert metadata.pop(cip.MARKER, None) == run_id
    after["metadata"] = metadata
    after["versions"] -= 1
    return after


@pytest.mark.slow
def test_copy_in_place_under_faults_copies_every_candidate_exactly_once(spark, proxy, direct, unique, tmp_path,
                                                                        capsys):
    bucket = replicate_everything(make_bucket(f"flt-cip-{unique}", versioned=True))
    keys = seed_copy_bucket(direct, bucket, 240, make_kms_key())
    big = [f"big/{i}.bin" for i in range(2)]  # multipart copies: UploadPartCopy + a lost Complete
    for key in big:
        direct.put_object(Bucket=bucket, Key=key, Body=os.urandom(6 * MIB), Metadata={"big": "1"}, Tagging="t=1")
    archived = ["cold/0.log", "cold/1.log"]
    for key in archived:
        direct.put_object(Bucket=bucket, Key=key, Body=b"cold", StorageClass="GLACIER")
    candidates = keys + big + archived
    manifest = inventory_for(direct, bucket, candidates)
    before = states(direct, bucket, candidates)
    observed: dict = {}

    with faulted(proxy, fault_plan(seed=71), observed):
        code = cip_job.main(["--inventory-manifest", manifest, "--results", str(tmp_path / "r"),
                             "--run-id", "faulty", "--multipart-threshold", str(5 * MIB)])

    with capsys.disabled():
        print("\n" + observed_table("copy-in-place", observed))
    assert code == 0, capsys.readouterr().err
    got = results_by_key(spark, tmp_path / "r", "faulty")
    assert set(got) == set(candidates)
    statuses = {k: r.status for k, r in got.items()}
    assert {k: s for k, s in statuses.items() if k not in archived} == {k: cip.COPIED for k in keys + big}
    assert {statuses[k] for k in archived} == {cip.SKIPPED_ARCHIVED}
    versions = version_counts(direct, bucket)
    after = states(direct, bucket, candidates)
    for key in keys + big:
        assert versions[key] == before[key]["versions"] + 1, key  # one new version, even after a lost response
        assert copied_once(before[key], after[key], "faulty") == before[key], key
        assert got[key].new_version_id is not None
    for key in archived:
        assert after[key] == before[key]
    assert_every_kind_happened(observed, ["CopyObject"])
    # Even a CreateMultipartUpload whose response was lost is adopted (create_multipart_once), not orphaned.
    assert direct.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# ------------------------------------------------------------------------------------------ anonymize


def jl(*records: dict) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def anon_objects(n: int, kms_key: str, prefix: str = "in/") -> dict[str, dict[str, Any]]:
    """PutObject parameters per key, and what each object's body must become."""
    objs = {}
    for i in range(n):
        kind = i % 5
        lines = [{"file_contents": f"secret {i}", "n": i}, {"n": i + 1, "note": "kept"},
                 {"file_contents": "x" * (i % 50), "k": [i]}]
        blanked = [{"file_contents": "", "n": i}, {"n": i + 1, "note": "kept"}, {"file_contents": "", "k": [i]}]
        if kind == 0:  # nothing to change: only tagged
            lines = blanked = [{"n": i}, {"file_contents": ""}]
        key = f"{prefix}{i:04d}.json"
        params: dict[str, Any] = {"Body": jl(*lines)}
        if kind == 1:
            key += ".gz"
            params.update(Body=gzip.compress(jl(*lines)), ContentEncoding="gzip", ContentType="application/json")
        elif kind == 2:
            params.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_key, BucketKeyEnabled=True,
                          Metadata={"team": "sec"}, StorageClass="STANDARD_IA", Tagging=f"owner=t{i}&c=internal")
        elif kind == 3:
            params.update(ContentType="application/x-ndjson", CacheControl="no-cache", Tagging="a=1",
                          GrantRead=f'uri="{ALL_USERS}"')
        objs[key] = {"params": {"Key": key, **params}, "expected": jl(*blanked), "changes": kind != 0}
    return objs


def read_plain(direct, bucket: str, key: str) -> bytes:
    raw = direct.get_object(Bucket=bucket, Key=key)["Body"].read()
    return gzip.decompress(raw) if key.endswith(".gz") else raw


@pytest.mark.slow
def test_anonymize_under_faults_rewrites_each_object_at_most_once_and_never_half(spark, proxy, direct, unique,
                                                                                 tmp_path, capsys):
    bucket = make_bucket(f"flt-anon-{unique}", versioned=True)
    owner = direct.get_bucket_acl(Bucket=bucket)["Owner"]["ID"]
    objs = anon_objects(250, make_kms_key())
    pmap(lambda o: direct.put_object(Bucket=bucket, GrantFullControl=f'id="{owner}"', **o["params"]), objs.values())
    before = states(direct, bucket, objs)
    observed: dict = {}
    args = ["--source", f"s3://{bucket}/in/", "--rules", str(BLANK_RULES), "--results", str(tmp_path / "r"),
            "--min-age", "0s"]

    with faulted(proxy, fault_plan(seed=72), observed):
        code = anon_job.main([*args, "--run-id", "faulty"])

    with capsys.disabled():
        print("\n" + observed_table("anonymize", observed))
    assert code == 0, capsys.readouterr().err
    got = results_by_key(spark, tmp_path / "r", "faulty")
    assert set(got) == set(objs)
    versions = version_counts(direct, bucket)
    after = states(direct, bucket, objs)
    for key, obj in objs.items():
        row, was, now = got[key], before[key], dict(after[key])
        assert read_plain(direct, bucket, key) == obj["expected"], key  # whole: never half-written
        assert now.pop("tags") == sorted(set(was["tags"]) | {("PROCESSED", "true")}), key
        if obj["changes"]:
            assert row.status == anon.ANONYMIZED, (key, row.status, row.error_message)
            assert versions[key] == was["versions"] + 1, key  # rewritten once, even after a lost response
            assert now.pop("metadata") == {**was["metadata"], writes.MARKER: "faulty"}, key
            for name in ("sha256", "size", "versions"):
                now.pop(name)
            assert now == {k: v for k, v in was.items()
                           if k not in ("tags", "metadata", "sha256", "size", "versions")}, key
        else:
            assert row.status == anon.TAGGED, (key, row.status, row.error_message)
            assert versions[key] == was["versions"], key
            assert now == {k: v for k, v in was.items() if k != "tags"}, key
    assert_every_kind_happened(observed, ["PutObject", "PutObjectTagging"])

    # The next scheduled run, under faults too, re-processes nothing.
    with faulted(proxy, fault_plan(seed=73)):
        code = anon_job.main([*args, "--run-id", "next"])
    assert code == 0
    again = results_by_key(spark, tmp_path / "r", "next")
    assert {k: r.status for k, r in again.items()} == {k: anon.SKIPPED_PROCESSED for k in objs}
    assert states(direct, bucket, objs) == after


def test_anonymize_reads_an_object_again_when_its_download_is_cut_and_writes_it_once(proxy, direct, unique):
    from s3lake.anonymize import rules
    from s3lake.objects.buckets import bucket_info

    bucket = make_bucket(f"flt-cut-{unique}", versioned=True)
    rng = random.Random(3)
    payload = [rng.getrandbits(600 * 8).to_bytes(600, "big").hex() for _ in range(9000)]  # ~11 MiB
    big = jl(*({"file_contents": "s", "p": p} for p in payload))
    small = jl({"file_contents": "secret", "n": 1}, {"n": 2})
    bodies = {"small.json": (small, jl({"file_contents": "", "n": 1}, {"n": 2})),
              "big.json": (big, jl(*({"file_contents": "", "p": p} for p in payload)))}
    for key, (body, _) in bodies.items():
        direct.put_object(Bucket=bucket, Key=key, Body=body, Metadata={"m": key})
    ruleset = rules.load(str(BLANK_RULES))
    settings = anon.Settings(run_id="cut", rules=ruleset, min_age=0, part_size=5 * MIB)
    info = bucket_info(bucket, True)[0]
    # The first GET's body is cut half way (after the first part of the big object was uploaded).
    plan = next(p for p in (FaultPlan(seed=s, truncate=0.5, operations={"GetObject"}) for s in range(100))
                if p.preview(2) == ["truncate", None])
    for key, (body, expected) in bodies.items():
        observed: dict = {}
        with faulted(proxy, plan, observed):
            row = dict(zip(results.FIELDS, anon.process({"bucket": bucket, "key": key, "size": len(body)},
                                                        settings, info)))
        assert (row["status"], row["error_code"]) == (anon.ANONYMIZED, None), row
        assert observed["faults"] == {("truncate", "GetObject"): 1} and observed["counts"]["GetObject"] == 2
        assert direct.get_object(Bucket=bucket, Key=key)["Body"].read() == expected
        assert version_counts(direct, bucket)[key] == 2
        assert direct.head_object(Bucket=bucket, Key=key)["Metadata"] == {"m": key, writes.MARKER: "cut"}
    assert observed["counts"]["AbortMultipartUpload"] == 1
    assert direct.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# ------------------------------------------------------------------------------------------ permissions


def test_access_denied_objects_are_recorded_and_the_rest_of_a_copy_run_completes(spark, proxy, direct, unique,
                                                                                 tmp_path, capsys):
    bucket = replicate_everything(make_bucket(f"flt-deny-{unique}", versioned=True))
    keys = seed_copy_bucket(direct, bucket, 30, make_kms_key())
    restricted_key = make_kms_key("a key the job's role may not use")
    denied = [f"restricted/{i}.json" for i in range(4)]
    for key in denied:
        direct.put_object(Bucket=bucket, Key=key, Body=b"{}", ServerSideEncryption="aws:kms",
                          SSEKMSKeyId=restricted_key)
    manifest = inventory_for(direct, bucket, keys + denied)
    before = version_counts(direct, bucket)
    # S3 answers 403 AccessDenied to a CopyObject whose source or target KMS key the role may not use.
    plan = fault_plan(seed=74, deny_keys=r"^restricted/", deny_operations={"CopyObject"})
    observed: dict = {}

    with faulted(proxy, plan, observed):
        code = cip_job.main(["--inventory-manifest", manifest, "--results", str(tmp_path / "r"), "--run-id", "deny"])

    assert code == 1  # 4 FAILED > --max-failures 0
    assert f"s3lake: 4 objects FAILED (more than --max-failures 0); see {tmp_path / 'r'}/run_id=deny" in (
        capsys.readouterr().err)
    got = results_by_key(spark, tmp_path / "r", "deny")
    assert {k: (r.status, r.error_code) for k, r in got.items() if k in denied} == {
        k: (results.FAILED, "AccessDenied") for k in denied}
    assert all(got[k].kms_key_id == restricted_key and got[k].encryption == "SSE-KMS" for k in denied)
    assert {got[k].status for k in keys} == {cip.COPIED}
    versions = version_counts(direct, bucket)
    assert {k: versions[k] - before[k] for k in keys + denied} == {**{k: 1 for k in keys}, **{k: 0 for k in denied}}
    assert observed["faults"][("access_denied", "CopyObject")] == len(denied)  # denials are not retried


def test_access_denied_objects_are_recorded_and_the_rest_of_an_anonymize_run_completes(spark, proxy, direct,
                                                                                      unique, tmp_path):
    bucket = make_bucket(f"flt-deny-anon-{unique}", versioned=True)
    objs = anon_objects(30, make_kms_key())
    pmap(lambda o: direct.put_object(Bucket=bucket, **o["params"]), objs.values())
    denied = [f"in/restricted/{i}.json" for i in range(3)]
    for key in denied:
        direct.put_object(Bucket=bucket, Key=key, Body=jl({"file_contents": "s"}))
    before = version_counts(direct, bucket)
    # GetObject of an SSE-KMS object needs kms:Decrypt; HEAD does not.
    plan = fault_plan(seed=75, deny_keys=r"^in/restricted/", deny_operations={"GetObject", "PutObject"})

    with faulted(proxy, plan):
        code = anon_job.main(["--source", f"s3://{bucket}/in/", "--rules", str(BLANK_RULES),
                              "--results", str(tmp_path / "r"), "--run-id", "deny", "--min-age", "0s",
                              "--max-failures", "3"])

    assert code == 0
    got = results_by_key(spark, tmp_path / "r", "deny")
    assert set(got) == set(objs) | set(denied)
    assert {k: (got[k].status, got[k].error_code) for k in denied} == {
        k: (results.FAILED, "AccessDenied") for k in denied}
    expected = {k: anon.ANONYMIZED if o["changes"] else anon.TAGGED for k, o in objs.items()}
    assert {k: got[k].status for k in objs} == expected
    versions = version_counts(direct, bucket)
    assert all(versions[k] == before[k] for k in denied)
    assert all(read_plain(direct, bucket, k) == o["expected"] for k, o in objs.items())


# ------------------------------------------------------------------------------------------ killed run


def small_objects(direct, name: str, n: int) -> tuple[str, list[str], str, dict[str, int]]:
    """A replicated, versioned bucket of ``n`` small objects: (bucket, keys, inventory manifest, versions)."""
    bucket = replicate_everything(make_bucket(name, versioned=True))
    keys = [f"k/{i:04d}" for i in range(n)]
    pmap(lambda k: direct.put_object(Bucket=bucket, Key=k, Body=k.encode(), Metadata={"m": k[-1]}), keys)
    return bucket, keys, inventory_for(direct, bucket, keys), version_counts(direct, bucket)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a spark-submit run like a lost node: the JVM, the driver and the Python worker daemon's group."""
    groups = set()
    for pid in process_tree(proc.pid):
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            pass
    for group in sorted(groups, key=lambda g: g != proc.pid):  # the JVM first: no new workers get forked
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while any(_alive_group(g) for g in groups):
        assert time.monotonic() < deadline, f"processes of the killed run are still alive: groups {groups}"
        time.sleep(0.1)


def _alive_group(group: int) -> bool:
    try:
        os.killpg(group, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def submit(script: str, *args: str, master: str = "local[2]", conf: dict | None = None, env: dict | None = None,
           log: Path | None = None, wait: bool = True):
    cmd = [str(SPARK_SUBMIT), "--master", master, "--conf", "spark.ui.enabled=false",
           "--conf", "spark.ui.showConsoleProgress=false", "--driver-java-options", "-Dlog4j.rootLogger=WARN"]
    for k, v in (conf or {}).items():
        cmd += ["--conf", f"{k}={v}"]
    cmd += [script, *args]
    full_env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
                "SPARK_LOCAL_IP": "127.0.0.1", **(env or {})}
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT,
                            start_new_session=True)
    if not wait:
        return proc
    try:
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
        if log:
            out.close()
    return proc


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the run's processes in /proc")
def test_a_killed_copy_run_keeps_its_committed_rows_and_its_rerun_resumes_after_them(spark, proxy, direct, unique,
                                                                                      tmp_path):
    bucket, keys, manifest, before = small_objects(direct, f"flt-kill-{unique}", 300)
    job = str(ROOT / "jobs" / "copy_in_place.py")
    interval = 1.0
    args = ["--inventory-manifest", manifest, "--results", str(tmp_path / "r"), "--run-id", "killed",
            "--checkpoint-interval", str(interval)]

    proxy.configure(latency=0.05)  # ~12 s of copying at 2 tasks x 2 objects in flight
    run = submit(job, *args, "--concurrency", "2", "--partitions", "2", log=tmp_path / "first.log", wait=False)
    try:
        deadline = time.monotonic() + 240
        while proxy.counts().get("CopyObject", 0) < 150:
            assert run.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.1)
    finally:
        killed_at = time.time()
        kill_tree(run)
    proxy.configure(latency=0.0)
    time.sleep(0.5)  # a request the proxy was still delaying lands now, not during the rerun

    def copied_at(key: str) -> float | None:
        head = direct.head_object(Bucket=bucket, Key=key)
        return head["LastModified"].timestamp() if head.get("Metadata", {}).get(cip.MARKER) == "killed" else None

    copied = {k: t for k, t in zip(keys, pmap(copied_at, keys)) if t is not None}
    assert 150 <= len(copied) < len(keys)
    committed = {r.key: r.status for r in results.read_run(spark, str(tmp_path / "r"), "killed").collect()}
    assert set(committed.values()) == {cip.COPIED} and set(committed) <= set(copied)
    # LastModified has one-second resolution: 'finished more than one interval before the kill', with a second
    # for the rounding and one for the commit's own PUT
    assert {k for k, t in copied.items() if t < killed_at - interval - 2} <= set(committed)

    proxy.reset_counts()
    rerun = submit(job, *args, log=tmp_path / "rerun.log")
    assert rerun.returncode == 0, (tmp_path / "rerun.log").read_text()[-3000:]

    counts = proxy.counts()
    proxy.reset_counts()
    again = submit(job, *args, log=tmp_path / "again.log")  # all committed: what the driver alone requests
    assert again.returncode == 0, (tmp_path / "again.log").read_text()[-3000:]
    driver = proxy.counts()
    assert not {"CopyObject", "GetObjectAcl"} & set(driver)
    # none for a committed object
    assert counts.get("HeadObject", 0) - driver.get("HeadObject", 0) == len(keys) - len(committed)
    assert counts.get("CopyObject", 0) == len(keys) - len(copied)
    assert counts.get("GetObjectAcl", 0) == len(keys) - len(copied)
    rows = results.read_run(spark, str(tmp_path / "r"), "killed").collect()
    assert len(rows) == len(keys)
    assert {r.key: r.status for r in rows} == {
        k: cip.COPIED if k in committed or k not in copied else cip.ALREADY_COPIED for k in keys}
    versions = version_counts(direct, bucket)
    assert {k: versions[k] - before[k] for k in keys} == {k: 1 for k in keys}
    assert "resumed" in (tmp_path / "rerun.log").read_text()


def python_workers(root: int) -> list[int]:
    """The Python workers a run's daemon forked (not the daemon itself)."""
    daemons = []
    for pid in process_tree(root):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"pyspark.daemon" in fh.read():
                    daemons.append(pid)
        except OSError:
            continue
    out = []
    for pid in daemons:
        with open(f"/proc/{pid}/stat") as fh:
            if int(fh.read().rsplit(")", 1)[1].split()[1]) in daemons:
                out.append(pid)
    # busiest first: a worker running an object task has its pools' threads; an idle reused one has one
    return sorted(out, key=lambda pid: -len(os.listdir(f"/proc/{pid}/task")))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the run's processes in /proc")
def test_a_task_killed_mid_partition_is_retried_redoing_at_most_its_last_checkpoint(spark, proxy, direct, unique,
                                                                                   tmp_path):
    bucket, keys, manifest, before = small_objects(direct, f"flt-task-{unique}", 300)
    job = str(ROOT / "jobs" / "copy_in_place.py")
    args = ["--inventory-manifest", manifest, "--results", str(tmp_path / "r"), "--run-id", "task",
            "--checkpoint-interval", "1", "--concurrency", "2", "--partitions", "2"]

    proxy.configure(latency=0.05)  # 3 requests per object: at most ~13 objects/s per task
    run = submit(job, *args, master="local[2,4]", log=tmp_path / "run.log", wait=False)  # 4 attempts per task
    try:
        deadline = time.monotonic() + 240
        while proxy.counts().get("CopyObject", 0) < 120:
            assert run.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the run never got going"
            time.sleep(0.1)
        workers = python_workers(run.pid)
        assert workers, "no Python worker found"
        os.kill(workers[0], signal.SIGKILL)  # one task's worker: its attempt fails, Spark retries it
        assert run.wait(timeout=240) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if run.poll() is None:
            kill_tree(run)
        proxy.configure(latency=0.0)

    assert "Lost task" in (tmp_path / "run.log").read_text()  # the attempt did fail
    rows = results.read_run(spark, str(tmp_path / "r"), "task").collect()
    assert len(rows) == len(keys)
    redone = [r.key for r in rows if r.status == cip.ALREADY_COPIED]  # copied, row lost with the attempt
    # Without checkpoints the retry would redo the whole partition (~150 objects, ~60 of them copied). With
    # them: what finished in the last interval (at most ~13/s) and what was in flight.
    assert len(redone) <= 30, redone
    assert {r.key: r.status for r in rows} == {k: cip.ALREADY_COPIED if k in redone else cip.COPIED for k in keys}
    versions = version_counts(direct, bucket)
    assert {k: versions[k] - before[k] for k in keys} == {k: 1 for k in keys}


# ------------------------------------------------------------------------------------------ JSON to Parquet

# The job as spark-submit runs it, except that two steps of its plan go through an identity Python stage
# whose first attempt of every task fails: reading (before parsing and the cache) and writing (after one
# Arrow batch has gone to the Parquet writer, so a half-written attempt file exists when the task dies).
FAILING_DRIVER = textwrap.dedent('''
    import os
    import runpy
    import sys

    from pyspark import TaskContext
    from s3lake.parquet import convert as j2p
    from s3lake.parquet import read, write

    LOG = os.environ["S3LAKE_TEST_ATTEMPTS"]


    def note(stage, what):
        ctx = TaskContext.get()
        name = f"{stage}-{ctx.stageId()}-{ctx.partitionId()}-{ctx.attemptNumber()}-{what}"
        open(os.path.join(LOG, name), "w").close()


    def fail_first_attempt(stage):
        def run(batches):
            first = TaskContext.get().attemptNumber() == 0
            for i, batch in enumerate(batches):
                yield batch
                if first and i == 0:
                    note(stage, "failed")
                    raise RuntimeError(f"injected failure: {stage}, first attempt")
            if first:
                note(stage, "failed")
                raise RuntimeError(f"injected failure: {stage}, first attempt")
            note(stage, "ok")
        return run


    def failing(stage, step):
        def wrapped(*args, **kwargs):
            df = step(*args, **kwargs)
            return df.mapInArrow(fail_first_attempt(stage), df.schema)
        return wrapped


    # Where convert looks them up (it imports the steps by name).
    j2p.read_lines = failing("read", read.read_lines)
    j2p.for_writing = failing("write", write.for_writing)
    job = sys.argv.pop(1)
    sys.argv[0] = job
    runpy.run_path(job, run_name="__main__")
''')

EVENT_SCHEMA = {
    "type": "struct",
    "fields": [
        {"name": "id", "type": "string", "nullable": True, "metadata": {}},
        {"name": "ts", "type": "string", "nullable": True, "metadata": {}},
        {"name": "user", "type": {"type": "struct", "fields": [
            {"name": "uid", "type": "long", "nullable": True, "metadata": {}},
            {"name": "cc", "type": "string", "nullable": True, "metadata": {}}]}, "nullable": True, "metadata": {}},
        {"name": "tags", "type": {"type": "array", "elementType": "string", "containsNull": True},
         "nullable": True, "metadata": {}},
        {"name": "amount", "type": "double", "nullable": True, "metadata": {}},
    ],
}


def write_events(directory: Path, files: int = 6, per_file: int = 600) -> list[str]:
    """Gzipped NDJSON over 5 days, with duplicate ids across files and ~1% bad lines."""
    rng = random.Random(5)
    directory.mkdir(parents=True)
    paths = []
    base = 1714521600  # 2024-05-01T00:00:00Z
    for f in range(files):
        lines = []
        for i in range(per_file):
            n = rng.randrange(files * per_file * 3 // 4)  # ~25% of ids appear twice
            ts = base + n * 97 % (5 * 86400)
            record = {"id": f"e{n}", "ts": ts * 1000 if n % 3 else
                      time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)),
                      "user": {"uid": n % 50, "cc": rng.choice(["DE", "FR", None])},
                      "tags": [f"t{n % 4}"] * (n % 3), "amount": round(n / 7, 3)}
            lines.append(json.dumps(record))
            if i % 97 == 0:
                lines.append('{"id": "broken", "ts": ')
        path = directory / f"part-{f}.json.gz"
        path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
        paths.append(str(path))
    return paths


def dataset(root: Path) -> dict[str, Any]:
    """partition -> (number of Parquet files, sorted rows); fails on any file a committer should not leave."""
    import pyarrow.parquet as pq

    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            continue
        rel = path.relative_to(root)
        if path.name == "_SUCCESS" or path.name.endswith(".crc"):
            continue
        assert path.name.startswith("part-") and path.suffix == ".parquet", f"stray file {rel}"
        rows = pq.read_table(path).to_pylist()
        files, acc = out.get(str(rel.parent), (0, []))
        out[str(rel.parent)] = (files + 1, acc + [json.dumps(r, sort_keys=True, default=str) for r in rows])
    return {p: (n, sorted(rows)) for p, (n, rows) in out.items()}


def bad_records(root: Path) -> list[str]:
    return sorted(line for f in root.rglob("*.json") for line in f.read_text().splitlines())


@pytest.mark.slow
def test_json_to_parquet_with_every_task_failing_once_writes_what_a_fault_free_run_writes(spark, tmp_path):
    inputs = write_events(tmp_path / "in")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(EVENT_SCHEMA))
    common = ["--input", *inputs, "--schema", str(schema), "--timestamp-field", "ts", "--partition-by", "dt",
              "--dedup-key", "id", "--max-bad-fraction", "0.05"]
    reference, faulty = tmp_path / "reference", tmp_path / "faulty"
    assert j2p_job.main([*common, "--output", str(reference)]) == 0

    driver = tmp_path / "failing_driver.py"
    driver.write_text(FAILING_DRIVER)
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    run = submit(str(driver), str(ROOT / "jobs" / "json_to_parquet.py"), *common, "--output", str(faulty),
                 master="local[2,4]",  # spark.task.maxFailures = 4
                 conf={"spark.sql.shuffle.partitions": "4", "spark.sql.adaptive.coalescePartitions.enabled": "false",
                       "spark.sql.execution.arrow.maxRecordsPerBatch": "100", "spark.sql.session.timeZone": "UTC"},
                 env={"S3LAKE_TEST_ATTEMPTS": str(attempts)}, log=tmp_path / "submit.log")
    assert run.returncode == 0, (tmp_path / "submit.log").read_text()[-4000:]

    notes = sorted(p.name for p in attempts.iterdir())
    for stage in ("read", "write"):
        failed = {n.rsplit("-", 3)[0] for n in notes if n.startswith(stage) and n.endswith("-0-failed")}
        retried = {n.rsplit("-", 3)[0] for n in notes if n.startswith(stage) and n.endswith("-ok")}
        assert failed and failed <= retried, (stage, notes)  # every task failed once, then succeeded
    expected = dataset(reference)
    assert len(expected) >= 3 and sum(len(rows) for _, rows in expected.values()) > 2000
    assert dataset(faulty) == expected
    bad = bad_records(Path(f"{reference}_bad_records"))
    assert len(bad) == 6 * 7 and bad_records(Path(f"{faulty}_bad_records")) == bad


def test_the_fault_plan_faults_about_fifteen_percent_of_object_requests():
    decisions = fault_plan(seed=1).preview(20000)
    assert abs(sum(1 for d in decisions if d) / len(decisions) - 0.15) < 0.01
    for kind, rate in RATES.items():
        assert abs(decisions.count(kind) / len(decisions) - rate) < 0.005, kind
    plan = fault_plan(seed=1)
    assert plan.applies_to("CopyObject") and plan.applies_to("HeadObject") and not plan.applies_to("GetTable")


def test_a_lost_create_multipart_upload_response_is_adopted_not_orphaned(proxy, direct, unique):
    from s3lake.objects.at_most_once import create_multipart_once
    from s3lake.objects.driver import Counter

    bucket = f"flt-mpu-{unique}"
    direct.create_bucket(Bucket=bucket)
    counter = Counter()
    with faulted(proxy, FaultPlan(seed=1, drop_after=1.0, operations=frozenset({"CreateMultipartUpload"}))):
        upload_id = create_multipart_once({"Bucket": bucket, "Key": "k", "Metadata": {"m": "1"}}, counter)

    uploads = direct.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [u["UploadId"] for u in uploads] == [upload_id]  # the one S3 made, adopted: no second upload
    assert counter.n == 3  # ListMultipartUploads, the lost create, ListMultipartUploads
    direct.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload_id)
