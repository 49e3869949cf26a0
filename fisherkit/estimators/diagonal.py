"""The diagonal Fisher estimator."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fisherkit.curvature import DiagonalFisher
from fisherkit.estimators.common import (
    DEFAULT_MEMORY_BUDGET,
    batches_with_progress,
    choose_engine,
    make_generator,
    prepare_plan,
)
from fisherkit.estimators.distributed import all_reduce_sums
from fisherkit.estimators.fisher_type import check_fisher_type, make_columns_fn
from fisherkit.likelihoods import Likelihood, get_likelihood


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
    check_fisher_type(fisher_type, mc_samples)
    likelihood = get_likelihood(likelihood)
    plan = prepare_plan(model, fallback)
    named = dict(model.named_parameters())
    device = named[plan.names[0]].device
    engine_impl = choose_engine(engine, model, plan, memory_budget)
    generator = make_generator(device, seed, generator)
    sums = {
        name: torch.zeros_like(
            named[name], dtype=torch.float64 if named[name].dtype == torch.float64 else torch.float32
        )
        for name in plan.names
    }
    count = 0
    for inputs, targets in batches_with_progress(data, batch_size, device, progress, "diagonal Fisher"):
        columns_fn = make_columns_fn(likelihood, fisher_type, targets, mc_samples, generator)
        count += engine_impl.accumulate_sqgrad(inputs, columns_fn, sums)
    totals, count = all_reduce_sums(list(sums.values()), count)
    if count == 0:
        raise ValueError("the data held no samples; the Fisher is a mean over samples and needs at least one.")
    diagonals = [total.div_(count) for total in totals]
    for name, diagonal in zip(plan.names, diagonals):
        if not bool(torch.isfinite(diagonal).all()):
            raise ValueError(
                f"the Fisher of parameter {name!r} has NaN or Inf entries: its per-sample gradients "
                f"overflowed or the parameter itself is not finite."
            )
    return DiagonalFisher(plan.names, diagonals)
