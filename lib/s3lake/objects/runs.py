"""One driver works a run id at a time, and a run id holds one kind of run.

The run's folder ``<results>/run_id=<id>/`` holds, beside its rows:

* ``_s3lake_run.json``, written once by the run's first driver: the job and whether it is a dry run. A later
  driver of the same run id with another job or mode refuses (a real run must never skip objects because a
  dry run of the same id has rows for them);
* ``_claims/driver``, the driver's claim (:mod:`s3lake.objects.claims`), renewed every checkpoint interval.
  A second driver finding it renewed within its lease watches it: renewed again means the other driver is
  alive, and this one refuses; not renewed within the lease (a killed driver) and it takes the run over.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from typing import Any, Callable

from s3lake.errors import RunInUseError
from s3lake.objects.checkpoints import CLAIMS, CheckpointOptions
from s3lake.objects.claims import BUSY, Claims
from s3lake.objects.stores import Store

MANIFEST = "_s3lake_run.json"
DRIVER = f"{CLAIMS}/driver"


def _say(line: str) -> None:
    print(f"s3lake: {line}", file=sys.stderr, flush=True)


class RunLock:
    """``with RunLock(store, run_id, job, dry_run, options):`` the run is this driver's until the block ends."""

    def __init__(self, store: Store, run_id: str, job: str, dry_run: bool,
                 options: CheckpointOptions | None = None, clock: Callable[[], float] = time.time,
                 say: Callable[[str], None] = _say) -> None:
        self.store, self.run_id, self.job, self.dry_run = store, run_id, job, dry_run
        self.options = options or CheckpointOptions()
        self.claims = Claims(store, f"driver-{uuid.uuid4().hex[:12]}", self.options.lease, clock)
        self.clock, self.say = clock, say
        self.claim: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _check_kind(self) -> None:
        mine = {"job": self.job, "dry_run": self.dry_run}
        if self.store.create(MANIFEST, json.dumps(mine).encode()) is not None:
            return
        found = self.store.get(MANIFEST)
        theirs = json.loads(found[0]) if found else mine
        if theirs.get("job") != self.job:
            raise RunInUseError(f"run {self.run_id} in {self.store.url} is a {theirs.get('job')} run, not "
                                f"{self.job}: use another --run-id")
        if bool(theirs.get("dry_run")) != self.dry_run:
            kind = "a dry run" if theirs.get("dry_run") else "a real run"
            raise RunInUseError(f"run {self.run_id} in {self.store.url} holds {kind}'s rows: use another --run-id")

    def __enter__(self) -> RunLock:
        self._check_kind()
        state, claim = self.claims.acquire(DRIVER, reuse_done=True)
        if state == BUSY:
            seen = claim.renewed
            wait = max(0.0, seen + self.options.lease - self.clock())
            self.say(f"run {self.run_id} was worked by another driver {self.clock() - seen:.0f} s ago; "
                     f"waiting up to {wait:.0f} s for its lease to lapse")
            while state == BUSY:
                if claim.renewed != seen:
                    raise RunInUseError(f"run {self.run_id} is being worked by another driver ({claim.holder}): "
                                        "wait for it, or use another --run-id")
                time.sleep(min(1.0, self.options.interval / 4))
                state, claim = self.claims.acquire(DRIVER, reuse_done=True)
        self.claim = claim
        self._thread = threading.Thread(target=self._heartbeat, name="s3lake-run", daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.options.interval):
            try:
                renewed = self.claims.renew(self.claim)
            except Exception:  # noqa: BLE001 - retried at the next beat
                continue
            if renewed is None:
                self.say(f"run {self.run_id}: another driver took the run over")
                return
            self.claim = renewed

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.claim is not None:
            self.claims.finish(self.claim)
