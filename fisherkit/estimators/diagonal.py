"""The diagonal Fisher estimator."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fisherkit.curvature import DiagonalFisher
from fisherkit.estimators.common import DEFAULT_MEMORY_BUDGET, Estimation, check_count, check_finite, choose_engine
from fisherkit.estimators.distributed import all_reduce_sums
from fisherkit.likelihoods import Likelihood


def diagonal_fisher(
    model: nn.Module,
    data: Any,
    likelihood: str | Likelihood = "categorical",
    fisher_type: str = "mc",
    *,
    mc_samples: int = 1,
    engine: str = "auto",
    fallback: bool = False,
    batch_size: int = 256,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> DiagonalFisher:
    """Estimates the diagonal of the Fisher information of ``model`` on ``data``.

    Scaling: the result is the per-sample mean F = (1/N) Σ_n E_y[g_n ⊙ g_n] with
    g_n = ∇_θ log p(y | x_n), N the number of samples (rows; a sequence is one sample). With
    ``mc_samples=k`` the inner expectation is the mean of k draws. Multiply by N for the dataset
    Fisher. The model's loss function and its reduction play no part.

    Args:
        model: The model; its output is the likelihood's parameter (logits or means). Put it in
            eval mode (BatchNorm in train mode is refused).
        data: A ``DataLoader`` or iterable of batches, a tensor of inputs, or ``(inputs, targets)``
            tensors (see ``fisherkit.estimators.data.iter_batches``).
        likelihood: ``"categorical"``, ``"gaussian"``, ``"bernoulli"`` or a ``Likelihood``.
        fisher_type: ``"mc"`` (true Fisher, sampled labels; default), ``"exact"`` (closed-form
            expectation over labels, one batched backward of the output-Fisher square root) or
            ``"empirical"`` (dataset labels; cheap but not a curvature estimate).
        mc_samples: Label draws per sample for ``"mc"``.
        engine: ``"auto"``, ``"layerwise"`` (hooks and layer rules) or ``"vmap"`` (torch.func).
        fallback: Serve modules without a registered rule by per-layer ``torch.func`` gradients;
            otherwise such modules are an error.
        batch_size: Rows per batch when ``data`` is given as tensors.
        seed: Seeds a private generator for the MC draws (reproducible results).
        generator: A ``torch.Generator`` for the MC draws (instead of ``seed``).
        progress: Progress bar: ``None`` on a terminal only, ``True`` always, ``False`` never.
        memory_budget: Bytes the engines may use for batched gradients before chunking.

    Returns:
        A ``DiagonalFisher`` over the trainable parameters (``requires_grad=True``), in float32
        (float64 for float64 models). Frozen parameters are left out, with a warning.

    Raises:
        ValueError: Empty data, outputs or labels that do not fit the likelihood, non-finite
            Fisher entries (the parameter is named), train-mode BatchNorm, unsupported layers,
            data on another device than the model.
    """
    job = Estimation.start(model, likelihood, fisher_type, mc_samples, fallback, batch_size, seed, generator, progress)
    engine_impl = choose_engine(engine, model, job.plan, memory_budget)
    sums = {name: job.accumulator(parameter.shape) for name, parameter in job.parameters.items()}
    count = 0
    for inputs, columns_fn in job.batches(data, "diagonal Fisher"):
        count += engine_impl.accumulate_sqgrad(inputs, columns_fn, sums)
    totals, count = all_reduce_sums(list(sums.values()), count)
    check_count(count)
    diagonals = [total.div_(count) for total in totals]
    for name, diagonal in zip(job.plan.names, diagonals):
        check_finite(f"parameter {name!r}", diagonal)
    return DiagonalFisher(job.plan.names, diagonals)
