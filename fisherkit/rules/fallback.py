"""The rule for layers without a registered rule: per-sample gradients by ``torch.func``."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp, vmap
from torch.utils._pytree import tree_leaves

from fisherkit.batch_axis import Dims, add_batch_axis, batch_dims, take_rows
from fisherkit.errors import UnsupportedModelError
from fisherkit.rules.base import LayerCall, LayerRule, OutputGrad


def _output_tensors(output: Any) -> tuple[Tensor, ...]:
    """The floating-point tensors of a module's output, in the order the capture records them."""
    return tuple(leaf for leaf in tree_leaves(output) if isinstance(leaf, Tensor) and leaf.is_floating_point())


LOOPED_MODULES: tuple[type[nn.Module], ...] = (nn.RNNBase,)
"""Modules whose forward cannot be vmapped over samples (in-place ops on the cuDNN-style flat
weights of ``nn.LSTM``/``nn.GRU``/``nn.RNN``): their samples are differentiated one at a time."""


class TorchFuncRule(LayerRule[nn.Module, OutputGrad]):
    """Per-sample vector-Jacobian products of one module call, vmapped over samples and columns.

    Works for any module whose batched inputs carry the batch axis first (tensors whose first axis
    is not B, such as a shared attention mask, are passed whole to every sample), with one tensor
    or several (tuples, nested: ``nn.LSTM``, ``nn.MultiheadAttention``) as output. Where each output
    tensor keeps its batch axis is found by running the module on one sample (``nn.LSTM``'s states
    keep it second). Costs roughly one backward per (sample, column) batch element; modules in
    ``LOOPED_MODULES`` run one sample at a time. Parameter names may be dotted (a submodule's
    parameter that the module's forward reads directly, as ``nn.MultiheadAttention`` does with
    ``out_proj``).
    """

    def check(self, module: nn.Module) -> None:
        if getattr(module, "batch_first", True) is False:
            raise UnsupportedModelError(
                f"{type(module).__name__} with batch_first=False takes the batch on its second axis; the "
                f"per-sample fallback needs it first. Build it with batch_first=True."
            )

    def per_sample_grads(
        self, module: nn.Module, call: LayerCall, grad_output: OutputGrad, names: Collection[str]
    ) -> dict[str, Tensor]:
        params = {name: found.detach() for name in names if (found := _parameter(module, name)) is not None}
        names = list(params)
        if not names:
            return {}
        grads = (grad_output,) if isinstance(grad_output, Tensor) else tuple(grad_output)
        dims = batch_dims(call.args, call.kwargs, call.batch_size)
        axes = self._batch_axes(module, call, dims)
        if isinstance(module, LOOPED_MODULES):
            return _looped_per_sample_grads(module, call, grads, params, dims, axes)

        def one_sample(args: tuple, kwargs: dict[str, Any], columns: tuple[Tensor, ...]) -> dict[str, Tensor]:
            args, kwargs = add_batch_axis(args, kwargs, dims)

            def forward(p: dict[str, Tensor]) -> tuple[Tensor, ...]:
                return _output_tensors(functional_call(module, p, args, kwargs))

            pullback = vjp(forward, params)[1]
            cotangents = tuple(c.unsqueeze(axis + 1) for c, axis in zip(columns, axes))
            return vmap(pullback)(cotangents)[0]

        in_dims = (*dims, tuple(axis + 1 for axis in axes))
        per_sample = vmap(one_sample, in_dims=in_dims)(call.args, call.kwargs, grads)
        return {name: torch.movedim(g, 0, 1) for name, g in per_sample.items()}

    @staticmethod
    def _batch_axes(module: nn.Module, call: LayerCall, dims: Dims) -> tuple[int, ...]:
        """The batch axis of each output tensor: where the full call has B and a one-sample call 1."""
        if call.batch_size == 1:
            return tuple(0 for _ in call.output_shapes)
        args, kwargs = take_rows(call.args, call.kwargs, dims, slice(0, 1))
        with torch.no_grad():
            single = _output_tensors(module(*args, **kwargs))
        axes = []
        for full, one in zip(call.output_shapes, (t.shape for t in single)):
            differ = [i for i, (f, o) in enumerate(zip(full, one)) if f != o]
            if len(full) != len(one) or differ != [i for i in differ if full[i] == call.batch_size and one[i] == 1]:
                raise UnsupportedModelError(
                    f"{type(module).__name__}: an output of shape {tuple(full)} does not keep one batch axis (one "
                    f"sample gives {tuple(one)}); per-sample gradients are undefined. Register a rule for it."
                )
            axes.append(differ[0] if differ else 0)
        return tuple(axes)


def _parameter(module: nn.Module, name: str) -> Tensor | None:
    """The (possibly dotted) parameter ``name`` of ``module``, or None (an absent bias)."""
    owner, _, local = name.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, local, None)


def _looped_per_sample_grads(
    module: nn.Module,
    call: LayerCall,
    grads: tuple[Tensor, ...],
    params: dict[str, Tensor],
    dims: Dims,
    axes: tuple[int, ...],
) -> dict[str, Tensor]:
    """``{name: (K, B, *shape)}`` by one ``torch.func.vjp`` per sample and one pullback per column."""
    columns = grads[0].shape[0]
    rows: dict[str, list[Tensor]] = {name: [] for name in params}
    for n in range(call.batch_size):
        args, kwargs = take_rows(call.args, call.kwargs, dims, slice(n, n + 1))

        def forward(p: dict[str, Tensor], args: tuple = args, kwargs: dict[str, Any] = kwargs) -> tuple[Tensor, ...]:
            return _output_tensors(functional_call(module, p, args, kwargs))

        pullback = vjp(forward, params)[1]
        per_column = [
            pullback(tuple(g[k].narrow(axis, n, 1) for g, axis in zip(grads, axes)))[0] for k in range(columns)
        ]
        for name in params:
            rows[name].append(torch.stack([c[name] for c in per_column]))
    return {name: torch.stack(values, 1) for name, values in rows.items()}
