"""Timing (median of repeats) and peak tensor memory of a callable.

Peak memory is the highest total of live tensor bytes allocated during one call (after a warm-up
call), from the allocation and free events that ``torch.profiler`` records with
``profile_memory=True``: tensors that existed before the call (model, data) do not count, and the
result is deterministic, unlike sampling the resident set of a process. Time is measured apart,
without the profiler, in interleaved rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def interleaved_median_seconds(runs: dict[str, Callable[[], object]], repeats: int = 5) -> dict[str, float]:
    """Median wall time of each callable over ``repeats`` rounds, one call of each per round, after
    one warm-up call of each."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


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
