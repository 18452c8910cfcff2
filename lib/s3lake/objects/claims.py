"""Exactly one attempt works a piece of a run at a time: claims held by conditional writes to the run's
store (:mod:`s3lake.objects.stores`).

A claim is a small object whose body names its holder and when it last renewed. The store's conditions
decide every race (S3: https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html):

* **claim**: create only if absent (``If-None-Match: *``): 412 when a claim exists, 409 when another claim
  raced this one; either way somebody else holds it;
* **renew** (the holder's heartbeat) and **take over** a claim not renewed within its lease: replace only if
  unchanged since read (``If-Match`` on the ETag): a refusal means somebody else wrote it since;
* **done**: the holder replaces its claim with ``done`` (``If-Match`` again): no later attempt redoes it;
* **released**: a failing holder gives its claim up, so the next attempt need not wait for the lease.

A holder that loses its claim (a refused renewal) starts nothing more of that piece and commits nothing more
for it; only its holder marks a piece done.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

from s3lake.objects.stores import Store

HELD, TAKEN_OVER, BUSY, DONE = "held", "taken-over", "busy", "done"


@dataclass(frozen=True)
class Claim:
    """A claim as last written or read: ``tag`` is None when it is not ours."""

    name: str
    holder: str
    tag: str | None
    renewed: float = 0.0


class Claims:
    """Claims named in ``store`` by ``holder``, each lapsing ``lease`` seconds after its last renewal
    (wall clock: holders on other machines compare the same way)."""

    def __init__(self, store: Store, holder: str, lease: float, clock: Callable[[], float] = time.time) -> None:
        self.store, self.holder, self.lease, self.clock = store, holder, lease, clock

    def _body(self, state: str) -> tuple[bytes, float]:
        now = self.clock()
        return json.dumps({"holder": self.holder, "state": state, "renewed": now}).encode(), now

    def acquire(self, name: str, *, reuse_done: bool = False) -> tuple[str, Claim]:
        """(HELD, claim) when it was free, (TAKEN_OVER, claim) when its holder's lease had lapsed, (BUSY,
        the holder's claim) while somebody holds it, (DONE, ...) when its holder finished it (unless
        ``reuse_done``: then a finished claim is taken over like a lapsed one)."""
        for _ in range(3):
            body, now = self._body("working")
            tag = self.store.create(name, body)
            if tag is not None:
                return HELD, Claim(name, self.holder, tag, now)
            found = self.store.get(name)
            if found is None:
                continue  # removed between the two requests: try again
            seen = json.loads(found[0])
            theirs = Claim(name, str(seen.get("holder", "")), None, float(seen.get("renewed", 0.0)))
            finished = seen.get("state") == "done"
            if finished and not reuse_done:
                return DONE, theirs
            if theirs.holder == self.holder:  # our own create or take-over, whose answer was lost: a take-over
                return TAKEN_OVER, Claim(name, self.holder, found[1], theirs.renewed)  # (so committed rows count)
            if not finished and now - theirs.renewed <= self.lease:
                return BUSY, theirs
            body, now = self._body("working")
            tag = self.store.replace(name, body, found[1])
            if tag is None:
                return BUSY, theirs  # another attempt took it over first
            return TAKEN_OVER, Claim(name, self.holder, tag, now)
        return BUSY, Claim(name, "", None)

    def _replace(self, claim: Claim, state: str, renewed: float | None = None) -> Claim | None:
        """Rewrite our claim if it is still the version we last wrote: the new claim, or None when it was
        taken over. A refusal is checked: a write of ours whose answer was lost, retried (by botocore) with the
        old ETag, is refused although it landed (the body, byte for byte ours, shows it did); a claim still as
        we left it was a 409 conflict nobody won, and is tried again."""
        now = self.clock() if renewed is None else renewed
        body = json.dumps({"holder": self.holder, "state": state, "renewed": now}).encode()
        for _ in range(3):
            tag = self.store.replace(claim.name, body, claim.tag or "")
            if tag is not None:
                return Claim(claim.name, self.holder, tag, now)
            found = self.store.get(claim.name)
            if found is not None and found[0] == body:
                return Claim(claim.name, self.holder, found[1], now)
            if found is None or found[1] != claim.tag:
                return None
            # unchanged: a 409 conflict that no write won (S3: fetch the ETag and retry)
        return None

    def renew(self, claim: Claim) -> Claim | None:
        """The heartbeat: the renewed claim, or None when it was taken over (stop working it)."""
        return self._replace(claim, "working")

    def release(self, claim: Claim) -> bool:
        """Give it up unfinished (a failing attempt): the next attempt takes it over at once, not after the
        lease. False when the claim was lost first."""
        return self._replace(claim, "released", renewed=0.0) is not None

    def finish(self, claim: Claim) -> bool:
        """Mark it done; False when the claim was lost first."""
        return self._replace(claim, "done") is not None
