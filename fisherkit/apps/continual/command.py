"""``fisherkit cl``: run continual-learning methods through a scenario and print the table."""

from __future__ import annotations

import argparse
import json
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
    run_method,
)
from fisherkit.apps.continual.parallel import SeedPool
from fisherkit.apps.continual.protocols import PROTOCOLS, Protocol
from fisherkit.apps.continual.scenarios import SETTINGS, Scenario, permuted_scenario, split_scenario
from fisherkit.apps.continual.training import TrainConfig
from fisherkit.apps.errors import UsageError
from fisherkit.apps.output import Lines
from fisherkit.estimators import FISHER_TYPES

SCENARIOS = ("split-digits", "permuted-digits", "split-fashion", "permuted-fashion", "split-idx", "permuted-idx")


DESCRIPTION = """Trains each method through the tasks of a scenario, for every seed, and prints a table of
average accuracy, backward transfer and forgetting, with the accuracy matrices. Without --strength,
each regularized method's strength is chosen on validation data (seed 0) from its grid; --strength
sets one value for every regularized method (λ for EWC and MAS, c for SI). --protocol NAME runs a
published experiment with every setting of the paper and its authors' code (on Fashion-MNIST, or
the MNIST-format files in --data-dir) and prints the published numbers beside ours. Progress goes
to stderr one line per trained task; each method's results are printed (and written to --out) as
soon as they exist."""

DEFAULTS = {  # options a --protocol sets; without one, these values
    "scenario": "split-digits",
    "setting": None,
    "tasks": None,
    "fisher": "mc",
    "strength": None,
    "search": False,
    "decay": 1.0,
    "epochs": 2,
    "iterations": None,
    "batch_size": 64,
    "lr": 1e-3,
    "hidden": [256, 256],
    "train_per_task": None,
    "fisher_samples": 1000,
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows argparse's defaults, except None and those of the options a --protocol sets (their help
    says theirs)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.dest in DEFAULTS or action.default is None:
            return action.help or ""
        return super()._get_help_string(action) or ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``cl`` command's options to ``parser`` (its help shows every default)."""
    parser.description = DESCRIPTION
    parser.formatter_class = _HelpFormatter
    set_by = "; set by a --protocol"
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), help="a published experiment (docs: Protocols)")
    parser.add_argument("--scenario", choices=SCENARIOS, help=f"data and task split (default: split-digits{set_by})")
    parser.add_argument("--data-dir", type=Path, help="directory of MNIST-format IDX files (*-idx scenarios, or a "
                        "--protocol's data instead of Fashion-MNIST)")  # fmt: skip
    parser.add_argument(
        "--setting", choices=SETTINGS, help=f"incremental setting of split scenarios (default: task{set_by})"
    )
    parser.add_argument("--tasks", type=int, help=f"number of tasks (default: split 5, permuted 10{set_by})")
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, help="methods to run (default: all, or the protocol's)"
    )
    parser.add_argument("--fisher", choices=FISHER_TYPES, help=f"EWC's Fisher type (default: mc{set_by})")
    parser.add_argument(
        "--strength", type=float, help=f"λ (EWC, MAS) or c (SI) for every regularized method (default: search{set_by})"
    )
    parser.add_argument("--search", action="store_true", default=None,
                        help="choose each strength on validation data (seed 0)")  # fmt: skip
    parser.add_argument("--decay", type=float, help=f"online EWC's γ (default: 1.0{set_by})")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 … N−1 per method")
    parser.add_argument("--epochs", type=int, help="training epochs per task (default: 2; a --protocol's own, "
                        "shorter for a CPU budget where the protocol counts epochs)")  # fmt: skip
    parser.add_argument("--iterations", type=int, help="optimizer steps per task instead of epochs (a --protocol's "
                        "own, shorter for a CPU budget where the protocol counts iterations)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, help=f"training batch size (default: 64{set_by})")
    parser.add_argument("--lr", type=float, help=f"Adam's learning rate (default: 0.001{set_by})")
    parser.add_argument(
        "--hidden", type=int, nargs="+", help=f"hidden layer widths of the MLP (default: [256, 256]{set_by})"
    )
    parser.add_argument("--train-per-task", type=int, help="training samples per permuted task (default: all)")
    parser.add_argument(
        "--fisher-samples", type=int, help=f"samples per task to consolidate on (default: 1000{set_by})"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one per process runs fastest when busy)")
    parser.add_argument("--jobs", type=int, default=1, help="processes that train seeds and methods in parallel")
    parser.add_argument("--plot", type=Path, help="write the accuracy matrices and per-task curves to this PNG")
    parser.add_argument("--out", type=Path, help="write settings, seeds and accuracy matrices to this JSON file")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuses options that do not apply to the scenario or protocol, and output paths or extras
    that would fail only after the work (raises ``UsageError`` or ``ImportError``); then fills in
    the defaults of the options left out."""
    if args.threads < 1 or args.jobs < 1:
        raise UsageError(f"--threads and --jobs must be at least 1; got {args.threads} and {args.jobs}.")
    for option, value in (("--epochs", args.epochs), ("--iterations", args.iterations)):
        if value is not None and value < 1:
            raise UsageError(f"{option} must be at least 1; got {value}.")
    for option, path in (("--plot", args.plot), ("--out", args.out)):
        if path is not None and not path.parent.resolve().is_dir():
            raise UsageError(f"{option} {path}: the directory {path.parent} does not exist.")
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError as error:
            raise ImportError("--plot needs matplotlib: pip install 'fisherkit[plots]'") from error
    if args.protocol is not None:
        return _check_protocol_arguments(args, PROTOCOLS[args.protocol])
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.methods = args.methods or list(METHODS)
    split = args.scenario.startswith("split")
    if split and args.train_per_task is not None:
        raise UsageError("--train-per-task applies to permuted scenarios; split scenarios use every sample.")
    if not split and args.setting is not None:
        raise UsageError("--setting applies to split scenarios; permuted scenarios are domain-incremental.")
    if args.data_dir is not None and not args.scenario.endswith("idx"):
        raise UsageError(f"--data-dir applies to the *-idx scenarios; {args.scenario} uses bundled data.")


def _check_protocol_arguments(args: argparse.Namespace, protocol: Protocol) -> None:
    budget = protocol.budget_option.lstrip("-")
    for key in DEFAULTS:
        if key != budget and getattr(args, key) not in (None, False):
            option = "--" + key.replace("_", "-")
            shorter = f"; {protocol.budget_option} shortens its training" if key in ("epochs", "iterations") else ""
            raise UsageError(
                f"{option} is set by --protocol {protocol.name}; drop it (the protocol's settings are printed "
                f"first{shorter})."
            )
    unknown = [m for m in args.methods or () if m not in protocol.methods]
    if unknown:
        raise UsageError(
            f"--protocol {protocol.name} compares {', '.join(protocol.methods)}; it has no setting for "
            f"{', '.join(unknown)}."
        )
    args.methods = args.methods or list(protocol.methods)


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
    """The Split or Permuted scenario the command's options (or protocol) describe."""
    if args.protocol is not None:
        dataset = load_fashion_mnist() if args.data_dir is None else load_idx_directory(args.data_dir)
        return PROTOCOLS[args.protocol].scenario(dataset)
    dataset = load_dataset(args.scenario, args.data_dir)
    if args.scenario.startswith("split"):
        return split_scenario(dataset, args.setting or "task", args.tasks or 5)
    return permuted_scenario(dataset, args.tasks or 10, train_per_task=args.train_per_task)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """How each task is trained: the protocol's settings, or the options'."""
    if args.protocol is not None:
        return PROTOCOLS[args.protocol].config(args.iterations, args.epochs)
    return TrainConfig(args.epochs, args.batch_size, args.lr, "adam", tuple(args.hidden), args.fisher_samples,
                       args.iterations)  # fmt: skip


def settings_line(args: argparse.Namespace, scenario: Scenario, config: TrainConfig) -> str:
    """The settings a table was made with."""
    processes = f"{args.jobs} process(es) of {args.threads} thread(s)"
    if args.protocol is not None:
        return f"settings: {PROTOCOLS[args.protocol].describe(config, scenario)}; {processes}"
    per_task = "all" if args.train_per_task is None else args.train_per_task
    consolidated = "all" if args.fisher_samples is None else args.fisher_samples
    length = f"{config.epochs} epochs" if config.iterations is None else f"{config.iterations} iterations"
    return (
        f"settings: {scenario.name}, {scenario.setting}-incremental, {len(scenario.tasks)} tasks; MLP "
        f"{'-'.join(map(str, args.hidden))}, Adam lr {args.lr:g}, {length} per task, batch "
        f"{args.batch_size}, training samples per task {per_task}; Fisher {args.fisher} on "
        f"{consolidated} samples per task; {processes}"
    )


def methods_to_run(args: argparse.Namespace) -> list[Method]:
    """The methods with their hyperparameters: the protocol's, or the options'."""
    if args.protocol is not None:
        return [PROTOCOLS[args.protocol].method(name) for name in args.methods]
    return [Method(name, args.strength or 0.0, args.fisher, args.decay) for name in args.methods]


def run(args: argparse.Namespace, emit: Lines, progress: Lines) -> None:
    """Runs the command: ``emit`` gets the report as it is made, ``progress`` a line per trained task."""
    check_arguments(args)
    torch.set_num_threads(args.threads)
    scenario = build_scenario(args)
    config = train_config(args)
    methods = methods_to_run(args)
    emit(settings_line(args, scenario, config))
    if args.protocol is None and (args.search or args.strength is None):
        methods = [search(scenario, method, config, emit, progress) for method in methods]
    seeds = list(range(args.seeds))
    summaries: list[Summary] = []
    pool = SeedPool(scenario, config, args.jobs, args.threads) if args.jobs > 1 else None
    try:
        pending = [pool.submit(method, seeds) for method in methods] if pool is not None else []
        for index, method in enumerate(methods):
            if pool is None:
                summaries.append(run_method(scenario, method, config, seeds, progress))
            else:
                summaries.append(pool.summary(method, pending[index]))
            average, spread = summaries[-1].stat("average")
            emit(f"{method.label}: average accuracy {100 * average:.1f} ± {100 * spread:.1f} over seeds {seeds}")
            if args.out is not None:
                write_results(args.out, args, scenario, config, summaries, seeds)
    finally:
        if pool is not None:
            pool.close()
    emit("")
    emit(format_summaries(scenario, summaries, seeds))
    if args.protocol is not None:
        emit("\n" + format_comparison(PROTOCOLS[args.protocol], summaries, seeds))
    emit("\naccuracy matrices of seed 0 (rows: after training task j; columns: test accuracy on task i):")
    for summary in summaries:
        emit("\n" + format_matrix(summary.matrices[0], summary.method.label))
    if args.out is not None:
        emit(f"\nwrote {args.out}")
    if args.plot:
        title = f"{scenario.name} ({scenario.setting}-incremental)"
        if args.protocol is not None:
            title = f"{args.protocol}: {title}"
        plot_summaries(summaries, args.plot, len(seeds), title)
        emit(f"wrote {args.plot}")


def format_comparison(protocol: Protocol, summaries: list[Summary], seeds: list[int]) -> str:
    """Our average accuracy beside the published one, method by method (a Markdown table), and each
    method's distance to joint training in both (the data's ceiling differs between data sets)."""
    ours = {s.method.name: tuple(100 * v for v in s.stat("average")) for s in summaries}
    lines = [
        f"beside {protocol.source.label} (average test accuracy after the last task, %; ours: mean ± std over "
        f"seeds {seeds}; published: MNIST)",
        "",
        "| method | ours | published | ours − published | ours − our joint | published − published joint |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for summary in summaries:
        name = summary.method.name
        mean, std = ours[name]
        published = protocol.published.get(name)
        cells = [f"{mean:.1f} ± {std:.1f}", "—", "—", "—", "—"]
        if published is not None:
            cells[1:3] = [f"{published:.2f}", f"{mean - published:+.1f}"]
        if name != "joint" and "joint" in ours:
            cells[3] = f"{mean - ours['joint'][0]:+.1f}"
        if name != "joint" and published is not None and "joint" in protocol.published:
            cells[4] = f"{published - protocol.published['joint']:+.1f}"
        lines.append(f"| {summary.method.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def search(scenario: Scenario, method: Method, config: TrainConfig, emit: Lines, progress: Lines) -> Method:
    """The method with the strength of its grid that scores best on validation data, reported, with
    a warning when that is an end of the grid (the best may lie beyond it)."""
    best, grid = choose_strength(scenario, method, config, progress=progress)
    if not grid:
        return best
    described = ", ".join(f"{s:g}: {100 * a:.1f}" for s, a in grid)
    emit(f"{method.name}: validation average accuracy by strength {{{described}}} → strength {best.strength:g}")
    if best.strength in (grid[0][0], grid[-1][0]):
        emit(f"warning: {method.name}'s search picked the edge of its grid ({best.strength:g}); the best strength "
             "may lie beyond it — pass --strength to try others")  # fmt: skip
    return best


def write_results(
    path: Path,
    args: argparse.Namespace,
    scenario: Scenario,
    config: TrainConfig,
    summaries: list[Summary],
    seeds: list[int],
) -> None:
    """The machine-readable record so far (settings, seeds, every method's accuracy matrices), written
    to a temporary file and moved over ``path``, so an interruption never leaves half a file."""
    protocol = PROTOCOLS.get(args.protocol or "")
    record = {
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "protocol": None if protocol is None else {"name": protocol.name, "paper": protocol.source.paper,
                                                    "code": protocol.source.code, "published": dict(protocol.published),
                                                    "settings": protocol.describe(config, scenario),
                                                    "conversions": protocol.conversions},
        "scenario": {"name": scenario.name, "setting": scenario.setting, "tasks": len(scenario.tasks)},
        "seeds": seeds,
        "methods": [
            {"method": s.method.name, "label": s.method.label, "strength": s.method.strength,
             "accuracy_matrices": [m.tolist() for m in s.matrices]}
            for s in summaries
        ],
    }  # fmt: skip
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(json.dumps(record, indent=1))
    temporary.replace(path)


def plot_summaries(summaries: list[Summary], path: Path, seeds: int, title: str) -> None:
    """Accuracy matrices of seed 0 (cells of tasks not yet trained masked, one colour scale) and each
    task's accuracy as later tasks are trained (mean over ``seeds``; joint training as a dashed line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sequential = [s for s in summaries if s.matrices[0].shape[0] > 1]
    joint = [s for s in summaries if s.matrices[0].shape[0] == 1]
    columns = max(1, len(sequential))
    figure, axes = plt.subplots(2, columns, figsize=(3.2 * columns, 6.4), squeeze=False)
    colours = plt.get_cmap("viridis").copy()
    colours.set_bad("lightgrey")  # tasks not trained yet: chance level, not a result
    image = None
    curves: list[float] = []
    for column, summary in enumerate(sequential):
        matrix = summary.matrices[0].numpy()
        untrained = np.triu(np.ones_like(matrix, dtype=bool), k=1)
        image = axes[0, column].imshow(np.ma.masked_where(untrained, matrix), vmin=0, vmax=1, cmap=colours)
        axes[0, column].set_title(f"{summary.method.label} (seed 0)", fontsize=8)
        axes[0, column].set_xlabel("task evaluated")
        mean = torch.stack(summary.matrices).mean(0)
        for task in range(mean.shape[1]):
            curve = mean[task:, task].tolist()
            curves += curve
            axes[1, column].plot(range(task, mean.shape[0]), curve, marker="o", label=f"task {task}")
        for other in joint:
            level = float(torch.stack(other.matrices).mean())
            curves.append(level)
            axes[1, column].axhline(level, color="black", linestyle="--", linewidth=1, label="joint (mean)")
        axes[1, column].set_title(f"{summary.method.label} (mean of {seeds} seed(s))", fontsize=8)
        axes[1, column].set_xlabel("tasks trained")
    if curves:
        low, high = min(curves), max(curves)
        margin = max(0.02, 0.05 * (high - low))
        for column in range(columns):
            axes[1, column].set_ylim(max(0.0, low - margin), min(1.0, high + margin))
    if image is not None:
        figure.colorbar(image, ax=list(axes[0]), shrink=0.8, label="test accuracy")
    axes[0, 0].set_ylabel("after training task")
    axes[1, 0].set_ylabel("test accuracy")
    axes[1, 0].legend(fontsize=6)
    figure.suptitle(title)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
