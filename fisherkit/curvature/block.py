"""A block: a symmetric positive semi-definite matrix over a few parameters of a model.

A Fisher representation is a block-diagonal matrix whose blocks may be of different kinds
(diagonal, dense, Kronecker, eigen-Kronecker, sums of these). Each block acts on the list of its
own parameters' tensors, in the order of ``names``.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

TensorList = list[Tensor]
BLOCK_KINDS: dict[str, type[Block]] = {}
DENSE_FALLBACK_LIMIT = 8192  # parameters up to which a block without a closed form is solved densely


def tensor_sum(tensors: Iterable[Tensor]) -> Tensor:
    """The sum of one or more tensors (``sum`` without its integer start value)."""
    return functools.reduce(operator.add, tensors)


def check_damping(damping: float) -> float:
    """Returns ``damping`` as a float; raises ``ValueError`` when it is negative or not finite."""
    damping = float(damping)
    if not (damping >= 0 and damping < float("inf")):
        raise ValueError(f"damping must be a finite number >= 0; got {damping}.")
    return damping


def check_decay(decay: float) -> float:
    """Returns ``decay`` as a float; raises ``ValueError`` outside [0, 1]."""
    decay = float(decay)
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"the moving-average decay must lie in [0, 1]; got {decay}.")
    return decay


def map_tensors(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """Applies ``fn`` to every tensor in a block field (a tensor, a list, a block, or None)."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, list):
        return [map_tensors(v, fn) for v in value]
    if isinstance(value, Block):
        return value.map(fn)
    return value


@dataclasses.dataclass(eq=False)
class Block(ABC):
    """A PSD matrix over the parameters ``names`` (of shapes ``shapes``).

    Subclasses are dataclasses whose extra fields hold the block's tensors; ``map``, ``state`` and
    ``from_state`` work on those fields generically, and eigendecompositions or other caches live
    in ``_cache`` (cleared whenever the tensors change).
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    kind: ClassVar[str] = "block"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        BLOCK_KINDS[cls.__name__] = cls

    def __post_init__(self) -> None:
        self.names = tuple(self.names)
        self.shapes = tuple(torch.Size(s) for s in self.shapes)
        self._cache: dict[Any, Any] = {}  # keyed by what the cached value depends on (a name, or (name, damping))

    # -- sizes and flat views -----------------------------------------------------------------
    @property
    def numel(self) -> int:
        return sum(s.numel() for s in self.shapes)

    @property
    def label(self) -> str:
        """How errors name the block: its parameters."""
        return ", ".join(self.names)

    def flatten(self, vectors: TensorList) -> Tensor:
        return torch.cat([v.reshape(-1) for v in vectors])

    def unflatten(self, flat: Tensor) -> TensorList:
        return [part.reshape(shape) for part, shape in zip(flat.split([s.numel() for s in self.shapes]), self.shapes)]

    def _fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("names", "shapes")}

    # -- generic structure operations ---------------------------------------------------------
    def map(self, fn: Callable[[Tensor], Tensor]) -> Block:
        """A block of the same kind with ``fn`` applied to every tensor (``to``, casts)."""
        return type(self)(self.names, self.shapes, **{k: map_tensors(v, fn) for k, v in self._fields().items()})

    def state(self) -> dict[str, Any]:
        """The block's kind, parameters and tensors (cloned)."""
        fields = {
            k: [v.state() for v in value] if _is_block_list(value) else map_tensors(value, torch.clone)
            for k, value in self._fields().items()
        }
        return {
            "kind": type(self).__name__,
            "names": list(self.names),
            "shapes": [list(s) for s in self.shapes],
            **fields,
        }

    @staticmethod
    def from_state(state: Mapping[str, Any]) -> Block:
        """Rebuilds a block of any kind from ``state()``."""
        kind = state.get("kind")
        if kind not in BLOCK_KINDS:
            raise ValueError(f"unknown Fisher block kind {kind!r} in a state dict; known: {sorted(BLOCK_KINDS)}")
        cls = BLOCK_KINDS[kind]
        fields = {f.name for f in dataclasses.fields(cls)} - {"names", "shapes"}
        values = {k: [Block.from_state(v) for v in state[k]] if _is_state_list(state[k]) else state[k] for k in fields}
        return cls(tuple(state["names"]), tuple(torch.Size(s) for s in state["shapes"]), **values)

    def __add__(self, other: Block) -> Block:
        """The exact sum; kinds without a closed sum give a ``SumBlock``."""
        from fisherkit.curvature.sum_block import SumBlock  # a true cycle: a SumBlock is a Block

        return SumBlock.of(self, other)

    def ema_(self, other: Block, decay: float) -> None:
        """In place: self ← decay·self + (1 − decay)·other (exact unless a kind documents otherwise)."""
        raise ValueError(
            f"block {self.label}: a moving average of a {type(self).__name__} with a {type(other).__name__} "
            f"is not defined; use blocks of the same kind."
        )

    # -- operations each kind implements -------------------------------------------------------
    @abstractmethod
    def mv(self, vectors: TensorList) -> TensorList:
        """F v."""

    @abstractmethod
    def solve(self, vectors: TensorList, damping: float, pi_damping: bool = False) -> TensorList:
        """(F + damping·I)⁻¹ v; ``pi_damping`` applies to Kronecker blocks only."""

    @abstractmethod
    def inverse(self, damping: float, pi_damping: bool = False) -> Block:
        """(F + damping·I)⁻¹ as a block."""

    @abstractmethod
    def diagonal(self) -> TensorList:
        """diag(F), parameter-shaped."""

    @abstractmethod
    def trace(self) -> Tensor:
        """tr(F)."""

    @abstractmethod
    def logdet(self, damping: float, pi_damping: bool = False) -> Tensor:
        """log det(F + damping·I)."""

    @abstractmethod
    def to_dense(self) -> Tensor:
        """The ``(p, p)`` matrix, parameters flattened in ``names`` order."""

    @abstractmethod
    def scaled(self, scalar: float) -> Block:
        """scalar·F for scalar ≥ 0."""


def _is_block_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], Block)


def _is_state_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], Mapping)


def dense_damped(block: Block, damping: float) -> Tensor:
    """F + damping·I densely, for blocks small enough (``DENSE_FALLBACK_LIMIT``); else an error."""
    if block.numel > DENSE_FALLBACK_LIMIT:
        raise ValueError(
            f"block {block.label}: a {type(block).__name__} of {block.numel} parameters has no closed-form "
            f"solve, and a dense one would need a {block.numel}² matrix. Use mv/quadratic, or combine "
            f"estimates with ema_ (which keeps the structure) instead of +."
        )
    dense = block.to_dense()
    return dense + damping * torch.eye(dense.shape[0], dtype=dense.dtype, device=dense.device)
