"""The ``fisherkit`` command: ``fisherkit demo`` and ``fisherkit env``."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fisherkit", description="The Fisher information of PyTorch models.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="the three Fisher types on scikit-learn's digits (CPU, seconds)")
    demo.add_argument("--epochs", type=int, default=5)
    demo.add_argument("--mc-samples", type=int, default=1)
    demo.add_argument("--seed", type=int, default=0)
    commands.add_parser("env", help="report torch, CUDA, Triton and compiled-extension status")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from fisherkit.demo import run

        print(run(epochs=args.epochs, mc_samples=args.mc_samples, seed=args.seed))
    else:
        from fisherkit.env import report

        print(report())


if __name__ == "__main__":
    main()
