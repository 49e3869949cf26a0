"""Estimators: how a Fisher representation is computed from a model and data."""

from fisherkit.estimators.dense import block_fisher, full_fisher
from fisherkit.estimators.diagonal import diagonal_fisher
from fisherkit.estimators.fisher_type import FISHER_TYPES
from fisherkit.estimators.kronecker import APPROXIMATIONS, ekfac_fisher, kfac_fisher
from fisherkit.estimators.trace import per_sample_fisher_trace

__all__ = [
    "APPROXIMATIONS",
    "FISHER_TYPES",
    "block_fisher",
    "diagonal_fisher",
    "ekfac_fisher",
    "full_fisher",
    "kfac_fisher",
    "per_sample_fisher_trace",
]
