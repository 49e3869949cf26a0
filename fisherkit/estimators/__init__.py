"""Estimators: how a Fisher representation is computed from a model and data."""

from fisherkit.estimators.common import Estimation
from fisherkit.estimators.dense import block_fisher, full_fisher
from fisherkit.estimators.diagonal import diagonal_fisher
from fisherkit.estimators.fisher_type import FISHER_TYPES
from fisherkit.estimators.kronecker import APPROXIMATIONS, ekfac_fisher, kfac_fisher
from fisherkit.estimators.options import EstimationOptions
from fisherkit.estimators.structures import STRUCTURES, fisher, get_structure, register_structure
from fisherkit.estimators.trace import per_sample_fisher_trace

__all__ = [
    "APPROXIMATIONS",
    "FISHER_TYPES",
    "STRUCTURES",
    "Estimation",
    "EstimationOptions",
    "block_fisher",
    "diagonal_fisher",
    "ekfac_fisher",
    "fisher",
    "full_fisher",
    "get_structure",
    "kfac_fisher",
    "per_sample_fisher_trace",
    "register_structure",
]
