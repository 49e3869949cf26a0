"""Dense estimators: a full block per layer (block-diagonal Fisher) or one over every parameter.

Both accumulate Σ g gᵀ of flattened per-sample gradients chunk by chunk (one SYRK per chunk
through ``kfac_factor_update``), so memory is the matrices plus one chunk of per-sample gradients.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fisherkit.curvature import Curvature, DenseBlock
from fisherkit.estimators.common import Estimation, check_count, check_finite, run_estimator
from fisherkit.estimators.distributed import all_reduce_sums
from fisherkit.likelihoods import Likelihood
from fisherkit.ops import kfac_factor_update


def _module_groups(job: Estimation) -> list[list[str]]:
    """Trainable parameter names grouped by the module that owns them (a tied one goes to its first owner)."""
    seen: set[str] = set()
    groups = []
    for entry in job.plan.entries:
        names = [entry.full_name(n) for n in entry.local_names]
        names = [n for n in names if n in job.parameters and n not in seen]
        seen.update(names)
        if names:
            groups.append(names)
    return groups


def _estimate_dense(job: Estimation, data: Any, groups: list[list[str]], description: str) -> Curvature:
    shapes = {name: p.shape for name, p in job.parameters.items()}
    element = job.accumulator(()).element_size()
    sizes = [sum(shapes[n].numel() for n in names) for names in groups]
    needed = sum(size**2 for size in sizes) * element
    memory_budget = job.options.memory_budget
    if needed > memory_budget:
        raise ValueError(
            f"the {description} needs {needed / 2**30:.2f} GiB for its dense matrices (blocks of "
            f"{max(sizes)} parameters at most), more than memory_budget={memory_budget / 2**30:.2f} GiB. "
            f"Raise memory_budget, or use a structured estimator (kfac_fisher, ekfac_fisher, diagonal_fisher)."
        )
    matrices = [job.accumulator((size, size)) for size in sizes]

    def add_outer_products(grads: dict[str, Tensor]) -> None:
        rows = next(iter(grads.values())).shape[0]
        for names, matrix in zip(groups, matrices):
            if not any(n in grads for n in names):
                continue  # no gradient reached this block in this chunk
            parts = [
                grads[n].reshape(rows, -1) if n in grads else matrix.new_zeros(rows, shapes[n].numel()) for n in names
            ]
            kfac_factor_update(matrix, torch.cat(parts, 1) if len(parts) > 1 else parts[0])

    engine = job.engine()
    count = 0
    for call, columns_fn in job.batches(data, description):
        count += engine.per_sample_grads(call, columns_fn, add_outer_products)
    totals, count = all_reduce_sums(matrices, count)
    check_count(count)
    blocks = []
    for names, total in zip(groups, totals):
        check_finite(f"parameters {names}", total.div_(count))
        blocks.append(DenseBlock(tuple(names), tuple(shapes[n] for n in names), total))
    return Curvature(job.plan.names, [shapes[n] for n in job.plan.names], blocks)


def block_fisher(
    model: nn.Module,
    data: Any,
    likelihood: str | Likelihood = "categorical",
    fisher_type: str = "mc",
    **options: Any,
) -> Curvature:
    """Estimates the layer block-diagonal Fisher: one dense block per module (weight and bias together).

    Scaling: per-sample mean, F_l = (1/N) Σ_n E_y[g_{n,l} g_{n,l}ᵀ] for the parameters of module l.

    Args:
        model: The model (``nn.Module``).
        data: Batches, as in ``diagonal_fisher``.
        likelihood: ``"categorical"``, ``"gaussian"``, ``"bernoulli"`` or a ``Likelihood``.
        fisher_type: ``"mc"``, ``"exact"``, ``"empirical"`` or ``"predicted"``.
        **options: The shared options, ``fisherkit.EstimationOptions``; here ``memory_budget`` bounds
            the dense blocks together (and one chunk of per-sample gradients): the estimator refuses,
            saying what it would need, beyond it.

    Returns:
        A ``Curvature`` of ``DenseBlock`` blocks.
    """
    return run_estimator(estimate_block, model, data, likelihood, fisher_type, options)


def estimate_block(job: Estimation, data: Any) -> Curvature:
    """The block-diagonal Fisher of ``job``'s model on ``data`` (see ``block_fisher``)."""
    return _estimate_dense(job, data, _module_groups(job), "block-diagonal Fisher")


def full_fisher(
    model: nn.Module,
    data: Any,
    likelihood: str | Likelihood = "categorical",
    fisher_type: str = "mc",
    **options: Any,
) -> Curvature:
    """Estimates the full ``(P, P)`` Fisher of a small model (one ``DenseBlock``).

    Scaling and options as in ``block_fisher``; the P² matrix must fit ``memory_budget``.
    """
    return run_estimator(estimate_full, model, data, likelihood, fisher_type, options)


def estimate_full(job: Estimation, data: Any) -> Curvature:
    """The full Fisher of ``job``'s model on ``data`` (see ``full_fisher``)."""
    return _estimate_dense(job, data, [list(job.plan.names)], "full Fisher")
