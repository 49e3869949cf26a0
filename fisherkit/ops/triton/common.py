"""What the Triton op modules share: launch configurations, operand preparation, and the jitted
helpers (float32 dot products, 64-bit offsets, per-sample tiles).

Imported only after Triton is known to work. One launch configuration per device kind, so nothing
autotunes (and the CPU interpreter runs the kernels as they are). Products accumulate in float32
(``ieee`` precision for float32 inputs, tensor cores for half inputs); no value is squared in half
precision. Offsets across samples, columns, splits and factor rows are computed in 64 bits
(``offset_64``): a ``grad_output`` of shape (17, 64, 512, 4096) has more than 2³¹ elements; inside
one sample's slice 32 bits suffice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from fisherkit.ops.triton import interpreting


@dataclass(frozen=True)
class LaunchConfig:
    """One launch configuration per device kind (nothing autotunes).

    Attributes:
        rows: Output tile rows (sqgrad, per-sample tiles, SYRK tiles).
        cols: Output tile columns.
        reduce: Positions or samples consumed per ``tl.dot``.
        gram: Position-block edge of the Gram form.
        gram_features: Features consumed per ``tl.dot`` of the Gram form.
        num_warps: Warps per program.
        num_stages: Software-pipelining stages of the loads.
    """

    rows: int
    cols: int
    reduce: int
    gram: int
    gram_features: int
    num_warps: int
    num_stages: int


INTERPRETER_CONFIG = LaunchConfig(rows=32, cols=32, reduce=16, gram=16, gram_features=32, num_warps=4, num_stages=1)
# Tensor-core sized tiles for GPUs: compiled for sm_80 and sm_90 without register spills by the
# tests (with reduce=32 the float32 sqgrad kernel spills on sm_90, with gram_features=64 the float32
# Gram kernel on sm_80); not yet timed on a GPU.
GPU_CONFIG = LaunchConfig(rows=128, cols=64, reduce=16, gram=64, gram_features=32, num_warps=8, num_stages=3)


def launch_config(device: torch.device) -> LaunchConfig:
    """Tensor-core tiles on CUDA; small tiles in the CPU interpreter, where they are only checked."""
    return GPU_CONFIG if device.type == "cuda" else INTERPRETER_CONFIG


def kernel_operands(*tensors: Tensor) -> tuple[list[Tensor], bool]:
    """The operands as the kernels read them, and whether they are half precision: fp16 or bf16
    operands of one dtype go to tensor cores (float32 accumulation); anything else becomes float32."""
    half = len({t.dtype for t in tensors}) == 1 and tensors[0].dtype in (torch.float16, torch.bfloat16)
    return (list(tensors) if half else [t.float() for t in tensors]), half


def lower_triangle_tiles(tiles: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row and column indices (int32) of the tile pairs with row ≥ column, row-major."""
    rows, cols = torch.tril_indices(tiles, tiles)
    return rows.to(device, torch.int32), cols.to(device, torch.int32)


def grid_size(size: int, block: int) -> int:
    """Programs along an axis of ``size`` elements in blocks of ``block``."""
    return triton.cdiv(size, block)


def device_refusal(*tensors: Tensor) -> str | None:
    """Why Triton cannot run on these tensors' device, or None (CUDA, or CPU in the interpreter)."""
    if all(t.is_cuda for t in tensors) or (interpreting() and all(t.device.type == "cpu" for t in tensors)):
        return None
    return "Triton runs on CUDA tensors (CPU tensors only in its interpreter, TRITON_INTERPRET=1)"


def layer_refusal(out: Tensor, grad_output: Tensor, inputs: Tensor, single_position: str) -> str | None:
    """Why a Triton layer op (``sqgrad_accumulate``, ``persample_sqnorm``) cannot serve a call: it
    takes float32 accumulators with shared positions (T > 1) on its devices; ``single_position``
    says what serves T = 1."""
    if out.dtype != torch.float32:
        return f"its kernels accumulate in float32, out is {out.dtype} (the reference serves float64)"
    if grad_output.shape[2] == 1:
        return single_position
    return device_refusal(out, grad_output, inputs)


@triton.jit
def dot(left, right, HALF_INPUTS: tl.constexpr):
    """left @ right in float32: tensor cores for half inputs, ``ieee`` precision otherwise."""
    if HALF_INPUTS:
        return tl.dot(left, right)
    return tl.dot(left.to(tl.float32), right.to(tl.float32), input_precision="ieee")


@triton.jit
def offset_64(first, first_stride, second, second_stride):
    """first · first_stride + second · second_stride in 64-bit arithmetic (never wraps at 2³¹)."""
    return tl.cast(first, tl.int64) * first_stride + tl.cast(second, tl.int64) * second_stride


@triton.jit
def per_sample_tile(
    g_base, a_base, rows, cols, positions, out_features, in_features,
    g_stride_t, g_stride_o, a_stride_t, a_stride_i,
    HALF_INPUTS: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """(Σ_t g_t a_tᵀ)[rows, cols] of one column and sample, accumulated in float32 registers.

    ``g_base`` and ``a_base`` point at the sample (64-bit offsets); inside one sample's ``(T, O)``
    and ``(T, I)`` slices 32-bit offsets suffice (T·O < 2³¹) and keep the registers free (64-bit
    ones made the float32 kernel spill on sm_80).
    """
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
        tile += dot(tl.trans(g), a, HALF_INPUTS)
    return tile
