"""``fisherkit cl``: run continual-learning methods through a scenario and print the table."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fisherkit.apps.continual.datasets import Dataset, load_digits, load_fashion_mnist, load_idx_directory
from fisherkit.apps.continual.experiment import (
    METHODS,
    Method,
    Summary,
    choose_strength,
    format_matrix,
    format_summaries,
    run_methods,
)
from fisherkit.apps.continual.scenarios import SETTINGS, Scenario, permuted_scenario, split_scenario
from fisherkit.apps.continual.training import TrainConfig
from fisherkit.apps.errors import UsageError
from fisherkit.estimators import FISHER_TYPES

SCENARIOS = ("split-digits", "permuted-digits", "split-fashion", "permuted-fashion", "split-idx", "permuted-idx")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``cl`` command's options to ``parser``."""
    parser.add_argument("--scenario", choices=SCENARIOS, default="split-digits")
    parser.add_argument("--data-dir", type=Path, help="directory of MNIST-format IDX files (for *-idx scenarios)")
    parser.add_argument("--setting", choices=SETTINGS, default="task", help="for split scenarios")
    parser.add_argument("--tasks", type=int, help="number of tasks (split: 5, permuted: 10)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--fisher", choices=FISHER_TYPES, default="mc", help="EWC's Fisher type")
    parser.add_argument("--strength", type=float, help="λ (EWC, MAS) or c (SI) for every regularized method")
    parser.add_argument("--search", action="store_true", help="choose each strength on validation data (seed 0)")
    parser.add_argument("--decay", type=float, default=1.0, help="online EWC's γ")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--train-per-task", type=int, help="training samples per permuted task (default: all)")
    parser.add_argument("--fisher-samples", type=int, default=1000, help="samples per task to consolidate on")
    parser.add_argument("--plot", type=Path, help="write the accuracy matrices and per-task curves to this PNG")


def load_dataset(scenario: str, data_dir: Path | None) -> Dataset:
    """The data of ``scenario``: bundled digits, Debian's Fashion-MNIST, or the IDX files in ``data_dir``."""
    if scenario.endswith("digits"):
        return load_digits()
    if scenario.endswith("fashion"):
        return load_fashion_mnist()
    if data_dir is None:
        raise UsageError(f"--scenario {scenario} needs --data-dir: a directory of MNIST-format IDX files.")
    return load_idx_directory(data_dir)


def build_scenario(args: argparse.Namespace) -> Scenario:
    """The Split or Permuted scenario the command's options describe."""
    dataset = load_dataset(args.scenario, args.data_dir)
    if args.scenario.startswith("split"):
        return split_scenario(dataset, args.setting, args.tasks or 5)
    return permuted_scenario(dataset, args.tasks or 10, train_per_task=args.train_per_task)


def run(args: argparse.Namespace) -> str:
    """Runs the command and returns its report."""
    scenario = build_scenario(args)
    config = TrainConfig(args.epochs, args.batch_size, args.lr, "adam", tuple(args.hidden), args.fisher_samples)
    methods = [Method(name, args.strength or 0.0, args.fisher, args.decay) for name in args.methods]
    lines = []
    if args.search or args.strength is None:
        chosen = []
        for method in methods:
            best, grid = choose_strength(scenario, method, config)
            chosen.append(best)
            if grid:
                described = ", ".join(f"{s:g}: {100 * a:.1f}" for s, a in grid)
                lines.append(f"{method.name}: validation average accuracy by strength {{{described}}}")
                lines.append(f"  → strength {best.strength:g}")
        methods = chosen
        lines.append("")
    seeds = list(range(args.seeds))
    summaries = run_methods(scenario, methods, config, seeds)
    lines.append(format_summaries(scenario, summaries, seeds))
    lines += ["", "accuracy matrices of seed 0 (rows: after training task j; columns: test accuracy on task i):"]
    for summary in summaries:
        lines += ["", format_matrix(summary.matrices[0], summary.method.label)]
    if args.plot:
        plot_summaries(scenario, summaries, args.plot)
        lines += ["", f"wrote {args.plot}"]
    return "\n".join(lines)


def plot_summaries(scenario: Scenario, summaries: list[Summary], path: Path) -> None:
    """Accuracy matrices (seed 0) and each task's accuracy as later tasks are trained (mean over seeds)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("--plot needs matplotlib: pip install 'fisherkit[plots]'") from error
    sequential = [s for s in summaries if s.matrices[0].shape[0] > 1]
    figure, axes = plt.subplots(2, max(1, len(sequential)), figsize=(3 * max(1, len(sequential)), 6), squeeze=False)
    for column, summary in enumerate(sequential):
        axes[0, column].imshow(summary.matrices[0].numpy(), vmin=0, vmax=1, cmap="viridis")
        axes[0, column].set_title(summary.method.label, fontsize=8)
        axes[0, column].set_xlabel("task evaluated")
        axes[0, column].set_ylabel("after training task")
        mean = torch.stack(summary.matrices).mean(0)
        for task in range(mean.shape[1]):
            curve = mean[task:, task].numpy()
            axes[1, column].plot(range(task, mean.shape[0]), curve, marker="o", label=f"task {task}")
        axes[1, column].set_ylim(0, 1)
        axes[1, column].set_xlabel("tasks trained")
    axes[1, 0].set_ylabel("test accuracy")
    axes[1, 0].legend(fontsize=6)
    figure.suptitle(f"{scenario.name} ({scenario.setting}-incremental)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
