"""Copy in place vs the published baseline, behind a latency proxy that counts S3 requests.

    python -m bench copy_in_place      # S3LAKE_BENCH_OBJECTS (2000), S3LAKE_BENCH_LATENCY (0.020 s)

Both get 2,000 fresh objects with ACL grants in their own bucket; the same Spark session (warm) runs
(a) the baseline: per object, sequentially in each of 2 partitions, HEAD -> GetObjectAcl -> CopyObject
REPLACE -> PutObjectAcl; (b) s3lake's job with its defaults (inventory read included); and (c) the job on a
bucket with ACLs disabled (BucketOwnerEnforced). Prints objects/s, the ratio and requests per object.
"""

from __future__ import annotations

import os
import shutil
import time

from s3lake import inventory
from s3lake.replication import copy_in_place
from s3lake_testbed.inventory import write_inventory

from bench import baseline_copy
from bench.common import (
    WORKDIR,
    EndpointCpu,
    aws_behind_proxy,
    direct_client,
    endpoint_ceiling,
    local_spark,
    parallel,
    per_object,
)

N = int(os.environ.get("S3LAKE_BENCH_OBJECTS", "2000"))
LATENCY = float(os.environ.get("S3LAKE_BENCH_LATENCY", "0.020"))


def seed(s3, bucket: str, n: int, *, acl: bool = True) -> list[str]:
    owner = s3.get_bucket_acl(Bucket=bucket)["Owner"]["ID"] if acl else None
    keys = [f"objects/{i:05d}/file {i}.json" for i in range(n)]

    def put(key: str) -> None:
        extra = {"GrantFullControl": f'id="{owner}"',
                 "GrantRead": 'uri="http://acs.amazonaws.com/groups/global/AllUsers"'} if acl else {}
        s3.put_object(Bucket=bucket, Key=key, Body=b'{"x": 1}\n', ContentType="application/json",
                      Metadata={"source": "bench"}, **extra)

    parallel(put, keys)
    return keys


def inventory_rows(keys: list[str]) -> list[dict]:
    # fresh objects: no replication status; e_tag left out so the HEAD is the only truth
    return [{"key": k, "size": 9, "is_latest": True, "is_delete_marker": False} for k in keys]


def main() -> int:
    shutil.rmtree(WORKDIR / "copy-results", ignore_errors=True)
    with aws_behind_proxy(LATENCY) as (upstream, proxy):
        direct = direct_client(upstream)
        for name in ("bench-baseline", "bench-s3lake", "bench-inventory", "bench-warmup"):
            direct.create_bucket(Bucket=name)
        direct.create_bucket(Bucket="bench-enforced", ObjectOwnership="BucketOwnerEnforced")
        print(f"seeding 3 x {N} objects ...", flush=True)
        base_keys = seed(direct, "bench-baseline", N)
        ours_keys = seed(direct, "bench-s3lake", N)
        enforced_keys = seed(direct, "bench-enforced", N, acl=False)
        warm_keys = seed(direct, "bench-warmup", 100)
        os.environ["AWS_ENDPOINT_URL"] = upstream  # writing the inventories is setup, not measured
        ours_inv = write_inventory("bench-inventory", "bench-s3lake", inventory_rows(ours_keys), files=2)
        enf_inv = write_inventory("bench-inventory", "bench-enforced", inventory_rows(enforced_keys), files=2,
                                  config_id="enforced")
        warm_inv = write_inventory("bench-inventory", "bench-warmup", inventory_rows(warm_keys[50:]), config_id="warm")
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        spark = local_spark()
        cpu_share: dict[str, float] = {}

        def ours(delivery, run_id):
            proxy.reset_counts()
            cpu = EndpointCpu(proxy.moto, proxy)
            t0 = time.monotonic()
            with cpu:
                frame = inventory.read_inventory(spark, inventory.resolve_manifest(delivery.manifest_url))
                settings = copy_in_place.Settings(run_id=run_id)
                candidates = copy_in_place.select_candidates(frame, copy_in_place.parse_statuses("none,FAILED"))
                summary, _ = copy_in_place.run(spark, candidates, settings, str(WORKDIR / "copy-results"))
            seconds = time.monotonic() - t0
            cpu_share[run_id] = cpu.seconds / seconds
            return seconds, proxy.counts(), summary

        # warm both sides (Python workers, imports, connection pools) on 50 objects each, untimed
        baseline_copy.run(spark, "bench-warmup", warm_keys[:50])
        ours(warm_inv, "warmup")

        proxy.reset_counts()
        started = time.monotonic()
        copied = baseline_copy.run(spark, "bench-baseline", base_keys)
        base_s = time.monotonic() - started
        base_counts = proxy.counts()
        assert copied == N

        ours_s, ours_counts, summary = ours(ours_inv, "bench")
        assert summary["statuses"] == {"COPIED": N}, summary["statuses"]
        enf_s, enf_counts, summary = ours(enf_inv, "bench-enforced")
        assert summary["statuses"] == {"COPIED": N}, summary["statuses"]
        spark.stop()
        ceiling, moto_cores = endpoint_ceiling(proxy, "bench-warmup", warm_keys[0])

    def objs(counts):  # the inventory files and bucket lookups are per run, not per object
        return {k: v for k, v in counts.items() if k not in ("GetObject", "ListObjectsV2")}

    base_rate, ours_rate, enf_rate = N / base_s, N / ours_s, N / enf_s
    print(f"\ncopy in place, {N} objects, {LATENCY * 1000:.0f} ms added per request, local[2]")
    print(f"  baseline (HEAD, GetObjectAcl, CopyObject, PutObjectAcl; sequential): {base_rate:8.1f} objects/s  "
          f"{per_object(base_counts, N)}")
    print(f"  s3lake copy_in_place (defaults):                                   {ours_rate:8.1f} objects/s  "
          f"{per_object(objs(ours_counts), N)}")
    print(f"  s3lake copy_in_place, ACLs disabled (BucketOwnerEnforced):         {enf_rate:8.1f} objects/s  "
          f"{per_object(objs(enf_counts), N)}")
    print(f"  ratio s3lake/baseline: {ours_rate / base_rate:.1f}x (target >= 10x); "
          f"ACLs disabled: {enf_rate / base_rate:.1f}x")
    print(f"  PutObjectAcl requests by s3lake: {ours_counts.get('PutObjectAcl', 0)}")
    print(f"  the local endpoint (moto + proxy) alone kept {cpu_share['bench']:.2f} of this machine's "
          f"{os.cpu_count()} cores busy during the s3lake run ({cpu_share['bench-enforced']:.2f} with ACLs "
          f"disabled): s3lake is bound by the emulated S3's CPU here, the baseline by latency")
    ours_rps = sum(objs(ours_counts).values()) / ours_s
    print(f"  the emulated S3's ceiling, same run: {ceiling:.0f} HeadObject/s from 64 concurrent clients "
          f"(moto at {moto_cores:.2f} cores, all one Python process gets); s3lake drove {ours_rps:.0f} "
          f"requests/s of HEAD/GetObjectAcl/CopyObject, the baseline {sum(base_counts.values()) / base_s:.0f}; "
          f"10x the baseline at 3 requests/object needs {30 * base_rate:.0f} requests/s")
    return 0
