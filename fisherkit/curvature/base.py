"""The contract every Fisher representation follows, and the parameter-list plumbing they share.

A representation stores tensors only (never a model or data) and acts on *parameter-shaped tensor
lists*: one tensor per represented parameter, in the order of ``names`` (a dict keyed by those
names is accepted too).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

TensorList = list[Tensor]
ParameterVector = Sequence[Tensor] | Mapping[str, Tensor]
Self = TypeVar("Self", bound="Curvature")


class Curvature(ABC):
    """A symmetric positive semi-definite matrix over a model's parameters.

    Attributes:
        names: Parameter names (as in ``model.named_parameters()``) in the order of every list.
        shapes: The shape of each parameter.
    """

    def __init__(self, names: Sequence[str], shapes: Sequence[torch.Size]) -> None:
        if len(names) != len(shapes):
            raise ValueError(f"{len(names)} names but {len(shapes)} shapes")
        self.names = tuple(names)
        self.shapes = tuple(torch.Size(s) for s in shapes)

    # -- derived operations -------------------------------------------------------------------
    def quadratic(self, v: ParameterVector) -> Tensor:
        """vᵀ F v summed over all parameters (the EWC penalty without its λ/2); a 0-dim tensor."""
        vectors = self.as_list(v)
        products = self.mv(vectors)
        return sum((x * y).sum() for x, y in zip(vectors, products))

    def as_list(self, v: ParameterVector) -> TensorList:
        """Aligns ``v`` (a sequence in ``names`` order or a dict by name) with this representation.

        Raises:
            ValueError: When parameters are missing, extra, or of the wrong shape.
        """
        if isinstance(v, Mapping):
            missing = [n for n in self.names if n not in v]
            if missing:
                raise ValueError(f"vector lacks parameters {missing}; this Fisher covers {list(self.names)}.")
            vectors = [v[n] for n in self.names]
        else:
            vectors = list(v)
            if len(vectors) != len(self.names):
                raise ValueError(
                    f"expected {len(self.names)} tensors, one per parameter {list(self.names)}, got "
                    f"{len(vectors)}. Parameters without requires_grad are not part of the Fisher: "
                    f"pass a dict keyed by name, or only the parameters it covers."
                )
        for name, shape, tensor in zip(self.names, self.shapes, vectors):
            if tensor.shape != shape:
                raise ValueError(
                    f"parameter {name!r}: vector of shape {tuple(tensor.shape)} does not match the "
                    f"Fisher's shape {tuple(shape)}; has the model changed since the Fisher was computed?"
                )
        return vectors

    def check_compatible(self, other: Curvature) -> None:
        """Raises ``ValueError`` unless ``other`` covers the same parameters with the same shapes."""
        if (self.names, self.shapes) != (other.names, other.shapes):
            raise ValueError(
                "Fisher representations cover different parameters: "
                f"{list(zip(self.names, map(tuple, self.shapes)))} vs "
                f"{list(zip(other.names, map(tuple, other.shapes)))}."
            )

    def check_state_header(self, state: Mapping[str, Any]) -> None:
        """Raises ``ValueError`` when a state dict was saved for other parameters."""
        names = tuple(state.get("names", ()))
        shapes = tuple(torch.Size(s) for s in state.get("shapes", ()))
        if (names, shapes) != (self.names, self.shapes):
            raise ValueError(
                f"state dict of a {state.get('kind', 'unknown')} Fisher over parameters {list(names)} "
                f"cannot be loaded into one over {list(self.names)} (names or shapes differ)."
            )

    def state_header(self) -> dict[str, Any]:
        """The part of a state dict that identifies the parameters."""
        return {"kind": type(self).__name__, "names": list(self.names), "shapes": [list(s) for s in self.shapes]}

    # -- the primitive operations each representation implements ------------------------------
    @abstractmethod
    def mv(self, v: ParameterVector) -> TensorList:
        """F v, as a parameter-shaped list."""

    @abstractmethod
    def solve(self, v: ParameterVector, damping: float) -> TensorList:
        """(F + damping·I)⁻¹ v, as a parameter-shaped list."""

    @abstractmethod
    def inverse(self: Self, damping: float) -> Self:
        """(F + damping·I)⁻¹ in the same structure."""

    @abstractmethod
    def diagonal(self) -> TensorList:
        """diag(F), parameter-shaped."""

    @abstractmethod
    def trace(self) -> Tensor:
        """tr(F), a 0-dim tensor."""

    @abstractmethod
    def logdet(self, damping: float) -> Tensor:
        """log det(F + damping·I), a 0-dim tensor."""

    @abstractmethod
    def to_dense(self) -> Tensor:
        """The ``(P, P)`` matrix, parameters flattened in ``names`` order (for tests, small models)."""

    @abstractmethod
    def to(self: Self, *args: Any, **kwargs: Any) -> Self:
        """A copy moved or cast like ``Tensor.to``."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Tensors and identifying metadata."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores from ``state_dict()``; refuses a state of other parameters."""

    @abstractmethod
    def __add__(self: Self, other: Self) -> Self: ...

    @abstractmethod
    def __mul__(self: Self, scalar: float) -> Self: ...

    def __rmul__(self: Self, scalar: float) -> Self:
        return self * scalar


def check_damping(damping: float) -> float:
    """Returns ``damping`` as a float; raises ``ValueError`` when it is negative or not finite."""
    damping = float(damping)
    if not (damping >= 0 and damping < float("inf")):
        raise ValueError(f"damping must be a finite number >= 0; got {damping}.")
    return damping
