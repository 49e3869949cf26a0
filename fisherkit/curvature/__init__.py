"""Fisher representations: what is stored and how it acts on parameter-shaped vectors."""

from fisherkit.curvature.base import Curvature
from fisherkit.curvature.diagonal import DiagonalFisher

__all__ = ["Curvature", "DiagonalFisher"]
