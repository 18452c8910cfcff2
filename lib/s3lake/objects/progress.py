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
  which are exact once the job is over; progress lines are an estimate while it runs.

Datagrams go to ``spark.driver.host`` (127.0.0.1 for a local master); on EMR the cluster's nodes share
security groups that allow all traffic between them
(https://docs.aws.amazon.com/emr/latest/ManagementGuide/emr-man-sec-groups.html). Where they cannot
arrive, the lines show 0 done until the summary; the run itself is unaffected.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

DEFAULT_INTERVAL = 30.0
REPORT_EVERY = 2.0
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
                waited: float = 0.0) -> str:
    """One progress line (pure)."""
    done = sum(statuses.values())
    by_status = ", ".join(f"{s} {n:,}" for s, n in sorted(statuses.items())) or "none yet"
    rate = done / seconds if seconds > 0 else 0.0
    return (f"progress: {done:,}/{total:,} objects ({100 * share(done, total):.1f}%) [{by_status}] | "
            f"{rate:,.1f} objects/s | {requests:,} requests, {100 * share(throttled, requests):.1f}% throttled | "
            f"waited {waited:,.0f} s | ETA {format_duration(eta(done, total, seconds))}")


def merge(tallies: Iterator[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum task tallies (``statuses`` counts and the numeric :data:`TOTAL_FIELDS`)."""
    statuses: Counter[str] = Counter()
    out: dict[str, Any] = {name: 0 for name in TOTAL_FIELDS}
    for tally in tallies:
        statuses.update(tally.get("statuses", {}))
        for name in TOTAL_FIELDS:
            out[name] += tally.get(name, 0)
    out["statuses"] = dict(statuses)
    return out


# ------------------------------------------------------------------------------------------ task side


class Reporter:
    """A task's tallies, sent to ``address`` every :data:`REPORT_EVERY` seconds and once at the end."""

    def __init__(self, address: tuple[str, int] | None, task: tuple[int, int, int],
                 pacer_snapshot: Callable[[], Mapping[str, Any]], every: float = REPORT_EVERY) -> None:
        self.address, self.task, self.every = address, task, every
        self.pacer_snapshot = pacer_snapshot
        self.statuses: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None

    def done(self, status: str) -> None:
        with self._lock:
            self.statuses[status] += 1

    def tally(self) -> dict[str, Any]:
        with self._lock:
            statuses = dict(self.statuses)
        return {"task": list(self.task), "statuses": statuses, **dict(self.pacer_snapshot())}

    def send(self) -> None:
        if self.address is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._sock.sendto(json.dumps(self.tally()).encode(), self.address)
        except OSError:
            pass  # progress is best effort; the run goes on

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.send()

    def __enter__(self) -> Reporter:
        if self.address is not None:
            threading.Thread(target=self._loop, name="s3lake-progress", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.send()
        if self._sock is not None:
            self._sock.close()


# ------------------------------------------------------------------------------------------ driver side


class Monitor:
    """Receives task tallies and prints a line every ``interval`` seconds (``with Monitor(...) as m:``)."""

    def __init__(self, total: int, interval: float = DEFAULT_INTERVAL, host: str = "127.0.0.1",
                 out: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.interval, self.host = total, interval, host
        self.out = out or (lambda line: print(f"s3lake {line}", file=sys.stderr, flush=True))
        self.clock = clock
        self.started = clock()
        self.tasks: dict[tuple, tuple] = {}  # (stage, partition) -> (attempt, tally)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self.address: tuple[str, int] | None = None

    def receive(self, payload: bytes) -> None:
        try:
            tally = json.loads(payload)
            stage, partition, attempt = tally["task"]
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            found = self.tasks.get((stage, partition))
            if found is None or attempt >= found[0]:
                self.tasks[(stage, partition)] = (attempt, tally)

    def merged(self) -> dict[str, Any]:
        with self._lock:
            tallies = [t for _, t in self.tasks.values()]
        return merge(iter(tallies))

    def line(self) -> str:
        m = self.merged()
        return format_line(self.total, m["statuses"], self.clock() - self.started, m["requests"],
                           m["throttled"], m["waited"])

    def _listen(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                payload = self._sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            self.receive(payload)

    def _print(self) -> None:
        while not self._stop.wait(self.interval):
            self.out(self.line())

    def __enter__(self) -> Monitor:
        if self.interval <= 0:
            return self
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((self.host, 0))
        self._sock.settimeout(0.5)
        self.address = (self.host, self._sock.getsockname()[1])
        threading.Thread(target=self._listen, name="s3lake-progress-in", daemon=True).start()
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
            return {name: 0 for name in TOTAL_FIELDS}

        def addInPlace(self, a: dict, b: dict) -> dict:  # noqa: N802 - PySpark's name
            for name in TOTAL_FIELDS:
                a[name] = a.get(name, 0) + b.get(name, 0)
            return a

    return _Totals()


def driver_host(spark: Any) -> str:
    """Where tasks send their tallies: loopback for a local master, else ``spark.driver.host``."""
    conf = spark.sparkContext.getConf()
    if (conf.get("spark.master") or "").startswith("local"):
        return "127.0.0.1"
    return conf.get("spark.driver.host") or socket.gethostname()


@contextmanager
def task_reporter(address: tuple[str, int] | None, pacer_snapshot: Callable[[], Mapping[str, Any]]
                  ) -> Iterator[Reporter]:
    """The running task's :class:`Reporter` (identified by Spark's TaskContext when there is one)."""
    task = (0, 0, 0)
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None:
            task = (ctx.stageId(), ctx.partitionId(), ctx.attemptNumber())
    except ImportError:  # pragma: no cover - pyspark is a dependency
        pass
    with Reporter(address, task, pacer_snapshot) as reporter:
        yield reporter
