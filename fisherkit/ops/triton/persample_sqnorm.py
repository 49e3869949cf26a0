"""``persample_sqnorm`` on Triton: the Gram and the tile kernels for shared positions (T > 1), their
launcher and the ``fisherkit::persample_sqnorm_triton`` custom op (with a fake)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from fisherkit.ops.dispatch import Implementation, register_implementation
from fisherkit.ops.triton.common import (
    dot,
    grid_size,
    kernel_operands,
    launch_config,
    layer_refusal,
    lower_triangle_tiles,
    offset_64,
    per_sample_tile,
)


@triton.jit
def _gram_block(
    ptr, first, second, positions, features, stride_t, stride_f,
    HALF_INPUTS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr,
):  # fmt: skip
    """X[first] X[second]ᵀ for two blocks of positions of one sample's ``(T, F)`` matrix X (``ptr``
    at the sample; 32-bit offsets inside it)."""
    rows = first * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = second * BLOCK_T + tl.arange(0, BLOCK_T)
    acc = tl.zeros((BLOCK_T, BLOCK_T), dtype=tl.float32)
    for start in range(0, features, BLOCK_F):
        f = start + tl.arange(0, BLOCK_F)
        left = tl.load(
            ptr + rows[:, None] * stride_t + f[None, :] * stride_f,
            mask=(rows[:, None] < positions) & (f[None, :] < features),
            other=0.0,
        )
        right = tl.load(
            ptr + cols[:, None] * stride_t + f[None, :] * stride_f,
            mask=(cols[:, None] < positions) & (f[None, :] < features),
            other=0.0,
        )
        acc += dot(left, tl.trans(right), HALF_INPUTS)
    return acc


@triton.jit
def persample_sqnorm_gram_kernel(
    g_ptr, a_ptr, pair_first_ptr, pair_second_ptr, partial_ptr,
    samples, positions, out_features, in_features,
    g_stride_k, g_stride_n, g_stride_t, g_stride_o,
    a_stride_n, a_stride_t, a_stride_i,
    HALF_INPUTS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr,
):  # fmt: skip
    """partial[k·N + n, pair] = w · Σ (G Gᵀ ⊙ A Aᵀ) over one pair (first ≥ second) of position blocks
    of one column and sample, w = 2 off the diagonal; summed over pairs, ‖Gᵀ A‖²_F."""
    pid = tl.program_id(0)
    pair = tl.program_id(1)
    k = pid // samples
    n = pid % samples
    first = tl.load(pair_first_ptr + pair)
    second = tl.load(pair_second_ptr + pair)
    gg = _gram_block(
        g_ptr + offset_64(k, g_stride_k, n, g_stride_n), first, second, positions, out_features, g_stride_t,
        g_stride_o, HALF_INPUTS, BLOCK_T, BLOCK_F,
    )  # fmt: skip
    aa = _gram_block(
        a_ptr + tl.cast(n, tl.int64) * a_stride_n, first, second, positions, in_features, a_stride_t, a_stride_i,
        HALF_INPUTS, BLOCK_T, BLOCK_F,
    )  # fmt: skip
    weight = tl.where(second < first, 2.0, 1.0)
    tl.store(partial_ptr + offset_64(pid, tl.num_programs(1), pair, 1), weight * tl.sum(gg * aa))


@triton.jit
def persample_sqnorm_tiles_kernel(
    g_ptr, a_ptr, partial_ptr,
    samples, positions, out_features, in_features,
    g_stride_k, g_stride_n, g_stride_t, g_stride_o,
    a_stride_n, a_stride_t, a_stride_i,
    HALF_INPUTS: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """partial[k·N + n, tile] = ‖(Gᵀ A)[tile]‖²_F: one (BLOCK_O, BLOCK_I) tile of one per-sample
    gradient, complete in registers before it is squared."""
    pid = tl.program_id(0)
    tile_o = tl.program_id(1)
    tile_i = tl.program_id(2)
    k = pid // samples
    n = pid % samples
    rows = tile_o * BLOCK_O + tl.arange(0, BLOCK_O)
    cols = tile_i * BLOCK_I + tl.arange(0, BLOCK_I)
    tile = per_sample_tile(
        g_ptr + offset_64(k, g_stride_k, n, g_stride_n), a_ptr + tl.cast(n, tl.int64) * a_stride_n, rows, cols,
        positions, out_features, in_features, g_stride_t, g_stride_o, a_stride_t, a_stride_i,
        HALF_INPUTS, BLOCK_O, BLOCK_I, BLOCK_T,
    )  # fmt: skip
    tiles = tl.num_programs(1) * tl.num_programs(2)
    tl.store(partial_ptr + offset_64(pid, tiles, tile_o * tl.num_programs(2) + tile_i, 1), tl.sum(tile * tile))


@torch.library.custom_op("fisherkit::persample_sqnorm_triton", mutates_args=("out",))
def persample_sqnorm_op(out: Tensor, grad_output: Tensor, inputs: Tensor, scale: float, gram: bool) -> None:
    """out[k, n] += scale · ‖Σ_t g_{k,n,t} a_{n,t}ᵀ‖² through the Gram or the tile kernel."""
    columns, samples, positions, out_features = grad_output.shape
    in_features = inputs.shape[2]
    (grad_output, inputs), half = kernel_operands(grad_output, inputs)
    config = launch_config(out.device)
    shape = (samples, positions, out_features, in_features, *grad_output.stride(), *inputs.stride())
    launch = {"HALF_INPUTS": half, "num_warps": config.num_warps, "num_stages": config.num_stages}
    if gram:
        first, second = lower_triangle_tiles(grid_size(positions, config.gram), out.device)
        partial = torch.empty(columns * samples, len(first), dtype=torch.float32, device=out.device)
        persample_sqnorm_gram_kernel[partial.shape](
            grad_output, inputs, first, second, partial, *shape,
            BLOCK_T=config.gram, BLOCK_F=config.gram_features, **launch,
        )  # fmt: skip
    else:
        tiles = (grid_size(out_features, config.rows), grid_size(in_features, config.cols))
        partial = torch.empty(columns * samples, tiles[0] * tiles[1], dtype=torch.float32, device=out.device)
        grid = (columns * samples, *tiles)
        persample_sqnorm_tiles_kernel[grid](
            grad_output, inputs, partial, *shape,
            BLOCK_O=config.rows, BLOCK_I=config.cols, BLOCK_T=config.reduce, **launch,
        )  # fmt: skip
    out.add_(partial.sum(1).view(columns, samples), alpha=scale)


@persample_sqnorm_op.register_fake
def _(out: Tensor, grad_output: Tensor, inputs: Tensor, scale: float, gram: bool) -> None:
    return None


def persample_sqnorm_triton(
    out: Tensor, grad_output: Tensor, inputs: Tensor, scale: float, bias: bool, gram: bool
) -> None:
    """The weight term through a kernel; the bias ‖Σ_t g‖² in torch."""
    torch.ops.fisherkit.persample_sqnorm_triton(out, grad_output, inputs, float(scale), bool(gram))
    if bias:
        out.add_(grad_output.to(torch.float32).sum(2).square().sum(-1), alpha=scale)


def refusal(out: Tensor, grad_output: Tensor, inputs: Tensor, *options: object) -> str | None:
    """Triton serves float32 accumulators with shared positions (T > 1) on its devices."""
    return layer_refusal(out, grad_output, inputs, "T = 1 is the closed form ‖g‖²‖a‖², which the reference computes")


register_implementation(Implementation("persample_sqnorm", "triton", persample_sqnorm_triton, refusal))
