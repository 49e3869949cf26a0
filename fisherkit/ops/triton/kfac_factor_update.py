"""``kfac_factor_update`` on Triton: the lower-triangle SYRK kernel, its launcher and the
``fisherkit::kfac_factor_update_triton`` custom op (with a fake); the mirror and the virtual ones
column are added in torch."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from fisherkit.ops.dispatch import Implementation, register_implementation
from fisherkit.ops.kfac_factor import mirror_and_add_ones
from fisherkit.ops.triton.common import (
    device_refusal,
    dot,
    grid_size,
    kernel_operands,
    launch_config,
    lower_triangle_tiles,
    offset_64,
)


@triton.jit
def kfac_factor_update_kernel(
    x_ptr, factor_ptr, tile_rows_ptr, tile_cols_ptr,
    rows_total, dim, x_stride_n, x_stride_d, factor_stride, alpha, beta,
    HALF_INPUTS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """factor[tile] ← β·factor[tile] + α·X[:, rows]ᵀ X[:, cols] for one lower-triangle tile (rows ≥ cols)."""
    pid = tl.program_id(0)
    tile_r = tl.load(tile_rows_ptr + pid)
    tile_c = tl.load(tile_cols_ptr + pid)
    rows = tile_r * BLOCK_D + tl.arange(0, BLOCK_D)
    cols = tile_c * BLOCK_D + tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    for start in range(0, rows_total, BLOCK_N):
        samples = start + tl.arange(0, BLOCK_N)
        left = tl.load(
            x_ptr + offset_64(samples[:, None], x_stride_n, rows[None, :], x_stride_d),
            mask=(samples[:, None] < rows_total) & (rows[None, :] < dim),
            other=0.0,
        )
        right = tl.load(
            x_ptr + offset_64(samples[:, None], x_stride_n, cols[None, :], x_stride_d),
            mask=(samples[:, None] < rows_total) & (cols[None, :] < dim),
            other=0.0,
        )
        acc += dot(tl.trans(left), right, HALF_INPUTS)
    mask = (rows[:, None] < dim) & (cols[None, :] < dim)
    pointers = factor_ptr + offset_64(rows[:, None], factor_stride, cols[None, :], 1)
    old = tl.load(pointers, mask=mask, other=0.0)
    tl.store(pointers, beta * old + alpha * acc, mask=mask)


@torch.library.custom_op("fisherkit::kfac_factor_update_triton", mutates_args=("factor",))
def kfac_factor_update_op(factor: Tensor, inputs: Tensor, alpha: float, beta: float) -> None:
    """The lower triangle of factor ← β·factor + α·XᵀX through ``kfac_factor_update_kernel``."""
    dim = inputs.shape[1]
    (inputs,), half = kernel_operands(inputs)
    config = launch_config(factor.device)
    rows, cols = lower_triangle_tiles(grid_size(dim, config.cols), factor.device)
    kfac_factor_update_kernel[(len(rows),)](
        inputs, factor, rows, cols,
        inputs.shape[0], dim, *inputs.stride(), factor.stride(0), alpha, beta,
        HALF_INPUTS=half, BLOCK_D=config.cols, BLOCK_N=config.reduce,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip


@kfac_factor_update_op.register_fake
def _(factor: Tensor, inputs: Tensor, alpha: float, beta: float) -> None:
    return None


def kfac_factor_update_triton(factor: Tensor, inputs: Tensor, alpha: float, beta: float, append_ones: bool) -> None:
    """Lower-triangle tiles through the kernel, then the mirror and the virtual ones column in torch."""
    torch.ops.fisherkit.kfac_factor_update_triton(factor, inputs, float(alpha), float(beta))
    mirror_and_add_ones(factor, inputs.to(factor.dtype), alpha, beta, append_ones)


def refusal(factor: Tensor, inputs: Tensor, *options: object) -> str | None:
    """Triton serves row-major float32 factors on its devices."""
    if factor.dtype != torch.float32:
        return f"its kernel accumulates in float32, factor is {factor.dtype} (the reference serves float64)"
    if factor.stride(1) != 1:
        return "its kernel writes row-major factors; this factor's columns are strided"
    return device_refusal(factor, inputs)


register_implementation(Implementation("kfac_factor_update", "triton", kfac_factor_update_triton, refusal))
