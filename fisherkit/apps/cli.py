"""The ``fisherkit`` command: ``demo`` (the main job), ``cl``, ``fisher-types`` and ``env``."""

from __future__ import annotations

import argparse
from pathlib import Path

from fisherkit.apps.output import progress_line, report_line


def main(argv: list[str] | None = None) -> None:
    """Runs the ``fisherkit`` command (``argv`` without the program name; default ``sys.argv[1:]``)."""
    from fisherkit import __version__

    parser = argparse.ArgumentParser(prog="fisherkit", description="The Fisher information of PyTorch models.")
    parser.add_argument("--version", action="version", version=f"fisherkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="continual learning on the bundled digits: naive, EWC, online EWC, SI, MAS, joint (CPU, ~1 min)"
    )
    demo.add_argument("--epochs", type=int, default=10)
    demo.add_argument("--seeds", type=int, default=3)
    demo.add_argument("--plot", type=Path, help="PNG path; writes <stem>-accuracy.png and <stem>-fisher.png")
    from fisherkit.apps.continual.command import add_arguments

    add_arguments(
        commands.add_parser("cl", help="run continual-learning methods through a scenario (--help: all options)")
    )
    types = commands.add_parser("fisher-types", help="the three Fisher types on scikit-learn's digits (seconds)")
    types.add_argument("--epochs", type=int, default=5)
    types.add_argument("--mc-samples", type=int, default=1)
    types.add_argument("--seed", type=int, default=0)
    commands.add_parser("env", help="report torch, CUDA, Triton and compiled-extension status")
    args = parser.parse_args(argv)
    from fisherkit.apps.continual.idx import IdxFileError
    from fisherkit.apps.errors import UsageError

    try:
        _run(args)
    except (ImportError, FileNotFoundError, IdxFileError, UsageError) as error:  # a missing extra or data, bad options
        if args.debug:
            raise
        raise SystemExit(f"fisherkit {args.command}: {error} (fisherkit --debug shows the traceback)") from error


def _run(args: argparse.Namespace) -> None:
    if args.command == "demo":
        from fisherkit.apps.continual.demo import run_demo

        run_demo(report_line, progress_line, epochs=args.epochs, seeds=args.seeds, plot=args.plot)
    elif args.command == "cl":
        from fisherkit.apps.continual.command import run as run_cl

        run_cl(args, report_line, progress_line)
    elif args.command == "fisher-types":
        from fisherkit.apps.fisher_types import run as run_fisher_types

        print(run_fisher_types(epochs=args.epochs, mc_samples=args.mc_samples, seed=args.seed))
    else:
        from fisherkit.env import report

        print(report())


if __name__ == "__main__":
    main()
