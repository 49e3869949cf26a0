"""Triton kernels for ``sqgrad_accumulate`` and ``persample_sqnorm`` (shared positions, T > 1) and
``kfac_factor_update``.

Imported only by ``fisherkit.ops.triton_backend`` after Triton is known to work. One launch
configuration per device kind (``triton_backend.launch_config``), so nothing autotunes (and the CPU
interpreter, ``TRITON_INTERPRET=1``, runs them as they are). Products accumulate in float32
(``ieee`` precision for float32 inputs, tensor cores for half inputs), and no value is squared in
half precision.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _dot(left, right, HALF_INPUTS: tl.constexpr):
    """left @ right in float32: tensor cores for half inputs, ``ieee`` precision otherwise."""
    if HALF_INPUTS:
        return tl.dot(left, right)
    return tl.dot(left.to(tl.float32), right.to(tl.float32), input_precision="ieee")


@triton.jit
def _per_sample_tile(
    g_base, a_base, rows, cols, positions, out_features, in_features,
    g_stride_t, g_stride_o, a_stride_t, a_stride_i,
    HALF_INPUTS: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """(Σ_t g_t a_tᵀ)[rows, cols] of one column and sample, accumulated in float32 registers."""
    tile = tl.zeros((BLOCK_O, BLOCK_I), dtype=tl.float32)
    for start in range(0, positions, BLOCK_T):
        steps = start + tl.arange(0, BLOCK_T)
        g = tl.load(
            g_base + steps[:, None] * g_stride_t + rows[None, :] * g_stride_o,
            mask=(steps[:, None] < positions) & (rows[None, :] < out_features),
            other=0.0,
        )
        a = tl.load(
            a_base + steps[:, None] * a_stride_t + cols[None, :] * a_stride_i,
            mask=(steps[:, None] < positions) & (cols[None, :] < in_features),
            other=0.0,
        )
        tile += _dot(tl.trans(g), a, HALF_INPUTS)
    return tile


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
            tile = _per_sample_tile(
                g_ptr + k * g_stride_k + n * g_stride_n, a_ptr + n * a_stride_n, rows, cols,
                positions, out_features, in_features, g_stride_t, g_stride_o, a_stride_t, a_stride_i,
                HALF_INPUTS, BLOCK_O, BLOCK_I, BLOCK_T,
            )  # fmt: skip
            acc += tile * tile
    mask = (rows[:, None] < out_features) & (cols[None, :] < in_features)
    offsets = split * out_features * in_features + rows[:, None] * in_features + cols[None, :]
    tl.store(partial_ptr + offsets, acc, mask=mask)


@triton.jit
def _gram_block(
    ptr, first, second, positions, features, stride_t, stride_f,
    HALF_INPUTS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr,
):  # fmt: skip
    """X[first] X[second]ᵀ for two blocks of positions of one sample's ``(T, F)`` matrix X."""
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
        acc += _dot(left, tl.trans(right), HALF_INPUTS)
    return acc


@triton.jit
def sqnorm_gram_kernel(
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
        g_ptr + k * g_stride_k + n * g_stride_n, first, second, positions, out_features, g_stride_t, g_stride_o,
        HALF_INPUTS, BLOCK_T, BLOCK_F,
    )  # fmt: skip
    aa = _gram_block(
        a_ptr + n * a_stride_n, first, second, positions, in_features, a_stride_t, a_stride_i,
        HALF_INPUTS, BLOCK_T, BLOCK_F,
    )  # fmt: skip
    weight = tl.where(second < first, 2.0, 1.0)
    tl.store(partial_ptr + pid * tl.num_programs(1) + pair, weight * tl.sum(gg * aa))


@triton.jit
def sqnorm_tiles_kernel(
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
    tile = _per_sample_tile(
        g_ptr + k * g_stride_k + n * g_stride_n, a_ptr + n * a_stride_n, rows, cols,
        positions, out_features, in_features, g_stride_t, g_stride_o, a_stride_t, a_stride_i,
        HALF_INPUTS, BLOCK_O, BLOCK_I, BLOCK_T,
    )  # fmt: skip
    tiles = tl.num_programs(1) * tl.num_programs(2)
    tl.store(partial_ptr + pid * tiles + tile_o * tl.num_programs(2) + tile_i, tl.sum(tile * tile))


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
        acc += _dot(tl.trans(left), right, HALF_INPUTS)
    mask = (rows[:, None] < dim) & (cols[None, :] < dim)
    pointers = factor_ptr + rows[:, None] * factor_stride + cols[None, :]
    old = tl.load(pointers, mask=mask, other=0.0)
    tl.store(pointers, beta * old + alpha * acc, mask=mask)


def grid_size(size: int, block: int) -> int:
    return triton.cdiv(size, block)
