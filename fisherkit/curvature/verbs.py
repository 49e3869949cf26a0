"""The verbs every Fisher object shares, whether stored (``Curvature``) or matrix-free
(``FisherOperator``): the same names mean the same operation, on parameter-shaped tensor lists."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from fisherkit.curvature.base import ParameterVector, TensorList


@runtime_checkable
class FisherVerbs(Protocol):
    """A symmetric PSD matrix F over named parameters.

    Attributes:
        names: Parameter names, in the order of every list.
        shapes: Their shapes.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    def mv(self, v: ParameterVector) -> TensorList:
        """F v, parameter-shaped."""
        ...

    def quadratic(self, v: ParameterVector) -> Tensor:
        """vᵀ F v, a 0-dim tensor."""
        ...

    def solve(self, v: ParameterVector, damping: float) -> TensorList:
        """(F + damping·I)⁻¹ v, parameter-shaped."""
        ...

    def trace(self) -> Tensor:
        """tr(F) (exact for a representation, an estimate for an operator), a 0-dim tensor."""
        ...

    def to_dense(self) -> Tensor:
        """F as a ``(P, P)`` matrix."""
        ...
