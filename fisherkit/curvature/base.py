"""The Fisher representation: a block-diagonal matrix over a model's parameters, one algebra for all.

A representation stores tensors only (never a model or data) and acts on *parameter-shaped tensor
lists*: one tensor per represented parameter, in the order of ``names`` (a dict keyed by those
names is accepted too). Its blocks (``fisherkit.curvature.block``) may be of different kinds —
diagonal, dense, Kronecker (KFAC), eigen-Kronecker (EKFAC), sums — which is how a KFAC Fisher
covers normalization layers with diagonal blocks.

Scaling: estimators fill every representation with the per-sample mean,
F = (1/N) Σ_n E_y[g_n g_nᵀ] with g_n = ∇_θ log p(y | x_n). Multiply by N for the dataset Fisher.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

from fisherkit.curvature.block import Block, tensor_sum
from fisherkit.curvature.quadratic_form import quadratic_form
from fisherkit.curvature.scipy_operator import scipy_operator

TensorList = list[Tensor]
ParameterVector = Sequence[Tensor] | Mapping[str, Tensor]
Self = TypeVar("Self", bound="Curvature")


class Curvature:
    """A symmetric positive semi-definite matrix over a model's parameters, block-diagonal.

    Args:
        names: Parameter names (as in ``model.named_parameters()``) in the order of every list.
        shapes: The shape of each parameter.
        blocks: Blocks that partition ``names``.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        CURVATURE_KINDS[cls.__name__] = cls

    def __init__(self, names: Sequence[str], shapes: Sequence[torch.Size], blocks: Sequence[Block]) -> None:
        if len(names) != len(shapes):
            raise ValueError(f"{len(names)} names but {len(shapes)} shapes")
        self.names = tuple(names)
        self.shapes = tuple(torch.Size(s) for s in shapes)
        self._set_blocks(blocks)

    # -- derived operations -------------------------------------------------------------------
    def quadratic(self, v: ParameterVector) -> Tensor:
        """vᵀ F v summed over all parameters (the EWC penalty without its λ/2); a 0-dim tensor whose
        gradient 2F v is kept from the forward pass (``quadratic_form``: one ``mv``, no replay)."""
        parts = self._per_block(self.as_list(v))
        return torch.stack([quadratic_form(block, part) for block, part in zip(self._blocks, parts)]).sum()

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

    # -- the block structure ----------------------------------------------------------------
    @property
    def blocks(self) -> list[Block]:
        """The diagonal blocks, each over some of ``names``."""
        return self._blocks

    def _set_blocks(self, blocks: Sequence[Block]) -> None:
        covered = [name for block in blocks for name in block.names]
        if sorted(covered) != sorted(self.names) or len(covered) != len(set(covered)):
            raise ValueError(f"blocks cover {covered}, which is not a partition of the parameters {list(self.names)}.")
        position = {name: i for i, name in enumerate(self.names)}
        for block in blocks:
            if tuple(self.shapes[position[n]] for n in block.names) != block.shapes:
                raise ValueError(f"block {block.label} has shapes that differ from the parameters'.")
        self._blocks = list(blocks)
        self._slots = [[position[n] for n in block.names] for block in blocks]

    def _per_block(self, v: ParameterVector) -> list[TensorList]:
        vectors = self.as_list(v)
        return [[vectors[i] for i in slots] for slots in self._slots]

    def _gather(self, per_block: list[TensorList]) -> TensorList:
        out: list[Tensor | None] = [None] * len(self.names)
        for slots, tensors in zip(self._slots, per_block):
            for i, tensor in zip(slots, tensors):
                out[i] = tensor
        return [t for t in out if t is not None]  # the blocks partition the names: every slot is filled

    def _with_blocks(self: Self, blocks: Sequence[Block]) -> Self:
        """A representation of the same class over the same parameters with other blocks."""
        other = object.__new__(type(self))
        Curvature.__init__(other, self.names, self.shapes, blocks)
        return other

    # -- the operations ------------------------------------------------------------------------
    def mv(self, v: ParameterVector) -> TensorList:
        """F v, as a parameter-shaped list (in ``names`` order)."""
        return self._gather([block.mv(part) for block, part in zip(self._blocks, self._per_block(v))])

    def solve(self, v: ParameterVector, damping: float, pi_damping: bool = False) -> TensorList:
        """(F + damping·I)⁻¹ v, as a parameter-shaped list.

        Args:
            v: Parameter-shaped tensors.
            damping: Tikhonov damping λ ≥ 0 (exact for every block kind).
            pi_damping: For Kronecker blocks, the factored heuristic (L + π√λ I) ⊗ (R + √λ/π I)
                instead of exact Tikhonov damping; other blocks ignore it.
        """
        per_block = self._per_block(v)
        return self._gather([b.solve(part, damping, pi_damping) for b, part in zip(self._blocks, per_block)])

    def inverse(self: Self, damping: float, pi_damping: bool = False) -> Self:
        """(F + damping·I)⁻¹ blockwise. A Tikhonov-damped Kronecker block inverts to an
        eigen-Kronecker block (its exact inverse); π-damped, it stays Kronecker."""
        return self._with_blocks([block.inverse(damping, pi_damping) for block in self._blocks])

    def diagonal(self) -> TensorList:
        """diag(F), parameter-shaped."""
        return self._gather([block.diagonal() for block in self._blocks])

    def trace(self) -> Tensor:
        """tr(F), a 0-dim tensor."""
        return tensor_sum(block.trace() for block in self._blocks)

    def logdet(self, damping: float, pi_damping: bool = False) -> Tensor:
        """log det(F + damping·I), a 0-dim tensor (damping as in ``solve``)."""
        return tensor_sum(block.logdet(damping, pi_damping) for block in self._blocks)

    def to_dense(self) -> Tensor:
        """The ``(P, P)`` matrix, parameters flattened in ``names`` order (for tests, small models)."""
        sizes = [s.numel() for s in self.shapes]
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        first = self._blocks[0].to_dense()
        dense = first.new_zeros(sum(sizes), sum(sizes))
        for block, slots in zip(self._blocks, self._slots):
            index = torch.cat([torch.arange(offsets[i], offsets[i] + sizes[i]) for i in slots]).to(dense.device)
            dense[index.unsqueeze(1), index.unsqueeze(0)] = block.to_dense().to(dense.dtype)
        return dense

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` on flat ``(P,)`` vectors (parameters flattened
        in ``names`` order), in the representation's dtype."""
        like = _first_tensor(self._blocks)
        sizes = [s.numel() for s in self.shapes]

        def matvec(flat: Tensor) -> Tensor:
            vectors = [part.reshape(shape) for part, shape in zip(flat.split(sizes), self.shapes)]
            return torch.cat([v.reshape(-1) for v in self.mv(vectors)])

        return scipy_operator(matvec, sum(sizes), like)

    def to(self: Self, *args: Any, **kwargs: Any) -> Self:
        """A copy moved or cast like ``Tensor.to``."""
        return self._with_blocks([block.map(lambda t: t.to(*args, **kwargs)) for block in self._blocks])

    def state_dict(self) -> dict[str, Any]:
        """Block kinds, parameter names, shapes and tensors (cloned); loadable with
        ``load_state_dict`` or ``Curvature.from_state_dict``."""
        return {**self.state_header(), "blocks": [block.state() for block in self._blocks]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores from ``state_dict()``, keeping this representation's device and dtypes.

        Raises:
            ValueError: The state covers other parameters, or has a different block structure.
        """
        self.check_state_header(state)
        blocks = [Block.from_state(s) for s in state["blocks"]]
        mine = [(type(b).__name__, b.names) for b in self._blocks]
        theirs = [(type(b).__name__, b.names) for b in blocks]
        if mine != theirs:
            raise ValueError(f"state dict has blocks {theirs}, this Fisher has {mine}; they cannot be loaded.")
        device_dtype = _first_tensor(self._blocks)
        self._set_blocks([b.map(lambda t: t.to(device_dtype.device, device_dtype.dtype)) for b in blocks])

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Curvature:
        """Rebuilds a representation from ``state_dict()`` alone (e.g. a saved EWC penalty)."""
        blocks = [Block.from_state(s) for s in state["blocks"]]
        kind = CURVATURE_KINDS.get(str(state.get("kind")), Curvature)
        curvature = object.__new__(kind)
        Curvature.__init__(curvature, state["names"], [torch.Size(s) for s in state["shapes"]], blocks)
        return curvature

    def ema_(self, other: Curvature, decay: float) -> None:
        """In place: F ← decay·F + (1 − decay)·F_new, blockwise. Exact for diagonal and dense
        blocks; Kronecker blocks average their factors and eigen-Kronecker blocks their scalings
        (see those classes)."""
        self._check_same_blocks(other)
        for mine, new in zip(self._blocks, other._blocks):
            mine.ema_(new, decay)

    def _check_same_blocks(self, other: Curvature) -> None:
        self.check_compatible(other)
        if [b.names for b in self._blocks] != [b.names for b in other._blocks]:
            raise ValueError("the two Fisher representations group parameters into different blocks.")

    def __add__(self: Self, other: Curvature) -> Self:
        """The exact sum, blockwise; blocks of kinds without a closed sum are kept as sums."""
        if not isinstance(other, Curvature):
            return NotImplemented
        self._check_same_blocks(other)
        return self._with_blocks([a + b for a, b in zip(self._blocks, other._blocks)])

    def __mul__(self: Self, scalar: float) -> Self:
        """scalar·F for a number scalar ≥ 0 (a representation stays positive semi-definite)."""
        if not isinstance(scalar, (int, float)):
            return NotImplemented
        if not scalar >= 0:
            raise ValueError(f"a Fisher can only be scaled by a number >= 0; got {scalar}.")
        return self._with_blocks([block.scaled(scalar) for block in self._blocks])

    def __rmul__(self: Self, scalar: float) -> Self:
        return self * scalar

    def __repr__(self) -> str:
        kinds: dict[str, int] = {}
        for block in self._blocks:
            kinds[type(block).__name__] = kinds.get(type(block).__name__, 0) + 1
        described = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
        total = sum(s.numel() for s in self.shapes)
        return f"{type(self).__name__}({total} parameters in {described}; trace={float(self.trace()):.4g})"


CURVATURE_KINDS: dict[str, type[Curvature]] = {}


def _first_tensor(blocks: Sequence[Block]) -> Tensor:
    for block in blocks:
        for value in block.state().values():
            if isinstance(value, Tensor):
                return value
            if isinstance(value, list) and value and isinstance(value[0], Tensor):
                return value[0]
    raise ValueError("the Fisher holds no tensors")
