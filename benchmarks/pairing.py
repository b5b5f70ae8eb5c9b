"""Shared by the benchmarks: paired interleaved timing, ratios with their spread, peak memory, the environment.

A speed claim here is a paired ratio: every configuration is warmed up once, then each round runs every
configuration back to back, and a ratio is the median of the per-round ratios (with their min and max).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def interleaved(configs: dict[str, Callable[[], Any]], rounds: int, warm_up: bool = True) -> dict[str, list[float]]:
    """Seconds of each configuration per round (after one warm-up call of each, unless the caller warmed them up),
    configurations interleaved, every other round in reverse order (so no configuration always follows the same
    one, and a drift within a round hits both sides of a pair)."""
    for fn in configs.values() if warm_up else ():
        fn()
    times: dict[str, list[float]] = {name: [] for name in configs}
    order = list(configs.items())
    for i in range(rounds):
        for name, fn in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """Median and spread of the per-round ratios a/b (a and b measured in the same rounds)."""
    ratios = [x / y for x, y in zip(a, b)]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "rounds": ratios}


def fmt(ratio: dict[str, Any]) -> str:
    return f"{ratio['median']:.3f} [{ratio['min']:.2f}-{ratio['max']:.2f}]"


class PeakMemory:
    """Peak memory of a block: CUDA's allocator high-water mark, else the process RSS sampled every 5 ms."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = _rss()
        self._stop = threading.Event()
        self._high = self._base

        def sample() -> None:
            while not self._stop.is_set():
                self._high = max(self._high, _rss())
                time.sleep(0.005)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self._high, _rss()) - self._base


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def library_commit() -> str:
    """The git commit of the checkout that holds the imported library ('+dirty' if its src/ has local changes), so a
    run against another checkout (PYTHONPATH) records that checkout's commit."""
    import memory_inception

    root = Path(memory_inception.__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "src"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def environment(threads: int | None = None) -> dict[str, Any]:
    """What a result depends on: commit, versions, threads, machine, load."""
    commit = library_commit()
    return {
        "commit": commit,
        "torch": torch.__version__,
        "threads": threads if threads is not None else torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg": os.getloadavg(),
        "utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
