"""Pacing S3 requests at S3's request limits: patient retries, an adaptive in-flight window, a rate cap.

S3 serves at least 3,500 PUT/COPY/POST/DELETE and 5,500 GET/HEAD requests per second per partitioned
prefix and answers ``503 Slow Down`` above that while it scales the prefix, which can take minutes
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/optimizing-performance.html). botocore's standard
retry mode retries a throttled request a few times, then its per-client retry quota runs dry and every
further throttled request fails at once (https://docs.aws.amazon.com/boto3/latest/guide/retries.html;
botocore offers no switch to turn the quota off). So inside an object job's task:

* **patient**: clients are built with botocore's retries off (one attempt) and :func:`install` registers
  our own ``needs-retry`` handler: a throttled, 5xx or connection-level failure is retried with
  jittered exponential backoff (50 ms doubling up to 5 s) until the object's deadline (default 15 min,
  ``--object-deadline``), never by an attempt count. On a client for non-idempotent writes
  (``once=True``) only throttling is retried here - a throttled request was rejected, its outcome is
  known - and every unknown outcome (5xx, reset, timeout) goes back to :func:`s3lake.objects.at_most_once.write_once`,
  which checks the object before writing again;
* **adaptive**: each task runs AIMD on its send rate (:class:`AdaptiveRate`): unlimited until the first
  throttled answer, then 0.8 x the rate measured over the last second, x 0.8 again per throttled answer
  (at most every 0.5 s); while answers are clean it climbs back towards the rate of the last cut (40% of
  the gap per second) and beyond it by 10% per second; every attempt waits for a token at that rate.
  An AIMD window of objects in flight (:class:`Aimd`: halves on a throttled answer, grows by one per
  window of clean answers, between 1 and ``--concurrency``) bounds it too; :func:`paced_map` starts a
  new object only below it. Chosen by measurement through the throttling proxy (one task of 16 threads
  on a 27.5 reads/s prefix, 20 ms latency): the window alone cannot go below one request in flight and
  stayed 38% throttled (fixed concurrency: 66%); with the adaptive rate, 2.6% throttled at 1.01 of the
  limit; two tasks sharing a prefix: 3.3% throttled, 0.88 of the limit over the whole run (tail included);
* **capped**: ``--max-requests-per-second`` is split over the tasks that run at once; each task holds
  its share in a :class:`TokenBucket` that every request attempt (retries included) takes a token from.

Counters per task (requests, throttled, transient failures, seconds spent waiting in backoff or for a
token) feed the progress line and the run's summary (:mod:`s3lake.objects.progress`).
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

from s3lake import aws

DEFAULT_OBJECT_DEADLINE = 15 * 60.0
BACKOFF_BASE = 0.05
BACKOFF_CAP = 5.0
THROTTLING_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequests", "TooManyRequestsException", "RequestLimitExceeded",
    "ProvisionedThroughputExceededException", "BandwidthLimitExceeded", "503", "429",
})
THROTTLED = "throttled"
TRANSIENT = "transient"
R = TypeVar("R")


# ------------------------------------------------------------------------------------------ pure parts


def parse_duration(text: str) -> float:
    """``900``, ``900s``, ``15m``, ``1.5h`` -> seconds (> 0); ValueError otherwise."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(text))
    if not found:
        raise ValueError(f"not a duration (e.g. 900, 15m, 1h): {text!r}")
    seconds = float(found.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[found.group(2)]
    if seconds <= 0:
        raise ValueError(f"a duration must be positive: {text!r}")
    return seconds


def classify(status: int | None, code: str | None, connection_error: bool = False) -> str | None:
    """``throttled`` (503 SlowDown, 429, throttling codes), ``transient`` (other 5xx, connection-level
    failures) or None (a success or a final answer such as 403/404/412)."""
    if connection_error:
        return TRANSIENT
    if (code and code in THROTTLING_CODES) or status in (429, 503):
        return THROTTLED
    if (status or 0) >= 500 or code in ("InternalError", "ServiceUnavailable", "RequestTimeout"):
        return TRANSIENT
    return None


def backoff(attempt: int, rng: random.Random | None = None, base: float = BACKOFF_BASE,
            cap: float = BACKOFF_CAP) -> float:
    """Full-jitter exponential backoff for retry number ``attempt`` (1 = the first retry)."""
    return (rng or random).uniform(0, min(cap, base * (2 ** max(0, attempt - 1))))


class TokenBucket:
    """A thread-safe token bucket of ``rate`` tokens/s, ``depth`` deep; :meth:`acquire` blocks.

    A caller that finds it empty reserves the next token (the count goes negative) and sleeps until it
    is due, so waiting callers are served in order and the long-run rate never exceeds ``rate``.
    """

    def __init__(self, rate: float, depth: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("a token bucket needs a positive rate")
        self.rate = rate
        self.depth = max(1.0, depth if depth is not None else rate * 0.1)
        self.clock, self.sleep = clock, sleep
        self._tokens = 1.0  # start nearly empty: a fleet of tasks starting at once must not burst
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token; returns the seconds waited for it."""
        with self._lock:
            now = self.clock()
            self._tokens = min(self.depth, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= 1.0
            wait_for = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait_for > 0:
            self.sleep(wait_for)
        return wait_for


class Aimd:
    """An additive-increase / multiplicative-decrease window between ``minimum`` and ``maximum``.

    Until the first throttled answer :meth:`on_success` adds 1 (slow start: the window doubles per
    round trip); after it, ``1 / window`` (one per window of answers, TCP's congestion avoidance).
    :meth:`on_throttled` multiplies by ``decrease``, at most once per two round trips (the answers to
    requests sent before a decrease say nothing about the new window).
    """

    def __init__(self, maximum: int, minimum: int = 1, start: float | None = None, decrease: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.maximum, self.minimum = max(1, maximum), max(1, min(minimum, maximum))
        self.value = float(start if start is not None else self.maximum)
        self.decrease = decrease
        self.clock = clock
        self.round_trip = 0.05  # seconds, an EWMA of answered requests' latency
        self._last_decrease = -math.inf
        self._slow_start = True
        self._lock = threading.Lock()

    def limit(self) -> int:
        return max(self.minimum, min(self.maximum, int(self.value)))

    def observe(self, seconds: float) -> None:
        with self._lock:
            self.round_trip += 0.1 * (seconds - self.round_trip)

    def on_success(self) -> None:
        with self._lock:
            step = 1.0 if self._slow_start else 1.0 / max(1.0, self.value)
            self.value = min(float(self.maximum), self.value + step)

    def on_throttled(self) -> bool:
        """Shrink the window unless it shrank less than a round trip ago; True if it shrank."""
        with self._lock:
            now = self.clock()
            if now - self._last_decrease < 2 * self.round_trip:
                return False
            self._last_decrease = now
            self._slow_start = False
            self.value = max(float(self.minimum), self.value * self.decrease)
            return True


class AdaptiveRate:
    """AIMD on a task's send rate (requests/s), the in-flight window's complement below one request.

    Unlimited until the first throttled answer; then the rate becomes ``beta`` x the rate measured over
    the last second, and shrinks by ``beta`` again on a throttled answer at most once per ``cooldown``
    seconds. While clean, it climbs back towards the rate of the last decrease quickly (half the gap
    per second, as CUBIC's concave part) and beyond it slowly (``probe``: 10% per second, at least one
    request/s per second). Never below ``floor``.
    """

    def __init__(self, beta: float = 0.8, probe: float = 0.1, floor: float = 0.5, cooldown: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.beta, self.probe, self.floor, self.cooldown = beta, probe, floor, cooldown
        self.clock = clock
        self.rate: float | None = None
        self.last_max = 0.0  # the rate at the last decrease
        self._sent: list = []  # send times within the last second
        self._last_decrease = -math.inf
        self._lock = threading.Lock()

    def on_send(self) -> None:
        now = self.clock()
        with self._lock:
            self._sent.append(now)
            if len(self._sent) > 64 and self._sent[0] < now - 1.0:
                self._sent = [t for t in self._sent if t >= now - 1.0]

    def measured(self) -> float:
        now = self.clock()
        with self._lock:
            recent = [t for t in self._sent if t >= now - 1.0]
        return float(len(recent))

    def on_throttled(self) -> bool:
        now = self.clock()
        base = self.rate if self.rate is not None else self.measured()
        with self._lock:
            if now - self._last_decrease < self.cooldown:
                return False
            self._last_decrease = now
            self.last_max = base
            self.rate = max(self.floor, base * self.beta)
            return True

    def on_success(self) -> None:
        with self._lock:
            if self.rate is None:
                return
            gap = self.last_max - self.rate
            per_second = max(1.0, 0.5 * gap if gap > 0 else self.probe * self.rate)
            self.rate += per_second / max(1.0, self.rate)  # about ``rate`` answers a second


# ------------------------------------------------------------------------------------------- per task


@dataclass(frozen=True)
class PaceSettings:
    """How one task paces its requests (built on the driver, shipped to the tasks)."""

    concurrency: int = 32
    requests_per_second: float | None = None  # this task's share of --max-requests-per-second
    object_deadline: float = DEFAULT_OBJECT_DEADLINE
    adaptive: bool = True


@dataclass(frozen=True)
class PaceOptions:
    """A run's pacing options (``--max-requests-per-second``, ``--object-deadline``,
    ``--progress-interval``); the driver turns them into each task's :class:`PaceSettings`."""

    max_requests_per_second: float | None = None
    object_deadline: float = DEFAULT_OBJECT_DEADLINE
    progress_interval: float = 30.0
    adaptive: bool = True

    def task_settings(self, concurrency: int, tasks: int, slots: int) -> PaceSettings:
        return PaceSettings(concurrency=concurrency,
                            requests_per_second=task_share(self.max_requests_per_second, tasks, slots),
                            object_deadline=self.object_deadline, adaptive=self.adaptive)


def task_share(max_requests_per_second: float | None, tasks: int, slots: int) -> float | None:
    """A task's share of the run-wide cap: the cap over the tasks that can run at once."""
    if not max_requests_per_second:
        return None
    return max_requests_per_second / max(1, min(tasks, slots))


class Pacer:
    """One task's pacing state: window, rate bucket, counters, and the per-object deadline."""

    def __init__(self, settings: PaceSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        start = settings.concurrency if not settings.adaptive else max(1, min(settings.concurrency, 4))
        self.window = Aimd(settings.concurrency, start=start, clock=clock)
        self.bucket = TokenBucket(settings.requests_per_second) if settings.requests_per_second else None
        self.rate = AdaptiveRate(clock=clock)
        self._rate_bucket: TokenBucket | None = None
        self.requests = 0
        self.throttled = 0
        self.transient = 0
        self.waited = 0.0
        self._lock = threading.Lock()
        self._local = threading.local()

    def limit(self) -> int:
        return self.window.limit() if self.settings.adaptive else self.window.maximum

    def cap(self, concurrency: int) -> None:
        """At most ``concurrency`` in flight (the job's ``--concurrency``)."""
        self.window.maximum = max(1, concurrency)
        self.window.value = min(self.window.value, float(self.window.maximum))

    @contextmanager
    def object_deadline(self) -> Iterator[float]:
        """While processing one object on this thread: its requests retry until this deadline."""
        deadline = self.clock() + self.settings.object_deadline
        self._local.deadline = deadline
        try:
            yield deadline
        finally:
            self._local.deadline = None

    def deadline(self, started: float) -> float:
        """The deadline of a call first sent at ``started``: the object's, else the call's own."""
        found = getattr(self._local, "deadline", None)
        return found if found is not None else started + self.settings.object_deadline

    def before_send(self) -> None:
        waited = self.bucket.acquire() if self.bucket is not None else 0.0
        if self.settings.adaptive and self.rate.rate is not None:
            if self._rate_bucket is None:
                self._rate_bucket = TokenBucket(self.rate.rate, depth=1.0, clock=self.clock)
            self._rate_bucket.rate = self.rate.rate
            waited += self._rate_bucket.acquire()
        if waited:
            with self._lock:
                self.waited += waited
        self.rate.on_send()
        self._local.sent = self.clock()

    def on_answer(self, kind: str | None) -> None:
        sent = getattr(self._local, "sent", None)
        if sent is not None:
            self.window.observe(self.clock() - sent)
        with self._lock:
            self.requests += 1
            if kind == THROTTLED:
                self.throttled += 1
            elif kind == TRANSIENT:
                self.transient += 1
        if kind == THROTTLED:
            self.window.on_throttled()
            self.rate.on_throttled()
        elif kind is None:
            self.window.on_success()
            self.rate.on_success()

    def retry_delay(self, kind: str | None, attempts: int, started: float, once: bool) -> float | None:
        """Seconds to sleep before retrying, or None to let the failure surface."""
        if kind is None or (once and kind != THROTTLED):
            return None
        now = self.clock()
        left = self.deadline(started) - now
        if left <= 0:
            return None
        delay = min(backoff(attempts), left)
        with self._lock:
            self.waited += delay
        return delay

    def add_wait(self, seconds: float) -> None:
        with self._lock:
            self.waited += seconds

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": self.requests, "throttled": self.throttled, "transient": self.transient,
                    "waited": round(self.waited, 3), "window": self.window.limit()}


_current: Pacer | None = None
_current_lock = threading.Lock()


def current() -> Pacer | None:
    """The pacer of the task running in this process (a PySpark worker runs one task at a time)."""
    return _current


@contextmanager
def task(settings: PaceSettings) -> Iterator[Pacer]:
    """Make a new :class:`Pacer` this process's current one for the block (one task)."""
    global _current
    pacer = Pacer(settings)
    with _current_lock:
        previous, _current = _current, pacer
    try:
        yield pacer
    finally:
        with _current_lock:
            _current = previous


# ------------------------------------------------------------------------------------- botocore hooks


def _answer_kind(response: Any, caught_exception: BaseException | None) -> str | None:
    if caught_exception is not None:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError

        retryable = (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError)
        return TRANSIENT if isinstance(caught_exception, retryable) else None
    if not response:
        return None
    http, parsed = response
    status = getattr(http, "status_code", None)
    code = (parsed or {}).get("Error", {}).get("Code") if isinstance(parsed, dict) else None
    if status is not None and status < 300 and not code:
        return None
    return classify(status, code)


class _Hooks:
    def __init__(self, once: bool) -> None:
        self.once = once

    def before_send(self, **kwargs: Any) -> None:
        pacer = current()
        if pacer is not None:
            pacer.before_send()

    def needs_retry(self, response: Any = None, attempts: int = 1, caught_exception: Any = None,
                    request_dict: Any = None, **kwargs: Any) -> float | None:
        pacer = current()
        kind = _answer_kind(response, caught_exception)
        if pacer is None:
            return None
        pacer.on_answer(kind)
        context = (request_dict or {}).get("context", {})
        started = context.setdefault("s3lake_started", pacer.clock())
        return pacer.retry_delay(kind, attempts, started, self.once)


def install(client: Any, *, once: bool = False) -> Any:
    """Pace ``client`` (built with botocore retries off): every attempt takes a token from the task's
    bucket and every answer feeds its window; failures retry as the module docstring says."""
    hooks = _Hooks(once)
    service = client.meta.service_model.service_id.hyphenize()
    client.meta.events.register(f"before-send.{service}", hooks.before_send, unique_id=f"s3lake-pace-{service}")
    client.meta.events.register(f"needs-retry.{service}", hooks.needs_retry,
                                unique_id=f"s3lake-patient-{service}")
    return client


# s3lake.aws builds paced clients inside a task through this (it may not import the engine itself).
aws.set_pacing(lambda: current() is not None, install)


# ------------------------------------------------------------------------------------------ the window


def paced_map(fn: Callable[[Any], R], items: Iterable[Any], pacer: Pacer,
              concurrency: int | None = None) -> Iterator[R]:
    """``fn`` over ``items`` with at most ``pacer.limit()`` calls in flight, results as they finish.

    A sliding window, not batches: one slow object never idles the others; each call runs with its
    object's deadline set. ``concurrency`` caps the window (default: the pacer's settings).
    """
    if concurrency is not None:
        pacer.cap(concurrency)

    def one(item: Any) -> R:
        with pacer.object_deadline():
            return fn(item)

    it = iter(items)
    exhausted = False
    with ThreadPoolExecutor(max_workers=pacer.window.maximum) as pool:
        pending: set = set()
        while True:
            while not exhausted and len(pending) < pacer.limit():
                try:
                    item = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pending.add(pool.submit(one, item))
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
