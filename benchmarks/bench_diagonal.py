"""Diagonal Fisher speed and memory on the mlp, cnn and seq workloads, against fwd+bwd.

Usage::

    python benchmarks/bench_diagonal.py [--workloads mlp cnn seq] [--repeats 5] [--slow-samples 256]

Reports seconds per 1,000 samples, the ratio to one forward+backward of the same model on the
same batches measured in the same run, and peak tensor memory allocated during the call
(absolute, and as a ratio to fwd+bwd on the same samples; see ``measure.py``). The
batch-of-one loop and the torch.func/vmap methods run on the first ``--slow-samples`` samples
and are scaled per 1,000 samples like the rest. Peer libraries are measured when installed.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
from collections.abc import Callable

import torch
from measure import interleaved_median_seconds, peak_tensor_bytes
from torch import nn
from torch.func import functional_call, grad, vmap
from workloads import WORKLOADS, Workload, make_workload

import fisherkit as fk

Method = Callable[[Workload, list], Callable[[], None] | None]  # None: the workload is unsupported


def forward_backward(workload: Workload, batches: list) -> Callable[[], None]:
    """The floor: one forward and backward of the cross-entropy loss per batch, into gradients
    allocated during the call (as the Fisher is) and released at its end."""

    def run() -> None:
        for x, y in batches:
            nn.functional.cross_entropy(workload.model(x), y).backward()
        workload.model.zero_grad(set_to_none=True)

    return run


def fisherkit_diagonal(fisher_type: str, engine: str) -> Method:
    def method(workload: Workload, batches: list) -> Callable[[], None]:
        def run() -> None:
            fk.diagonal_fisher(workload.model, batches, fisher_type=fisher_type, engine=engine, seed=0, progress=False)

        return run

    return method


def batch_of_one_loop(workload: Workload, batches: list) -> Callable[[], None]:
    """The textbook MC diagonal Fisher: one sample at a time, sampled label, squared gradient."""
    params = list(workload.model.parameters())

    def run() -> None:
        totals = [torch.zeros_like(p) for p in params]
        for x, _ in batches:
            for n in range(len(x)):
                output = workload.model(x[n : n + 1])
                label = torch.multinomial(output.detach().softmax(-1), 1)[:, 0]
                grads = torch.autograd.grad(nn.functional.cross_entropy(output, label), params)
                for t, g in zip(totals, grads):
                    t += g * g

    return run


def plain_vmap(workload: Workload, batches: list) -> Callable[[], None]:
    """Plain torch.func: vmap(grad) per-sample gradients of the sampled-label loss, squared and summed."""
    model = workload.model
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p, x, y):
        return nn.functional.cross_entropy(functional_call(model, p, (x.unsqueeze(0),)), y.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))

    def run() -> None:
        totals = {n: torch.zeros_like(p) for n, p in params.items()}
        for x, _ in batches:
            with torch.no_grad():
                labels = torch.multinomial(model(x).softmax(-1), 1)[:, 0]
            for n, g in per_sample(params, x, labels).items():
                totals[n] += (g * g).sum(0)

    return run


def backpack_diagonal(extension_name: str) -> Method:
    """BackPACK's diagonal GGN (``DiagGGNMC``: MC; ``DiagGGNExact``: exact), on a private copy of
    the model, since BackPACK's ``extend`` leaves hooks on the modules it extends."""

    def method(workload: Workload, batches: list) -> Callable[[], None] | None:
        from backpack import backpack, extend, extensions

        extended = extend(copy.deepcopy(workload.model))
        loss_fn = extend(nn.CrossEntropyLoss())
        extension = getattr(extensions, extension_name)
        x, y = batches[0]
        try:
            with backpack(extension()):
                loss_fn(extended(x), y).backward()
        except NotImplementedError:  # a layer BackPACK has no extension for
            return None

        def run() -> None:
            for x, y in batches:
                with backpack(extension()):
                    loss_fn(extended(x), y).backward()
            extended.zero_grad(set_to_none=True)

        return run

    return method


FAST: dict[str, Method] = {
    "fwd+bwd": forward_backward,
    **{f"fisherkit {t} layerwise": fisherkit_diagonal(t, "layerwise") for t in fk.FISHER_TYPES},
}
if importlib.util.find_spec("backpack") is not None:
    FAST["BackPACK DiagGGNMC (mc)"] = backpack_diagonal("DiagGGNMC")
    FAST["BackPACK DiagGGNExact (exact)"] = backpack_diagonal("DiagGGNExact")
SLOW: dict[str, Method] = {
    **{f"fisherkit {t} vmap": fisherkit_diagonal(t, "vmap") for t in fk.FISHER_TYPES},
    "batch-of-one loop (mc)": batch_of_one_loop,
    "torch.func vmap (mc)": plain_vmap,
}
METHODS = {**FAST, **SLOW}


def bench(workload_name: str, repeats: int, slow_samples: int) -> list[tuple[str, float, float, int, float]]:
    """Rows of (method, seconds per 1k, × fwd+bwd time, peak bytes, × fwd+bwd memory on the same samples).

    Fast methods are timed in interleaved rounds (one call of each per round) so that load on a
    shared machine hits them alike; slow ones are timed once each on ``slow_samples`` samples,
    against a fwd+bwd floor on those same samples.
    """
    workload = make_workload(workload_name)
    groups = {None: FAST, slow_samples: {"fwd+bwd": forward_backward, **SLOW}}
    rows = []
    for limit, methods in groups.items():
        batches = workload.batches(limit)
        count = sum(len(x) for x, _ in batches)
        runs = {name: method(workload, batches) for name, method in methods.items()}
        unsupported = [name for name, run in runs.items() if run is None]
        runs = {name: run for name, run in runs.items() if run is not None}
        seconds = interleaved_median_seconds(runs, repeats if limit is None else 1)
        memory = {name: peak_tensor_bytes(run) for name, run in runs.items()}
        rows += [(f"{name}: unsupported layer", float("nan"), float("nan"), 0, float("nan")) for name in unsupported]
        for name in runs:
            if limit is not None and name == "fwd+bwd":
                continue
            per_k = seconds[name] / count * 1000
            ratio = seconds[name] / seconds["fwd+bwd"]
            rows.append((name, per_k, ratio, memory[name], memory[name] / memory["fwd+bwd"]))
    return rows


def format_table(workload_name: str, rows: list[tuple[str, float, float, int, float]]) -> str:
    lines = [
        f"### {workload_name}",
        "",
        "| method | s / 1k samples | × fwd+bwd | peak MB | × fwd+bwd memory |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, per_k, ratio, memory, memory_ratio in rows:
        lines.append(f"| {name} | {per_k:.4f} | {ratio:.2f} | {memory / 2**20:.1f} | {memory_ratio:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slow-samples", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, fisherkit._C: {fk.ops.extension_status().reason}")
    for name in args.workloads:
        print()
        print(format_table(name, bench(name, args.repeats, args.slow_samples)), flush=True)


if __name__ == "__main__":
    main()
