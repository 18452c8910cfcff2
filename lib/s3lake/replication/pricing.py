"""What a copy-in-place run costs: S3 requests by type, KMS calls, new versions' bytes, and dollars.

A :class:`Tally` counts what a run makes (or, in a dry run, would make): requests by (operation, storage
class), KMS calls, and the bytes of the new versions by storage class. :func:`estimate` prices it with a
dated :class:`PriceTable` (``conf/prices/us-east-1.json`` by default, ``--prices FILE`` for another
region or a negotiated rate).

Request tiers follow the S3 pricing page (https://aws.amazon.com/s3/pricing/): PUT, COPY, POST and LIST
requests are charged at the storage class written, GET/HEAD "and all other requests" at the class read;
DELETE and abort requests are free. SSE-KMS objects without an S3 Bucket Key cost KMS requests
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucket-key.html, https://aws.amazon.com/kms/pricing/):
a single CopyObject decrypts the source and generates the new version's data key (2 calls); a multipart
copy generates one key at CreateMultipartUpload and decrypts source and upload key per part (1 + 2 per
part) -- an estimate, KMS's own bill is the truth. A copy keeps the old version (noncurrent) and adds a
new one, so storage grows by the copied bytes until a lifecycle rule expires noncurrent versions;
replication then moves those bytes to the destination region.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from s3lake.errors import S3LakeError

GIB = 1024 ** 3
DEFAULT_FILE = "us-east-1.json"
PUT_TIER = frozenset({
    "PutObject", "CopyObject", "PostObject", "CreateMultipartUpload", "UploadPart", "UploadPartCopy",
    "CompleteMultipartUpload", "ListMultipartUploads", "ListObjectsV2", "ListObjects", "ListObjectVersions",
    "ListParts",
})
FREE = frozenset({"DeleteObject", "DeleteObjects", "AbortMultipartUpload"})
KMS_SSE = frozenset({"aws:kms", "aws:kms:dsse", "SSE-KMS", "DSSE-KMS"})


class PriceTableError(S3LakeError):
    """The price table cannot be read or is incomplete."""


def tier(operation: str) -> str:
    """``put``, ``get`` or ``free``: the S3 request price tier of an operation."""
    if operation in FREE:
        return "free"
    return "put" if operation in PUT_TIER else "get"


# ---------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class PriceTable:
    region: str
    as_of: str
    sources: tuple[str, ...]
    currency: str
    requests_per_1000: Mapping[str, Mapping[str, float]]
    storage_per_gb_month: Mapping[str, float]
    retrieval_per_gb: Mapping[str, float]
    kms_per_10000: float
    replication_transfer_per_gb: float
    path: str = ""
    batch_job: float = 0.0                   # S3 Batch Operations, per job
    batch_per_million_objects: float = 0.0   # S3 Batch Operations, per million objects (manifest rows)

    def request_price(self, storage_class: str, request_tier: str) -> float:
        """Per-request price; a class the table lacks is priced as STANDARD."""
        if request_tier == "free":
            return 0.0
        prices = self.requests_per_1000.get(storage_class) or self.requests_per_1000["STANDARD"]
        return prices[request_tier] / 1000.0


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or math.isnan(value):
        raise PriceTableError(f"{where} must be a non-negative number, got {value!r}")
    return float(value)


def parse(doc: Any, path: str = "<table>") -> PriceTable:
    """A :class:`PriceTable` from the JSON document (see ``conf/prices/us-east-1.json``)."""
    where = f"price table {path}"
    if not isinstance(doc, dict):
        raise PriceTableError(f"{where}: not a JSON object")
    for required in ("region", "as_of", "sources", "requests_per_1000", "storage_per_gb_month",
                     "kms_per_10000_requests"):
        if required not in doc:
            raise PriceTableError(f"{where}: missing {required!r}")
    requests = doc["requests_per_1000"]
    if not isinstance(requests, dict) or "STANDARD" not in requests:
        raise PriceTableError(f"{where}: requests_per_1000 must be an object with a STANDARD entry")
    parsed_requests = {}
    for cls, prices in requests.items():
        if not isinstance(prices, dict) or set(prices) != {"put", "get"}:
            raise PriceTableError(f"{where}: requests_per_1000.{cls} must hold exactly 'put' and 'get'")
        parsed_requests[cls] = {k: _number(v, f"{where}: requests_per_1000.{cls}.{k}") for k, v in prices.items()}
    storage = doc["storage_per_gb_month"]
    if not isinstance(storage, dict) or "STANDARD" not in storage:
        raise PriceTableError(f"{where}: storage_per_gb_month must be an object with a STANDARD entry")
    retrieval = doc.get("retrieval_per_gb", {})
    if not isinstance(retrieval, dict):
        raise PriceTableError(f"{where}: retrieval_per_gb must be an object")
    batch = doc.get("batch_operations", {})
    if not isinstance(batch, dict):
        raise PriceTableError(f"{where}: batch_operations must be an object")
    sources = doc["sources"]
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        raise PriceTableError(f"{where}: sources must list the pricing pages the numbers come from")
    return PriceTable(
        region=str(doc["region"]),
        as_of=str(doc["as_of"]),
        sources=tuple(sources),
        currency=str(doc.get("currency", "USD")),
        requests_per_1000=parsed_requests,
        storage_per_gb_month={k: _number(v, f"{where}: storage_per_gb_month.{k}") for k, v in storage.items()},
        retrieval_per_gb={k: _number(v, f"{where}: retrieval_per_gb.{k}") for k, v in retrieval.items()},
        kms_per_10000=_number(doc["kms_per_10000_requests"], f"{where}: kms_per_10000_requests"),
        replication_transfer_per_gb=_number(doc.get("replication_transfer_per_gb", 0),
                                            f"{where}: replication_transfer_per_gb"),
        path=path,
        batch_job=_number(batch.get("per_job", 0), f"{where}: batch_operations.per_job"),
        batch_per_million_objects=_number(batch.get("per_million_objects", 0),
                                          f"{where}: batch_operations.per_million_objects"),
    )


def default_path() -> str:
    """``us-east-1.json`` in the working directory (where EMR's ``--files`` puts conf/), else the repo's."""
    if os.path.isfile(DEFAULT_FILE):
        return DEFAULT_FILE
    return str(Path(__file__).resolve().parents[3] / "conf" / "prices" / DEFAULT_FILE)


def load(path: str | None = None) -> PriceTable:
    """Read and check a price table file (one-line :class:`PriceTableError` on any problem)."""
    path = path or default_path()
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise PriceTableError(f"price table {path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise PriceTableError(f"price table {path}: not valid JSON ({exc})") from None
    return parse(doc, path)


# ---------------------------------------------------------------------------------------- the tally


@dataclass
class Tally:
    """Requests by (operation, storage class), KMS calls, new versions' bytes and count by class.

    ``requests`` were made; ``predicted`` are the writes a dry run did not make and the real run will.
    ``counted`` is the jobs' own per-object request count (retries included), to tell the driver's apart.
    """

    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    kms_calls: int = 0
    new_bytes: dict[str, int] = field(default_factory=dict)
    new_versions: dict[str, int] = field(default_factory=dict)
    predicted: dict[tuple[str, str], int] = field(default_factory=dict)
    counted: int = 0

    def add(self, operation: str, n: int = 1, storage_class: str = "STANDARD") -> Tally:
        if n:
            key = (operation, storage_class or "STANDARD")
            self.requests[key] = self.requests.get(key, 0) + n
        return self

    def predict(self, operation: str, n: int = 1, storage_class: str = "STANDARD") -> Tally:
        if n:
            key = (operation, storage_class or "STANDARD")
            self.predicted[key] = self.predicted.get(key, 0) + n
        return self

    def all_requests(self) -> dict[tuple[str, str], int]:
        """Made plus predicted: what the real run makes."""
        out = dict(self.requests)
        for key, n in self.predicted.items():
            out[key] = out.get(key, 0) + n
        return out

    def add_version(self, storage_class: str, size: int, count: int = 1) -> Tally:
        """``count`` new versions of ``size`` bytes in all."""
        cls = storage_class or "STANDARD"
        self.new_bytes[cls] = self.new_bytes.get(cls, 0) + int(size or 0)
        self.new_versions[cls] = self.new_versions.get(cls, 0) + count
        return self

    def merge(self, other: Tally) -> Tally:
        for (op, cls), n in other.requests.items():
            self.add(op, n, cls)
        for (op, cls), n in other.predicted.items():
            self.predict(op, n, cls)
        self.kms_calls += other.kms_calls
        self.counted += other.counted
        for cls, n in other.new_bytes.items():
            self.new_bytes[cls] = self.new_bytes.get(cls, 0) + n
        for cls, n in other.new_versions.items():
            self.new_versions[cls] = self.new_versions.get(cls, 0) + n
        return self

    def by_operation(self, made_only: bool = False) -> dict[str, int]:
        """Requests per operation: made plus predicted (the real run), or ``made_only``."""
        out: dict[str, int] = {}
        for (op, _), n in (self.requests if made_only else self.all_requests()).items():
            out[op] = out.get(op, 0) + n
        return dict(sorted(out.items()))

    @property
    def total_requests(self) -> int:
        return sum(self.all_requests().values())


def copy_write_requests(parts: int | None, tags_to_read: bool) -> dict[str, int]:
    """The write-side requests of one copy: CopyObject, or (``parts``) the multipart sequence."""
    if not parts:
        return {"CopyObject": 1}
    out = {"ListMultipartUploads": 1, "CreateMultipartUpload": 1, "UploadPartCopy": parts,
           "CompleteMultipartUpload": 1}
    if tags_to_read:
        out["GetObjectTagging"] = 1
    return out


def kms_calls(sse: str | None, bucket_key_enabled: bool, parts: int | None) -> int:
    """KMS requests S3 makes for one copy of an object with ``sse`` (0 without SSE-KMS or with a Bucket Key)."""
    if sse not in KMS_SSE or bucket_key_enabled:
        return 0
    return 1 + 2 * parts if parts else 2


# ------------------------------------------------------------------------------------------ pricing


def estimate(tally: Tally, table: PriceTable) -> dict[str, Any]:
    """Dollar figures for ``tally``: requests by tier, KMS, retrieval, monthly storage, replication transfer."""
    by_tier: dict[str, dict[str, float]] = {}
    for (op, cls), n in sorted(tally.all_requests().items()):
        t = tier(op)
        entry = by_tier.setdefault(t, {"requests": 0, "cost": 0.0})
        entry["requests"] += n
        entry["cost"] += n * table.request_price(cls, t)
    kms = tally.kms_calls * table.kms_per_10000 / 10000.0
    total_bytes = sum(tally.new_bytes.values())
    retrieval = sum(b / GIB * table.retrieval_per_gb.get(cls, 0.0) for cls, b in tally.new_bytes.items())
    storage = sum(b / GIB * table.storage_per_gb_month.get(cls, table.storage_per_gb_month["STANDARD"])
                  for cls, b in tally.new_bytes.items())
    transfer = total_bytes / GIB * table.replication_transfer_per_gb
    one_time = sum(e["cost"] for e in by_tier.values()) + kms + retrieval
    return {
        "requests": by_tier,
        "kms": kms,
        "retrieval": retrieval,
        "storage_per_month": storage,
        "replication_transfer": transfer,
        "one_time": one_time,
    }


def _size(n: int) -> str:
    for unit, scale in (("TiB", 1024 ** 4), ("GiB", GIB), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _money(x: float) -> str:
    """Cents for real sums, six decimals for the tiny sums of small runs."""
    if x == 0 or x >= 0.01:
        return f"{x:,.2f}"
    return f"{x:.6f}"


def format_estimate(tally: Tally, table: PriceTable, title: str = "estimated cost of the real run") -> str:
    """The dry run's closing lines: requests by operation, KMS, bytes by class, dollars."""
    cost = estimate(tally, table)
    cur = table.currency
    lines = [f"{title} ({table.region} list prices as of {table.as_of}, {table.sources[0]}):"]
    made = tally.by_operation(made_only=True)
    for op, n in tally.by_operation().items():
        lines.append(f"  {op:<28} {n:>12} requests ({tier(op)}; {made.get(op, 0)} made by this run)")
    lines.append(f"  {'KMS requests':<28} {tally.kms_calls:>12}")
    for cls, n in sorted(tally.new_bytes.items()):
        lines.append(f"  new versions {cls:<15} {tally.new_versions.get(cls, 0):>12} objects, {_size(n)}")
    for t, e in sorted(cost["requests"].items()):
        lines.append(f"  {t + ' requests':<28} {cur} {_money(e['cost'])}")
    lines.append(f"  {'KMS':<28} {cur} {_money(cost['kms'])}")
    if cost["retrieval"]:
        lines.append(f"  {'retrieval (IA/Glacier IR)':<28} {cur} {_money(cost['retrieval'])}")
    lines.append(f"  {'one-time total':<28} {cur} {_money(cost['one_time'])}")
    lines.append(f"  {'storage of the old versions':<28} {cur} {_money(cost['storage_per_month'])} per month "
                 "(until noncurrent versions expire)")
    lines.append(f"  {'replication transfer':<28} {cur} {_money(cost['replication_transfer'])} "
                 "(when replication copies the new versions)")
    return "\n".join(lines)
