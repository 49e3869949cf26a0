"""pytest-benchmark view of the diagonal Fisher on the mlp workload (fwd+bwd as the baseline).

Run with ``python -m pytest benchmarks/test_bench_diagonal.py --benchmark-enable`` and compare
the groups' medians; bench_diagonal.py gives the full tables with ratios and memory.
"""

from __future__ import annotations

import pytest
import torch
from bench_diagonal import fisherkit_diagonal
from harness import forward_backward
from workloads import make_workload

import fisherkit as fk


@pytest.fixture(scope="module")
def mlp():
    torch.set_num_threads(2)
    workload = make_workload("mlp")
    return workload, workload.batches(512)


def test_forward_backward(benchmark, mlp):
    benchmark.group = "mlp diagonal Fisher"
    benchmark(forward_backward(*mlp))


@pytest.mark.parametrize("fisher_type", fk.FISHER_TYPES)
def test_diagonal_fisher_layerwise(benchmark, mlp, fisher_type):
    benchmark.group = "mlp diagonal Fisher"
    benchmark(fisherkit_diagonal(fisher_type, "layerwise")(*mlp))
