"""The object jobs at S3's per-prefix request limits, emulated by the session proxy (``LimitPlan``):
every candidate done exactly once with 0 FAILED while most of the time is spent throttled, a stretch of
100% 503 SlowDown waited out, the run-wide ``--max-requests-per-second`` cap held, progress lines shown.

The limits are scaled down (``scale=0.004``: 14 writes and 22 reads per second per prefix), far below what
the jobs do unthrottled (dozens of objects in flight per task), so the runs live at the limit; the objects
are seeded and checked straight in moto (past the proxy), with the limits off.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pytest
from s3lake.anonymize import job as anon
from s3lake.anonymize import writes
from s3lake.replication import copy_in_place as cip
from s3lake_testbed.proxy import LimitPlan
from s3lake_testbed.replication import replicate_everything
from s3lake_testbed.seed import make_bucket, make_kms_key

from jobs import anonymize as anon_job
from jobs import copy_in_place as cip_job
from tests.test_faults import (
    BLANK_RULES,
    anon_objects,
    copied_once,
    inventory_for,
    pmap,
    read_plain,
    results_by_key,
    seed_copy_bucket,
    states,
    version_counts,
)

LIMITS = LimitPlan(scale=0.004)  # 14 writes/s, 22 reads/s per prefix


@contextmanager
def limited(proxy, plan: LimitPlan | None) -> Iterator[None]:
    proxy.reset()
    proxy.configure(limits=plan)
    try:
        yield
    finally:
        proxy.configure(limits=None)


def every_candidate_copied_once(spark, direct, bucket: str, keys: list, before: dict, results, run_id: str) -> None:
    """One COPIED row per key, one new version each, every attribute as before (the run's marker aside)."""
    got = results_by_key(spark, results, run_id)
    assert {k: r.status for k, r in got.items()} == {k: cip.COPIED for k in keys}
    versions, after = version_counts(direct, bucket), states(direct, bucket, keys)
    for key in keys:
        assert versions[key] == before[key]["versions"] + 1, key
        assert copied_once(before[key], after[key], run_id) == before[key], key


def throttled_share(proxy) -> float:
    counts = proxy.limit_counts()
    throttled = sum(n for (_, outcome), n in counts.items() if outcome == "throttled")
    return throttled / max(1, sum(counts.values()))


def test_copy_in_place_at_the_prefix_limit_copies_every_candidate_once_and_shows_progress(
        spark, proxy, direct, unique, tmp_path, capsys):
    bucket = replicate_everything(make_bucket(f"lim-cip-{unique}", versioned=True))
    keys = seed_copy_bucket(direct, bucket, 200, make_kms_key())
    manifest = inventory_for(direct, bucket, keys)
    before = states(direct, bucket, keys)

    with limited(proxy, LIMITS):
        code = cip_job.main(["--inventory-manifest", manifest, "--results", str(tmp_path / "r"),
                             "--run-id", "limited", "--progress-interval", "2"])
        share = throttled_share(proxy)

    err = capsys.readouterr().err
    assert code == 0, err
    every_candidate_copied_once(spark, direct, bucket, keys, before, tmp_path / "r", "limited")
    assert share > 0.0, proxy.limit_counts()  # the run did live at the limit
    progress = [line for line in err.splitlines() if "progress: " in line]
    assert progress and "/200 objects" in progress[0], err


def test_anonymize_at_the_prefix_limit_rewrites_every_object_once(spark, proxy, direct, unique, tmp_path,
                                                                  capsys):
    bucket = make_bucket(f"lim-anon-{unique}", versioned=True)
    owner = direct.get_bucket_acl(Bucket=bucket)["Owner"]["ID"]
    objs = anon_objects(100, make_kms_key())
    pmap(lambda o: direct.put_object(Bucket=bucket, GrantFullControl=f'id="{owner}"', **o["params"]), objs.values())
    before = states(direct, bucket, objs)

    with limited(proxy, LIMITS):
        code = anon_job.main(["--source", f"s3://{bucket}/in/", "--rules", str(BLANK_RULES), "--min-age", "0s",
                              "--results", str(tmp_path / "r"), "--run-id", "limited"])
        share = throttled_share(proxy)

    assert code == 0, capsys.readouterr().err
    got = results_by_key(spark, tmp_path / "r", "limited")
    expected = {k: anon.ANONYMIZED if o["changes"] else anon.TAGGED for k, o in objs.items()}
    assert {k: r.status for k, r in got.items()} == expected
    versions = version_counts(direct, bucket)
    after = states(direct, bucket, objs)
    for key, obj in objs.items():
        was, now = before[key], dict(after[key])
        assert read_plain(direct, bucket, key) == obj["expected"], key
        assert now.pop("tags") == sorted(set(was["tags"]) | {("PROCESSED", "true")}), key
        if obj["changes"]:
            assert versions[key] == was["versions"] + 1, key  # rewritten exactly once
            assert now.pop("metadata") == {**was["metadata"], writes.MARKER: "limited"}, key
            for name in ("sha256", "size", "versions"):
                now.pop(name)
            assert now == {k: v for k, v in was.items() if k not in ("tags", "metadata", "sha256", "size", "versions")}
        else:
            assert versions[key] == was["versions"], key
            assert now == {k: v for k, v in was.items() if k != "tags"}, key
    assert share > 0.0


def test_a_stretch_of_100_percent_slowdown_mid_run_is_waited_out(spark, proxy, direct, unique, tmp_path,
                                                                  capsys):
    bucket = replicate_everything(make_bucket(f"lim-out-{unique}", versioned=True))
    keys = seed_copy_bucket(direct, bucket, 40, make_kms_key())
    manifest = inventory_for(direct, bucket, keys)
    stretch = 20.0

    with limited(proxy, None):
        # every object request answered 503 SlowDown for 20 s from the first one (the tasks' first HEAD)
        proxy.configure(blackout=stretch, blackout_prefix=f"{bucket}/obj/")
        code = cip_job.main(["--inventory-manifest", manifest, "--results", str(tmp_path / "r"),
                             "--run-id", "outage", "--concurrency", "8"])
        throttled = proxy.limit_counts().get(("read", "throttled"), 0)
        per_second = proxy.per_second()

    out, err = capsys.readouterr()
    assert code == 0, err
    got = results_by_key(spark, tmp_path / "r", "outage")
    assert {k: r.status for k, r in got.items()} == {k: cip.COPIED for k in keys}
    versions = version_counts(direct, bucket)
    assert all(versions[k] == 2 for k in keys)
    throttled_seconds = [t for t, _, _, n in per_second if n]
    assert throttled > 0 and max(throttled_seconds) - min(throttled_seconds) >= stretch * 0.8  # waited it out
    assert "throttled" in out  # the summary says how much


def test_the_run_wide_cap_holds_at_the_proxy(spark, proxy, direct, unique, tmp_path):
    bucket = replicate_everything(make_bucket(f"lim-cap-{unique}", versioned=True))
    keys = seed_copy_bucket(direct, bucket, 80, make_kms_key())
    manifest = inventory_for(direct, bucket, keys)
    cap = 20

    with limited(proxy, None):
        code = cip_job.main(["--inventory-manifest", manifest, "--results", str(tmp_path / "r"),
                             "--run-id", "capped", "--max-requests-per-second", str(cap)])
        rows = proxy.per_second()

    assert code == 0
    object_seconds = [reads + writes for _, reads, writes, _ in rows[1:-1]]  # whole seconds only
    assert len(object_seconds) >= 8  # 240 requests at 20/s
    assert max(object_seconds) <= cap * 1.1 + 3, rows  # +3: the driver's bucket lookups, not capped
    got = results_by_key(spark, tmp_path / "r", "capped")
    assert {r.status for r in got.values()} == {cip.COPIED}


@pytest.mark.parametrize("flag, value", [("--object-deadline", "soon"), ("--object-deadline", "0"),
                                         ("--max-requests-per-second", "0"), ("--progress-interval", "-1"),
                                         ("--max-requests-per-second-per-prefix", "-5"), ("--prefix-depth", "-1"),
                                         ("--prefix-delimiter", "")])
def test_bad_pacing_options_are_refused_with_exit_2(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cip_job.parse_args(["--inventory-manifest", "s3://b/m.json", "--results", str(tmp_path), flag, value])
    assert exit_.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()[-1]) < 200


# ------------------------------------------------------------------------ per prefix


def hot_plan(bucket: str) -> LimitPlan:
    """``bucket/hot/`` at 0.7 writes and 1.1 reads per second (about 0.5 objects/s, so its 8 objects take
    some 15 s however loaded the machine); every other prefix free."""
    return LimitPlan(scale=1000.0, prefix_scales={f"{bucket}/hot/": 0.0002})


def finish_order(got: dict, prefix: str) -> list[float]:
    return sorted(r.finished_at.timestamp() for k, r in got.items() if k.startswith(prefix))


def test_every_prefix_limited_copies_every_candidate_once_with_its_attributes(spark, proxy, direct, unique,
                                                                           tmp_path, capsys):
    bucket = replicate_everything(make_bucket(f"lim-ten-{unique}", versioned=True))
    kms = make_kms_key()
    keys = [k for j in range(10) for k in seed_copy_bucket(direct, bucket, 18, kms, prefix=f"p{j}/")]
    manifest = inventory_for(direct, bucket, keys)
    before = states(direct, bucket, keys)

    with limited(proxy, LimitPlan(scale=0.001)):  # 3.5 writes/s, 5.5 reads/s per prefix: 2.75 copies/s each
        code = cip_job.main(["--inventory-manifest", manifest, "--results", str(tmp_path / "r"),
                             "--run-id", "ten", "--progress-interval", "0"])
        by_prefix = {name for _, name, _, throttled in proxy.prefix_seconds() if throttled}

    out = capsys.readouterr().out
    assert code == 0, out
    every_candidate_copied_once(spark, direct, bucket, keys, before, tmp_path / "r", "ten")
    assert by_prefix, "the run never reached a prefix's limit"
    assert f"throttled most: {bucket}/p" in out, out  # the summary names the prefixes throttled most


def test_one_hot_prefix_does_not_slow_the_free_ones(spark, proxy, direct, unique, tmp_path, capsys):
    bucket = replicate_everything(make_bucket(f"lim-hot-{unique}", versioned=True))
    kms = make_kms_key()
    hot = seed_copy_bucket(direct, bucket, 8, kms, prefix="hot/")
    free = [k for j in range(9) for k in seed_copy_bucket(direct, bucket, 8, kms, prefix=f"free{j}/")]
    manifest = inventory_for(direct, bucket, hot + free)  # the inventory lists hot/ first

    with limited(proxy, hot_plan(bucket)):
        code = cip_job.main(["--inventory-manifest", manifest, "--results", str(tmp_path / "r"),
                             "--run-id", "hot", "--progress-interval", "0"])
        seconds = proxy.prefix_seconds()

    out = capsys.readouterr().out
    assert code == 0, out
    got = results_by_key(spark, tmp_path / "r", "hot")
    assert {r.status for r in got.values()} == {cip.COPIED} and len(got) == len(hot) + len(free)
    hot_done, free_done = finish_order(got, "hot/"), finish_order(got, "free")
    # the free prefixes' objects are all done before half of the hot prefix's are: its 503s never cut them
    assert free_done[-1] < hot_done[len(hot_done) // 2], (free_done[-1], hot_done)
    free_seconds = [t for t, name, n, _ in seconds if "/free" in name and n]
    hot_seconds = [t for t, name, n, _ in seconds if name.endswith("/hot/") and n]
    assert max(free_seconds) < max(hot_seconds) - 2, seconds
    assert sum(thr for _, name, _, thr in seconds if "/free" in name) == 0
    assert f"throttled most: {bucket}/hot/ " in out, out  # the summary names the hot prefix


def test_anonymize_one_hot_prefix_does_not_slow_the_free_ones(spark, proxy, direct, unique, tmp_path, capsys):
    bucket = make_bucket(f"lim-ahot-{unique}", versioned=True)
    kms = make_kms_key()
    objs = anon_objects(8, kms, prefix="hot/")
    for j in range(6):
        objs.update(anon_objects(10, kms, prefix=f"free{j}/"))
    pmap(lambda o: direct.put_object(Bucket=bucket, **o["params"]), objs.values())

    with limited(proxy, hot_plan(bucket)):
        code = anon_job.main(["--source", f"s3://{bucket}/", "--rules", str(BLANK_RULES), "--min-age", "0s",
                              "--results", str(tmp_path / "r"), "--run-id", "hot", "--progress-interval", "0"])

    assert code == 0, capsys.readouterr()
    got = results_by_key(spark, tmp_path / "r", "hot")
    assert {k: r.status for k, r in got.items()} == {
        k: anon.ANONYMIZED if o["changes"] else anon.TAGGED for k, o in objs.items()}
    for key, obj in objs.items():
        assert read_plain(direct, bucket, key) == obj["expected"], key
    hot_done, free_done = finish_order(got, "hot/"), finish_order(got, "free")
    assert free_done[-1] < hot_done[len(hot_done) // 2], (free_done[-1], hot_done)


def test_the_per_prefix_cap_holds_at_the_proxy_for_each_prefix(spark, proxy, direct, unique, tmp_path):
    bucket = replicate_everything(make_bucket(f"lim-ppc-{unique}", versioned=True))
    kms = make_kms_key()
    keys = [k for j in range(3) for k in seed_copy_bucket(direct, bucket, 24, kms, prefix=f"t{j}/")]
    manifest = inventory_for(direct, bucket, keys)
    cap = 12

    with limited(proxy, LimitPlan(scale=1000.0)):  # counted per prefix, nothing throttled
        code = cip_job.main(["--inventory-manifest", manifest, "--results", str(tmp_path / "r"), "--run-id", "ppc",
                             "--max-requests-per-second-per-prefix", str(cap), "--progress-interval", "0"])
        seconds = proxy.prefix_seconds()

    assert code == 0
    per_prefix: dict = {}
    for t, name, n, _ in seconds:
        if name.startswith(f"{bucket}/t"):
            per_prefix.setdefault(name, []).append((t, n))
    assert sorted(per_prefix) == [f"{bucket}/t{j}/" for j in range(3)]
    for name, rows in per_prefix.items():
        whole = [n for _, n in rows[1:-1]]  # whole seconds only
        assert whole and max(whole) <= cap * 1.1 + 2, (name, rows)
    busiest = max(n for rows in per_prefix.values() for _, n in rows)
    total_per_second: dict = {}
    for rows in per_prefix.values():
        for t, n in rows:
            total_per_second[t] = total_per_second.get(t, 0) + n
    assert max(total_per_second.values()) > busiest  # the prefixes ran at once, each under its own cap
    assert {r.status for r in results_by_key(spark, tmp_path / "r", "ppc").values()} == {cip.COPIED}
