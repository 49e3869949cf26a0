"""``NGD``: natural gradient descent as a drop-in ``torch.optim`` optimizer."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from fisherkit.likelihoods import Likelihood
from fisherkit.optim.damping import LevenbergMarquardt
from fisherkit.optim.preconditioner import NGDPreconditioner, Schedule, check_damping_schedule, kl_clip_factor


class NGD(torch.optim.Optimizer):
    """θ ← θ − η · (F + λI)⁻¹ (∇L + w θ), with momentum and KL clipping; F the model's Fisher.

    A standard loop needs nothing else::

        optimizer = fisherkit.NGD(model, lr=0.1, structure="kfac")
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()              # step(targets=y) for fisher_type="empirical"

    The statistics come from exactly the forwards that were backpropagated since the last step
    (see ``NGDPreconditioner``): gradient accumulation over micro-batches uses all of them, and
    ``no_grad`` or never-backpropagated forwards (evaluation, logging) never count. Every
    ``stats_every`` steps the true Fisher of those batches is estimated with labels sampled from
    the model, averaged with decay ``ema_decay``, and inverted every ``inverse_every`` steps.

    Param groups work as in ``torch.optim``: ``params`` (default: every trainable parameter of
    ``model``) may be a list of dicts with their own ``lr``, ``momentum``, ``weight_decay`` and
    ``damping`` (``add_param_group`` too; it restarts the statistics), and
    ``torch.optim.lr_scheduler`` works. Parameters without ``.grad`` are skipped; parameters NGD
    cannot precondition (BatchNorm, modules without a rule under ``fallback=False``) take their
    group's plain momentum-SGD step and are listed once (``passed_through``). ``damping`` may be
    a number, a function of the step, or ``LevenbergMarquardt(...)`` (adaptive, for every group;
    needs ``step(closure)`` on its adaptation steps). Natural gradients are the steepest descent
    directions of the per-sample-mean loss in the KL metric, so ``lr`` ≈ 1 with the exact Fisher
    is a full Newton-like step for a mean loss; the default KL clip keeps early steps, taken
    with few statistics, small.

    The recording hooks on ``model`` go when the optimizer is garbage-collected, or at ``close()``.

    Args:
        model: The model to train.
        lr: Step size η.
        momentum: Heavy-ball momentum on the natural gradient.
        weight_decay: w, added to the gradient before preconditioning.
        kl_clip: If given, scale each step so that Σ_groups η² ĝᵀ∇ ≤ ``kl_clip`` (Ba et al. 2017);
            ``None`` turns clipping off.
        params: Parameters of ``model`` or param-group dicts; None: every trainable parameter.
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
        kl_clip: float | None = 1e-3,
        *,
        params: Iterable[nn.Parameter] | Iterable[dict[str, Any]] | None = None,
        structure: str = "kfac",
        fisher_type: str = "mc",
        likelihood: str | Likelihood = "categorical",
        damping: Schedule = 1e-3,
        **preconditioner: Any,
    ) -> None:
        if kl_clip is not None and not kl_clip > 0:
            raise ValueError(f"kl_clip must be positive (or None for no clipping); got {kl_clip}.")
        self.model = model
        self.kl_clip = kl_clip
        self.preconditioner: NGDPreconditioner | None = None
        self._group_names: list[list[str]] = []  # each param group's parameter names, fixed when it is added
        groups = [p for p in model.parameters() if p.requires_grad] if params is None else params
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "damping": damping}
        super().__init__(groups, defaults)
        self.preconditioner = NGDPreconditioner(
            model, structure, fisher_type, likelihood, damping, parameters=self._grouped_names(), **preconditioner
        )
        self._finalizer = weakref.finalize(self, self.preconditioner.close)

    # -- param groups --------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a group of the model's parameters (torch semantics); restarts the statistics."""
        for name in ("lr", "momentum", "weight_decay"):
            value = param_group.get(name, self.defaults[name])
            number = not isinstance(value, bool) and isinstance(value, (int, float))
            if not number or value < 0 or (name == "lr" and not value):
                raise ValueError(f"NGD needs lr > 0, momentum >= 0 and weight_decay >= 0; got {name}={value!r}.")
        damping = param_group.get("damping", self.defaults["damping"])
        check_damping_schedule(damping)
        if isinstance(damping, LevenbergMarquardt) and damping is not self.defaults["damping"]:
            raise ValueError("LevenbergMarquardt damping adapts for the whole model: pass it as NGD(damping=...).")
        own = {id(p) for p in self.model.parameters()}
        params = param_group["params"]
        params = param_group["params"] = [params] if isinstance(params, Tensor) else list(params)
        foreign = [i for i, p in enumerate(params) if id(p) not in own]
        if foreign:
            raise ValueError(
                f"NGD preconditions the parameters of its model; entries {foreign} of this param group are not "
                "parameters of that model."
            )
        super().add_param_group(param_group)
        self._group_names.append(list(self._named(params)))
        if self.preconditioner is not None:
            self.preconditioner.select(self._grouped_names())

    def _grouped_names(self) -> list[str]:
        """Names of the model's parameters in the param groups, in the model's order."""
        return list(self._named([p for group in self.param_groups for p in group["params"]]))

    def _parameter_damping(self) -> dict[str, Schedule]:
        """Each parameter's damping: its group's, read at every step (a group's value may change)."""
        return {n: group["damping"] for group, names in zip(self.param_groups, self._group_names) for n in names}

    def close(self) -> None:
        """Removes the recording hooks from the model (done on garbage collection too)."""
        self._finalizer()

    @property
    def passed_through(self) -> dict[str, str]:
        """Parameters stepped with their plain gradient, with the reason."""
        assert self.preconditioner is not None
        return self.preconditioner.passed_through

    # -- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(  # type: ignore[override]  # NGD's step also takes the empirical Fisher's targets
        self, closure: Callable[[], Tensor] | None = None, targets: Tensor | Sequence[Tensor] | None = None
    ) -> Tensor | None:
        """One update; ``closure`` re-evaluates the loss (with gradients) if given; ``targets``
        are the labels of each backpropagated forward for ``fisher_type="empirical"``."""
        assert self.preconditioner is not None
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stepped = [(g, p) for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not stepped:
            return loss
        preconditioner = self.preconditioner
        for group, parameter in stepped:
            if group["weight_decay"]:
                parameter.grad.add_(parameter, alpha=group["weight_decay"])
        preconditioner.parameter_damping = self._parameter_damping()
        damping = preconditioner.damping
        adapting = isinstance(damping, LevenbergMarquardt) and preconditioner.steps % damping.every == 0
        if adapting and closure is None:  # refused before any statistics or state change
            raise ValueError("LevenbergMarquardt damping adapts from the loss after the step: call step(closure).")
        raw = {}  # the gradient before preconditioning, copied only when KL clipping or LM damping use it
        if adapting or self.kl_clip is not None:
            raw = {id(p): p.grad.clone() for _, p in stepped}
        with torch.enable_grad():
            natural = preconditioner.precondition(targets)
        if natural is None:
            return loss
        scale = 1.0
        if self.kl_clip is not None:
            scale = kl_clip_factor([(g["lr"], p.grad, raw[id(p)]) for g, p in stepped], self.kl_clip)
        before = {id(p): p.detach().clone() for _, p in stepped} if adapting else {}
        for group, parameter in stepped:
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
            assert loss is not None and closure is not None and isinstance(damping, LevenbergMarquardt)
            changes = {id(p): p - before[id(p)] for _, p in stepped}
            self._adapt_damping(damping, closure, loss, raw, changes)
        return loss

    def _named(self, params: list[Tensor]) -> dict[str, Tensor]:
        """{name: parameter} of ``params`` by the model's names, in the model's order."""
        ids = {id(p) for p in params}
        return {n: p for n, p in self.model.named_parameters() if id(p) in ids}

    def _adapt_damping(
        self,
        damping: LevenbergMarquardt,
        closure: Callable[[], Tensor],
        loss: Tensor,
        grads: dict[int, Tensor],
        change: dict[int, Tensor],
    ) -> None:
        """ρ = (L(θ + Δ) − L(θ)) / (∇Lᵀ Δ + ½ Δᵀ F Δ) on the same batch, then λ adapts."""
        assert self.preconditioner is not None and self.preconditioner.fisher is not None
        self.preconditioner.recorder.paused = True  # this evaluation is not a training batch
        try:
            with torch.enable_grad():
                after = closure()
        finally:
            self.preconditioner.recorder.paused = False
        params = self.preconditioner.parameters
        predicted = sum(float((grads[key] * change[key]).sum()) for key in change)
        zero = {n: torch.zeros_like(p) for n, p in params.items()}
        moved = [change.get(id(p), zero[n]) for n, p in params.items()]
        predicted += 0.5 * float(self.preconditioner.fisher.quadratic(moved))
        damping.adapt(float(after) - float(loss), predicted)

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state and the preconditioner's; the groups' dampings stay with the
        optimizer (a schedule may be a lambda; an adaptive damping's value is in the preconditioner's state)."""
        assert self.preconditioner is not None
        state = super().state_dict()
        for group in state["param_groups"]:
            group.pop("damping", None)
        return {**state, "preconditioner": self.preconditioner.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        assert self.preconditioner is not None
        state_dict = dict(state_dict)
        self.preconditioner.load_state_dict(state_dict.pop("preconditioner"))
        dampings = [group["damping"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, damping in zip(self.param_groups, dampings):
            group["damping"] = damping
