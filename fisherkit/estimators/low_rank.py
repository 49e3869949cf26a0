"""The low-rank Fisher: the top eigenpairs of the matrix-free operator plus the diagonal they leave."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from fisherkit.curvature import Curvature
from fisherkit.curvature.low_rank_block import LowRankBlock
from fisherkit.estimators.common import Estimation, make_generator
from fisherkit.estimators.diagonal import estimate_diagonal
from fisherkit.estimators.operator import FisherOperator
from fisherkit.estimators.options import check_positive_int

POSITIVE = 1e-10
"""Eigenvalues at or below this fraction of the largest are dropped (zero up to rounding)."""


def estimate_low_rank(job: Estimation, data: Any, rank: int = 10, iterations: int | None = None) -> Curvature:
    """F ≈ U diag(λ) Uᵀ + diag(d): the ``rank`` largest eigenpairs of the Fisher (``FisherOperator``,
    Lanczos with ``iterations`` products) and d = diag(F) − diag(U diag(λ) Uᵀ) ≥ 0, with diag(F) from
    the diagonal estimator on the same labels, so the diagonal is kept exactly.

    Scaling: per-sample mean, like every estimator. The MC Fisher draws from ``seed`` (0 by default)
    at every product, so that the operator is one matrix.

    Raises:
        ValueError: ``generator=`` with ``fisher_type="mc"`` (the operator redraws from a seed).
    """
    check_positive_int("rank", rank)
    options = job.options
    if options.fisher_type == "mc" and options.generator is not None:
        raise ValueError(
            "the low-rank Fisher redraws its MC labels at every Lanczos product: pass seed=... instead of generator=."
        )
    seed = 0 if options.seed is None else options.seed
    keywords = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    keywords.update(seed=seed, generator=None, parameters=list(job.plan.names))
    operator = FisherOperator(job.model, data, **keywords)
    values, vectors = operator.eigenpairs(rank, iterations, seed)
    keep = values > POSITIVE * values.max().clamp(min=0)
    values, vectors = values[keep], vectors[:, keep]
    job.generator = make_generator(job.device, seed, None)  # the operator's labels
    diagonal = torch.cat([d.reshape(-1) for d in estimate_diagonal(job, data).diagonals]).to(values.dtype)
    remainder = (diagonal - (vectors.square() * values).sum(-1)).clamp(min=0)
    names, shapes = operator.names, operator.shapes
    return Curvature(names, shapes, [LowRankBlock(names, shapes, values, vectors, remainder)])
