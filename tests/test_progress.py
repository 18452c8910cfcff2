"""Progress lines: pure formatting, task tallies over UDP to the driver's monitor."""

from __future__ import annotations

import json
import time

from s3lake.objects import progress


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
