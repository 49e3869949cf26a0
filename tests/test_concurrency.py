"""Estimators in several threads: on two models, or on the same model at the same time, each
thread gets the result it would get alone."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import fisherkit as fk


class _Rendezvous(nn.Module):
    """Holds each forward until the other thread's forward reaches the same point, so that both
    threads are inside the same model at once (the interleaving that mixed layer inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.barrier: threading.Barrier | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.barrier is not None:
            try:
                self.barrier.wait(timeout=10)
            except threading.BrokenBarrierError:
                pass
        return x


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), _Rendezvous(), nn.Tanh(), nn.Linear(6, 3)).double()


def _data(seed: int) -> torch.Tensor:
    return torch.randn(10, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _in_threads(jobs: list) -> list:
    results: list = [None] * len(jobs)
    errors: list = []

    def run(index: int) -> None:
        try:
            results[index] = jobs[index]()
        except BaseException as error:  # reported in the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return results


@pytest.mark.parametrize("estimator", [fk.kfac_fisher, fk.diagonal_fisher, fk.ekfac_fisher])
def test_two_threads_on_the_same_model_get_their_sequential_results(estimator):
    model = _model()
    alone = [estimator(model, _data(seed), fisher_type="exact").to_dense() for seed in (1, 2)]
    model[1].barrier = threading.Barrier(2)
    together = _in_threads([lambda seed=seed: estimator(model, _data(seed), fisher_type="exact") for seed in (1, 2)])
    for got, want in zip(together, alone):
        torch.testing.assert_close(got.to_dense(), want)


def test_two_threads_on_two_models_get_their_sequential_results():
    models = [_model(), _model()]
    with torch.no_grad():
        models[1][0].weight.mul_(2)
    alone = [fk.kfac_fisher(m, _data(i), fisher_type="exact").to_dense() for i, m in enumerate(models)]
    barrier = threading.Barrier(2)
    for m in models:
        m[1].barrier = barrier
    together = _in_threads(
        [lambda i=i, m=m: fk.kfac_fisher(m, _data(i), fisher_type="exact") for i, m in enumerate(models)]
    )
    for got, want in zip(together, alone):
        torch.testing.assert_close(got.to_dense(), want)
