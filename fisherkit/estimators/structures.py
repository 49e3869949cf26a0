"""One registry of Fisher structures, and ``fisher(model, data, structure=...)`` that serves each.

EWC, NGD and the integrations name a structure with the same ``structure=`` argument and reach
its estimator through this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from fisherkit.curvature import Curvature
from fisherkit.estimators.common import Estimation, run_estimator
from fisherkit.estimators.dense import estimate_block, estimate_full
from fisherkit.estimators.diagonal import estimate_diagonal
from fisherkit.estimators.kronecker import estimate_ekfac, estimate_kfac
from fisherkit.estimators.low_rank import estimate_low_rank
from fisherkit.likelihoods import Likelihood


@dataclass(frozen=True)
class Structure:
    """How one Fisher structure is estimated.

    Attributes:
        estimate: ``estimate(job, data, **keywords) -> Curvature``.
        keywords: Options of this structure alone (e.g. KFAC's ``approximation``).
    """

    estimate: Callable[..., Curvature]
    keywords: tuple[str, ...] = ()


STRUCTURES: dict[str, Structure] = {
    "diagonal": Structure(estimate_diagonal),
    "kfac": Structure(estimate_kfac, ("approximation",)),
    "ekfac": Structure(estimate_ekfac, ("approximation",)),
    "block": Structure(estimate_block),
    "full": Structure(estimate_full),
    "lowrank": Structure(estimate_low_rank, ("rank", "iterations")),
}


def get_structure(name: str) -> Structure:
    """The registered structure ``name``; raises ``ValueError`` naming the known ones."""
    if name not in STRUCTURES:
        raise ValueError(f"unknown Fisher structure {name!r}; choose one of {tuple(STRUCTURES)}.")
    return STRUCTURES[name]


def register_structure(
    name: str, estimate: Callable[[Estimation, Any], Curvature], keywords: tuple[str, ...] = ()
) -> None:
    """Makes ``structure=name`` available to ``fisher``, EWC and NGD (a later registration replaces one).

    Args:
        name: The structure's name.
        estimate: ``estimate(job, data, **keywords)`` returning a ``Curvature``; ``job`` is an
            ``Estimation`` (checked options, plan, engine, batch loop).
        keywords: Options of this structure alone.
    """
    STRUCTURES[name] = Structure(estimate, tuple(keywords))


def split_structure_options(
    structure: str, options: dict[str, Any]
) -> tuple[Structure, dict[str, Any], dict[str, Any]]:
    """The structure, its own keywords, and the shared options (raises for an unknown structure)."""
    spec = get_structure(structure)
    own = {k: v for k, v in options.items() if k in spec.keywords}
    shared = {k: v for k, v in options.items() if k not in spec.keywords}
    return spec, own, shared


def fisher(
    model: nn.Module,
    data: Any,
    structure: str = "diagonal",
    likelihood: str | Likelihood = "categorical",
    fisher_type: str = "mc",
    **options: Any,
) -> Curvature:
    """Estimates the Fisher of ``model`` on ``data`` in the given structure.

    ``fisher(model, data, "kfac", approximation="reduce")`` is ``kfac_fisher(model, data,
    approximation="reduce")``; every structure returns a ``Curvature`` with the same algebra.

    Scaling: per-sample mean, F = (1/N) Σ_n E_y[g_n g_nᵀ] (see ``EstimationOptions``).

    Args:
        model: The model (``nn.Module``).
        data: Batches, as in ``diagonal_fisher``.
        likelihood: ``"categorical"``, ``"gaussian"``, ``"bernoulli"`` or a ``Likelihood``.
        fisher_type: ``"mc"``, ``"exact"``, ``"empirical"`` or ``"predicted"``.
        structure: ``"diagonal"``, ``"kfac"``, ``"ekfac"``, ``"block"``, ``"full"``, ``"lowrank"`` or one added
            with ``register_structure``.
        **options: The shared ``EstimationOptions`` and the structure's own keywords.
    """
    spec, own, shared = split_structure_options(structure, options)
    return run_estimator(spec.estimate, model, data, likelihood, fisher_type, shared, **own)
