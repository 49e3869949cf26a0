"""Shape-only (fake) implementations of the ``fisherkit::`` ops, for ``torch.compile`` and opcheck."""

from __future__ import annotations

import torch
from torch import Tensor


def register_fakes() -> None:
    """Registers a fake implementation for every op in the loaded extension (once per process)."""

    @torch.library.register_fake("fisherkit::kfac_factor_update_")
    def _kfac_factor_update_fake(factor: Tensor, inputs: Tensor, alpha: float, beta: float, append_ones: bool) -> None:
        return None

    @torch.library.register_fake("fisherkit::persample_sqnorm_")
    def _persample_sqnorm_fake(
        out: Tensor, grad_output: Tensor, inputs: Tensor, scale: float, bias: bool, gram: bool
    ) -> None:
        return None
