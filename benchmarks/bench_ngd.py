"""Natural gradient descent against SGD and Adam on real data, and the cost of an NGD step.

Usage::

    python benchmarks/bench_ngd.py [--tasks digits-mlp fashion-mlp fashion-cnn] [--seeds 3] [--plot ngd.png]
    python benchmarks/bench_ngd.py --step-cost

Training: each optimizer's learning rate is chosen from a small grid by the final training loss of
seed 0 (that run is reused as seed 0; both NGDs with damping 1e-2 and KL clipping 1e-2, statistics
every 10 steps), then every optimizer runs ``--seeds`` seeds with it. Reported: final training loss
and accuracy, test accuracy (mean ± std), wall-clock seconds of the steps, and in how many runs, and
at which iteration on average, the training loss (on a fixed 2,000-sample subset, every
``eval_every`` steps) falls to Adam's mean final one. Step cost: one NGD step (statistics and
inverses every 10 steps, averaged over 40 steps) against one SGD step on the mlp workload at batch
256 and 1024, in interleaved rounds.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from measure import interleaved_median_seconds
from torch import nn
from workloads import make_workload

import fisherkit as fk
from fisherkit.apps.continual.datasets import Dataset, load_digits, load_fashion_mnist

OptimizerFactory = Callable[[nn.Module, float], torch.optim.Optimizer]
OPTIMIZERS: dict[str, tuple[OptimizerFactory, tuple[float, ...]]] = {
    "SGD": (lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9), (0.03, 0.1, 0.3)),
    "Adam": (lambda m, lr: torch.optim.Adam(m.parameters(), lr=lr), (1e-3, 3e-3, 1e-2)),
    "diagonal NGD": (
        lambda m, lr: fk.NGD(m, lr=lr, structure="diagonal", damping=1e-2, kl_clip=1e-2, stats_every=10, seed=0),
        (0.003, 0.01, 0.03, 0.1),
    ),
    "KFAC NGD": (
        lambda m, lr: fk.NGD(m, lr=lr, structure="kfac", damping=1e-2, kl_clip=1e-2, stats_every=10, seed=0),
        (0.01, 0.03, 0.1, 0.3),
    ),
}


@dataclass
class Task:
    name: str
    data: Dataset
    build: Callable[[], nn.Module]
    steps: int
    batch_size: int = 128
    eval_every: int = 10


def _tasks() -> dict[str, Callable[[], Task]]:
    def mlp(features: int) -> Callable[[], nn.Module]:
        return lambda: nn.Sequential(
            nn.Linear(features, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
        )

    def cnn() -> nn.Module:
        model = make_workload("cnn").model
        return nn.Sequential(nn.Unflatten(1, (1, 28, 28)), *model)

    return {
        "digits-mlp": lambda: Task("digits-mlp", load_digits(), mlp(64), 300),
        "fashion-mlp": lambda: Task("fashion-mlp", load_fashion_mnist(), mlp(784), 500),
        "fashion-cnn": lambda: Task("fashion-cnn", load_fashion_mnist(), cnn, 150, eval_every=15),
    }


@dataclass
class Run:
    curve: list[tuple[int, float, float]]  # (iteration, seconds, training loss)
    train_loss: float
    train_accuracy: float
    test_accuracy: float
    seconds: float


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    model.train()
    return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def train(task: Task, factory: OptimizerFactory, lr: float, seed: int) -> Run:
    torch.manual_seed(seed)
    model = task.build()
    optimizer = factory(model, lr)
    generator = torch.Generator().manual_seed(seed)
    x, y = task.data.train_x, task.data.train_y
    probe = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:2000]
    curve, elapsed, step = [], 0.0, 0
    while step < task.steps:
        for batch in torch.randperm(len(x), generator=generator).split(task.batch_size):
            if step % task.eval_every == 0:
                curve.append((step, elapsed, _evaluate(model, x[probe], y[probe])[0]))
            start = time.perf_counter()
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
            elapsed += time.perf_counter() - start
            step += 1
            if step == task.steps:
                break
    loss, accuracy = _evaluate(model, x[probe], y[probe])
    curve.append((step, elapsed, loss))
    _, test_accuracy = _evaluate(model, task.data.test_x, task.data.test_y)
    return Run(curve, loss if math.isfinite(loss) else float("inf"), accuracy, test_accuracy, elapsed)


def _reach(run: Run, target: float) -> int | None:
    return next((it for it, _, loss in run.curve if loss <= target), None)


def compare(task: Task, seeds: int) -> tuple[str, dict[str, list[Run]]]:
    lines = [f"### {task.name} ({task.steps} steps of batch {task.batch_size})", ""]
    chosen, runs = {}, {}
    for name, (factory, grid) in OPTIMIZERS.items():
        tried = {lr: train(task, factory, lr, 0) for lr in grid}
        chosen[name] = min(tried, key=lambda lr: tried[lr].train_loss)
        runs[name] = [tried[chosen[name]]] + [train(task, factory, chosen[name], s) for s in range(1, seeds)]
        losses = ", ".join(f"{lr:g}: {run.train_loss:.3f}" for lr, run in tried.items())
        lines.append(f"{name}: final training loss by lr {{{losses}}}")
    adam_final = sum(r.train_loss for r in runs["Adam"]) / seeds
    lines += [
        "",
        "| optimizer (lr) | training loss | training accuracy | test accuracy | seconds | "
        f"iterations to Adam's final loss ({adam_final:.3f}) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, results in runs.items():

        def stat(values: list[float], scale: float = 1.0) -> str:
            tensor = torch.tensor(values) * scale
            return f"{float(tensor.mean()):.3f} ± {float(tensor.std()) if len(values) > 1 else 0.0:.3f}"

        reached = [it for it in (_reach(r, adam_final) for r in results) if it is not None]
        reach = f"{len(reached)}/{seeds} runs" + (f", mean {sum(reached) / len(reached):.0f}" if reached else "")
        lines.append(
            f"| {name} ({chosen[name]:g}) | {stat([r.train_loss for r in results])} | "
            f"{stat([r.train_accuracy for r in results])} | {stat([r.test_accuracy for r in results])} | "
            f"{stat([r.seconds for r in results])} | {reach} |"
        )
    return "\n".join(lines), runs


def plot(all_runs: dict[str, dict[str, list[Run]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(all_runs), 2, figsize=(9, 3 * len(all_runs)), squeeze=False)
    for row, (task, runs) in enumerate(all_runs.items()):
        for name, results in runs.items():
            curve = torch.tensor([[it, sec, loss] for it, sec, loss in results[0].curve])
            axes[row, 0].plot(curve[:, 0], curve[:, 2], label=name)
            axes[row, 1].plot(curve[:, 1], curve[:, 2], label=name)
        for column, label in enumerate(("iterations", "seconds")):
            axes[row, column].set_yscale("log")
            axes[row, column].set_xlabel(label)
            axes[row, column].set_title(f"{task}: training loss (seed 0)", fontsize=9)
        axes[row, 0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def step_cost(repeats: int, batch_sizes: tuple[int, ...] = (256, 1024)) -> str:
    """One NGD step (statistics and inverses every 10 steps, the defaults) against one SGD step on
    the mlp workload, averaged over 40 steps, at the workload's batch size and a larger one."""
    optimizers: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
        "SGD": lambda m: torch.optim.SGD(m.parameters(), lr=1e-3),
        "Adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-4),
        "diagonal NGD": lambda m: fk.NGD(m, lr=1e-4, structure="diagonal", damping=1e-1, kl_clip=None, seed=0),
        "KFAC NGD (π-damped inverse)": lambda m: fk.NGD(m, lr=1e-4, damping=1e-1, kl_clip=None, seed=0),
        "KFAC NGD (Tikhonov, eigenbasis)": lambda m: fk.NGD(
            m, lr=1e-4, damping=1e-1, pi_damping=False, kl_clip=None, seed=0
        ),
        "EKFAC NGD": lambda m: fk.NGD(m, lr=1e-4, structure="ekfac", damping=1e-1, kl_clip=None, seed=0),
    }
    header = "| optimizer | " + " | ".join(f"ms per step (batch {b}) | × SGD step" for b in batch_sizes) + " |"
    rows = {name: [] for name in optimizers}
    for batch_size in batch_sizes:
        workload = make_workload("mlp")
        x, y = workload.inputs[:batch_size], workload.targets[:batch_size]
        runs = {}
        for name, make in optimizers.items():
            model = make_workload("mlp").model
            runs[name] = _forty_steps(make(model), model, x, y)
        seconds = interleaved_median_seconds(runs, repeats)
        for name, value in seconds.items():
            rows[name] += [f"{1000 * value / 40:.2f}", f"{value / seconds['SGD']:.2f}"]
    lines = [header, "|---|" + "---:|" * (2 * len(batch_sizes))]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows.items()]
    return "\n".join(lines)


def _forty_steps(
    optimizer: torch.optim.Optimizer, model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> Callable[[], None]:
    def run() -> None:
        for _ in range(40):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(_tasks()), choices=list(_tasks()))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--plot", help="PNG path for the training curves")
    parser.add_argument("--step-cost", action="store_true", help="only measure the cost of a step")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads\n")
    if args.step_cost:
        print(step_cost(args.repeats))
        return
    all_runs = {}
    for name in args.tasks:
        table, runs = compare(_tasks()[name](), args.seeds)
        all_runs[name] = runs
        print(table + "\n", flush=True)
    if args.plot:
        plot(all_runs, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
