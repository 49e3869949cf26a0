"""Triton kernels for ``sqgrad_accumulate`` (shared positions, T > 1) and ``kfac_factor_update``.

Imported only by ``fisherkit.ops.triton_backend`` after Triton is known to work. One launch
configuration each, so nothing autotunes (and the CPU interpreter, ``TRITON_INTERPRET=1``, runs them
as they are). Products accumulate in float32 (``ieee`` precision for float32 inputs, tensor cores
for half inputs), and no value is squared in half precision.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def sqgrad_tiles_kernel(
    g_ptr, a_ptr, partial_ptr,
    columns, samples, positions, out_features, in_features, splits,
    g_stride_k, g_stride_n, g_stride_t, g_stride_o,
    a_stride_n, a_stride_t, a_stride_i,
    HALF_INPUTS: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """partial[s] = Σ_{n ≡ s (mod splits)} Σ_k (Σ_t g_{k,n,t} a_{n,t}ᵀ)² on one (BLOCK_O, BLOCK_I) tile.

    Work is split over samples (program axis 2), never over positions: each per-sample tile is
    complete in registers before it is squared.
    """
    tile_o = tl.program_id(0)
    tile_i = tl.program_id(1)
    split = tl.program_id(2)
    rows = tile_o * BLOCK_O + tl.arange(0, BLOCK_O)
    cols = tile_i * BLOCK_I + tl.arange(0, BLOCK_I)
    acc = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
    for n in range(split, samples, splits):
        for k in range(0, columns):
            tile = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
            for start in range(0, positions, BLOCK_T):
                steps = start + tl.arange(0, BLOCK_T)
                g = tl.load(
                    g_ptr + k * g_stride_k + n * g_stride_n + steps[:, None] * g_stride_t + rows[None, :] * g_stride_o,
                    mask=(steps[:, None] < positions) & (rows[None, :] < out_features),
                    other=0.0,
                )
                a = tl.load(
                    a_ptr + n * a_stride_n + steps[:, None] * a_stride_t + cols[None, :] * a_stride_i,
                    mask=(steps[:, None] < positions) & (cols[None, :] < in_features),
                    other=0.0,
                )
                if HALF_INPUTS:
                    tile += tl.dot(tl.trans(g), a)
                else:
                    tile += tl.dot(tl.trans(g.to(tl.float32)), a.to(tl.float32), input_precision="ieee")
            acc += tile * tile
    mask = (rows[:, None] < out_features) & (cols[None, :] < in_features)
    offsets = split * out_features * in_features + rows[:, None] * in_features + cols[None, :]
    tl.store(partial_ptr + offsets, acc, mask=mask)


@triton.jit
def syrk_lower_kernel(
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
            x_ptr + samples[:, None] * x_stride_n + rows[None, :] * x_stride_d,
            mask=(samples[:, None] < rows_total) & (rows[None, :] < dim),
            other=0.0,
        )
        right = tl.load(
            x_ptr + samples[:, None] * x_stride_n + cols[None, :] * x_stride_d,
            mask=(samples[:, None] < rows_total) & (cols[None, :] < dim),
            other=0.0,
        )
        if HALF_INPUTS:
            acc += tl.dot(tl.trans(left), right)
        else:
            acc += tl.dot(tl.trans(left.to(tl.float32)), right.to(tl.float32), input_precision="ieee")
    mask = (rows[:, None] < dim) & (cols[None, :] < dim)
    pointers = factor_ptr + rows[:, None] * factor_stride + cols[None, :]
    old = tl.load(pointers, mask=mask, other=0.0)
    tl.store(pointers, beta * old + alpha * acc, mask=mask)


def grid_size(size: int, block: int) -> int:
    return triton.cdiv(size, block)
