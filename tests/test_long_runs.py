"""Runs of hours: two attempts of one task never both write an object, and a killed task's retry redoes at
most its last checkpoint's objects. The object work is the jobs' own (their partition functions against the
test bed), the attempts are threads, as a resubmitted stage's two attempts would be executors."""

from __future__ import annotations

import collections
import threading
import time

import pytest
from s3lake.anonymize import job as anon
from s3lake.anonymize import rules
from s3lake.objects import results
from s3lake.objects.buckets import bucket_info
from s3lake.objects.checkpoints import CheckpointOptions, TaskCheckpoints
from s3lake.objects.stores import LocalStore
from s3lake.replication import copy_in_place as cip
from s3lake_testbed.replication import replicate_everything
from s3lake_testbed.seed import make_bucket, make_kms_key

from tests.test_faults import (
    BLANK_RULES,
    anon_objects,
    copied_once,
    pmap,
    read_plain,
    seed_copy_bucket,
    states,
    version_counts,
)

FIELDS = list(results.FIELDS)
HMAC_KEY = b"long-runs-test-key"


def attempts_together(partition: list[dict], work, store, n: int = 2, chunk_objects: int = 10) -> list:
    """``n`` attempts of one task started at once, each committing through its own checkpoints."""
    barrier = threading.Barrier(n)
    stats = [None] * n

    def attempt(i: int) -> None:
        barrier.wait()
        options = CheckpointOptions(interval=0.5, chunk_objects=chunk_objects)
        with TaskCheckpoints(store, "g-00000", f"attempt-{i}", FIELDS, options, poll=0.05) as task:
            for row in work(task.feed(partition)):
                task.done(row)
        stats[i] = task.stats

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stats


def committed(spark, path) -> list:
    return results.read_run(spark, str(path), "x").collect()


def test_two_attempts_of_a_copy_task_started_together_copy_each_object_once(spark, proxy, direct, unique, tmp_path):
    bucket = replicate_everything(make_bucket(f"lr-cip-{unique}", versioned=True))
    keys = seed_copy_bucket(direct, bucket, 60, make_kms_key())
    before = states(direct, bucket, keys)
    settings = cip.Settings(run_id="x", concurrency=4)
    buckets = {bucket: bucket_info(bucket, True)[0]}
    partition = [{"bucket": bucket, "key": k, "e_tag": None, "version_id": None} for k in keys]
    proxy.configure(latency=0.01)  # the attempts overlap for the whole task

    stats = attempts_together(partition, lambda rows: cip.process_partition(rows, settings, buckets),
                              LocalStore(str(tmp_path / "r" / "run_id=x")))

    rows = committed(spark, tmp_path / "r")
    assert len(rows) == len(keys) and {r.status for r in rows} == {cip.COPIED}
    after = states(direct, bucket, keys)
    assert {k: copied_once(before[k], after[k], "x") for k in keys} == before
    assert sum(s.chunks for s in stats) == 6  # every chunk worked by exactly one attempt
    assert sum(s.chunks_done_elsewhere for s in stats) == 6


def test_two_attempts_of_an_anonymize_task_started_together_rewrite_each_object_once(spark, proxy, direct, unique,
                                                                                    tmp_path):
    bucket = make_bucket(f"lr-anon-{unique}", versioned=True)
    objs = anon_objects(50, make_kms_key())
    pmap(lambda o: direct.put_object(Bucket=bucket, **o["params"]), objs.values())
    before = version_counts(direct, bucket)
    ruleset = rules.load(str(BLANK_RULES)).with_key(rules.Secret(HMAC_KEY))
    settings = anon.Settings(run_id="x", rules=ruleset, min_age=0, concurrency=4)
    buckets = {bucket: bucket_info(bucket, True)[0]}
    partition = [{"bucket": bucket, "key": k, "size": len(read_plain(direct, bucket, k))} for k in objs]
    proxy.configure(latency=0.01)

    attempts_together(partition, lambda rows: anon.process_partition(rows, settings, buckets),
                      LocalStore(str(tmp_path / "r" / "run_id=x")))

    rows = committed(spark, tmp_path / "r")
    assert len(rows) == len(objs)
    status = {r.key: r.status for r in rows}
    assert status == {k: anon.ANONYMIZED if o["changes"] else anon.TAGGED for k, o in objs.items()}
    versions = version_counts(direct, bucket)
    assert {k: versions[k] - before[k] for k in objs} == {  # a rewrite is one new version; tags make none
        k: 1 if status[k] == anon.ANONYMIZED else 0 for k in objs}
    assert all(read_plain(direct, bucket, k) == o["expected"] for k, o in objs.items())


@pytest.mark.parametrize("kept", [0, 23])
def test_a_killed_copy_task_s_retry_redoes_only_what_its_last_checkpoint_missed(spark, proxy, direct, unique,
                                                                              tmp_path, kept):
    bucket = replicate_everything(make_bucket(f"lr-kill-{unique}-{kept}", versioned=True))
    keys = seed_copy_bucket(direct, bucket, 40, make_kms_key())
    settings = cip.Settings(run_id="x", concurrency=1)
    buckets = {bucket: bucket_info(bucket, True)[0]}
    partition = [{"bucket": bucket, "key": k, "e_tag": None, "version_id": None} for k in keys]
    store = LocalStore(str(tmp_path / "r" / "run_id=x"))
    options = CheckpointOptions(interval=3600.0, chunk_objects=100)  # one chunk; commits only when told

    killed = TaskCheckpoints(store, "g-00000", "attempt-0", FIELDS, options)
    work = cip.process_partition(killed.feed(partition), settings, buckets)
    for _ in range(kept):
        killed.done(next(work))
    killed.commit()  # the last checkpoint before the kill
    for _ in range(7):
        killed.done(next(work))  # finished after it: lost with the task
    work.close()

    proxy.reset_counts()
    later = lambda: time.time() + options.lease + 1  # noqa: E731 - the lost attempt's lease has lapsed
    with TaskCheckpoints(store, "g-00000", "attempt-1", FIELDS, options, clock=later) as retry:
        for row in cip.process_partition(retry.feed(partition), settings, buckets):
            retry.done(row)

    counts = proxy.counts()
    assert counts.get("HeadObject", 0) == len(keys) - kept  # rework: the 7 after the checkpoint, nothing before
    assert counts.get("CopyObject", 0) == len(keys) - kept - 7
    statuses = collections.Counter(r.status for r in committed(spark, tmp_path / "r"))
    assert statuses == collections.Counter({cip.COPIED: len(keys) - 7, cip.ALREADY_COPIED: 7})
