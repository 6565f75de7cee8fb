"""Helpers the benchmark scripts share: timing, CPU contention, machine description."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work on ``device`` (a no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, device: torch.device = torch.device("cpu"), *, single_above: float = 5.0) -> float:
    """Median wall time of fn() in milliseconds, after one warm-up call.

    Calls slower than 1 s are repeated 3 times instead of `repeats`; beyond `single_above`
    seconds the warm-up call itself is the single measurement (a 10 s call costs 10 s, not 60 s).
    """
    start = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - start
    if first > single_above:
        return 1e3 * first
    samples = []
    for _ in range(3 if first > 1.0 else repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        samples.append(time.perf_counter() - start)
    return 1e3 * statistics.median(samples)


def cpu_ticks() -> tuple[int, int, int] | None:
    """(ticks of all CPUs, busy ticks of all CPUs, ticks of this process) from /proc, or None."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    total = sum(values)  # user nice system idle iowait irq softirq steal
    return total, total - values[3] - values[4], int(own[11]) + int(own[12])  # utime + stime


def others_share(before, after) -> float | None:
    """Share of all CPUs kept busy by other processes between two cpu_ticks() readings."""
    if before is None or after is None or after[0] <= before[0]:
        return None
    total, busy, own = (a - b for a, b in zip(after, before))
    return max(0.0, (busy - own) / total)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
