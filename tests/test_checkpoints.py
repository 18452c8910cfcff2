"""Progressive commits, claims and the run's lock: on S3 (the session's moto, through the proxy) and locally."""

from __future__ import annotations

import collections
import io
import threading
import time

import pyarrow.parquet as pq
import pytest
from s3lake.errors import RunInUseError
from s3lake.objects import results
from s3lake.objects.checkpoints import CheckpointOptions, TaskCheckpoints, committed_keys
from s3lake.objects.claims import BUSY, DONE, HELD, TAKEN_OVER, Claims
from s3lake.objects.runs import RunLock
from s3lake.objects.stores import LocalStore, S3Store, store_for

FIELDS = list(results.FIELDS)


class Clock:
    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["s3", "local"])
def store(request, s3, unique, tmp_path):
    if request.param == "local":
        return LocalStore(str(tmp_path / "run_id=x"))
    bucket = f"cp-{unique}"
    s3.create_bucket(Bucket=bucket)
    return S3Store(bucket, "results/run_id=x")


def rows_of(store, prefix: str = "part-") -> list[tuple[str, str]]:
    out = []
    for name in store.names(prefix):
        table = pq.read_table(io.BytesIO(store.get(name)[0]), columns=["bucket", "key"])
        out += list(zip(table.column("bucket").to_pylist(), table.column("key").to_pylist()))
    return out


def work(rows, calls: collections.Counter, delay: float = 0.0):
    """A stand-in for an object job's partition: one result row per object."""
    for r in rows:
        calls[r["key"]] += 1
        if delay:
            time.sleep(delay)
        yield results.row("x", "test", r["bucket"], r["key"], "COPIED", requests=1)


def candidates(n: int) -> list[dict]:
    return [{"bucket": "b", "key": f"k/{i:04d}"} for i in range(n)]


# ------------------------------------------------------------------------------------------ stores


def test_a_store_writes_only_if_absent_or_unchanged_and_lists_by_prefix(store):
    tag = store.create("_claims/a", b"one")
    assert tag is not None and store.create("_claims/a", b"two") is None
    newer = store.replace("_claims/a", b"three", tag)
    assert newer is not None and store.replace("_claims/a", b"four", tag) is None
    assert store.get("_claims/a") == (b"three", newer)
    assert store.get("_claims/missing") is None
    store.put("part-1.parquet", b"p")
    store.put("part-2.parquet", b"q")
    assert list(store.names("part-")) == ["part-1.parquet", "part-2.parquet"]
    assert list(store.names("_claims/")) == ["_claims/a"]


def test_a_store_for_each_kind_of_results_path_and_a_refusal_for_others(tmp_path):
    assert isinstance(store_for("s3://b/r/run_id=x"), S3Store)
    assert store_for("s3a://b/r/run_id=x").url == "s3://b/r/run_id=x"
    assert store_for(f"file://{tmp_path}/r").url == f"{tmp_path}/r"
    assert isinstance(store_for(str(tmp_path / "r")), LocalStore)
    with pytest.raises(Exception, match="S3 or a local folder"):
        store_for("hdfs:///results")


# ------------------------------------------------------------------------------------------ claims


def test_of_attempts_racing_for_a_chunk_exactly_one_holds_it(store):
    outcomes: list = []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait()
        outcomes.append(Claims(store, f"attempt-{i}", lease=60).acquire("_claims/c")[0])

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == [BUSY] * 7 + [HELD]


def test_a_lapsed_claim_is_taken_over_once_and_its_old_holder_learns_it_lost(store):
    clock = Clock(1000.0)
    first = Claims(store, "first", lease=60, clock=clock)
    state, held = first.acquire("c")
    assert state == HELD
    held = first.renew(held)
    assert held is not None
    clock.now += 30
    assert Claims(store, "second", lease=60, clock=clock).acquire("c")[0] == BUSY
    clock.now += 61  # the first holder stopped renewing (a lost executor)
    second = Claims(store, "second", lease=60, clock=clock)
    state, taken = second.acquire("c")
    assert state == TAKEN_OVER
    assert Claims(store, "third", lease=60, clock=clock).acquire("c")[0] == BUSY
    assert first.renew(held) is None and not first.finish(held)  # the old holder must stop
    assert second.finish(taken)
    assert Claims(store, "fourth", lease=60, clock=clock).acquire("c")[0] == DONE


# ------------------------------------------------------------------------------------------ task checkpoints


def test_a_task_commits_its_rows_every_interval_while_it_works(store):
    calls: collections.Counter = collections.Counter()
    seen_during: list[int] = []
    options = CheckpointOptions(interval=0.2, chunk_objects=1000)
    with TaskCheckpoints(store, "g-00000", "attempt-0", FIELDS, options) as task:
        for i, row in enumerate(work(task.feed(candidates(40)), calls, delay=0.02)):
            task.done(row)
            if i == 30:  # the chunk is not done: whatever is committed now, the heartbeat committed
                deadline = time.monotonic() + 10
                while not rows_of(store) and time.monotonic() < deadline:
                    time.sleep(0.05)
                seen_during.append(len(rows_of(store)))
    assert 0 < seen_during[0] <= 31
    assert sorted(k for _, k in rows_of(store)) == [c["key"] for c in candidates(40)]
    assert task.stats.files >= 2 and set(calls.values()) == {1}
    assert Claims(store, "later", lease=60).acquire("_claims/g-00000-000000")[0] == DONE


def test_two_attempts_of_one_task_started_together_work_each_object_once(store):
    calls: collections.Counter = collections.Counter()
    options = CheckpointOptions(interval=0.2, chunk_objects=25)
    barrier = threading.Barrier(2)

    def attempt(i: int) -> None:
        barrier.wait()
        with TaskCheckpoints(store, "g-00003", f"attempt-{i}", FIELDS, options, poll=0.02) as task:
            for row in work(task.feed(candidates(200)), calls, delay=0.002):
                task.done(row)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == collections.Counter({c["key"]: 1 for c in candidates(200)})
    committed = rows_of(store)
    assert sorted(k for _, k in committed) == [c["key"] for c in candidates(200)]


def test_a_lost_attempt_s_chunk_is_taken_over_after_its_lease_and_only_its_uncommitted_objects_redone(store):
    options = CheckpointOptions(interval=60.0, chunk_objects=100)
    first_calls: collections.Counter = collections.Counter()
    lost = TaskCheckpoints(store, "g-00001", "attempt-0", FIELDS, options)
    feed = work(lost.feed(candidates(100)), first_calls)
    for _ in range(60):
        lost.done(next(feed))
    lost.commit()  # its last checkpoint: 60 objects committed
    for _ in range(15):
        lost.done(next(feed))  # finished, never committed: the executor is lost here

    later = Clock(time.time() + options.lease + 1)
    calls: collections.Counter = collections.Counter()
    with TaskCheckpoints(store, "g-00001", "attempt-1", FIELDS, options, clock=later) as retry:
        for row in work(retry.feed(candidates(100)), calls):
            retry.done(row)

    assert retry.stats.taken_over == 1 and retry.stats.skipped_committed == 60
    assert set(calls) == {c["key"] for c in candidates(100)[60:]}  # rework: what was not committed
    assert sorted(k for _, k in rows_of(store)) == [c["key"] for c in candidates(100)]
    assert committed_keys(store, "g-00001-000000")[0] == {("b", c["key"]) for c in candidates(100)}


def test_a_failing_attempt_commits_what_it_finished_and_its_retry_takes_over_at_once(store):
    options = CheckpointOptions(interval=60.0, chunk_objects=100)

    def failing(rows):
        for i, row in enumerate(work(rows, collections.Counter())):
            if i == 30:
                raise RuntimeError("a bug in one object's handling")
            yield row

    with pytest.raises(RuntimeError):
        with TaskCheckpoints(store, "g-00004", "attempt-0", FIELDS, options) as first:
            for row in failing(first.feed(candidates(100))):
                first.done(row)
    calls: collections.Counter = collections.Counter()
    with TaskCheckpoints(store, "g-00004", "attempt-1", FIELDS, options, poll=0.01) as retry:  # no clock change
        for row in work(retry.feed(candidates(100)), calls):
            retry.done(row)
    assert retry.stats.taken_over == 1 and retry.stats.waited < 5
    assert set(calls) == {c["key"] for c in candidates(100)[30:]}
    assert sorted(k for _, k in rows_of(store)) == [c["key"] for c in candidates(100)]


def test_an_attempt_that_lost_its_claim_commits_nothing_more(store):
    options = CheckpointOptions(interval=60.0, chunk_objects=50)
    slow = TaskCheckpoints(store, "g-00002", "attempt-0", FIELDS, options)
    feed = work(slow.feed(candidates(50)), collections.Counter())
    for _ in range(10):
        slow.done(next(feed))
    later = Clock(time.time() + options.lease + 1)
    with TaskCheckpoints(store, "g-00002", "attempt-1", FIELDS, options, clock=later) as retry:
        for row in work(retry.feed(candidates(50)), collections.Counter()):
            retry.done(row)
    for row in feed:  # the stalled attempt wakes up and finishes its objects
        slow.done(row)
    slow.commit()
    assert slow.stats.lost == 1
    assert sorted(k for _, k in rows_of(store)) == [c["key"] for c in candidates(50)]


def test_a_task_commits_every_row_once_on_s3_while_responses_are_lost_and_requests_fail(proxy, s3, unique):
    from s3lake_testbed.proxy import FaultPlan

    bucket = f"cp-faults-{unique}"
    s3.create_bucket(Bucket=bucket)
    store = S3Store(bucket, "results/run_id=x")
    # a write S3 applied whose answer never came back is retried by botocore: the retry's condition fails
    plan = FaultPlan(seed=22, operations=frozenset({"PutObject", "GetObject", "ListObjectsV2"}), drop_after=0.15,
                     drop_before=0.05, internal_error=0.05, slowdown=0.05)
    calls: collections.Counter = collections.Counter()
    options = CheckpointOptions(interval=0.05, chunk_objects=20)
    proxy.configure(faults=plan)
    try:
        with TaskCheckpoints(store, "g-00005", "attempt-0", FIELDS, options) as task:
            for row in work(task.feed(candidates(200)), calls, delay=0.002):
                task.done(row)
    finally:
        proxy.configure(faults=None)
    assert sum(n for (kind, _), n in proxy.fault_counts().items() if kind == "drop_after") > 0
    assert task.stats.lost == 0 and set(calls.values()) == {1}
    assert sorted(k for _, k in rows_of(store)) == [c["key"] for c in candidates(200)]
    assert {Claims(store, "later", lease=60).acquire(f"_claims/g-00005-{i:06d}")[0] for i in range(10)} == {DONE}


# ------------------------------------------------------------------------------------------ the run's lock


def test_a_second_driver_of_a_live_run_refuses_and_one_of_a_killed_run_takes_it_over(store):
    options = CheckpointOptions(interval=0.2)
    said: list[str] = []
    with RunLock(store, "x", "copy-in-place", False, options, say=said.append):
        with pytest.raises(RunInUseError, match="being worked by another driver"):
            with RunLock(store, "x", "copy-in-place", False, options, say=said.append):
                pass
    assert any("waiting up to" in line for line in said)
    # a killed driver: its claim stays 'working' and is never renewed again
    killed = RunLock(store, "x", "copy-in-place", False, options)
    killed.claims.acquire("_claims/driver", reuse_done=True)
    later = Clock(time.time() + options.lease + 1)
    with RunLock(store, "x", "copy-in-place", False, options, clock=later):
        pass


def test_a_run_id_holds_one_kind_of_run(store):
    with RunLock(store, "x", "copy-in-place", True):
        pass
    with pytest.raises(RunInUseError, match="holds a dry run's rows"):
        with RunLock(store, "x", "copy-in-place", False):
            pass
    with pytest.raises(RunInUseError, match="is a copy-in-place run, not anonymize"):
        with RunLock(store, "x", "anonymize", True):
            pass


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
@pytest.mark.parametrize("job", ["copy_in_place", "anonymize"])
def test_a_checkpoint_interval_that_is_not_a_positive_number_is_one_line_exit_2(job, value, tmp_path, capsys):
    from jobs import anonymize, copy_in_place

    parse, extra = {"copy_in_place": (copy_in_place.parse_args, []),
                    "anonymize": (anonymize.parse_args, ["--rules", "r.json"])}[job]
    with pytest.raises(SystemExit) as exit_:
        parse(["--inventory-manifest", "s3://b/m.json", *extra, "--results", str(tmp_path),
               "--checkpoint-interval", value])
    assert exit_.value.code == 2
    assert "--checkpoint-interval" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not any(tmp_path.iterdir())
