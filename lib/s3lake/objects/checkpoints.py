"""A task commits its result rows as it goes, and exactly one attempt works each chunk of its objects.

A task's objects (in the deterministic order :func:`s3lake.objects.driver.spread` gives them) are cut into
chunks of ``chunk_objects``. Before it starts a chunk's first object, the task claims the chunk
(:mod:`s3lake.objects.claims`) in the run's folder ``<results>/run_id=<id>/``:

* a chunk another live attempt holds (a resubmitted stage, speculation) is waited for: when its holder
  marks it done the rows are its holder's, and nothing of it is done twice;
* a chunk whose holder stopped renewing for a lease (a lost executor), or released it (a failing task), is
  taken over: the objects whose rows its holder committed are skipped, the rest are worked;
* every ``interval`` seconds, and when a chunk's last object is finished, the rows finished since the last
  commit are written as one Parquet file ``part-<chunk>-<attempt>-<n>.parquet`` (the ``run_id``
  partition's layout: ``spark.read.parquet`` and Athena read them while the run goes on), the claim
  renewed first, so a holder that lost its claim writes nothing more.

An abort therefore loses at most the rows of the last interval (their objects are redone and found
already done: the copy's marker); the task's memory holds one interval's rows, not its objects.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from s3lake.objects.claims import BUSY, DONE, TAKEN_OVER, Claim, Claims
from s3lake.objects.stores import Store

DEFAULT_INTERVAL = 60.0
DEFAULT_CHUNK_OBJECTS = 5000
LEASE_INTERVALS = 3.0  # a claim lapses after three missed renewals
MIN_LEASE = 5.0
CLAIMS = "_claims"  # Spark and Athena skip names starting with '_'


@dataclass(frozen=True)
class CheckpointOptions:
    interval: float = DEFAULT_INTERVAL
    chunk_objects: int = DEFAULT_CHUNK_OBJECTS

    @property
    def lease(self) -> float:
        return max(MIN_LEASE, LEASE_INTERVALS * self.interval)


def arrow_schema() -> Any:
    """The results schema without ``run_id`` (the folder names it), as Arrow types."""
    import pyarrow as pa
    from pyspark.sql import types as T

    from s3lake.objects.results import SCHEMA

    types = {T.StringType: pa.string(), T.LongType: pa.int64(), T.IntegerType: pa.int32(),
             T.TimestampType: pa.timestamp("us", tz="UTC")}
    return pa.schema([pa.field(f.name, types[type(f.dataType)], f.nullable)
                      for f in SCHEMA.fields if f.name != "run_id"])


def parquet_bytes(rows: list[tuple], fields: list[str], schema: Any) -> bytes:
    """Result rows (tuples in ``fields`` order) as one Parquet file's bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {name: [r[i] for r in rows] for i, name in enumerate(fields) if name != "run_id"}
    table = pa.table({f.name: pa.array(columns[f.name], f.type) for f in schema}, schema=schema)
    out = io.BytesIO()
    pq.write_table(table, out, compression="snappy")
    return out.getvalue()


def committed_keys(store: Store, chunk: str) -> tuple[set[tuple[str, str]], int]:
    """(bucket, key) of the rows committed for ``chunk`` so far, by any attempt; and the files read."""
    import pyarrow.parquet as pq

    out: set[tuple[str, str]] = set()
    names = list(store.names(f"part-{chunk}-"))
    for name in names:
        found = store.get(name)
        if found is not None:
            table = pq.read_table(io.BytesIO(found[0]), columns=["bucket", "key"])
            out.update(zip(table.column("bucket").to_pylist(), table.column("key").to_pylist()))
    return out, len(names)


@dataclass
class _Chunk:
    claim: Claim
    pending: int = 0
    fed: bool = False
    lost: bool = False
    done: bool = False
    rows: list = field(default_factory=list)
    files: int = 0


@dataclass
class TaskStats:
    chunks: int = 0
    chunks_done_elsewhere: int = 0
    taken_over: int = 0
    skipped_committed: int = 0
    lost: int = 0
    files: int = 0
    requests: int = 0  # to the store: claims, renewals, row files, listings
    waited: float = 0.0


class TaskCheckpoints:
    """One task attempt's chunks: :meth:`feed` the partition's rows through it to the object work, hand each
    result row to :meth:`done`; ``with`` it so the heartbeat runs and the last rows are committed."""

    def __init__(self, store: Store, prefix: str, holder: str, fields: list[str],
                 options: CheckpointOptions | None = None, clock: Callable[[], float] = time.time,
                 poll: float | None = None) -> None:
        options = options or CheckpointOptions()
        self.store, self.prefix, self.options = store, prefix, options
        self.fields = fields
        self.at = (fields.index("bucket"), fields.index("key"))
        self.claims = Claims(store, holder, options.lease, clock)
        self.tag = uuid.uuid4().hex[:8]  # this attempt's files
        self.poll = poll if poll is not None else min(5.0, max(0.05, options.interval / 4))
        self.stats = TaskStats()
        self._schema = arrow_schema()
        self._open: dict[str, _Chunk] = {}
        self._owner: dict[tuple[str, str], list[str]] = {}
        self._lock = threading.Lock()  # the chunk states
        self._commit = threading.Lock()  # one commit at a time, so a chunk's 'done' follows its last file
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------------------------- the task's side

    def feed(self, rows: Iterable[Any]) -> Iterator[Any]:
        """The rows of the chunks this attempt holds, less those already committed."""
        n = self.options.chunk_objects
        chunk: _Chunk | None = None
        name, skip = "", set()
        for i, row in enumerate(rows):
            if i % n == 0:
                if chunk is not None:
                    self._fed(name, chunk)
                name = f"{self.prefix}-{i // n:06d}"
                chunk, skip = self._claim(name)
            if chunk is None or chunk.lost:
                continue
            item = (row["bucket"], row["key"])
            if item in skip:
                self.stats.skipped_committed += 1
                continue
            with self._lock:
                self._owner.setdefault(item, []).append(name)  # a list: a key listed twice is worked twice
                chunk.pending += 1
            yield row
        if chunk is not None:
            self._fed(name, chunk)

    def done(self, row: tuple) -> None:
        """A finished object's result row: kept for the next commit of its chunk."""
        item = (row[self.at[0]], row[self.at[1]])
        with self._lock:
            names = self._owner[item]
            name = names.pop(0)
            if not names:
                del self._owner[item]
            chunk = self._open[name]
            chunk.pending -= 1
            if not chunk.lost:
                chunk.rows.append(row)
            finished = chunk.fed and chunk.pending == 0
        if finished:
            self._finish(name, chunk)

    def __enter__(self) -> TaskCheckpoints:
        self._thread = threading.Thread(target=self._heartbeat, name="s3lake-checkpoints", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, failed: Any, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            self.commit()  # whatever finished, even when the task fails: less to redo
            if failed is not None:  # Spark's retry of this task takes its chunks over at once
                for chunk in list(self._open.values()):
                    if not chunk.lost:
                        self.claims.release(chunk.claim)
        except Exception:  # noqa: BLE001
            if failed is None:
                raise  # a task that cannot commit its rows must fail; a failing one keeps its own error

    # -------------------------------------------------------------------------------- claims and commits

    def _claim(self, name: str) -> tuple[_Chunk | None, set]:
        started = time.monotonic()
        while True:
            self.stats.requests += 1
            state, claim = self.claims.acquire(f"{CLAIMS}/{name}")
            if state != BUSY:
                break
            self.stats.requests += 1
            time.sleep(self.poll)
        self.stats.waited += time.monotonic() - started
        if state == DONE:
            self.stats.chunks_done_elsewhere += 1
            return None, set()
        skip: set = set()
        if state == TAKEN_OVER:
            self.stats.taken_over += 1
            skip, files = committed_keys(self.store, name)
            self.stats.requests += 1 + files  # the listing, one GET per file
        chunk = _Chunk(claim)
        with self._lock:
            self._open[name] = chunk
        self.stats.chunks += 1
        return chunk, skip

    def _fed(self, name: str, chunk: _Chunk) -> None:
        with self._lock:
            chunk.fed = True
            finished = chunk.pending == 0
        if finished:
            self._finish(name, chunk)

    def _finish(self, name: str, chunk: _Chunk) -> None:
        with self._commit:
            if chunk.done:
                return
            if self._write(name, chunk):
                self.stats.requests += 1
                if not self.claims.finish(chunk.claim):
                    self._lose(chunk)
            chunk.done = True
            with self._lock:
                self._open.pop(name, None)

    def commit(self) -> None:
        """Commit every open chunk's finished rows now (the heartbeat does this every interval)."""
        with self._commit:
            for name, chunk in list(self._open.items()):
                self._write(name, chunk)

    def _write(self, name: str, chunk: _Chunk) -> bool:
        """Renew the chunk's claim, then write its rows since the last commit; False when the claim was lost.
        A request that fails (S3 unreachable past botocore's retries) leaves the rows for the next commit."""
        if chunk.lost:
            return False
        self.stats.requests += 1
        renewed = self.claims.renew(chunk.claim)
        if renewed is None:
            self._lose(chunk)
            return False
        chunk.claim = renewed
        with self._lock:
            rows, chunk.rows = chunk.rows, []
        if rows:
            try:
                self.store.put(f"part-{name}-{self.tag}-{chunk.files:04d}.parquet",
                               parquet_bytes(rows, self.fields, self._schema))
            except BaseException:
                with self._lock:
                    chunk.rows[:0] = rows
                raise
            chunk.files += 1
            self.stats.files += 1
            self.stats.requests += 1
        return True

    def _lose(self, chunk: _Chunk) -> None:
        with self._lock:
            if not chunk.lost:
                chunk.lost = True
                chunk.rows = []
                self.stats.lost += 1

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.options.interval):
            try:
                self.commit()
            except Exception:  # noqa: BLE001 - a failed commit is retried at the next beat; the claim's lease covers it
                pass
