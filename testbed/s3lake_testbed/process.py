"""A server subprocess on a loopback port: started, waited for, stopped (moto, the proxy); and a process's
tree (Linux /proc), to kill a run like a lost node or to measure it."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any, Callable


class LoopbackProcess:
    """``start()`` runs ``command`` and waits until ``ready()`` stops raising OSError; ``with`` works too."""

    name = "server"

    def __init__(self, url: str, log_path: str | None = None) -> None:
        self.url = url
        self.log_path = log_path
        self._proc: subprocess.Popen | None = None
        self._log: Any = None

    def _launch(self, command: list, env: dict, ready: Callable[[], object], timeout: float) -> str:
        self._log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(command, stdout=self._log, stderr=self._log, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._proc.returncode}")
            try:
                ready()
                return self.url
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer on {self.url}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        self._log = None
        self._proc = None

    def start(self) -> str:  # pragma: no cover - subclasses
        raise NotImplementedError

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out
