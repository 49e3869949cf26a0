"""Timing (median of repeats) and peak tensor memory of a callable.

Peak memory is the highest total of live tensor bytes allocated during one call (after a warm-up
call), from the allocation and free events that ``torch.profiler`` records with
``profile_memory=True``: tensors that existed before the call (model, data) do not count, and the
result is deterministic, unlike sampling the resident set of a process. Time is measured apart,
without the profiler.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_tensor_bytes(fn: Callable[[], object]) -> int:
    """Peak of live tensor bytes allocated during one call of ``fn`` (CPU or the current GPU)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities, profile_memory=True) as profiler:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in profiler.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak
