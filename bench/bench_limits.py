"""The object jobs at S3's per-prefix request limits, emulated by the proxy at half the jobs' own speed.

    python -m bench limits     # S3LAKE_BENCH_LIMIT_OBJECTS (1600 copies), S3LAKE_BENCH_LIMIT_ANON (1200)

In one run, behind a 20 ms latency proxy, local[2]:

1. copy in place unthrottled -> U objects/s, its request mix (reads and writes per object) and the Spark
   Python workers' CPU per object;
2. the proxy's per-prefix limits (``LimitPlan``: 3,500 writes : 5,500 reads, scaled) set so that the mix
   allows U/2 objects/s on the prefix, then copy in place again (fresh objects): goodput / limit (target
   >= 0.9, steady state: the middle 80% of the objects by finish time), throttled share of requests
   (target <= 10%), FAILED (0); the same with a fixed window (no AIMD) for comparison;
3. the published algorithm (HEAD, GetObjectAcl, CopyObject, PutObjectAcl; sequential, plain boto3)
   through the same limit;
4. anonymize on small objects: the same 1-2 steps;
5. per prefix, both jobs, objects spread over ten prefixes (``p0/`` .. ``p9/``):
   a. every prefix limited, together to half the unthrottled speed: goodput / limit (target >= 0.9),
      throttled share (<= 10%), FAILED (0);
   b. one prefix (``p0/``, a tenth of the objects) limited to a tenth of that limit (its share in a.),
      the other nine free:
      the free prefixes' objects/s / the unthrottled speed (target >= 0.8), the hot prefix's objects/s /
      its own limit (>= 0.8), throttled share (<= 10%); the hot prefix's objects take about twice as
      long as the rest, so its waiting objects would fill every slot of a window if they could hold one;
6. the request-mix arithmetic at S3's real limits per prefix (objects/s the mix allows).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from s3lake import inventory
from s3lake.anonymize import job, rules, sources
from s3lake.objects import results
from s3lake.objects.pacing import PaceOptions
from s3lake.replication import copy_in_place
from s3lake_testbed.inventory import write_inventory
from s3lake_testbed.proxy import S3_READS_PER_SECOND, S3_WRITES_PER_SECOND, LimitPlan

from bench.bench_anonymize import _small_body
from bench.bench_copy_in_place import inventory_rows, seed
from bench.common import WORKDIR, aws_behind_proxy, direct_client, local_spark, parallel

N = int(os.environ.get("S3LAKE_BENCH_LIMIT_OBJECTS", "1600"))
N_ANON = int(os.environ.get("S3LAKE_BENCH_LIMIT_ANON", "1200"))
N_BASELINE = min(N, 400)
LATENCY = 0.020
RESULTS = WORKDIR / "limits-results"
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ measuring


def _proc_stat(pid: str) -> tuple[int, list[str]] | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().decode(errors="replace")
    except OSError:
        return None
    return int(fields[1]), fields + [cmdline]


def worker_cpu_seconds() -> float:
    """CPU (user+system, reaped children included) of the PySpark Python workers under this process."""
    stats = {pid: s for pid in os.listdir("/proc") if pid.isdigit() and (s := _proc_stat(pid)) is not None}
    parents = {int(pid): ppid for pid, (ppid, _) in stats.items()}
    me, total, tick = os.getpid(), 0.0, os.sysconf("SC_CLK_TCK")
    for pid, (_, fields) in stats.items():
        if "pyspark.daemon" not in fields[-1] and "pyspark.worker" not in fields[-1]:
            continue
        p = int(pid)
        while p not in (0, 1, me):
            p = parents.get(p, 0)
        if p == me:
            total += sum(int(f) for f in fields[11:15]) / tick
    return total


def steady_rate(spark, run_id: str, prefix: str | None = None, exclude: str | None = None) -> float:
    """Objects/s over the middle 80% of the run's objects by finish time (no Spark start/stop); only keys
    starting with ``prefix`` / not with ``exclude``."""
    rows = results.read_run(spark, str(RESULTS), run_id).select("key", "finished_at").collect()
    times = sorted(r.finished_at.timestamp() for r in rows if (prefix is None or r.key.startswith(prefix))
                   and (exclude is None or not r.key.startswith(exclude)))
    lo, hi = int(len(times) * 0.1), int(len(times) * 0.9) - 1
    return (hi - lo) / (times[hi] - times[lo]) if times[hi] > times[lo] else float("nan")


PREFIXES = 10


def spread_keys(n: int) -> list[str]:
    """``n`` keys over ten prefixes, ``p0/`` .. ``p9/`` (an inventory lists them prefix by prefix)."""
    return [f"p{i % PREFIXES}/{i:05d}/file {i}.json" for i in range(n)]


def seed_spread(s3, bucket: str, n: int) -> list[str]:
    owner = s3.get_bucket_acl(Bucket=bucket)["Owner"]["ID"]
    keys = spread_keys(n)
    parallel(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=b'{"x": 1}\n', ContentType="application/json",
                                       Metadata={"source": "bench"}, GrantFullControl=f'id="{owner}"',
                                       GrantRead='uri="http://acs.amazonaws.com/groups/global/AllUsers"'), keys)
    return keys


def prefix_plans(bucket: str, per_prefix_scale: float) -> tuple[LimitPlan, LimitPlan]:
    """(every prefix at ``per_prefix_scale``; ``bucket/p0/`` alone at it and the rest free)."""
    return (LimitPlan(scale=per_prefix_scale),
            LimitPlan(scale=1000.0, prefix_scales={f"{bucket}/p0/": per_prefix_scale}))


def throttled_share(proxy) -> float:
    counts = proxy.limit_counts()
    throttled = sum(n for (_, outcome), n in counts.items() if outcome == "throttled")
    return throttled / max(1, sum(counts.values()))


def mix(proxy, objects: int) -> tuple[float, float]:
    """(reads, writes) per object from the proxy's class counts (listings/lookups included: a few)."""
    counts = proxy.limit_counts()
    reads = sum(n for (cls, _), n in counts.items() if cls == "read")
    writes = sum(n for (cls, _), n in counts.items() if cls == "write")
    return reads / objects, writes / objects


def allowed(reads: float, writes: float, scale: float = 1.0) -> float:
    """Objects/s a per-prefix limit allows for a mix of ``reads`` and ``writes`` per object."""
    return min(S3_READS_PER_SECOND * scale / reads if reads else float("inf"),
               S3_WRITES_PER_SECOND * scale / writes if writes else float("inf"))


# ------------------------------------------------------------------------------------------ the runs


def _published(parts):
    """The published algorithm through plain boto3 (legacy retries); failures counted, not raised."""
    import boto3

    s3 = boto3.client("s3")
    done = failed = 0
    for bucket, key in parts:
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
            acl = s3.get_object_acl(Bucket=bucket, Key=key)
            s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key},
                           MetadataDirective="REPLACE", Metadata=head.get("Metadata", {}),
                           ContentType=head.get("ContentType", "binary/octet-stream"))
            s3.put_object_acl(Bucket=bucket, Key=key,
                              AccessControlPolicy={"Owner": acl["Owner"], "Grants": acl["Grants"]})
            done += 1
        except Exception:  # noqa: BLE001 - the published algorithm has no per-object outcome
            failed += 1
    yield done, failed


def main() -> int:
    shutil.rmtree(RESULTS, ignore_errors=True)
    status = 0
    with aws_behind_proxy(LATENCY) as (upstream, proxy):
        direct = direct_client(upstream)
        buckets = ("lim-free", "lim-aimd", "lim-fixed", "lim-published", "lim-warm", "lim-inv", "lim-anon",
                   "lim-ten", "lim-hot", "lim-anon-ten", "lim-anon-hot")
        for name in buckets:
            direct.create_bucket(Bucket=name)
        print(f"seeding 3 x {N} + {N_BASELINE} + {2 * N_ANON} objects ...", flush=True)
        keys = {name: seed(direct, name, n) for name, n in
                (("lim-free", N), ("lim-aimd", N), ("lim-fixed", N), ("lim-published", N_BASELINE), ("lim-warm", 60))}
        keys.update({name: seed_spread(direct, name, N) for name in ("lim-ten", "lim-hot")})
        import random

        rng = random.Random(5)
        bodies = [_small_body(rng, i) for i in range(N_ANON)]
        parallel(lambda item: direct.put_object(Bucket="lim-anon", Key=f"{item[0]}/{item[1]:05d}.json",
                                                Body=bodies[item[1]], ContentType="application/x-ndjson"),
                 [(side, i) for side in ("free", "limited") for i in range(N_ANON)])
        for name in ("lim-anon-ten", "lim-anon-hot"):
            parallel(lambda item, name=name: direct.put_object(Bucket=name, Key=item[1], Body=bodies[item[0]],
                                                               ContentType="application/x-ndjson"),
                     [(i, key.replace(".json", ".jsonl")) for i, key in enumerate(spread_keys(N_ANON))])
        os.environ["AWS_ENDPOINT_URL"] = upstream  # writing the inventories is setup, not measured
        deliveries = {name: write_inventory("lim-inv", name, inventory_rows(keys[name]), config_id=name)
                      for name in ("lim-free", "lim-aimd", "lim-fixed", "lim-warm", "lim-ten", "lim-hot")}
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        spark = local_spark()
        ruleset = rules.load(str(ROOT / "conf/anonymize/file-contents.json"))

        def copy(name: str, run_id: str, pace: PaceOptions) -> tuple[float, dict, float]:
            proxy.reset_counts()
            cpu0, t0 = worker_cpu_seconds(), time.monotonic()
            frame = inventory.read_inventory(spark, inventory.resolve_manifest(deliveries[name].manifest_url))
            candidates = copy_in_place.select_candidates(frame, copy_in_place.parse_statuses("none,FAILED"))
            summary, _ = copy_in_place.run(spark, candidates, copy_in_place.Settings(run_id=run_id),
                                           str(RESULTS), pace=pace)
            return time.monotonic() - t0, summary, worker_cpu_seconds() - cpu0

        def anon(prefix: str, run_id: str, pace: PaceOptions, source: str | None = None
                 ) -> tuple[float, dict, float]:
            proxy.reset_counts()
            cpu0, t0 = worker_cpu_seconds(), time.monotonic()
            candidates, counts = sources.source_candidates(spark, source or f"s3://lim-anon/{prefix}/")
            settings = job.Settings(run_id=run_id, rules=ruleset, min_age=0, concurrency=32)
            summary, _ = job.run(spark, candidates, settings, str(RESULTS), bucket_counts=counts, pace=pace)
            return time.monotonic() - t0, summary, worker_cpu_seconds() - cpu0

        quiet = PaceOptions(progress_interval=0)
        copy("lim-warm", "warm", quiet)

        # 1. unthrottled
        free_s, free, free_cpu = copy("lim-free", "free", quiet)
        unthrottled = steady_rate(spark, "free")
        reads, writes = mix(proxy, N)
        scale = (unthrottled / 2) / allowed(reads, writes)
        limit = allowed(reads, writes, scale)
        print(f"copy unthrottled: {unthrottled:.1f} objects/s steady ({N / free_s:.1f} whole run), "
              f"{reads:.2f} reads + {writes:.2f} writes per object; limit set at {limit:.1f} objects/s "
              f"(scale {scale:.5f}: {S3_WRITES_PER_SECOND * scale:.1f} writes/s, "
              f"{S3_READS_PER_SECOND * scale:.1f} reads/s per prefix)", flush=True)

        # 2. at the limit: AIMD (the default), then a fixed window
        proxy.configure(limits=LimitPlan(scale=scale))
        aimd_s, aimd, _ = copy("lim-aimd", "aimd", PaceOptions(progress_interval=10))
        aimd_rate, aimd_share = steady_rate(spark, "aimd"), throttled_share(proxy)
        fixed_s, fixed, _ = copy("lim-fixed", "fixed", PaceOptions(progress_interval=0, adaptive=False))
        fixed_rate, fixed_share = steady_rate(spark, "fixed"), throttled_share(proxy)

        # 3. the published algorithm through the same limit
        proxy.reset_counts()
        t0 = time.monotonic()
        rdd = spark.sparkContext.parallelize([("lim-published", k) for k in keys["lim-published"]], 2)
        outcomes = rdd.mapPartitions(_published).collect()
        pub_s = time.monotonic() - t0
        pub_done, pub_failed = sum(d for d, _ in outcomes), sum(f for _, f in outcomes)
        pub_share = throttled_share(proxy)
        pub_reads, pub_writes = mix(proxy, N_BASELINE)
        proxy.configure(limits=None)

        # 4. anonymize, small objects
        afree_s, afree, afree_cpu = anon("free", "anon-free", quiet)
        a_unthrottled = steady_rate(spark, "anon-free")
        a_reads, a_writes = mix(proxy, N_ANON)
        a_scale = (a_unthrottled / 2) / allowed(a_reads, a_writes)
        a_limit = allowed(a_reads, a_writes, a_scale)
        proxy.configure(limits=LimitPlan(scale=a_scale))
        alim_s, alim, _ = anon("limited", "anon-limited", PaceOptions(progress_interval=10))
        a_rate, a_share = steady_rate(spark, "anon-limited"), throttled_share(proxy)
        proxy.configure(limits=None)

        # 5. per prefix: ten prefixes limited together to half the unthrottled speed; one hot, nine free
        def per_prefix(run, label: str, unthrottled_rate: float, per_prefix_limit: float, one_scale: float) -> dict:
            ten, hot = prefix_plans(f"{label}-hot", one_scale)
            proxy.configure(limits=ten)
            _, ten_summary = run("ten")
            ten_rate, ten_share = steady_rate(spark, f"{label}-ten"), throttled_share(proxy)
            proxy.configure(limits=hot)
            hot_s, hot_summary = run("hot")
            hot_share = throttled_share(proxy)
            free_rate = steady_rate(spark, f"{label}-hot", exclude="p0/")
            hot_rate = steady_rate(spark, f"{label}-hot", prefix="p0/")
            rows = results.read_run(spark, str(RESULTS), f"{label}-hot").select("key", "finished_at").collect()
            free_end = max(r.finished_at for r in rows if not r.key.startswith("p0/"))
            waiting = sum(1 for r in rows if r.key.startswith("p0/") and r.finished_at > free_end)
            proxy.configure(limits=None)
            return {"limit": PREFIXES * per_prefix_limit, "ten": ten_rate / (PREFIXES * per_prefix_limit),
                    "ten_share": ten_share, "ten_failed": ten_summary["statuses"].get("FAILED", 0),
                    "free_rate": free_rate, "free": free_rate / unthrottled_rate,
                    "hot_limit": per_prefix_limit, "hot_rate": hot_rate, "hot": hot_rate / per_prefix_limit,
                    "hot_share": hot_share, "hot_seconds": hot_s,
                    "hot_failed": hot_summary["statuses"].get("FAILED", 0),
                    "waiting_per_task": waiting / spark.sparkContext.defaultParallelism,
                    "throttled_prefixes": hot_summary.get("throttled_prefixes", [])}

        paced = PaceOptions(progress_interval=10)
        pp_copy = per_prefix(lambda kind: copy(f"lim-{kind}", f"lim-{kind}", paced)[:2],
                             "lim", unthrottled, limit / PREFIXES, scale / PREFIXES)
        pp_anon = per_prefix(lambda kind: anon(kind, f"lim-anon-{kind}", paced, source=f"s3://lim-anon-{kind}/")[:2],
                             "lim-anon", a_unthrottled, a_limit / PREFIXES, a_scale / PREFIXES)
        spark.stop()

    failed = {run: s["statuses"].get("FAILED", 0) for run, s in
              (("aimd", aimd), ("fixed", fixed), ("anon", alim), ("free", free), ("anon-free", afree))}
    failed.update({f"{job}-{kind}": pp[f"{kind}_failed"] for job, pp in (("copy", pp_copy), ("anon", pp_anon))
                   for kind in ("ten", "hot")})
    cpu_ms = 1000 * free_cpu / N
    a_cpu_ms = 1000 * afree_cpu / N_ANON
    print(f"\nat S3's request limits (emulated per prefix at half the job's unthrottled speed), "
          f"{LATENCY * 1000:.0f} ms latency, local[2], {os.cpu_count()} cores (shared)")
    print(f"  copy in place: unthrottled {unthrottled:.1f} objects/s; limit {limit:.1f} objects/s")
    print(f"    adaptive (default): goodput {aimd_rate:6.1f} objects/s = {aimd_rate / limit:.2f} of the limit "
          f"(target >= 0.9), throttled {100 * aimd_share:.1f}% of requests (target <= 10%), "
          f"FAILED {failed['aimd']}, waited {aimd['waited_seconds']} thread-s, whole run {aimd_s:.1f} s")
    print(f"    no adaptation (fixed 32 in flight): goodput {fixed_rate:6.1f} objects/s = "
          f"{fixed_rate / limit:.2f} of the limit, throttled {100 * fixed_share:.1f}%, FAILED {failed['fixed']}")
    print(f"    published algorithm (sequential, plain boto3) through the same limit: "
          f"{pub_done / pub_s:.1f} objects/s, {pub_failed} of {N_BASELINE} failed, throttled {100 * pub_share:.1f}%, "
          f"{pub_reads:.2f} reads + {pub_writes:.2f} writes per object")
    print(f"    client CPU (Spark Python workers): {cpu_ms:.2f} ms/object -> {3500 * cpu_ms / 1000:.1f} cores "
          f"for 3,500 objects/s")
    print(f"  anonymize (small objects): unthrottled {a_unthrottled:.1f} objects/s; limit {a_limit:.1f} objects/s "
          f"({a_reads:.2f} reads + {a_writes:.2f} writes per object)")
    print(f"    adaptive (default): goodput {a_rate:6.1f} objects/s = {a_rate / a_limit:.2f} of the limit, "
          f"throttled {100 * a_share:.1f}%, FAILED {failed['anon']}, whole run {alim_s:.1f} s")
    print(f"    client CPU: {a_cpu_ms:.2f} ms/object -> {3500 * a_cpu_ms / 1000:.1f} cores for 3,500 objects/s")
    for title, pp in (("copy in place", pp_copy), ("anonymize", pp_anon)):
        print(f"  {title}, ten prefixes (p0/ .. p9/) limited together to {pp['limit']:.1f} objects/s: goodput "
              f"{pp['ten']:.2f} of the limit (target >= 0.9), throttled {100 * pp['ten_share']:.1f}% (<= 10%), "
              f"FAILED {pp['ten_failed']}")
        print(f"  {title}, p0/ limited to {pp['hot_limit']:.2f} objects/s, p1/ .. p9/ free: the free prefixes "
              f"{pp['free_rate']:.1f} objects/s = {pp['free']:.2f} of unthrottled (target >= 0.8); p0/ "
              f"{pp['hot_rate']:.2f} objects/s = {pp['hot']:.2f} of its limit (>= 0.8); throttled "
              f"{100 * pp['hot_share']:.1f}% (<= 10%); FAILED {pp['hot_failed']}; whole run {pp['hot_seconds']:.0f} s; "
              f"p0/ objects still waiting when the free prefixes were done: {pp['waiting_per_task']:.0f} per task "
              f"(a task's window: 32); "
              f"throttled most: {pp['throttled_prefixes'][:2]}")
    ours, no_acl, published = allowed(2, 1), allowed(1, 1), allowed(2, 2)
    print(f"  per prefix at S3's limits (3,500 writes, 5,500 reads /s), the request mix allows: s3lake "
          f"(HEAD + GetObjectAcl + CopyObject) {ours:,.0f} objects/s (read-bound); ACLs disabled (HEAD + "
          f"CopyObject) {no_acl:,.0f}; published (HEAD, GetObjectAcl, CopyObject, PutObjectAcl) "
          f"{published:,.0f} (write-bound): {ours / published:.2f}x / {no_acl / published:.2f}x")
    print(f"    measured mixes: s3lake {reads:.2f} reads + {writes:.2f} writes -> {allowed(reads, writes):,.0f}/s; "
          f"published {pub_reads:.2f} + {pub_writes:.2f} -> {allowed(pub_reads, pub_writes):,.0f}/s: "
          f"{allowed(reads, writes) / allowed(pub_reads, pub_writes):.2f}x")
    if any(failed.values()):
        print(f"bench limits: objects FAILED: {failed}", file=sys.stderr)
        status = 1
    missed = aimd_rate / limit < 0.9 or aimd_share > 0.10
    for pp in (pp_copy, pp_anon):
        missed |= pp["ten"] < 0.9 or pp["ten_share"] > 0.10 or pp["free"] < 0.8 or pp["hot"] < 0.8
        missed |= pp["hot_share"] > 0.10
    if missed:
        print("bench limits: a target was missed", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
