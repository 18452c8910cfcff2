"""Per-task memory diagnostics of the anonymizer (benchmarks): each task's peak RSS and the objects it
processed, written as JSON when ``S3LAKE_TASK_STATS_DIR`` is set."""

from __future__ import annotations

import json
import os
import uuid

from s3lake.objects import results


def memory_kb(field_name: str) -> int | None:
    """``VmRSS``/``VmHWM`` of this process from /proc/self/status (None where there is no /proc)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_memory() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so a task's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


class TaskStats:
    """Per-task memory diagnostics, written as JSON when ``S3LAKE_TASK_STATS_DIR`` is set (benchmarks)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        reset_peak_memory()
        self.rss_start_kb = memory_kb("VmRSS")
        self.objects = 0
        self.max_size = 0

    def saw(self, row: tuple) -> None:
        self.objects += 1
        self.max_size = max(self.max_size, int(row[results.FIELDS.index("size")] or 0))

    def write(self) -> None:
        doc = {"pid": os.getpid(), "rss_start_kb": self.rss_start_kb, "hwm_kb": memory_kb("VmHWM"),
               "objects": self.objects, "max_size": self.max_size}
        with open(os.path.join(self.directory, f"task-{uuid.uuid4().hex}.json"), "w") as fh:
            json.dump(doc, fh)
