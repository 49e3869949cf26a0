"""``sqgrad_accumulate`` on Triton: the fused kernel for shared positions (T > 1), its launcher and
the ``fisherkit::sqgrad_accumulate_triton`` custom op (with a fake, for ``torch.compile``)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from fisherkit.ops.dispatch import Implementation, register_implementation
from fisherkit.ops.triton.common import (
    grid_size,
    kernel_operands,
    launch_config,
    layer_refusal,
    offset_64,
    per_sample_tile,
)

MAX_SPLITS = 16  # sample splits (partials summed in a fixed order: deterministic)
TARGET_PROGRAMS = 1024  # samples are split only until about this many programs fill the GPU


@triton.jit
def sqgrad_accumulate_kernel(
    g_ptr, a_ptr, partial_ptr,
    columns, samples, positions, out_features, in_features, splits,
    g_stride_k, g_stride_n, g_stride_t, g_stride_o,
    a_stride_n, a_stride_t, a_stride_i,
    HALF_INPUTS: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """partial[s] = Σ_{n ≡ s (mod splits)} Σ_k (Σ_t g_{k,n,t} a_{n,t}ᵀ)² on one (BLOCK_O, BLOCK_I) tile.

    Work is split over samples (program axis 2), never over positions: each per-sample tile is
    complete in registers before it is squared. Sample offsets are 64-bit.
    """
    tile_o = tl.program_id(0)
    tile_i = tl.program_id(1)
    split = tl.program_id(2)
    rows = tile_o * BLOCK_O + tl.arange(0, BLOCK_O)
    cols = tile_i * BLOCK_I + tl.arange(0, BLOCK_I)
    acc = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
    for n in range(split, samples, splits):
        for k in range(0, columns):
            tile = per_sample_tile(
                g_ptr + offset_64(k, g_stride_k, n, g_stride_n), a_ptr + tl.cast(n, tl.int64) * a_stride_n, rows, cols,
                positions, out_features, in_features, g_stride_t, g_stride_o, a_stride_t, a_stride_i,
                HALF_INPUTS, BLOCK_O, BLOCK_I, BLOCK_T,
            )  # fmt: skip
            acc += tile * tile
    mask = (rows[:, None] < out_features) & (cols[None, :] < in_features)
    offsets = offset_64(split, out_features * in_features, rows[:, None], in_features) + cols[None, :]
    tl.store(partial_ptr + offsets, acc, mask=mask)


@torch.library.custom_op("fisherkit::sqgrad_accumulate_triton", mutates_args=("out",))
def sqgrad_accumulate_op(out: Tensor, grad_output: Tensor, inputs: Tensor, scale: float) -> None:
    """out += scale · Σ_{k,n} (Σ_t g_{k,n,t} a_{n,t}ᵀ)² through ``sqgrad_accumulate_kernel``."""
    columns, samples, positions, out_features = grad_output.shape
    in_features = inputs.shape[2]
    (grad_output, inputs), half = kernel_operands(grad_output, inputs)
    config = launch_config(out.device)
    tiles = (grid_size(out_features, config.rows), grid_size(in_features, config.cols))
    # Each split is an (O, I) float32 partial: split only until the output tiles fill the GPU (a
    # 4096 × 4096 layer has 2,048 tiles: one 64 MB partial instead of sixteen, 1 GB).
    splits = min(samples, MAX_SPLITS, -(-TARGET_PROGRAMS // (tiles[0] * tiles[1])))
    partial = torch.empty(splits, out_features, in_features, dtype=torch.float32, device=out.device)
    grid = (*tiles, splits)
    sqgrad_accumulate_kernel[grid](
        grad_output, inputs, partial,
        columns, samples, positions, out_features, in_features, splits,
        *grad_output.stride(), *inputs.stride(),
        HALF_INPUTS=half, BLOCK_O=config.rows, BLOCK_I=config.cols, BLOCK_T=config.reduce,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    out.add_(partial.sum(0), alpha=scale)


@sqgrad_accumulate_op.register_fake
def _(out: Tensor, grad_output: Tensor, inputs: Tensor, scale: float) -> None:
    return None


def sqgrad_accumulate_triton(
    out: Tensor, grad_output: Tensor, inputs: Tensor, scale: float, bias_out: Tensor | None
) -> None:
    """The weight term through the kernel; the bias (Σ_t g)² in torch."""
    torch.ops.fisherkit.sqgrad_accumulate_triton(out, grad_output, inputs, float(scale))
    if bias_out is not None:
        bias = grad_output.to(torch.float32).sum(2)
        bias_out.add_((bias * bias).sum((0, 1)), alpha=scale)


def refusal(out: Tensor, grad_output: Tensor, inputs: Tensor, *options: object) -> str | None:
    """Triton serves float32 accumulators with shared positions (T > 1) on its devices."""
    return layer_refusal(out, grad_output, inputs, "T = 1 is one GEMM, which the reference runs on cuBLAS")


register_implementation(Implementation("sqgrad_accumulate", "triton", sqgrad_accumulate_triton, refusal))
