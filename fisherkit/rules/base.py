"""What a layer rule computes from one captured call of a layer.

Index conventions: k columns (MC draws or square-root columns of the output Fisher), n batch,
t shared positions (sequence steps, conv output locations), i input features, o output features.
Every captured tensor keeps the batch axis n first; backpropagated output gradients carry the
column axis k in front: ``(K, B, ...)``. The per-sample gradient of column k for sample n is
∇_θ (s_{k,n} · f_n); the diagonal Fisher accumulates Σ_{k,n} of its square.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge
from typing_extensions import TypeVar

from fisherkit.curvature.kronecker_layout import KroneckerLayout

OutputGrad = Tensor | tuple[Tensor, ...]
"""``(K, B, ...)`` gradients w.r.t. a layer's output, or a tuple of them (one per output tensor)."""


def leading_grad(grad: OutputGrad) -> Tensor:
    """The gradient w.r.t. the (first) output tensor."""
    return grad if isinstance(grad, Tensor) else grad[0]


def single_grad(grad: OutputGrad) -> Tensor:
    """The gradient of a module that returns one tensor (every module whose rule is not the
    fallback: the capture records one output for them).

    Raises:
        TypeError: ``grad`` holds the gradients of several outputs.
    """
    if not isinstance(grad, Tensor):
        raise TypeError(f"expected the gradient of one output tensor; got {len(grad)} (a rule for one output).")
    return grad


ModuleT = TypeVar("ModuleT", bound=nn.Module, default=nn.Module)
"""The module type a rule serves."""
GradT = TypeVar("GradT", bound=OutputGrad, default=Tensor)
"""What the rule receives as ``grad_output``: a tensor, or ``OutputGrad`` for a rule that serves
modules returning several tensors (only those are captured with one gradient per output)."""


@dataclass
class LayerCall:
    """One captured call of a module: its inputs, and where its output sits in the autograd graph.

    Attributes:
        args: Positional inputs, detached, batch axis first.
        kwargs: Keyword inputs, detached.
        output_edges: The autograd edge of each floating-point tensor in the output as the module
            returned it (one for a tensor output; one per tensor of a tuple output, which only
            the fallback rule accepts). Gradients are taken w.r.t. these edges rather than the
            tensors: the output's memory is not kept alive, and an in-place operation downstream
            (``ReLU(inplace=True)``) cannot change what it means. ``None`` where the call ran
            without autograd (under ``torch.no_grad``): no gradient reaches its parameters there.
        output_shapes: Their shapes.
        batch_size: B, the number of samples of the batch the call belongs to.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    output_edges: tuple[GradientEdge | None, ...] = ()
    output_shapes: tuple[torch.Size, ...] = ()
    batch_size: int = 1

    @property
    def tracked(self) -> bool:
        """True when a gradient can reach the module's parameters through this call."""
        return any(edge is not None for edge in self.output_edges)

    @property
    def input(self) -> Tensor:
        """The first positional input (the layer input for every built-in rule)."""
        return self.args[0]


class LayerRule(Generic[ModuleT, GradT]):
    """Per-layer math for the parameters a module owns directly.

    Subclasses must implement ``per_sample_grads``; ``accumulate_sqgrad`` and ``accumulate_sqnorm``
    are optional fast paths that should never materialize per-sample gradients. Rules with a
    Kronecker factorization (KFAC, EKFAC) also implement ``kronecker_layout``, ``kronecker_inputs``
    and ``kronecker_grads``. A rule for one module type names it, ``class MyRule(LayerRule[MyLayer])``,
    so that its methods see the module's attributes.

    Attributes:
        input_factor_diagonal: The input factor is diagonal (embedding token frequencies) and is the
            left factor of the layout; otherwise the output-gradient factor is left and the input
            factor right.
    """

    input_factor_diagonal: ClassVar[bool] = False

    def check(self, module: ModuleT) -> None:
        """Raises ``ValueError`` when this module's configuration is outside what the rule supports."""

    def per_sample_grads(
        self, module: ModuleT, call: LayerCall, grad_output: GradT, names: Collection[str]
    ) -> dict[str, Tensor]:
        """Per-sample gradients of the listed direct parameters.

        Args:
            module: The layer.
            call: Its captured call.
            grad_output: ``(K, B, *output.shape[1:])`` gradients w.r.t. the layer output (a tuple
                of such, one per output tensor, for modules returning several; fallback only).
            names: Direct parameter names (e.g. ``"weight"``) to compute.

        Returns:
            ``{name: (K, B, *param.shape)}``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not provide per-sample gradients")

    def accumulate_sqgrad(self, module: ModuleT, call: LayerCall, grad_output: GradT, out: dict[str, Tensor]) -> None:
        """Adds Σ_{k,n} (per-sample gradient)² into ``out``; by default from ``per_sample_grads``.

        Args:
            module: The layer.
            call: Its captured call.
            grad_output: ``(K, B, *output.shape[1:])`` gradients w.r.t. the layer output.
            out: ``{direct parameter name: accumulator}`` for the requested parameters, each of the
                parameter's shape in float32 or float64.
        """
        for name, g in self.per_sample_grads(module, call, grad_output, out.keys()).items():
            out[name].add_(g.square().sum((0, 1)))

    def accumulate_sqnorm(
        self, module: ModuleT, call: LayerCall, grad_output: GradT, names: Collection[str], out: Tensor
    ) -> None:
        """Adds ‖per-sample gradient‖² over the listed parameters into ``out``; by default from
        ``per_sample_grads``.

        Args:
            module: The layer.
            call: Its captured call.
            grad_output: ``(K, B, *output.shape[1:])`` gradients w.r.t. the layer output.
            names: Direct parameter names to include.
            out: ``(K, B)`` float32 or float64 accumulator.
        """
        for g in self.per_sample_grads(module, call, grad_output, names).values():
            out.add_(g.to(out.dtype).flatten(2).square().sum(-1))

    def kronecker_layout(self, module: ModuleT, names: Collection[str]) -> KroneckerLayout | None:
        """The Kronecker view of the requested parameters, or None when the rule has none (the
        structured estimators then give the module diagonal blocks)."""
        return None

    def kronecker_inputs(self, module: ModuleT, call: LayerCall) -> Iterator[Tensor]:
        """Layer inputs at every shared position, a few consecutive samples at a time.

        Yields:
            ``a (b, groups, T, D)`` such that the per-sample weight gradient of a group is
            Σ_t g_t a_tᵀ; token ids ``(b, 1, T)`` (−1 where no gradient flows) when
            ``input_factor_diagonal``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no Kronecker factorization")

    def kronecker_grads(self, module: ModuleT, call: LayerCall, grad_output: GradT) -> Tensor:
        """Output gradients ``(K, B, groups, T, rows)`` at the positions of ``kronecker_inputs``."""
        raise NotImplementedError(f"{type(self).__name__} has no Kronecker factorization")

    def kronecker_pairs(self, module: ModuleT, call: LayerCall, grad_output: GradT) -> Iterator[tuple[Tensor, Tensor]]:
        """``(a, g)`` chunks over the same samples: ``kronecker_inputs`` with the matching slice of
        ``kronecker_grads``."""
        grads = self.kronecker_grads(module, call, grad_output)
        start = 0
        for a in self.kronecker_inputs(module, call):
            yield a, grads[:, start : start + a.shape[0]]
            start += a.shape[0]


def requested(names: Collection[str], module: nn.Module, name: str) -> bool:
    """True when ``name`` is requested and the module really has that parameter (bias may be None)."""
    return name in names and getattr(module, name, None) is not None


def flatten_positions(tensor: Tensor, leading: int, trailing: int) -> Tensor:
    """Merges the axes between the first ``leading`` and the last ``trailing`` into one axis t.

    ``(K, B, T1, T2, O)`` with leading=2, trailing=1 → ``(K, B, T1·T2, O)``; no positions → t = 1.
    """
    shape = tensor.shape
    tail = shape[tensor.dim() - trailing :] if trailing else torch.Size()
    return tensor.reshape(*shape[:leading], -1, *tail)
