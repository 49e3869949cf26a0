"""KFAC, EKFAC and block-diagonal Fisher speed and memory on the mlp, cnn and seq workloads.

Usage::

    python benchmarks/bench_structures.py [--workloads mlp cnn seq] [--repeats 5]

Same harness and columns as ``bench_diagonal.py``: seconds per 1,000 samples, the ratio to one
forward+backward measured in the same run (interleaved rounds, medians), peak tensor memory.
The block-diagonal Fisher of these layers needs more memory than its default budget, so it
reports the size it would need; peers are measured when installed (BackPACK: KFAC = MC, KFLR =
exact).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from bench_diagonal import backpack_extension
from harness import Method, run_benchmarks
from workloads import Workload

import fisherkit as fk


def fisherkit_structure(estimator: Callable, **options) -> Method:
    def method(workload: Workload, batches: list) -> Callable[[], None] | str:
        def run() -> None:
            estimator(workload.model, batches, seed=0, progress=False, **options)

        try:
            estimator(workload.model, batches[:1], seed=0, progress=False, **options)
        except ValueError as error:
            return f"refused ({str(error).split(' (')[0]})"
        return run

    return method


FAST: dict[str, Method] = {
    **{f"fisherkit KFAC {t}": fisherkit_structure(fk.kfac_fisher, fisher_type=t) for t in fk.FISHER_TYPES},
    "fisherkit KFAC-reduce mc": fisherkit_structure(fk.kfac_fisher, approximation="reduce"),
    "fisherkit EKFAC mc": fisherkit_structure(fk.ekfac_fisher),
    "fisherkit block mc": fisherkit_structure(fk.block_fisher),
}
if importlib.util.find_spec("backpack") is not None:
    FAST["BackPACK KFAC (mc)"] = backpack_extension("KFAC")
    FAST["BackPACK KFLR (exact)"] = backpack_extension("KFLR")


def main() -> None:
    run_benchmarks(__doc__, FAST, {})


if __name__ == "__main__":
    main()
