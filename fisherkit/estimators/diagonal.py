"""The diagonal Fisher estimator."""

from __future__ import annotations

from typing import Any

from torch import nn

from fisherkit.curvature import DiagonalFisher
from fisherkit.estimators.common import Estimation, check_count, check_finite, run_estimator
from fisherkit.estimators.distributed import all_reduce_sums
from fisherkit.likelihoods import Likelihood


def diagonal_fisher(
    model: nn.Module,
    data: Any,
    likelihood: str | Likelihood = "categorical",
    fisher_type: str = "mc",
    **options: Any,
) -> DiagonalFisher:
    """Estimates the diagonal of the Fisher information of ``model`` on ``data``.

    Scaling: the result is the per-sample mean F = (1/N) Σ_n E_y[g_n ⊙ g_n] with
    g_n = ∇_θ log p(y | x_n), N the number of samples (rows; a sequence is one sample). With
    ``mc_samples=k`` the inner expectation is the mean of k draws. Multiply by N for the dataset
    Fisher. The model's loss function and its reduction play no part.

    Args:
        model: The model; its output (or the ``output`` option's pick of it) is the likelihood's
            parameter (logits or means). Put it in eval mode (BatchNorm in train mode is refused).
        data: A ``DataLoader`` or iterable of batches (tensors, ``(inputs, targets, ...)``
            sequences, or dicts of named inputs such as Hugging Face collators yield), a tensor of
            inputs, or ``(inputs, targets)`` tensors split into ``batch_size`` rows.
        likelihood: ``"categorical"``, ``"gaussian"``, ``"bernoulli"`` or a ``Likelihood``.
        fisher_type: ``"mc"`` (true Fisher, sampled labels; default), ``"exact"``, ``"empirical"`` or ``"predicted"``.
        **options: The shared estimator options, ``fisherkit.EstimationOptions`` (``mc_samples``,
            ``engine``, ``fallback``, ``batch_size``, ``seed``, ``generator``, ``progress``,
            ``memory_budget``, and the batch layout ``inputs``, ``target``, ``output``, ``causal``).

    Returns:
        A ``DiagonalFisher`` over the trainable parameters (``requires_grad=True``), in float32
        (float64 for float64 models). Frozen parameters are left out, with a warning.

    Raises:
        ValueError: Empty data, outputs or labels that do not fit the likelihood, an ambiguous batch
            layout, train-mode BatchNorm, unsupported layers, data on another device than the model.
        NonFiniteFisherError: Non-finite Fisher entries (the parameter is named).
        TypeError: An unknown option.
    """
    return run_estimator(estimate_diagonal, model, data, likelihood, fisher_type, options)


def estimate_diagonal(job: Estimation, data: Any) -> DiagonalFisher:
    """The diagonal Fisher of ``job``'s model on ``data`` (see ``diagonal_fisher``)."""
    engine = job.engine()
    sums = {name: job.accumulator(parameter.shape) for name, parameter in job.parameters.items()}
    count = 0
    for call, columns_fn in job.batches(data, "diagonal Fisher"):
        count += engine.accumulate_sqgrad(call, columns_fn, sums)
    totals, count = all_reduce_sums(list(sums.values()), count)
    check_count(count)
    diagonals = [total.div_(count) for total in totals]
    for name, diagonal in zip(job.plan.names, diagonals):
        check_finite(f"parameter {name!r}", diagonal)
    return DiagonalFisher(job.plan.names, diagonals)
