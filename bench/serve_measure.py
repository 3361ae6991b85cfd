"""What the serve benchmarks measure of a server process and report of the machine (Linux /proc).

Shared by `serve_load.py` (steady load) and `serve_hostile.py` (hostile mixes).
"""

from __future__ import annotations

import platform
import threading
from pathlib import Path

import numpy as np


def rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """A process's resident memory from /proc (Linux), MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def percentiles(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {k: None for k in ("p50", "p95", "p99", "max")}
    values = np.asarray(seconds) * 1000  # ms
    return {
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "p99": float(np.percentile(values, 99)),
        "max": float(values.max()),
    }


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak = pid, every, 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            value = rss_mb(self.pid)
            if value is not None:
                self.peak = max(self.peak, value)
            self.stop.wait(self.every)
