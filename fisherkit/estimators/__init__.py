"""Estimators: how a Fisher representation is computed from a model and data."""

from fisherkit.estimators.diagonal import diagonal_fisher
from fisherkit.estimators.fisher_type import FISHER_TYPES

__all__ = ["FISHER_TYPES", "diagonal_fisher"]
