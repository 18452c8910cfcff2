"""Progress lines: pure formatting, task tallies over UDP to the driver's monitor."""

from __future__ import annotations

import json
import time

import pytest
from s3lake.objects import driver, progress, results
from s3lake.objects.shares import Shares


def test_a_progress_line_says_done_total_statuses_rate_throttled_share_and_eta():
    line = progress.format_line(1000, {"COPIED": 240, "FAILED": 2, "MISSING": 8}, 10.0, requests=800,
                                throttled=40, waited=12.4)
    assert line == ("progress: 250/1,000 objects (25.0%) [COPIED 240, FAILED 2, MISSING 8] | 25.0 objects/s | "
                    "800 requests, 5.0% throttled | waited 12 s | ETA 30s")


def test_eta_and_durations():
    assert progress.eta(0, 10, 5.0) is None
    assert progress.eta(5, 10, 5.0) == 5.0
    assert [progress.format_duration(s) for s in (None, 59, 61, 3 * 3600 + 120)] == ["?", "59s", "1m01s", "3h02m"]


def test_the_monitor_keeps_the_latest_attempt_per_task_and_sums_them():
    monitor = progress.Monitor(total=10, interval=0)

    def tally(partition, attempt, done):
        return json.dumps({"task": [1, partition, attempt], "statuses": {"COPIED": done}, "requests": done * 3,
                           "throttled": 1, "transient": 0, "waited": 0.5}).encode()

    monitor.receive(tally(0, 0, 2))
    monitor.receive(tally(0, 0, 4))
    monitor.receive(tally(1, 0, 3))
    monitor.receive(tally(1, 1, 1))  # a retried task attempt starts again
    monitor.receive(tally(1, 0, 5))  # a late datagram from the failed attempt is ignored
    monitor.receive(b"not json")
    merged = monitor.merged()
    assert merged["statuses"] == {"COPIED": 5} and merged["requests"] == 15 and merged["throttled"] == 2


def test_task_reporters_reach_the_monitor_which_prints_lines_while_they_run():
    lines: list = []
    with progress.Monitor(total=6, interval=0.2, out=lines.append) as monitor:
        with progress.Reporter(monitor.address, (0, 0, 0), lambda: {"requests": 9, "throttled": 3},
                               every=0.05) as reporter:
            for _ in range(6):
                reporter.done("COPIED")
                time.sleep(0.05)
            time.sleep(0.3)
        time.sleep(0.3)
    assert lines, "no progress line"
    assert lines[-1].startswith("progress: 6/6 objects (100.0%) [COPIED 6]")
    assert "33.3% throttled" in lines[-1]


def test_a_reporter_without_a_monitor_is_silent_and_harmless():
    with progress.Reporter(None, (0, 0, 0), dict) as reporter:
        reporter.done("COPIED")
    assert reporter.tally()["statuses"] == {"COPIED": 1}


def test_a_line_and_the_summary_name_the_prefixes_throttled_most():
    merged = progress.merge(iter([
        {"statuses": {"COPIED": 3}, "requests": 90, "throttled": 30,
         "prefixes": [["b/hot/", 60, 28], ["b/warm/", 20, 2]]},
        {"statuses": {"COPIED": 2}, "requests": 50, "throttled": 10, "prefixes": [["b/hot/", 40, 10]]},
    ]))
    assert merged["prefixes"] == {"b/hot/": [100, 38], "b/warm/": [20, 2]}
    line = progress.format_line(10, merged["statuses"], 1.0, merged["requests"], merged["throttled"],
                                prefixes=merged["prefixes"])
    assert line.endswith("| most throttled: b/hot/ 38 of 100 (38.0%), b/warm/ 2 of 20 (10.0%)")
    summary = driver.pacing_summary({"requests": 140, "throttled": 40, "waited": 1.0,
                                     "prefixes": merged["prefixes"]})
    assert summary["throttled_prefixes"] == [{"prefix": "b/hot/", "requests": 100, "throttled": 38},
                                             {"prefix": "b/warm/", "requests": 20, "throttled": 2}]
    text = results.format_summary("copy in place", {"objects": 5, "seconds": 1, "objects_per_second": 5,
                                                    "requests_per_object": 28, "statuses": {"COPIED": 5},
                                                    "attempts": 140, **summary})
    assert text.splitlines()[-1] == "  throttled most: b/hot/ 38 of 100 (38.0%), b/warm/ 2 of 20 (10.0%)"


# ------------------------------------------------------------------------ the caps' shares


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_grants_never_sum_above_the_cap_while_tasks_join_leave_and_vanish():
    clock = Clock()
    shares = Shares(lease=6.0, clock=clock)
    held: dict = {}  # what each task uses: its latest grant

    def report(task, final=False):
        held[task] = shares.report(task, final)
        assert sum(held.values()) <= 1.0 + 1e-9, held
        assert shares.outstanding() <= 1.0 + 1e-9

    report("a")
    assert held["a"] == 1.0
    report("b")  # joins: nothing is free yet
    assert held["b"] == 0.0
    clock.now += 1
    report("a")  # a's next report halves it ...
    report("b")  # ... and b gets the half
    assert held == {"a": 0.5, "b": 0.5}
    for task in "cde":  # executors added: each new task waits for the others to give way
        report(task)
    for _ in range(3):
        clock.now += 2
        for task in "abcde":
            report(task)
    assert held == pytest.approx({t: 0.2 for t in "abcde"})
    report("e", final=True)  # e ends: its share is free at once
    clock.now += 2
    for task in "abcd":
        report(task)
    assert held["a"] == pytest.approx(0.25) and held["e"] == 0.0
    for step in range(4):  # c and d vanish (lost executors): their grants lapse after the lease
        clock.now += 2
        if step == 2:  # 6 s on: they stopped using their grants after HOLD (< LEASE)
            del held["c"], held["d"]
        report("a")
        report("b")
    assert held["a"] == pytest.approx(0.5) and shares.running() == 2


def test_the_monitor_answers_each_report_with_the_tasks_share_and_a_reporter_applies_it():
    got: list = []
    with progress.Monitor(total=1, interval=0, shares=Shares()) as monitor:
        assert monitor.address is not None  # listening for shares although no progress line is printed
        with progress.Reporter(monitor.address, (0, 0, 0), dict, every=0.05, on_share=got.append,
                               fallback=0.125):
            assert got == [1.0]  # granted before the task's first request
            with progress.Reporter(monitor.address, (0, 1, 0), dict, every=0.05, on_share=got.append):
                time.sleep(0.5)
                assert monitor.shares.outstanding() == pytest.approx(1.0)
                assert got[-1] == pytest.approx(0.5)
        time.sleep(0.1)
        assert monitor.shares.running() == 0  # both ended: their shares are back


def test_a_task_the_driver_stops_answering_falls_back_to_its_safe_share(monkeypatch):
    monkeypatch.setattr(progress, "HOLD", 0.2)
    got: list = []
    monitor = progress.Monitor(total=1, interval=0, shares=Shares())
    with monitor:
        reporter = progress.Reporter(monitor.address, (0, 0, 0), dict, every=0.05, on_share=got.append,
                                     fallback=0.125)
        with reporter:
            assert got == [1.0]
            monitor.__exit__(None, None, None)  # the driver goes quiet
            time.sleep(0.6)
    assert got[-1] == 0.125
