"""The benchmark harness: the fwd+bwd floor, interleaved timing of methods, peak memory, tables."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from measure import interleaved_median_seconds, peak_tensor_bytes
from torch import nn
from workloads import WORKLOADS, Workload, make_workload

import fisherkit as fk

# A method prepares a run for a workload's batches, or says why it cannot (None: an unsupported layer)
Method = Callable[[Workload, list], Callable[[], None] | str | None]
Row = tuple[str, float, float, int, float]


def forward_backward(workload: Workload, batches: list) -> Callable[[], None]:
    """The floor: one forward and backward of the cross-entropy loss per batch, into gradients
    allocated during the call (as the Fisher is) and released at its end."""

    def run() -> None:
        for x, y in batches:
            nn.functional.cross_entropy(workload.model(x), y).backward()
        workload.model.zero_grad(set_to_none=True)

    return run


def bench(
    workload_name: str, repeats: int, slow_samples: int, fast: dict[str, Method], slow: dict[str, Method]
) -> list[Row]:
    """Rows of (method, seconds per 1k, × fwd+bwd time, peak bytes, × fwd+bwd memory on the same samples).

    Fast methods are timed in interleaved rounds (one call of each per round) so that load on a
    shared machine hits them alike; slow ones are timed once each on ``slow_samples`` samples,
    against a fwd+bwd floor on those same samples.
    """
    workload = make_workload(workload_name)
    groups = {None: {"fwd+bwd": forward_backward, **fast}, slow_samples: {"fwd+bwd": forward_backward, **slow}}
    rows = []
    for limit, methods in groups.items():
        batches = workload.batches(limit)
        count = sum(len(x) for x, _ in batches)
        runs = {name: method(workload, batches) for name, method in methods.items()}
        unsupported = {name: run or "unsupported layer" for name, run in runs.items() if not callable(run)}
        runs = {name: run for name, run in runs.items() if callable(run)}
        seconds = interleaved_median_seconds(runs, repeats if limit is None else 1)
        memory = {name: peak_tensor_bytes(run) for name, run in runs.items()}
        rows += [(f"{name}: {why}", float("nan"), float("nan"), 0, float("nan")) for name, why in unsupported.items()]
        for name in runs:
            if limit is not None and name == "fwd+bwd":
                continue
            per_k = seconds[name] / count * 1000
            ratio = seconds[name] / seconds["fwd+bwd"]
            rows.append((name, per_k, ratio, memory[name], memory[name] / memory["fwd+bwd"]))
    return rows


def format_table(workload_name: str, rows: list[Row]) -> str:
    lines = [
        f"### {workload_name}",
        "",
        "| method | s / 1k samples | × fwd+bwd | peak MB | × fwd+bwd memory |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, per_k, ratio, memory, memory_ratio in rows:
        lines.append(f"| {name} | {per_k:.4f} | {ratio:.2f} | {memory / 2**20:.1f} | {memory_ratio:.2f} |")
    return "\n".join(lines)


def run_benchmarks(description: str, fast: dict[str, Method], slow: dict[str, Method]) -> None:
    """The command line of a benchmark script: prints one table per workload."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slow-samples", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, fisherkit._C: {fk.ops.extension_status().reason}")
    for name in args.workloads:
        print()
        print(format_table(name, bench(name, args.repeats, args.slow_samples, fast, slow)), flush=True)
