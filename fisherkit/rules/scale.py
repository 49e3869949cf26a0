"""Modules matched by behaviour: y = x̂ ⊙ w with x̂ independent of the weight (RMSNorm variants).

Normalization layers outside torch (``LlamaRMSNorm``, ``Qwen2RMSNorm``, ``T5LayerNorm`` …) have no
registered rule. A module without one whose only trainable parameter is a vector ``weight`` is
served by ``ElementwiseScaleRule``: on each call it computes x̂ = module(x) with the weight set to
ones and checks that module(x) = x̂ ⊙ w at the actual weight; then ∇w = Σ g ⊙ x̂ (summed over
every axis but the last), as fast as the built-in norm rules. A module that fails the check (a
``(1 + w)`` scale, a channel-first weight) is served by the ``torch.func`` fallback instead, with
a warning that names it (an error with ``fallback=False``).
"""

from __future__ import annotations

import warnings
from collections.abc import Collection

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fisherkit.errors import UnsupportedModelError
from fisherkit.rules.base import LayerCall, OutputGrad
from fisherkit.rules.fallback import TorchFuncRule


def is_scale_candidate(module: nn.Module) -> bool:
    """True for a module whose only trainable direct parameter is a 1-D ``weight``."""
    trainable = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
    return len(trainable) == 1 and trainable[0][0] == "weight" and trainable[0][1].dim() == 1


class ElementwiseScaleRule(TorchFuncRule):
    """∇w_{n} = Σ_t g_{n,t} ⊙ x̂_{n,t} for modules checked to compute y = x̂ ⊙ w (see the module docstring).

    Args:
        label: The module's path and type, for the one warning given when the check fails.
        fallback: Serve a module failing the check by the ``torch.func`` fallback (as the
            estimators' ``fallback`` option: ``None`` warns once, ``True`` silently, ``False``
            makes it an error).
    """

    def __init__(self, label: str, fallback: bool | None = None) -> None:
        self.label = label
        self.fallback = fallback
        self.warned = False

    def _normalized(self, module: nn.Module, call: LayerCall) -> Tensor | None:
        """x̂ when module(x) = x̂ ⊙ w holds for this call (to rounding), else None."""
        weight = module.get_parameter("weight")
        with torch.no_grad():
            unit = functional_call(module, {"weight": torch.ones_like(weight)}, call.args, call.kwargs)
            actual = module(*call.args, **call.kwargs)
        if not isinstance(unit, Tensor) or unit.shape != actual.shape or unit.shape[-1:] != weight.shape:
            return None
        tolerance = 16 * torch.finfo(actual.dtype).eps
        scale = float(actual.abs().amax()) if actual.numel() else 0.0
        if not torch.allclose(unit * weight.detach(), actual, rtol=tolerance, atol=tolerance * scale):
            return None
        return unit

    def per_sample_grads(
        self, module: nn.Module, call: LayerCall, grad_output: OutputGrad, names: Collection[str]
    ) -> dict[str, Tensor]:
        if "weight" not in names:
            return {}
        x_hat = self._normalized(module, call)
        if x_hat is None:
            if self.fallback is False:
                raise UnsupportedModelError(
                    f"no layer rule for {self.label}, which does not compute x̂ ⊙ weight. Register one with "
                    f"@fisherkit.register_rule, or pass fallback=True to use per-layer torch.func gradients for it."
                )
            if self.fallback is None and not self.warned:
                self.warned = True
                warnings.warn(
                    f"no layer rule for {self.label}, which does not compute x̂ ⊙ weight: served by per-sample "
                    f"torch.func gradients of each call, which is exact but slower. Register a rule with "
                    f"@fisherkit.register_rule to speed it up.",
                    UserWarning,
                    stacklevel=2,
                )
            return super().per_sample_grads(module, call, grad_output, names)
        assert isinstance(grad_output, Tensor)  # x̂ ⊙ weight has one output tensor
        columns, batch = grad_output.shape[:2]
        product = grad_output * x_hat.to(grad_output.dtype)
        return {"weight": product.reshape(columns, batch, -1, module.get_parameter("weight").shape[0]).sum(2)}
