"""``NGD``: natural gradient descent as a drop-in ``torch.optim`` optimizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from fisherkit.likelihoods import Likelihood
from fisherkit.optim.damping import LevenbergMarquardt
from fisherkit.optim.preconditioner import NGDPreconditioner, Schedule, kl_clip_factor


class NGD(torch.optim.Optimizer):
    """θ ← θ − η · (F + λI)⁻¹ (∇L + w θ), with momentum and KL clipping; F the model's Fisher.

    A standard loop needs nothing else::

        optimizer = fisherkit.NGD(model, lr=0.1, structure="kfac")
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()              # step(targets=y) for fisher_type="empirical"

    The statistics come from the batches the model was run on (see ``NGDPreconditioner``): every
    ``stats_every`` steps the true Fisher of the last batch is estimated with labels sampled from
    the model, averaged with decay ``ema_decay``, and inverted every ``inverse_every`` steps. The
    optimizer's param group holds the model's trainable parameters; ``lr``, ``momentum`` and
    ``weight_decay`` live there (so ``torch.optim.lr_scheduler`` works), ``damping`` may be a
    number, a function of the step, or ``LevenbergMarquardt(...)`` (adaptive; needs
    ``step(closure)`` on its adaptation steps). Natural gradients are the steepest descent directions of the
    per-sample-mean loss in the KL metric, so ``lr`` ≈ 1 with the exact Fisher is a full Newton-like
    step for a mean loss.

    Args:
        model: The model to train.
        lr: Step size η.
        momentum: Heavy-ball momentum on the natural gradient.
        weight_decay: w, added to the gradient before preconditioning.
        kl_clip: If given, scale each step so that η² ĝᵀ∇ ≤ ``kl_clip`` (Ba et al. 2017).
        **preconditioner: ``structure``, ``fisher_type``, ``likelihood``, ``damping``,
            ``ema_decay``, ``stats_every``, ``inverse_every``, ``pi_damping``, ``mc_samples``,
            ``seed``, ``fallback`` (see ``NGDPreconditioner``).
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        kl_clip: float | None = None,
        *,
        structure: str = "kfac",
        fisher_type: str = "mc",
        likelihood: str | Likelihood = "categorical",
        damping: Schedule = 1e-3,
        **preconditioner: Any,
    ) -> None:
        if lr <= 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"need lr > 0, momentum >= 0, weight_decay >= 0; got {lr}, {momentum}, {weight_decay}.")
        self.preconditioner = NGDPreconditioner(model, structure, fisher_type, likelihood, damping, **preconditioner)
        params = list(self.preconditioner.parameters.values())
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "kl_clip": kl_clip})

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None, targets: Tensor | None = None) -> Tensor | None:
        """One update; ``closure`` re-evaluates the loss (with gradients) if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        params = self.preconditioner.parameters
        if group["weight_decay"]:
            for parameter in params.values():
                if parameter.grad is not None:
                    parameter.grad.add_(parameter, alpha=group["weight_decay"])
        damping = self.preconditioner.damping
        adapting = isinstance(damping, LevenbergMarquardt) and self.preconditioner.steps % damping.every == 0
        if adapting and closure is None:  # refused before any statistics or state change
            raise ValueError("LevenbergMarquardt damping adapts from the loss after the step: call step(closure).")
        raw = {}  # the gradient before preconditioning, copied only when KL clipping or LM damping use it
        if adapting or group["kl_clip"] is not None:
            raw = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in params.items()}
        with torch.enable_grad():
            natural = self.preconditioner.precondition(targets)
        if natural is None:
            return loss
        scale = 1.0 if group["kl_clip"] is None else kl_clip_factor(natural, raw, group["lr"], group["kl_clip"])
        before = {n: p.detach().clone() for n, p in params.items()} if adapting else {}
        for parameter in params.values():
            update = parameter.grad
            if group["momentum"]:
                state = self.state[parameter]
                buffer = state.get("momentum_buffer")
                if buffer is None:
                    buffer = state["momentum_buffer"] = update.clone()
                else:
                    buffer.mul_(group["momentum"]).add_(update)
                update = buffer
            parameter.add_(update, alpha=-group["lr"] * scale)
        if adapting:
            self._adapt_damping(damping, closure, loss, raw, {n: p - before[n] for n, p in params.items()})
        return loss

    def _adapt_damping(
        self,
        damping: LevenbergMarquardt,
        closure: Callable[[], Tensor],
        loss: Tensor,
        grads: dict[str, Tensor],
        change: dict[str, Tensor],
    ) -> None:
        """ρ = (L(θ + Δ) − L(θ)) / (∇Lᵀ Δ + ½ Δᵀ F Δ) on the same batch, then λ adapts."""
        with torch.enable_grad():
            after = closure()
        names = self.preconditioner.names
        predicted = sum(float((grads[n] * change[n]).sum()) for n in names)
        predicted += 0.5 * float(self.preconditioner.fisher.quadratic([change[n] for n in names]))
        damping.adapt(float(after) - float(loss), predicted)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "preconditioner": self.preconditioner.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.preconditioner.load_state_dict(state_dict.pop("preconditioner"))
        super().load_state_dict(state_dict)
