"""The run-wide caps held however many executors run: the driver grants each running task a share (pure).

``--max-requests-per-second`` (and ``--max-requests-per-second-per-prefix``) are run-wide. Splitting them
by the slots counted when the run starts breaks under dynamic allocation: executors that join later run
more tasks at once, each with a full share. Instead every task reports to the driver every couple of
seconds (:mod:`s3lake.objects.progress`) and the driver answers with the task's share of the caps:

* a fair share is 1 / the tasks that reported within the lease (``LEASE`` seconds, a few reports);
* a grant never makes the outstanding grants sum above 1: a task that joins gets what is free now and
  its fair share once the others, at their next report, have been granted theirs (at most one report
  interval later), so the sum of the shares in force never exceeds the cap while tasks come and go;
* a task that ends (its last report) or stops reporting for a lease gives its share back;
* a task uses a grant for :data:`HOLD` seconds (less than the driver's lease); with no answer from the
  driver it holds ``1 / tasks`` of the caps, which no number of executors can push above them.

Since candidates are hash-partitioned, every task holds an even share of every prefix, so a task's
share of the per-prefix cap is the same fraction.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Hashable

LEASE = 6.0  # seconds the driver counts a grant after the report it answered
HOLD = 4.5  # seconds a task uses a grant after receiving it (< LEASE: the driver never forgets it first)


class Shares:
    """The driver's grants: :meth:`report` per task report, returning that task's share of the caps."""

    def __init__(self, lease: float = LEASE, clock: Callable[[], float] = time.monotonic) -> None:
        self.lease = lease
        self.clock = clock
        self.grants: dict[Hashable, tuple[float, float]] = {}  # task -> (share, granted at)
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        for task in [t for t, (_, at) in self.grants.items() if now - at > self.lease]:
            del self.grants[task]

    def report(self, task: Hashable, final: bool = False) -> float:
        """A report from ``task``: its share from now on (0.0 once it ends)."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            if final:
                self.grants.pop(task, None)
                return 0.0
            running = len(self.grants) + (task not in self.grants)
            fair = 1.0 / running
            others = sum(share for t, (share, _) in self.grants.items() if t != task)
            share = max(0.0, min(fair, 1.0 - others))
            self.grants[task] = (share, now)
            return share

    def outstanding(self) -> float:
        """The sum of the shares granted and not yet expired (never above 1)."""
        with self._lock:
            self._expire(self.clock())
            return sum(share for share, _ in self.grants.values())

    def running(self) -> int:
        with self._lock:
            self._expire(self.clock())
            return len(self.grants)
