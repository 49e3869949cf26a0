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

BLOCK = 32  # output tile edge (rows and columns)
BLOCK_REDUCE = 16  # positions or samples consumed per tl.dot
MAX_SPLITS = 16  # sample splits of sqgrad (partials summed in a fixed order: deterministic)


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
        half = grad_output.dtype == inputs.dtype and grad_output.dtype in (torch.float16, torch.bfloat16)
        if not half:
            grad_output, inputs = grad_output.float(), inputs.float()
        splits = min(samples, MAX_SPLITS)
        partial = torch.empty(splits, out_features, in_features, dtype=torch.float32, device=out.device)
        grid = (kernels.grid_size(out_features, BLOCK), kernels.grid_size(in_features, BLOCK), splits)
        kernels.sqgrad_tiles_kernel[grid](
            grad_output, inputs, partial,
            columns, samples, positions, out_features, in_features, splits,
            *grad_output.stride(), *inputs.stride(),
            HALF_INPUTS=half, BLOCK_O=BLOCK, BLOCK_I=BLOCK, BLOCK_T=BLOCK_REDUCE,
        )  # fmt: skip
        out.add_(partial.sum(0), alpha=scale)

    @sqgrad_tiles.register_fake
    def _(out: Tensor, grad_output: Tensor, inputs: Tensor, scale: float) -> None:
        return None

    @torch.library.custom_op("fisherkit::persample_sqnorm_triton", mutates_args=("out",))
    def sqnorm(out: Tensor, grad_output: Tensor, inputs: Tensor, scale: float, gram: bool) -> None:
        columns, samples, positions, out_features = grad_output.shape
        in_features = inputs.shape[2]
        half = grad_output.dtype == inputs.dtype and grad_output.dtype in (torch.float16, torch.bfloat16)
        if not half:
            grad_output, inputs = grad_output.float(), inputs.float()
        strides = (*grad_output.stride(), *inputs.stride())
        if gram:
            norms = torch.empty(columns * samples, dtype=torch.float32, device=out.device)
            kernels.sqnorm_gram_kernel[(columns * samples,)](
                grad_output, inputs, norms, samples, positions, out_features, in_features, *strides,
                HALF_INPUTS=half, BLOCK_T=BLOCK_REDUCE, BLOCK_F=BLOCK,
            )  # fmt: skip
        else:
            grid = (columns * samples, kernels.grid_size(out_features, BLOCK), kernels.grid_size(in_features, BLOCK))
            partial = torch.empty(grid[0], grid[1] * grid[2], dtype=torch.float32, device=out.device)
            kernels.sqnorm_tiles_kernel[grid](
                grad_output, inputs, partial, samples, positions, out_features, in_features, *strides,
                HALF_INPUTS=half, BLOCK_O=BLOCK, BLOCK_I=BLOCK, BLOCK_T=BLOCK_REDUCE,
            )  # fmt: skip
            norms = partial.sum(1)
        out.add_(norms.view(columns, samples), alpha=scale)

    @sqnorm.register_fake
    def _(out: Tensor, grad_output: Tensor, inputs: Tensor, scale: float, gram: bool) -> None:
        return None

    @torch.library.custom_op("fisherkit::syrk_lower_triton", mutates_args=("factor",))
    def syrk_lower(factor: Tensor, inputs: Tensor, alpha: float, beta: float) -> None:
        dim = inputs.shape[1]
        half = inputs.dtype in (torch.float16, torch.bfloat16)
        if not half:
            inputs = inputs.float()
        tiles = kernels.grid_size(dim, BLOCK)
        pairs = [(r, c) for r in range(tiles) for c in range(r + 1)]
        rows = torch.tensor([r for r, _ in pairs], dtype=torch.int32, device=factor.device)
        cols = torch.tensor([c for _, c in pairs], dtype=torch.int32, device=factor.device)
        kernels.syrk_lower_kernel[(len(pairs),)](
            inputs, factor, rows, cols,
            inputs.shape[0], dim, *inputs.stride(), factor.stride(0), alpha, beta,
            HALF_INPUTS=half, BLOCK_D=BLOCK, BLOCK_N=BLOCK_REDUCE,
        )  # fmt: skip

    @syrk_lower.register_fake
    def _(factor: Tensor, inputs: Tensor, alpha: float, beta: float) -> None:
        return None


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
