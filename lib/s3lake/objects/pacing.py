"""Pacing S3 requests at S3's request limits per prefix: patient retries, adaptive pace and window per
prefix, the run's caps.

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
* **per prefix**: S3's limits hold per partitioned prefix and per request class, so a task paces each
  prefix (:mod:`s3lake.objects.prefixes`: the first ``--prefix-depth`` segments) on its own. Each
  (prefix, class) lane - reads (GET/HEAD) and writes (PUT/COPY/POST/DELETE) - runs AIMD on its send rate
  (:class:`AdaptiveRate`): unlimited until its first throttled answer, then 0.8 x the rate measured over
  the last second, x 0.8 again per throttled answer (at most every 0.5 s); while answers are clean it
  climbs back towards the rate of the last cut (40% of the gap per second) and beyond it by 10% per
  second. Each prefix has an AIMD window of objects in flight (:class:`Aimd`: halves on a throttled
  answer, grows by one per window of clean answers, between 1 and ``--concurrency``). A throttled answer
  slows only its own prefix and class. :func:`paced_map` reads candidates ahead and queues them by
  prefix; a free slot goes to the next prefix in turn that has room in its window and whose requests are
  due, so objects of a throttled prefix wait in the queue, never in a thread the free prefixes need.
  Chosen by measurement through the throttling proxy (see the README's figures);
* **capped**: ``--max-requests-per-second`` (and ``--max-requests-per-second-per-prefix``) are the run's;
  the driver grants each running task a share (:mod:`s3lake.objects.shares`) and every request attempt
  (retries included) takes a token from the task's bucket at its share.

Counters per task (requests, throttled, transient failures, seconds spent waiting in backoff or for a
token) feed the progress line and the run's summary (:mod:`s3lake.objects.progress`).
"""

from __future__ import annotations

import heapq
import math
import random
import re
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Container, Iterable, Iterator, TypeVar

from s3lake import aws
from s3lake.objects.prefixes import TOP, PrefixRule, label

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
READ, WRITE = "read", "write"
DEFAULT_LOOKAHEAD = 10_000  # candidates a task holds while their prefixes wait
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

    The count never goes below zero, so the long-run rate never exceeds ``rate``, also when the rate
    changes while callers wait (:meth:`set_rate`); at rate 0 they wait until it is positive again.
    """

    def __init__(self, rate: float, depth: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate < 0:
            raise ValueError("a token bucket needs a rate >= 0")
        self.rate = rate
        self.fixed_depth = depth
        self.depth = self._depth(rate)
        self.clock, self.sleep = clock, sleep
        self._tokens = 1.0  # start nearly empty: a fleet of tasks starting at once must not burst
        self._last = clock()
        self._lock = threading.Lock()

    def _depth(self, rate: float) -> float:
        return max(1.0, self.fixed_depth if self.fixed_depth is not None else rate * 0.1)

    def set_rate(self, rate: float) -> None:
        with self._lock:
            self._refill(self.clock())
            self.rate = max(0.0, rate)
            self.depth = self._depth(self.rate)

    def _refill(self, now: float) -> None:
        self._tokens = min(self.depth, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def due(self) -> float:
        """Seconds until a token would be free for a new caller (0: now; inf: the rate is 0)."""
        with self._lock:
            self._refill(self.clock())
            if self._tokens >= 1.0 - 1e-9:
                return 0.0
            return (1.0 - self._tokens) / self.rate if self.rate > 0 else math.inf

    def acquire(self) -> float:
        """Take one token; returns the seconds waited for it.

        No token is reserved ahead: a caller sleeps until one is due at the rate in force (at most 50 ms
        at a time, so a lower rate set meanwhile - the driver shrinking this task's share - applies to
        callers already waiting) and takes it if no one else did.
        """
        waited = 0.0
        while True:
            with self._lock:
                self._refill(self.clock())
                if self._tokens >= 1.0 - 1e-9:  # float sums of refills fall just short of 1
                    self._tokens = max(0.0, self._tokens - 1.0)
                    return waited
                wait_for = (1.0 - self._tokens) / self.rate if self.rate > 0 else 0.05
            wait_for = min(max(wait_for, 1e-4), 0.05)
            self.sleep(wait_for)
            waited += wait_for


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
    """How one task paces its requests (built on the driver, shipped to the tasks).

    ``max_requests_per_second`` and ``max_per_prefix`` are the run's caps; the task holds ``share`` of
    them until the driver's coordinator grants it another (:mod:`s3lake.objects.shares`).
    """

    concurrency: int = 32
    max_requests_per_second: float | None = None  # run-wide
    max_per_prefix: float | None = None  # run-wide, per prefix
    share: float = 1.0  # this task's fraction of the caps until the driver says otherwise
    object_deadline: float = DEFAULT_OBJECT_DEADLINE
    adaptive: bool = True
    prefixes: PrefixRule = PrefixRule()
    lookahead: int = DEFAULT_LOOKAHEAD

    @property
    def capped(self) -> bool:
        return bool(self.max_requests_per_second or self.max_per_prefix)


@dataclass(frozen=True)
class PaceOptions:
    """A run's pacing options (``--max-requests-per-second[-per-prefix]``, ``--object-deadline``,
    ``--progress-interval``, ``--prefix-depth``/``--prefix-delimiter``); the driver turns them into each
    task's :class:`PaceSettings`."""

    max_requests_per_second: float | None = None
    max_per_prefix: float | None = None
    object_deadline: float = DEFAULT_OBJECT_DEADLINE
    progress_interval: float = 30.0
    adaptive: bool = True
    prefixes: PrefixRule = PrefixRule()

    def task_settings(self, concurrency: int, tasks: int) -> PaceSettings:
        """A task's settings; until the driver grants it a share, it holds ``1 / tasks`` of the caps,
        which no number of executors can push above the cap (at most ``tasks`` tasks exist)."""
        return PaceSettings(concurrency=concurrency, max_requests_per_second=self.max_requests_per_second,
                            max_per_prefix=self.max_per_prefix, share=1.0 / max(1, tasks),
                            object_deadline=self.object_deadline, adaptive=self.adaptive, prefixes=self.prefixes)


def request_class(method: str | None) -> str:
    """S3's two limits: ``read`` (GET, HEAD) or ``write`` (PUT, COPY, POST, DELETE)."""
    return READ if (method or "GET").upper() in ("GET", "HEAD") else WRITE


class Lane:
    """One prefix's requests of one class: the adaptive rate and its counters."""

    __slots__ = ("rate", "bucket", "requests", "throttled")

    def __init__(self, clock: Callable[[], float]) -> None:
        self.rate = AdaptiveRate(clock=clock)
        self.bucket: TokenBucket | None = None
        self.requests = 0
        self.throttled = 0

    def due(self) -> float:
        return self.bucket.due() if self.bucket is not None and self.rate.rate is not None else 0.0


class Prefix:
    """One partitioned prefix in a task: its window of objects in flight, a lane per request class, its
    share of ``--max-requests-per-second-per-prefix``."""

    __slots__ = ("name", "window", "lanes", "cap", "in_flight", "last_used")

    def __init__(self, name: tuple[str, str], window: Aimd, cap: TokenBucket | None,
                 clock: Callable[[], float]) -> None:
        self.name = name
        self.window = window
        self.lanes = {READ: Lane(clock), WRITE: Lane(clock)}
        self.cap = cap
        self.in_flight = 0
        self.last_used = clock()

    def due(self) -> float:
        """Seconds until a new object of this prefix could send its first request without waiting."""
        found = max(lane.due() for lane in self.lanes.values())
        return max(found, self.cap.due()) if self.cap is not None else found

    @property
    def throttled(self) -> int:
        return sum(lane.throttled for lane in self.lanes.values())

    @property
    def requests(self) -> int:
        return sum(lane.requests for lane in self.lanes.values())


class Pacer:
    """One task's pacing state: a :class:`Prefix` per partitioned prefix, the run-wide cap's bucket,
    counters, and the per-object deadline."""

    def __init__(self, settings: PaceSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.concurrency = max(1, settings.concurrency)
        self.share = settings.share
        self.bucket = (TokenBucket(settings.max_requests_per_second * self.share)
                       if settings.max_requests_per_second else None)
        self.prefixes: dict[tuple[str, str], Prefix] = {}
        self.requests = 0
        self.throttled = 0
        self.transient = 0
        self.waited = 0.0
        self._lock = threading.Lock()
        self._local = threading.local()

    # ---------------------------------------------------------------------- prefixes and the run's share

    def prefix(self, name: tuple[str, str]) -> Prefix:
        with self._lock:
            found = self.prefixes.get(name)
            if found is None:
                start = self.concurrency if not self.settings.adaptive else min(self.concurrency, 4)
                window = Aimd(self.concurrency, start=start, clock=self.clock)
                cap = (TokenBucket(self.settings.max_per_prefix * self.share)
                       if self.settings.max_per_prefix else None)
                found = self.prefixes[name] = Prefix(name, window, cap, self.clock)
            found.last_used = self.clock()
            return found

    def prefix_of(self, item: Any) -> tuple[str, str]:
        return self.settings.prefixes.of_item(item)

    def set_share(self, share: float) -> None:
        """The driver granted this task ``share`` of the run's caps (0: wait for more)."""
        share = min(1.0, max(0.0, share))
        with self._lock:
            self.share = share
            states = list(self.prefixes.values())
        if self.bucket is not None and self.settings.max_requests_per_second:
            self.bucket.set_rate(self.settings.max_requests_per_second * share)
        for state in states:
            if state.cap is not None and self.settings.max_per_prefix:
                state.cap.set_rate(self.settings.max_per_prefix * share)

    def forget_idle(self, idle: float = 120.0, keep: Container = ()) -> None:
        """Drop prefixes with nothing in flight or queued (``keep``), never throttled and unused for
        ``idle`` seconds, so a task over many prefixes keeps state only for the ones that matter."""
        cutoff = self.clock() - idle
        with self._lock:
            for name in [n for n, s in self.prefixes.items()
                         if s.in_flight == 0 and s.last_used < cutoff and s.throttled == 0 and n not in keep]:
                del self.prefixes[name]

    def limit(self) -> int:
        """Objects in flight in the whole task (``--concurrency``)."""
        return self.concurrency

    def cap(self, concurrency: int) -> None:
        """At most ``concurrency`` in flight (the job's ``--concurrency``)."""
        self.concurrency = max(1, concurrency)
        with self._lock:
            for state in self.prefixes.values():
                state.window.maximum = self.concurrency
                state.window.value = min(state.window.value, float(self.concurrency))

    def room(self, state: Prefix) -> bool:
        """May one more object of ``state``'s prefix start (its window)?"""
        limit = state.window.limit() if self.settings.adaptive else self.concurrency
        return state.in_flight < limit

    # ---------------------------------------------------------------------- one object, one request

    @contextmanager
    def object_deadline(self, prefix: Prefix | None = None) -> Iterator[float]:
        """While processing one object (of ``prefix``) on this thread: its requests retry until this
        deadline and are paced as that prefix's (no prefix: the bucket-wide one, ``("", "")``)."""
        deadline = self.clock() + self.settings.object_deadline
        self._local.deadline, self._local.prefix = deadline, prefix
        try:
            yield deadline
        finally:
            self._local.deadline = self._local.prefix = None

    def deadline(self, started: float) -> float:
        """The deadline of a call first sent at ``started``: the object's, else the call's own."""
        found = getattr(self._local, "deadline", None)
        return found if found is not None else started + self.settings.object_deadline

    def _current_prefix(self) -> Prefix:
        # the object's state itself rides on the thread: no lookup (and no lock) per request; it cannot be
        # forgotten meanwhile (forget_idle keeps states with objects in flight)
        return getattr(self._local, "prefix", None) or self.prefix(("", ""))

    def before_send(self, method: str | None = None) -> None:
        state = self._current_prefix()
        lane = state.lanes[request_class(method)]
        waited = self.bucket.acquire() if self.bucket is not None else 0.0
        if state.cap is not None:
            waited += state.cap.acquire()
        if self.settings.adaptive and lane.rate.rate is not None:
            if lane.bucket is None:
                lane.bucket = TokenBucket(lane.rate.rate, depth=1.0, clock=self.clock)
            lane.bucket.rate = lane.rate.rate
            waited += lane.bucket.acquire()
        if waited:
            with self._lock:
                self.waited += waited
        lane.rate.on_send()
        self._local.sent = self.clock()

    def on_answer(self, kind: str | None, method: str | None = None) -> None:
        state = self._current_prefix()
        lane = state.lanes[request_class(method)]
        sent = getattr(self._local, "sent", None)
        if sent is not None:
            state.window.observe(self.clock() - sent)
        with self._lock:
            self.requests += 1
            lane.requests += 1
            if kind == THROTTLED:
                self.throttled += 1
                lane.throttled += 1
            elif kind == TRANSIENT:
                self.transient += 1
        if kind == THROTTLED:
            state.window.on_throttled()
            lane.rate.on_throttled()
        elif kind is None:
            state.window.on_success()
            lane.rate.on_success()

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

    def most_throttled(self, n: int = TOP) -> list[list]:
        """``[[label, requests, throttled], ...]``: the ``n`` prefixes with the most throttled answers."""
        with self._lock:
            states = [s for s in self.prefixes.values() if s.throttled]
        top = sorted(states, key=lambda s: -s.throttled)[:n]
        return [[label(*s.name), s.requests, s.throttled] for s in top]

    def snapshot(self) -> dict[str, Any]:
        top = self.most_throttled()
        with self._lock:
            windows = [s.window.limit() for s in self.prefixes.values()]
            return {"requests": self.requests, "throttled": self.throttled, "transient": self.transient,
                    "waited": round(self.waited, 3), "window": min(windows) if windows else self.concurrency,
                    "prefixes": top, "share": round(self.share, 6)}


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

    def before_send(self, request: Any = None, **kwargs: Any) -> None:
        pacer = current()
        if pacer is not None:
            pacer.before_send(getattr(request, "method", None))

    def needs_retry(self, response: Any = None, attempts: int = 1, caught_exception: Any = None,
                    request_dict: Any = None, **kwargs: Any) -> float | None:
        pacer = current()
        kind = _answer_kind(response, caught_exception)
        if pacer is None:
            return None
        pacer.on_answer(kind, (request_dict or {}).get("method"))
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
    """``fn`` over ``items``, results as they finish, at most ``--concurrency`` in flight in the task and
    at most each prefix's window in flight per prefix.

    A sliding window, not batches: one slow object never idles the others. Items wait here, not in a
    thread: up to ``settings.lookahead`` candidates are read ahead and queued by prefix, and a free slot
    goes to the next prefix in turn that has room in its window and whose requests are due now, so the
    objects of a throttled prefix never hold the slots of prefixes that have room. Each call runs with
    its object's deadline and prefix set.
    """
    if concurrency is not None:
        pacer.cap(concurrency)

    def one(item: Any, state: Prefix) -> R:
        with pacer.object_deadline(state):
            return fn(item)

    it = iter(items)
    exhausted = False
    queued: dict[tuple[str, str], deque] = {}
    turn: deque = deque()  # prefixes with queued items, in turn
    asleep: list = []  # (due time, seq, prefix): queued but not due yet
    full: set = set()  # queued, but their window is full
    buffered, seq, started = 0, 0, 0
    with ThreadPoolExecutor(max_workers=pacer.limit()) as pool:
        pending: dict = {}  # future -> Prefix
        while True:
            while not exhausted and buffered < pacer.settings.lookahead:
                try:
                    item = next(it)
                except StopIteration:
                    exhausted = True
                    break
                name = pacer.prefix_of(item)
                if name not in queued:
                    queued[name] = deque()
                    turn.append(name)
                queued[name].append(item)
                buffered += 1
            now = pacer.clock()
            while asleep and asleep[0][0] <= now:
                turn.append(heapq.heappop(asleep)[2])
            launched = True
            while launched and turn and len(pending) < pacer.limit():
                launched = False
                for _ in range(len(turn)):  # one object per prefix per pass: the prefixes in turn
                    if len(pending) >= pacer.limit():
                        break
                    name = turn.popleft()
                    state = pacer.prefix(name)
                    if not pacer.room(state):
                        full.add(name)
                        continue
                    due = state.due() if pacer.settings.adaptive else 0.0
                    if due > 0:
                        seq += 1
                        heapq.heappush(asleep, (now + min(due, 1.0), seq, name))
                        continue
                    item = queued[name].popleft()
                    buffered -= 1
                    state.in_flight += 1
                    launched = True
                    pending[pool.submit(one, item, state)] = state
                    if queued[name]:
                        turn.append(name)
                    else:
                        del queued[name]
            if not pending and not queued and exhausted:
                return
            timeout = max(0.005, asleep[0][0] - pacer.clock()) if asleep else None
            if not pending:
                time.sleep(timeout or 0.005)
                continue
            done, _ = wait(list(pending), timeout=timeout, return_when=FIRST_COMPLETED)
            for future in done:
                state = pending.pop(future)
                state.in_flight -= 1
                if state.name in full:
                    full.discard(state.name)
                    turn.append(state.name)
                started += 1
                if started % 1000 == 0:
                    pacer.forget_idle(keep=set(queued))
                yield future.result()
