"""Demo of jobs/json_to_parquet.py: Firehose-style gzipped NDJSON -> partitioned Parquet + Glue table.

``run(workdir, spark)`` needs the moto server the demo already started (AWS_ENDPOINT_URL set).
``write_firehose_files`` is shared with ``bench/bench_json_to_parquet.py``.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import uuid
from pathlib import Path

SCHEMA_FILE = Path(__file__).resolve().parents[3] / "conf" / "schemas" / "firehose-events.json"
EVENT_TYPES = ["page_view", "click", "purchase", "signup", "logout"]
COUNTRIES = ["DE", "FR", "US", "BR", "JP", "IN", "NG", "GB"]
WORDS = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut".split()
START_MS = 1_714_521_600_000  # 2024-05-01T00:00:00Z


def firehose_record(rng: random.Random, i: int, days: int = 7) -> dict:
    """One event; the timestamp is epoch ms, epoch s or ISO-8601, as mixed producers send them."""
    ts_ms = START_MS + rng.randrange(days * 86_400_000)
    style = i % 3
    if style == 0:
        ts: object = ts_ms
    elif style == 1:
        ts = ts_ms // 1000
    else:
        ts = _iso(ts_ms)
    text_len = rng.randint(10, 200)
    words = []
    while sum(len(w) + 1 for w in words) < text_len:
        words.append(rng.choice(WORDS))
    return {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "event_type": rng.choice(EVENT_TYPES),
        "event_time": ts,
        "user": {
            "id": rng.randrange(1, 10_000_000),
            "country": rng.choice(COUNTRIES),
            "device": {
                "os": rng.choice(["ios", "android", "web"]),
                "version": f"{rng.randint(1, 17)}.{rng.randint(0, 9)}",
            },
        },
        "tags": rng.sample(WORDS, rng.randint(0, 4)),
        "amount": round(rng.random() * 100, 2),
        "message": " ".join(words)[:text_len],
    }


def _iso(ts_ms: int) -> str:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(ts_ms / 1000, tz=_dt.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def write_firehose_file(path: str, n: int, seed: int, bad_every: int = 0, days: int = 7) -> str:
    """``n`` records over ``days`` event days as gzipped NDJSON; every ``bad_every``-th line is broken
    (0: none)."""
    rng = random.Random(seed)
    tmp = f"{path}.tmp"
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6) as fh:
        for i in range(n):
            if bad_every and i % bad_every == bad_every - 1:
                broken = '{"event_id": "broken", "event_time": ' if i % 2 else '{"event_id":"x","event_time":"soon"}'
                fh.write(broken + "\n")
                continue
            fh.write(json.dumps(firehose_record(rng, i, days), separators=(",", ":")))
            fh.write("\n")
    os.replace(tmp, path)
    return path


def write_firehose_files(directory: str, records: int, files: int, *, seed: int = 7, bad_every: int = 0,
                         days: int = 7) -> list[str]:
    """``records`` split over ``files`` gzipped NDJSON files (two processes); returns the paths."""
    from concurrent.futures import ProcessPoolExecutor

    os.makedirs(directory, exist_ok=True)
    per = [records // files + (1 if k < records % files else 0) for k in range(files)]
    paths = [os.path.join(directory, f"firehose-{k:03d}.json.gz") for k in range(files)]
    with ProcessPoolExecutor(max_workers=min(files, os.cpu_count() or 1)) as pool:
        list(pool.map(write_firehose_file, paths, per, [seed + k for k in range(files)], [bad_every] * files,
                      [days] * files))
    return paths


def run(workdir: str, spark) -> None:
    """Generate ~600 records in 3 files of one arrival hour, convert them into a Glue table (one batch
    per arrival hour under each event day), print the summary."""
    from s3lake import glue_catalog
    from s3lake.parquet.convert import convert
    from s3lake.parquet.options import Options, load_schema

    from s3lake_testbed.seed import make_glue_database

    base = Path(workdir) / "json_to_parquet"
    # Firehose's arrival-time layout: one arrival hour's objects, events of the week before it.
    inputs = write_firehose_files(str(base / "incoming" / "2024" / "05" / "08" / "00"), 600, 3, seed=11,
                                  bad_every=97)
    make_glue_database("demo_lake")
    opts = Options(
        inputs=inputs,
        output=str(base / "events"),
        schema=load_schema(str(SCHEMA_FILE)),
        timestamp_field="event_time",
        partition_by=["dt"],
        table="demo_lake.firehose_events",
        dedup_keys=["event_id"],
        max_bad_fraction=0.05,
    )
    summary = convert(spark, opts)
    table = glue_catalog.get_table(opts.table)
    print("json_to_parquet summary:")
    print(json.dumps(summary, indent=2, sort_keys=True))
    sd = table["StorageDescriptor"]
    keys = [k["Name"] for k in table["PartitionKeys"]]
    print(f"Glue table {opts.table}: location {sd['Location']}, {summary['partitions']} partitions "
          f"({'/'.join(keys)}), SerDe {sd['SerdeInfo']['SerializationLibrary']}")
