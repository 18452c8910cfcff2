"""Pacing at S3's limits: patient retries bounded by time, the AIMD window, the rate cap (pure parts and
through the throttling proxy with real botocore clients)."""

from __future__ import annotations

import threading
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from s3lake.objects import pacing
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
        pacing.TokenBucket(0)


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


def test_a_task_share_splits_the_cap_over_the_tasks_that_run_at_once():
    assert pacing.task_share(None, 8, 2) is None
    assert pacing.task_share(100, 8, 2) == 50
    assert pacing.task_share(100, 1, 4) == 100


def test_paced_map_keeps_at_most_the_window_in_flight_and_returns_everything():
    pacer = pacing.Pacer(pacing.PaceSettings(concurrency=8))
    pacer.window.value = 3
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
        with pacing.task(pacing.PaceSettings(requests_per_second=20.0)) as pacer:
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
