"""Pacing at S3's limits: patient retries bounded by time, the AIMD window, the rate cap (pure parts and
through the throttling proxy with real botocore clients)."""

from __future__ import annotations

import multiprocessing
import threading
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from s3lake.objects import pacing, progress
from s3lake.objects.prefixes import PrefixRule
from s3lake.objects.shares import Shares
from s3lake_testbed.proxy import FaultPlan, LimitPlan, S3Proxy


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("text, seconds", [("900", 900), ("15m", 900), ("1.5h", 5400), ("30s", 30), ("0.5", 0.5)])
def test_durations_parse_seconds_minutes_hours(text, seconds):
    assert pacing.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-3", "15 minutes", "m"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError):
        pacing.parse_duration(text)


@pytest.mark.parametrize("status, code, connection, kind", [
    (503, "SlowDown", False, "throttled"),
    (503, "503", False, "throttled"),  # a throttled HEAD has no body, botocore names it by status
    (429, None, False, "throttled"),
    (400, "ThrottlingException", False, "throttled"),
    (500, "InternalError", False, "transient"),
    (502, "502", False, "transient"),
    (None, None, True, "transient"),
    (404, "NoSuchKey", False, None),
    (412, "PreconditionFailed", False, None),
    (403, "AccessDenied", False, None),
    (200, None, False, None),
])
def test_answers_are_throttled_transient_or_final(status, code, connection, kind):
    assert pacing.classify(status, code, connection) == kind


def test_token_bucket_holds_its_rate_for_concurrent_callers():
    clock = FakeClock()
    bucket = pacing.TokenBucket(10.0, depth=1.0, clock=clock, sleep=clock.sleep)
    waited = [bucket.acquire() for _ in range(21)]
    assert waited[0] == 0.0
    assert clock.now == pytest.approx(2.0)  # 20 tokens after the first one, at 10/s
    with pytest.raises(ValueError):
        pacing.TokenBucket(-1)


def test_a_token_bucket_at_rate_zero_waits_until_its_rate_is_positive_again():
    clock = FakeClock()
    bucket = pacing.TokenBucket(10.0, depth=1.0, clock=clock)

    def sleep(seconds: float) -> None:
        clock.now += seconds
        if clock.now >= 3.0:
            bucket.set_rate(10.0)  # the driver grants a share again

    bucket.sleep = sleep
    bucket.acquire()  # the one token it starts with
    bucket.set_rate(0.0)
    assert bucket.due() == float("inf")
    bucket.acquire()
    assert 3.0 <= clock.now <= 3.2  # not before the rate came back, then one token at 10/s


def test_aimd_slow_starts_halves_when_throttled_once_per_round_trip_then_grows_slowly():
    clock = FakeClock()
    window = pacing.Aimd(32, start=2, clock=clock)
    for _ in range(6):
        window.on_success()
    assert window.limit() == 8  # slow start: +1 per answer
    assert window.on_throttled() and window.limit() == 4
    assert not window.on_throttled()  # same round trip: answers to requests sent before the decrease
    clock.now += 1.0
    assert window.on_throttled() and window.limit() == 2
    for _ in range(2):
        window.on_success()
    assert window.limit() == 2  # congestion avoidance: +1 per window of answers
    window.on_success()
    window.on_success()
    assert window.limit() == 3
    for _ in range(10):
        clock.now += 1.0
        window.on_throttled()
    assert window.limit() == 1  # never below one in flight
    for _ in range(10000):
        window.on_success()
    assert window.limit() == 32


def test_retries_stop_at_the_deadline_and_once_clients_retry_only_throttling():
    clock = FakeClock()
    pacer = pacing.Pacer(pacing.PaceSettings(object_deadline=10.0), clock=clock)
    assert pacer.retry_delay("throttled", 3, started=0.0, once=False) is not None
    assert pacer.retry_delay("transient", 3, started=0.0, once=False) is not None
    assert pacer.retry_delay("transient", 1, started=0.0, once=True) is None  # unknown outcome: write_once
    assert pacer.retry_delay("throttled", 1, started=0.0, once=True) is not None  # rejected: retry
    assert pacer.retry_delay(None, 1, started=0.0, once=False) is None
    clock.now = 9.99
    assert pacer.retry_delay("throttled", 50, started=0.0, once=False) <= 0.01 + 1e-9  # never past it
    clock.now = 10.0
    assert pacer.retry_delay("throttled", 1, started=0.0, once=False) is None
    with pacer.object_deadline() as deadline:  # an object's deadline wins over the call's
        assert deadline == 20.0 and pacer.deadline(started=15.0) == 20.0
    assert pacer.deadline(started=15.0) == 25.0


def test_until_the_driver_answers_a_task_holds_one_task_count_th_of_the_caps():
    settings = pacing.PaceOptions(max_requests_per_second=100, max_per_prefix=10).task_settings(32, tasks=8)
    assert settings.capped and settings.share == pytest.approx(1 / 8)
    pacer = pacing.Pacer(settings)
    assert pacer.bucket.rate == pytest.approx(12.5)
    assert pacer.prefix(("b", "x/")).cap.rate == pytest.approx(1.25)
    pacer.set_share(0.5)  # granted by the driver
    assert pacer.bucket.rate == pytest.approx(50) and pacer.prefix(("b", "x/")).cap.rate == pytest.approx(5)
    assert not pacing.PaceOptions().task_settings(32, tasks=8).capped


def test_paced_map_keeps_at_most_the_window_in_flight_and_returns_everything():
    pacer = pacing.Pacer(pacing.PaceSettings(concurrency=8))
    pacer.prefix(("", "")).window.value = 3
    lock, state = threading.Lock(), {"now": 0, "max": 0}

    def work(i: int) -> int:
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.01)
        with lock:
            state["now"] -= 1
        return i * 2

    assert sorted(pacing.paced_map(work, range(40), pacer)) == [i * 2 for i in range(40)]
    assert state["max"] <= 3


# ------------------------------------------------------------------------ through the throttling proxy


def paced_client(url: str):
    return pacing.install(boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}, max_pool_connections=16),
    ))


@pytest.fixture
def bucket(s3, unique):
    name = f"pacing-{unique}"
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="a/k", Body=b"x")
    return name


def test_a_stretch_of_100_percent_slowdown_is_waited_out_not_failed(moto_server, bucket):
    p = S3Proxy(moto_server)
    with p as url:
        with pacing.task(pacing.PaceSettings(object_deadline=60)) as pacer:
            s3p = paced_client(url)
            p.configure(blackout=2.0)
            started = time.monotonic()
            assert s3p.head_object(Bucket=bucket, Key="a/k")["ContentLength"] == 1
            assert time.monotonic() - started >= 1.5
            snap = pacer.snapshot()
    assert snap["throttled"] >= 3 and snap["requests"] == snap["throttled"] + 1
    assert snap["waited"] > 1.0


def test_past_the_deadline_the_throttling_error_surfaces(moto_server, bucket):
    p = S3Proxy(moto_server)
    with p as url:
        with pacing.task(pacing.PaceSettings(object_deadline=0.5)):
            s3p = paced_client(url)
            p.configure(blackout=5.0)
            with pytest.raises(ClientError) as err:
                s3p.get_object(Bucket=bucket, Key="a/k")
    assert err.value.response["Error"]["Code"] == "SlowDown"


def test_a_once_client_leaves_an_unknown_outcome_to_its_caller(moto_server, bucket):
    p = S3Proxy(moto_server, faults=FaultPlan(internal_error=1.0, operations={"CopyObject"}))
    with p as url:
        with pacing.task(pacing.PaceSettings()):
            once = pacing.install(boto3.client(
                "s3", endpoint_url=url, region_name="us-east-1",
                config=Config(retries={"mode": "standard", "total_max_attempts": 1})), once=True)
            with p.window() as w, pytest.raises(ClientError):
                once.copy_object(Bucket=bucket, Key="a/k", CopySource={"Bucket": bucket, "Key": "a/k"},
                                 MetadataDirective="REPLACE")
    assert w.counts == {"CopyObject": 1}


def test_the_rate_cap_holds_at_the_proxy_for_concurrent_threads(moto_server, bucket):
    p = S3Proxy(moto_server)
    with p as url:
        with pacing.task(pacing.PaceSettings(max_requests_per_second=20.0)) as pacer:
            s3p = paced_client(url)
            p.reset_counts()
            threads = [threading.Thread(target=lambda: [s3p.head_object(Bucket=bucket, Key="a/k")
                                                        for _ in range(10)]) for _ in range(8)]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - started
            rows = p.per_second()
    assert sum(r[1] for r in rows) == 80
    assert elapsed >= 3.5  # 80 requests at 20/s
    assert max(r[1] for r in rows[1:-1] or rows) <= 20 + 2
    assert pacer.snapshot()["waited"] > 0


def test_under_a_prefix_limit_the_window_shrinks_and_every_request_gets_through(moto_server, bucket):
    p = S3Proxy(moto_server, limits=LimitPlan(scale=0.005))  # 27.5 reads/s on the prefix a/
    with p as url:
        with pacing.task(pacing.PaceSettings(concurrency=16, object_deadline=60)) as pacer:
            s3p = paced_client(url)
            sizes = list(pacing.paced_map(lambda _: s3p.head_object(Bucket=bucket, Key="a/k")["ContentLength"],
                                          range(100), pacer))
            snap = pacer.snapshot()
    assert sizes == [1] * 100
    assert snap["throttled"] > 0 and snap["window"] < 16


def test_the_adaptive_rate_is_unlimited_until_throttled_then_cuts_and_probes_back_up():
    clock = FakeClock()
    rate = pacing.AdaptiveRate(clock=clock)
    for _ in range(40):  # 40 requests in the last second
        rate.on_send()
        clock.now += 0.02
    rate.on_success()
    assert rate.rate is None
    assert rate.on_throttled() and rate.rate == pytest.approx(32.0)  # 0.8 x measured
    assert not rate.on_throttled()  # cooldown
    clock.now += 1.0
    assert rate.on_throttled() and rate.rate == pytest.approx(25.6)
    for _ in range(25):  # a second of clean answers at ~25/s: 40% of the way back to the last maximum (32)
        rate.on_success()
    assert rate.rate == pytest.approx(28.1, abs=0.3)
    rate.rate = 32.0
    for _ in range(32):  # at the last maximum: probe 10%/s
        rate.on_success()
    assert rate.rate == pytest.approx(35.2, abs=0.2)
    for _ in range(50):
        clock.now += 1.0
        rate.on_throttled()
    assert rate.rate == 0.5  # the floor


# ------------------------------------------------------------------------ per prefix, without S3


@pytest.mark.parametrize("depth, delimiter, key, prefix", [
    (1, "/", "logs/2024/x.json", "logs/"), (2, "/", "logs/2024/x.json", "logs/2024/"),
    (3, "/", "logs/2024/x.json", "logs/2024/"), (1, "/", "x.json", ""), (0, "/", "logs/x", ""),
    (1, "-", "tenant-a-x.json", "tenant-"), (2, "-", "tenant-a-x.json", "tenant-a-"), (1, "/", "/lead", "/"),
])
def test_a_key_is_paced_under_its_first_segments(depth, delimiter, key, prefix):
    rule = PrefixRule(depth, delimiter)
    assert rule.of(key) == prefix
    assert rule.of_item({"bucket": "b", "key": key}) == ("b", prefix)
    assert rule.of_item(7) == ("", "")


def test_throttling_on_one_prefix_cuts_only_that_prefix_and_class():
    pacer = pacing.Pacer(pacing.PaceSettings(concurrency=16))
    hot, free = pacer.prefix(("b", "hot/")), pacer.prefix(("b", "free/"))
    with pacer.object_deadline(hot):
        for _ in range(20):
            pacer.before_send("HEAD")
            pacer.on_answer(None, "HEAD")
        pacer.before_send("PUT")
        pacer.on_answer("throttled", "PUT")
    assert hot.lanes["write"].rate.rate is not None and hot.lanes["read"].rate.rate is None
    assert hot.window.limit() == 8 and hot.throttled == 1  # slow start to 16, halved
    assert free.lanes["write"].rate.rate is None and free.window.limit() == 4 and free.throttled == 0
    assert pacer.most_throttled() == [["b/hot/", 21, 1]]
    snap = pacer.snapshot()
    assert snap["throttled"] == 1 and snap["prefixes"] == [["b/hot/", 21, 1]]


def test_objects_of_a_prefix_that_is_not_due_wait_in_the_queue_not_in_a_thread():
    """Hot's objects are queued first; hot is not due for a long while: the free prefixes' objects all run
    meanwhile, and at most hot's window of threads is ever held by hot."""
    pacer = pacing.Pacer(pacing.PaceSettings(concurrency=4))
    hot = pacer.prefix(("b", "hot/"))
    hot.lanes["read"].rate.rate = 0.5  # as if throttled: one request per 2 s
    hot.lanes["read"].bucket = pacing.TokenBucket(0.5, depth=1.0)
    hot.lanes["read"].bucket.acquire()  # its one token is spent
    items = [{"bucket": "b", "key": f"hot/{i}"} for i in range(3)]
    items += [{"bucket": "b", "key": f"free{i % 5}/{i}"} for i in range(40)]
    order, lock = [], threading.Lock()

    def work(item):
        with lock:
            order.append(item["key"])
        time.sleep(0.005)
        return item["key"]

    done = list(pacing.paced_map(work, items, pacer))
    assert sorted(done) == sorted(i["key"] for i in items)
    assert [k for k in order[:40] if k.startswith("hot/")] == []  # free prefixes first, though listed last
    assert {k.split("/")[0] for k in order[:5]} == {"free0", "free1", "free2", "free3", "free4"}  # in turn


def test_a_prefix_never_holds_more_threads_than_its_window():
    pacer = pacing.Pacer(pacing.PaceSettings(concurrency=8))
    pacer.prefix(("b", "slow/")).window.value = 2
    lock, state = threading.Lock(), {"slow": 0, "max": 0}

    def work(item):
        slow = item["key"].startswith("slow/")
        with lock:
            state["slow"] += slow
            state["max"] = max(state["max"], state["slow"])
        time.sleep(0.05 if slow else 0.001)
        with lock:
            state["slow"] -= slow
        return item["key"]

    items = [{"bucket": "b", "key": f"slow/{i}"} for i in range(20)] + [{"bucket": "b", "key": f"f/{i}"}
                                                                       for i in range(100)]
    assert len(list(pacing.paced_map(work, items, pacer))) == 120
    assert state["max"] <= 2


# ------------------------------------------------------------------------ the run-wide cap, tasks joining


def capped_task(url: str, address: tuple, bucket: str, settings: pacing.PaceSettings, until: float) -> None:
    """One task in its own process (as on an executor): 8 threads of HEADs, paced, reporting to the driver."""
    with pacing.task(settings) as pacer, progress.task_reporter(address, pacer.snapshot, on_share=pacer.set_share,
                                                                fallback=settings.share):
        s3p = paced_client(url)

        def loop() -> None:
            while time.time() < until:
                s3p.head_object(Bucket=bucket, Key="a/k")

        threads = [threading.Thread(target=loop) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def test_the_run_wide_cap_holds_while_executors_join_the_run(moto_server, bucket):
    """One task runs alone, then three more start (dynamic allocation adding executors): the requests per
    second at the proxy stay under the cap throughout, and the lone task used the whole cap, not 1/4."""
    cap, tasks = 40.0, 4
    settings = pacing.PaceOptions(max_requests_per_second=cap).task_settings(8, tasks)
    spawn = multiprocessing.get_context("spawn")
    p = S3Proxy(moto_server)
    with p as url, progress.Monitor(total=1, interval=0, shares=Shares()) as monitor:
        start = time.time()
        until = start + 10
        first = spawn.Process(target=capped_task, args=(url, monitor.address, bucket, settings, until))
        first.start()
        time.sleep(4)
        later = [spawn.Process(target=capped_task, args=(url, monitor.address, bucket, settings, until))
                 for _ in range(tasks - 1)]
        for proc in later:
            proc.start()
        for proc in [first, *later]:
            proc.join(60)
            assert proc.exitcode == 0
        rows = [(t, reads) for t, reads, _, _ in p.per_second() if start + 1 <= t < until - 1]
    assert max(n for _, n in rows) <= cap * 1.1 + 2, rows
    alone = [n for t, n in rows if t < start + 4 and n]
    assert alone and max(alone) >= cap * 0.7, rows  # granted the whole cap while alone
    together = [n for t, n in rows if t >= start + 6]
    assert together and min(together) >= cap * 0.5, rows  # and the four share it


def test_every_task_starts_on_every_prefix_and_gets_the_same_objects_each_time(spark):
    """An inventory lists keys prefix by prefix; each task's share is interleaved from its first object."""
    from s3lake.objects import driver

    keys = sorted(f"p{j}/{i:03d}" for j in range(10) for i in range(40))
    frame = spark.createDataFrame([("b", k) for k in keys], "bucket string, key string").coalesce(1)
    spread = driver.spread(frame, 2)
    parts = spread.rdd.glom().map(lambda rows: [r.key for r in rows]).collect()
    assert sorted(k for part in parts for k in part) == keys
    for part in parts:
        assert 150 <= len(part) <= 250  # an even share
        assert len({k.split("/")[0] for k in part[:30]}) >= 8  # nearly every prefix among its first 30
    assert spread.rdd.glom().map(lambda rows: [r.key for r in rows]).collect() == parts  # deterministic
