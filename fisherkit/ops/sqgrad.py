"""``sqgrad_accumulate``: the squared per-sample gradient sum of a Linear-type layer.

For per-sample gradients P_{k,n} = Σ_t g_{k,n,t} a_{n,t}ᵀ (k columns, n samples, t shared
positions), ``out += scale · Σ_{k,n} P_{k,n} ⊙ P_{k,n}`` and, for the bias, whose per-sample
gradient is Σ_t g_{k,n,t}, ``bias_out += scale · Σ_{k,n} (Σ_t g_{k,n,t})²``. Without sharing
(T = 1) the weight part is one GEMM, (Σ_k G_k ⊙ G_k)ᵀ (A ⊙ A), and the bias reuses Σ_k G_k ⊙ G_k;
with sharing each P_{k,n} is formed a few samples at a time, squared and added, so a
``[N, O, I]`` tensor never exists. Work is split over samples, never positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fisherkit.ops.aliasing import refuse_aliasing
from fisherkit.ops.dispatch import Implementation, implementation, register_implementation

SCRATCH_BYTES = 2 * 2**20  # per-sample tiles formed at once (8 MB was no faster end to end, and used more memory)


def tile_scratch(samples: int, out_features: int, in_features: int, like: Tensor) -> Tensor:
    """One ``(chunk, O, I)`` buffer reused for every chunk of per-sample tiles (a fresh allocation
    per chunk was measured to cost more than the batched GEMM that fills it)."""
    chunk = min(samples, max(1, SCRATCH_BYTES // max(1, out_features * in_features * like.element_size())))
    return torch.empty(chunk, out_features, in_features, dtype=like.dtype, device=like.device)


def sqgrad_accumulate(
    out: Tensor,
    grad_output: Tensor,
    inputs: Tensor,
    scale: float = 1.0,
    bias_out: Tensor | None = None,
    backend: str | None = None,
) -> Tensor:
    """Adds ``scale · Σ_{k,n} (Σ_t g_{k,n,t} a_{n,t}ᵀ)²`` into ``out`` in place.

    Args:
        out: ``(O, I)`` float32 or float64 accumulator.
        grad_output: ``(K, N, T, O)`` output gradients g.
        inputs: ``(N, T, I)`` layer inputs a.
        scale: Multiplier of the sums.
        bias_out: Optional ``(O,)`` accumulator (dtype of ``out``) for the bias term.
        backend: ``"reference"``, ``"triton"`` or ``None`` (see ``fisherkit.ops.dispatch``; an
            explicit backend that cannot serve the call raises). Triton serves float32 accumulators
            with T > 1 (a fused kernel: per-sample tiles squared in registers, samples split over
            programs, partials summed in a fixed order, so results are deterministic); T = 1 (one
            GEMM) and float64 are the reference's. On CPU the reference serves every call: a C++
            kernel measured 1.03–1.15× faster, below what a compiled kernel must earn.

    Returns:
        ``out``. Products are formed in ``out.dtype`` (never squared in half precision).
    """
    _check(out, grad_output, inputs, bias_out)
    refuse_aliasing(
        "sqgrad_accumulate", {"out": out, "bias_out": bias_out}, {"grad_output": grad_output, "inputs": inputs}
    )
    chosen = implementation("sqgrad_accumulate", out, grad_output, inputs, scale, bias_out, backend=backend)
    if grad_output.numel() == 0 or inputs.numel() == 0:  # no samples, columns or positions: nothing to add
        return out
    chosen.run(out, grad_output, inputs, float(scale), bias_out)
    return out


def check_layer_operands(op: str, grad_output: Tensor, inputs: Tensor) -> None:
    """Raises ``ValueError`` unless ``grad_output`` is ``(K, N, T, O)`` and ``inputs`` ``(N, T, I)``."""
    if grad_output.dim() != 4 or inputs.dim() != 3 or inputs.shape[:2] != grad_output.shape[1:3]:
        raise ValueError(
            f"{op} needs grad_output (K, N, T, O) and inputs (N, T, I) with the same N and T; got "
            f"{tuple(grad_output.shape)} and {tuple(inputs.shape)}"
        )


def _check(out: Tensor, grad_output: Tensor, inputs: Tensor, bias_out: Tensor | None) -> None:
    if out.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"sqgrad_accumulate accumulates in float32 or float64; got out of dtype {out.dtype}")
    check_layer_operands("sqgrad_accumulate", grad_output, inputs)
    o = grad_output.shape[3]
    if tuple(out.shape) != (o, inputs.shape[2]):
        raise ValueError(
            f"sqgrad_accumulate shapes disagree: out {tuple(out.shape)}, grad_output "
            f"{tuple(grad_output.shape)}, inputs {tuple(inputs.shape)}"
        )
    if bias_out is not None and (tuple(bias_out.shape) != (o,) or bias_out.dtype != out.dtype):
        raise ValueError(
            f"sqgrad_accumulate: bias_out must have shape ({o},) and dtype {out.dtype}; got "
            f"{tuple(bias_out.shape)} of {bias_out.dtype}"
        )


def sqgrad_accumulate_reference(
    out: Tensor, grad_output: Tensor, inputs: Tensor, scale: float = 1.0, bias_out: Tensor | None = None
) -> Tensor:
    """The pure-torch implementation of ``sqgrad_accumulate`` (same contract)."""
    dtype = out.dtype
    columns, samples, positions, out_features = grad_output.shape
    if positions == 1:
        g = grad_output[:, :, 0].to(dtype)
        g_squared = (g * g).sum(0)
        a = inputs[:, 0].to(dtype)
        out.addmm_(g_squared.T, a * a, alpha=scale)
        if bias_out is not None:
            bias_out.add_(g_squared.sum(0), alpha=scale)
        return out
    scratch = tile_scratch(samples, out_features, inputs.shape[2], out)
    reduced = torch.empty_like(out)
    for k in range(columns):
        for start in range(0, samples, scratch.shape[0]):
            g = grad_output[k, start : start + scratch.shape[0]].to(dtype)
            tiles = scratch[: g.shape[0]]
            torch.bmm(g.transpose(-1, -2), inputs[start : start + g.shape[0]].to(dtype), out=tiles)
            torch.sum(tiles.mul_(tiles), 0, out=reduced)
            out.add_(reduced, alpha=scale)
    if bias_out is not None:
        bias = grad_output.to(dtype).sum(2)
        bias_out.add_((bias * bias).sum((0, 1)), alpha=scale)
    return out


register_implementation(Implementation("sqgrad_accumulate", "reference", sqgrad_accumulate_reference))
