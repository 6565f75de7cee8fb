"""Wall-clock timing for chapters and benchmarks (never for tests)."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

from stabilitylab._checks import check_int
from stabilitylab._devices import resolve_device

__all__ = ["median_time", "peak_memory"]


def _synchronize() -> None:
    # only a CUDA context that exists can have queued work (and asking for one would create it)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _check_fn(fn) -> None:
    if not callable(fn):
        raise TypeError(f"fn must be a callable taking no arguments, got {type(fn).__name__}")


def median_time(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls,
    waiting for queued CUDA work before reading the clock.

    Raises:
        TypeError: ``fn`` not callable, ``repeats`` or ``warmup`` not an int.
        ValueError: ``repeats`` < 1 or ``warmup`` < 0.
    """
    _check_fn(fn)
    repeats = check_int(repeats, "repeats", 1)
    warmup = check_int(warmup, "warmup", 0)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _synchronize()
        start = time.perf_counter()
        fn()
        _synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory(fn: Callable[[], object], *, device: str | torch.device = "cpu") -> int:
    """Bytes allocated by torch at the peak of ``fn()``, above what was allocated before.

    On CUDA, from the allocator's peak counter (exact). On the CPU, from ``torch.profiler``'s
    memory events: the running sum of every operator's own allocations and frees in start
    order, an estimate that sees torch's tensors only (not Python objects). The profiler's
    start/stop messages on the standard error are silenced.

    Raises:
        TypeError: ``fn`` not callable, ``device`` not a device name.
        ValueError: ``device`` names no torch device.
    """
    _check_fn(fn)
    device = resolve_device(device)
    if device is None:
        raise TypeError("device must be a str or a torch.device, got None")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    running, peak = 0, 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        running += event.self_cpu_memory_usage
        peak = max(peak, running)
    return peak
