"""Summing statistics over ``torch.distributed`` ranks, when a process group is initialized."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialized (statistics are then all-reduced)."""
    return dist.is_available() and dist.is_initialized()


def all_reduce_sums(sums: list[Tensor], count: int) -> tuple[list[Tensor], int]:
    """Sums every tensor and the sample count across ranks (identity without a process group).

    The tensors are reduced as one flat buffer, in place of one collective per parameter.
    """
    if not is_distributed():
        return sums, count
    flat = torch.cat(
        [s.reshape(-1).to(torch.float64) for s in sums] + [torch.tensor([float(count)], device=sums[0].device)]
    )
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    pieces = flat[:-1].split([s.numel() for s in sums])
    return [p.reshape(s.shape).to(s.dtype) for p, s in zip(pieces, sums)], int(flat[-1].item())
