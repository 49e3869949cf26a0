"""Rules for layers of Hugging Face ``transformers``, registered once transformers is loaded.

``fisherkit`` never imports transformers itself: ``find_rule`` imports this module the first time
it looks up a rule while ``transformers`` is in ``sys.modules`` (a model from it exists).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import cast

from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from fisherkit.curvature.kronecker_layout import KroneckerLayout
from fisherkit.rules.base import LayerCall, requested
from fisherkit.rules.linear import LinearRule
from fisherkit.rules.registry import register_rule


@register_rule(Conv1D)
class Conv1DRule(LinearRule):
    """GPT-2's ``Conv1D``: y = a W + b with W stored ``(inputs, outputs)``, Linear's math on Wᵀ.

    Per-sample ∇W = Σ_t a_{n,t} g_{n,t}ᵀ; KFAC factors as for ``nn.Linear`` on the transposed view.
    """

    def per_sample_grads(
        self, module: nn.Module, call: LayerCall, grad_output: Tensor, names: Collection[str]
    ) -> dict[str, Tensor]:
        grads = super().per_sample_grads(module, call, grad_output, names)
        if "weight" in grads:
            grads["weight"] = grads["weight"].transpose(-1, -2)
        return grads

    def accumulate_sqgrad(
        self, module: nn.Module, call: LayerCall, grad_output: Tensor, out: dict[str, Tensor]
    ) -> None:
        if "weight" not in out:
            super().accumulate_sqgrad(module, call, grad_output, out)
            return
        transposed = out["weight"].new_zeros(out["weight"].shape[::-1])
        super().accumulate_sqgrad(module, call, grad_output, {**out, "weight": transposed})
        out["weight"].add_(transposed.t())

    def kronecker_layout(self, module: nn.Module, names: Collection[str]) -> KroneckerLayout | None:
        if not requested(names, module, "weight"):
            return None
        return KroneckerLayout(1, cast(Conv1D, module).nf, requested(names, module, "bias"), transposed=True)
