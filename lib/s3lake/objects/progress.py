"""A run that takes hours must never be silent: progress lines on the driver, totals for the summary.

* Each task keeps its own tallies (objects done by status, plus its :class:`s3lake.objects.pacing.Pacer`'s request
  counters) and, every couple of seconds, sends them in one small UDP datagram to the driver
  (:class:`Reporter`): cumulative numbers per task attempt, so a lost datagram is superseded by the next
  and nothing is sent per object. Spark's accumulators reach the driver only when a task ends, which for a
  task of 50,000 objects is many minutes.
* The driver's :class:`Monitor` keeps the latest tallies per task and prints a line every
  ``--progress-interval`` seconds (default 30; 0: none): done / total, counts by status, objects/s,
  throttled share of requests, ETA.
* The final summary's throttled share and time spent waiting come from accumulators (:class:`Totals`),
  which are exact once the job is over; progress lines are an estimate while it runs. Both name the
  prefixes throttled most (``bucket/prefix``: throttled of requests), so a hot prefix shows as one.
* Under a run-wide cap the monitor answers each report with the task's share of it
  (:mod:`s3lake.objects.shares`), whatever the tasks' count and progress lines or not.

Datagrams go to ``spark.driver.host`` (127.0.0.1 for a local master); on EMR the cluster's nodes share
security groups that allow all traffic between them
(https://docs.aws.amazon.com/emr/latest/ManagementGuide/emr-man-sec-groups.html). Where they cannot
arrive, the lines show 0 done until the summary; the run itself is unaffected.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

from s3lake.objects.prefixes import TOP
from s3lake.objects.shares import HOLD, Shares

DEFAULT_INTERVAL = 30.0
REPORT_EVERY = 2.0
SOON = 0.25  # the next report, while a task holds less than its fair share
TOTAL_FIELDS = ("requests", "throttled", "transient", "waited")


# ------------------------------------------------------------------------------------------ pure parts


def eta(done: int, total: int, seconds: float) -> float | None:
    """Seconds left at the rate so far (None before the first object)."""
    if done <= 0 or seconds <= 0:
        return None
    return max(0.0, (total - done) * seconds / done)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def format_line(total: int, statuses: Mapping[str, int], seconds: float, requests: int, throttled: int,
                waited: float = 0.0, prefixes: Mapping[str, list] | None = None, resumed: int = 0) -> str:
    """One progress line (pure); ``prefixes``: label -> [requests, throttled]; ``resumed``: objects whose
    rows an earlier driver of the run committed (not in ``total``)."""
    done = sum(statuses.values())
    by_status = ", ".join(f"{s} {n:,}" for s, n in sorted(statuses.items())) or "none yet"
    rate = done / seconds if seconds > 0 else 0.0
    line = (f"progress: {done:,}/{total:,} objects ({100 * share(done, total):.1f}%) [{by_status}] | "
            f"{rate:,.1f} objects/s | {requests:,} requests, {100 * share(throttled, requests):.1f}% throttled | "
            f"waited {waited:,.0f} s | ETA {format_duration(eta(done, total, seconds))}")
    if resumed:
        line = f"{line} | resumed {resumed:,}"
    hot = format_prefixes(prefixes or {}, 3)
    return f"{line} | most throttled: {hot}" if hot else line


def top_prefixes(prefixes: Mapping[str, list], n: int = TOP) -> list[tuple[str, int, int]]:
    """``[(label, requests, throttled), ...]``: the ``n`` prefixes with the most throttled answers."""
    return sorted(((name, req, thr) for name, (req, thr) in prefixes.items() if thr), key=lambda t: -t[2])[:n]


def format_prefixes(prefixes: Mapping[str, list], n: int = TOP) -> str:
    """``a/hot/ 1,234 of 5,000 (24.7%), ...``: the ``n`` prefixes with the most throttled answers."""
    return ", ".join(f"{name} {thr:,} of {req:,} ({100 * share(thr, req):.1f}%)"
                     for name, req, thr in top_prefixes(prefixes, n))


def merge_prefixes(into: dict[str, list], top: Any) -> dict[str, list]:
    """Add a task's ``[[label, requests, throttled], ...]`` (or a ``label -> [requests, throttled]``
    mapping) into ``label -> [requests, throttled]``."""
    rows = ([name, *counts] for name, counts in top.items()) if isinstance(top, Mapping) else top or ()
    for name, req, thr in rows:
        found = into.setdefault(name, [0, 0])
        found[0] += req
        found[1] += thr
    return into


def merge(tallies: Iterator[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum task tallies (``statuses`` counts, the numeric :data:`TOTAL_FIELDS`, ``prefixes``)."""
    statuses: Counter[str] = Counter()
    out: dict[str, Any] = {name: 0 for name in TOTAL_FIELDS}
    prefixes: dict[str, list] = {}
    for tally in tallies:
        statuses.update(tally.get("statuses", {}))
        for name in TOTAL_FIELDS:
            out[name] += tally.get(name, 0)
        merge_prefixes(prefixes, tally.get("prefixes"))
    out["statuses"] = dict(statuses)
    out["prefixes"] = prefixes
    return out


# ------------------------------------------------------------------------------------------ task side


class Reporter:
    """A task's tallies, sent to ``address`` every :data:`REPORT_EVERY` seconds and once at the end.

    With ``on_share`` (a capped run) it also takes the driver's answers: each grants the task a share of
    the run's caps; a task that hears nothing for :data:`~s3lake.objects.shares.HOLD` seconds goes back to
    ``fallback``.
    """

    def __init__(self, address: tuple[str, int] | None, task: tuple[int, int, int],
                 pacer_snapshot: Callable[[], Mapping[str, Any]], every: float = REPORT_EVERY,
                 on_share: Callable[[float], None] | None = None, fallback: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.address, self.task, self.every = address, task, every
        self.pacer_snapshot = pacer_snapshot
        self.on_share, self.fallback, self.clock = on_share, fallback, clock
        self.statuses: Counter[str] = Counter()
        self.granted_at: float | None = None
        self._soon = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None

    def done(self, status: str) -> None:
        with self._lock:
            self.statuses[status] += 1

    def tally(self, final: bool = False) -> dict[str, Any]:
        with self._lock:
            statuses = dict(self.statuses)
        out = {"task": list(self.task), "statuses": statuses, **dict(self.pacer_snapshot())}
        if final:
            out["final"] = True
        return out

    def send(self, final: bool = False) -> None:
        if self.address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._sock.sendto(json.dumps(self.tally(final)).encode(), self.address)
        except OSError:
            pass  # progress is best effort; the run goes on

    def _answers(self, until: float) -> None:
        """Take the driver's answers until ``until`` (monotonic), or until one asks for a report soon."""
        while self._sock is not None and not self._stop.is_set():
            left = until - self.clock()
            if left <= 0:
                return
            try:
                self._sock.settimeout(min(left, 0.5))
                answer = json.loads(self._sock.recv(4096))
                granted, fair = float(answer["share"]), float(answer.get("fair", 0.0))
            except socket.timeout:
                continue
            except (OSError, ValueError, KeyError, TypeError):
                return
            self.granted_at = self.clock()
            if self.on_share is not None:
                self.on_share(granted)
            if granted < fair:
                self._soon = True
                return

    def _loop(self) -> None:
        while not self._stop.is_set():
            soon, self._soon = self._soon, False
            if self.on_share is None:
                if self._stop.wait(self.every):
                    return
                self.send()
                continue
            self._answers(self.clock() + (SOON if soon else self.every))
            if self._stop.is_set():
                return
            if self.granted_at is not None and self.clock() - self.granted_at > HOLD:
                self.granted_at = None
                self.on_share(self.fallback)  # the driver is silent: back to the share nobody can exceed
            self.send()

    def __enter__(self) -> Reporter:
        if self.address is not None:
            if self.on_share is not None:  # a capped task starts with the driver's grant when it comes quickly
                self.send()
                self._answers(self.clock() + 1.0)
            threading.Thread(target=self._loop, name="s3lake-progress", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.send(final=True)
        if self._sock is not None:
            self._sock.close()


# ------------------------------------------------------------------------------------------ driver side


class Monitor:
    """Receives task tallies and prints a line every ``interval`` seconds (``with Monitor(...) as m:``)."""

    def __init__(self, total: int, interval: float = DEFAULT_INTERVAL, host: str = "127.0.0.1",
                 out: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic,
                 shares: Shares | None = None, resumed: int = 0) -> None:
        self.total, self.interval, self.host = total, interval, host
        self.resumed = resumed
        self.shares = shares
        self.out = out or (lambda line: print(f"s3lake {line}", file=sys.stderr, flush=True))
        self.clock = clock
        self.started = clock()
        self.tasks: dict[tuple, tuple] = {}  # (stage, partition) -> (attempt, tally)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self.address: tuple[str, int] | None = None

    def receive(self, payload: bytes) -> dict | None:
        """Take one task report; the answer to send back (a capped run), else None."""
        try:
            tally = json.loads(payload)
            stage, partition, attempt = tally["task"]
        except (ValueError, KeyError, TypeError):
            return None
        with self._lock:
            found = self.tasks.get((stage, partition))
            if found is None or attempt >= found[0]:
                self.tasks[(stage, partition)] = (attempt, tally)
        if self.shares is None:
            return None
        granted = self.shares.report((stage, partition, attempt), final=bool(tally.get("final")))
        return {"share": granted, "fair": 1.0 / max(1, self.shares.running())}

    def merged(self) -> dict[str, Any]:
        with self._lock:
            tallies = [t for _, t in self.tasks.values()]
        return merge(iter(tallies))

    def line(self) -> str:
        m = self.merged()
        return format_line(self.total, m["statuses"], self.clock() - self.started, m["requests"],
                           m["throttled"], m["waited"], m["prefixes"], self.resumed)

    def _listen(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                payload, sender = self._sock.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            answer = self.receive(payload)
            if answer is not None:
                try:
                    self._sock.sendto(json.dumps(answer).encode(), sender)
                except OSError:
                    pass  # the task keeps its last share, then falls back to its safe one

    def _print(self) -> None:
        while not self._stop.wait(self.interval):
            self.out(self.line())

    def __enter__(self) -> Monitor:
        if self.interval <= 0 and self.shares is None:
            return self
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((self.host, 0))
        self._sock.settimeout(0.5)
        self.address = (self.host, self._sock.getsockname()[1])
        threading.Thread(target=self._listen, name="s3lake-progress-in", daemon=True).start()
        if self.interval > 0:
            threading.Thread(target=self._print, name="s3lake-progress-out", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()


# ------------------------------------------------------------------------------------------ exact totals


def totals_param() -> Any:
    """A PySpark AccumulatorParam summing dicts of :data:`TOTAL_FIELDS`."""
    from pyspark.accumulators import AccumulatorParam

    class _Totals(AccumulatorParam):
        def zero(self, value: Any) -> dict:
            return {**{name: 0 for name in TOTAL_FIELDS}, "prefixes": {}}

        def addInPlace(self, a: dict, b: dict) -> dict:  # noqa: N802 - PySpark's name
            for name in TOTAL_FIELDS:
                a[name] = a.get(name, 0) + b.get(name, 0)
            merge_prefixes(a.setdefault("prefixes", {}), b.get("prefixes"))
            return a

    return _Totals()


def driver_host(spark: Any) -> str:
    """Where tasks send their tallies: loopback for a local master, else ``spark.driver.host``."""
    conf = spark.sparkContext.getConf()
    if (conf.get("spark.master") or "").startswith("local"):
        return "127.0.0.1"
    return conf.get("spark.driver.host") or socket.gethostname()


@contextmanager
def task_reporter(address: tuple[str, int] | None, pacer_snapshot: Callable[[], Mapping[str, Any]],
                  on_share: Callable[[float], None] | None = None, fallback: float = 1.0) -> Iterator[Reporter]:
    """The running task's :class:`Reporter` (identified by Spark's TaskContext when there is one; else by
    this process and thread)."""
    task = (-1, os.getpid(), threading.get_ident() % 1_000_000)
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None:
            task = (ctx.stageId(), ctx.partitionId(), ctx.attemptNumber())
    except ImportError:  # pragma: no cover - pyspark is a dependency
        pass
    with Reporter(address, task, pacer_snapshot, on_share=on_share, fallback=fallback) as reporter:
        yield reporter
