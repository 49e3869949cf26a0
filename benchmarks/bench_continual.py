"""Cost of the continual-learning regularizers in a training step, and of consolidation.

Usage::

    python benchmarks/bench_continual.py [--repeats 9]

On the mlp workload (784→512→512→10, batch 256, Adam): one training step (forward, loss,
backward, optimizer step) with each regularizer's penalty — consolidated once beforehand on 512
samples — against the same step without one, timed in interleaved rounds in the same run (medians).
Then consolidation (``end_task`` on 2,048 samples) against the Fisher estimator it calls.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from measure import interleaved_median_seconds
from torch import nn
from workloads import make_workload

import fisherkit as fk
from fisherkit.regularizers import EWC, MAS, Regularizer, SynapticIntelligence

REGULARIZERS: dict[str, Callable[[nn.Module], Regularizer]] = {
    "EWC (diagonal)": lambda m: EWC(m, 100.0, seed=0),
    "online EWC (diagonal)": lambda m: EWC(m, 100.0, mode="online", seed=0),
    "KFAC-EWC": lambda m: EWC(m, 100.0, structure="kfac", seed=0),
    "SI": lambda m: SynapticIntelligence(m, 1.0),
    "MAS": lambda m: MAS(m, 1.0),
}


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch, regularizer: Regularizer | None):
    x, y = batch

    def step() -> None:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if regularizer is not None:
            loss = loss + regularizer.penalty()
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workload = make_workload("mlp")
    batch = (workload.inputs[:256], workload.targets[:256])
    consolidation_data = (workload.inputs[:512], workload.targets[:512])
    steps = {}
    plain_model = make_workload("mlp").model
    steps["plain step"] = training_step(plain_model, torch.optim.Adam(plain_model.parameters()), batch, None)
    for name, make in REGULARIZERS.items():
        model = make_workload("mlp").model
        optimizer = torch.optim.Adam(model.parameters())
        regularizer = make(model)
        regularizer.begin_task(optimizer)
        training_step(model, optimizer, batch, regularizer)()
        regularizer.end_task(consolidation_data)
        regularizer.begin_task(optimizer)
        steps[name] = training_step(model, optimizer, batch, regularizer)
    seconds = interleaved_median_seconds(steps, args.repeats)
    print(f"torch {torch.__version__}, {args.threads} threads\n")
    print("| training step | ms | × plain step |\n|---|---:|---:|")
    for name, value in seconds.items():
        print(f"| {name} | {1000 * value:.2f} | {value / seconds['plain step']:.3f} |")
    data = (workload.inputs[:2048], workload.targets[:2048])
    model = make_workload("mlp").model
    runs = {
        "diagonal_fisher (mc)": lambda: fk.diagonal_fisher(model, data, seed=0, progress=False),
        "EWC.end_task (diagonal)": lambda: EWC(model, 1.0, seed=0).end_task(data),
        "kfac_fisher (mc)": lambda: fk.kfac_fisher(model, data, seed=0, progress=False),
        "EWC.end_task (KFAC)": lambda: EWC(model, 1.0, structure="kfac", seed=0).end_task(data),
    }
    seconds = interleaved_median_seconds(runs, args.repeats)
    print("\n| consolidation on 2,048 samples | ms |\n|---|---:|")
    for name, value in seconds.items():
        print(f"| {name} | {1000 * value:.1f} |")


if __name__ == "__main__":
    main()
