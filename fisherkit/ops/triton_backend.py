"""The Triton backend: whether it can run here (checked lazily, once), and its ops.

Triton is imported only when ``triton_status()`` is first asked, never by ``import fisherkit``. The
kernels run on CUDA tensors, or on CPU tensors in Triton's interpreter when ``TRITON_INTERPRET=1``
was set before Triton was imported (how CI tests them without a GPU). The ops are registered as
``fisherkit::`` custom ops with fake implementations, so ``torch.compile`` can trace through them.
All three accumulate in float32; float64 accumulators go to the reference implementation.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from fisherkit.ops.kfac_factor import mirror_and_add_ones

MAX_SPLITS = 16  # sample splits of sqgrad (partials summed in a fixed order: deterministic)
TARGET_PROGRAMS = 1024  # sqgrad splits samples only until about this many programs fill the GPU


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


@dataclass(frozen=True)
class TritonStatus:
    available: bool
    reason: str


@lru_cache(maxsize=1)
def triton_status() -> TritonStatus:
    """Imports Triton and registers the ops on first use; says why the backend is unavailable."""
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if not torch.cuda.is_available() and not interpret:
        return TritonStatus(False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels in Triton's interpreter)")
    try:
        importlib.import_module("triton")
    except ImportError as error:
        return TritonStatus(False, f"Triton is not installed ({error}); pip install 'fisherkit[triton]'")
    _register_ops()
    return TritonStatus(True, "interpreter" if interpret else "CUDA")


def _register_ops() -> None:
    from fisherkit.ops import triton_kernels as kernels

    @torch.library.custom_op("fisherkit::sqgrad_accumulate_triton", mutates_args=("out",))
    def sqgrad_tiles(out: Tensor, grad_output: Tensor, inputs: Tensor, scale: float) -> None:
        columns, samples, positions, out_features = grad_output.shape
        in_features = inputs.shape[2]
        (grad_output, inputs), half = kernel_operands(grad_output, inputs)
        config = launch_config(out.device)
        tiles = (kernels.grid_size(out_features, config.rows), kernels.grid_size(in_features, config.cols))
        # Each split is an (O, I) float32 partial: split only until the output tiles fill the GPU (a
        # 4096 × 4096 layer has 2,048 tiles: one 64 MB partial instead of sixteen, 1 GB).
        splits = min(samples, MAX_SPLITS, -(-TARGET_PROGRAMS // (tiles[0] * tiles[1])))
        partial = torch.empty(splits, out_features, in_features, dtype=torch.float32, device=out.device)
        kernels.sqgrad_tiles_kernel[(*tiles, splits)](
            grad_output, inputs, partial,
            columns, samples, positions, out_features, in_features, splits,
            *grad_output.stride(), *inputs.stride(),
            HALF_INPUTS=half, BLOCK_O=config.rows, BLOCK_I=config.cols, BLOCK_T=config.reduce,
            num_warps=config.num_warps, num_stages=config.num_stages,
        )  # fmt: skip
        out.add_(partial.sum(0), alpha=scale)

    @sqgrad_tiles.register_fake
    def _(out: Tensor, grad_output: Tensor, inputs: Tensor, scale: float) -> None:
        return None

    @torch.library.custom_op("fisherkit::persample_sqnorm_triton", mutates_args=("out",))
    def sqnorm(out: Tensor, grad_output: Tensor, inputs: Tensor, scale: float, gram: bool) -> None:
        columns, samples, positions, out_features = grad_output.shape
        in_features = inputs.shape[2]
        (grad_output, inputs), half = kernel_operands(grad_output, inputs)
        config = launch_config(out.device)
        shape = (samples, positions, out_features, in_features, *grad_output.stride(), *inputs.stride())
        launch = {"HALF_INPUTS": half, "num_warps": config.num_warps, "num_stages": config.num_stages}
        if gram:
            first, second = lower_triangle_tiles(kernels.grid_size(positions, config.gram), out.device)
            partial = torch.empty(columns * samples, len(first), dtype=torch.float32, device=out.device)
            kernels.sqnorm_gram_kernel[partial.shape](
                grad_output, inputs, first, second, partial, *shape,
                BLOCK_T=config.gram, BLOCK_F=config.gram_features, **launch,
            )  # fmt: skip
        else:
            tiles = (kernels.grid_size(out_features, config.rows), kernels.grid_size(in_features, config.cols))
            partial = torch.empty(columns * samples, tiles[0] * tiles[1], dtype=torch.float32, device=out.device)
            kernels.sqnorm_tiles_kernel[(columns * samples, *tiles)](
                grad_output, inputs, partial, *shape,
                BLOCK_O=config.rows, BLOCK_I=config.cols, BLOCK_T=config.reduce, **launch,
            )  # fmt: skip
        out.add_(partial.sum(1).view(columns, samples), alpha=scale)

    @sqnorm.register_fake
    def _(out: Tensor, grad_output: Tensor, inputs: Tensor, scale: float, gram: bool) -> None:
        return None

    @torch.library.custom_op("fisherkit::syrk_lower_triton", mutates_args=("factor",))
    def syrk_lower(factor: Tensor, inputs: Tensor, alpha: float, beta: float) -> None:
        dim = inputs.shape[1]
        (inputs,), half = kernel_operands(inputs)
        config = launch_config(factor.device)
        rows, cols = lower_triangle_tiles(kernels.grid_size(dim, config.cols), factor.device)
        kernels.syrk_lower_kernel[(len(rows),)](
            inputs, factor, rows, cols,
            inputs.shape[0], dim, *inputs.stride(), factor.stride(0), alpha, beta,
            HALF_INPUTS=half, BLOCK_D=config.cols, BLOCK_N=config.reduce,
            num_warps=config.num_warps, num_stages=config.num_stages,
        )  # fmt: skip

    @syrk_lower.register_fake
    def _(factor: Tensor, inputs: Tensor, alpha: float, beta: float) -> None:
        return None


def kernel_operands(*tensors: Tensor) -> tuple[list[Tensor], bool]:
    """The operands as the kernels read them, and whether they are half precision: fp16 or bf16
    operands of one dtype go to tensor cores (float32 accumulation); anything else becomes float32."""
    half = len({t.dtype for t in tensors}) == 1 and tensors[0].dtype in (torch.float16, torch.bfloat16)
    return (list(tensors) if half else [t.float() for t in tensors]), half


def lower_triangle_tiles(tiles: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row and column indices (int32) of the tile pairs with row ≥ column, row-major."""
    rows, cols = torch.tril_indices(tiles, tiles)
    return rows.to(device, torch.int32), cols.to(device, torch.int32)


def sqgrad_accumulate_triton(
    out: Tensor, grad_output: Tensor, inputs: Tensor, scale: float, bias_out: Tensor | None
) -> None:
    """Shared positions (T > 1) through the fused kernel; the bias (Σ_t g)² in torch."""
    torch.ops.fisherkit.sqgrad_accumulate_triton(out, grad_output, inputs, float(scale))
    if bias_out is not None:
        bias = grad_output.to(torch.float32).sum(2)
        bias_out.add_((bias * bias).sum((0, 1)), alpha=scale)


def persample_sqnorm_triton(
    out: Tensor, grad_output: Tensor, inputs: Tensor, scale: float, bias: bool, gram: bool
) -> None:
    """Shared positions (T > 1) through the Gram or the tile kernel; the bias ‖Σ_t g‖² in torch."""
    torch.ops.fisherkit.persample_sqnorm_triton(out, grad_output, inputs, float(scale), bool(gram))
    if bias:
        out.add_(grad_output.to(torch.float32).sum(2).square().sum(-1), alpha=scale)


def kfac_factor_update_triton(factor: Tensor, inputs: Tensor, alpha: float, beta: float, append_ones: bool) -> None:
    """Lower-triangle tiles through the kernel, then the mirror and the virtual ones column in torch."""
    torch.ops.fisherkit.syrk_lower_triton(factor, inputs, float(alpha), float(beta))
    mirror_and_add_ones(factor, inputs.to(factor.dtype), alpha, beta, append_ones)
