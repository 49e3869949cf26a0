"""Synaptic Intelligence (Zenke et al. 2017), attached to any ``torch.optim`` optimizer by step hooks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from fisherkit.continual.regularizer import Regularizer, check_state_names, cloned


class _PenaltyTap(torch.autograd.Function):
    """Identity on the penalty that records d(loss)/d(penalty), so SI can remove exactly its own
    penalty's gradient from ``.grad`` whatever the loss did with it (scaled it, or left it out)."""

    @staticmethod
    def forward(ctx: Any, penalty: Tensor, owner: SynapticIntelligence) -> Tensor:
        ctx.owner = owner
        return penalty.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        ctx.owner._penalty_weight += float(grad)
        return grad, None


class SynapticIntelligence(Regularizer):
    """Penalty c · Σ_k Ω_k (θ_k − θ̃_k)², with Ω accumulated over tasks from the path integral of the loss.

    During a task, at every optimizer step, ω_k += −g_k · Δθ_k on the parameters' device, where g
    is the gradient of the loss **without SI's own penalty** (SI subtracts exactly its penalty's
    gradient from ``.grad``, however the loss weighted it) and Δθ the step the optimizer took. At
    ``end_task``: Ω_k += ω_k / (Δ_k² + ξ) with Δ_k the parameter's total change over the task, and
    θ̃ ← θ. Other terms in the loss (an EWC penalty, say) are part of g.

    Use: ``si.begin_task(optimizer)`` attaches step hooks (any optimizer; the training loop is
    unchanged apart from adding ``si.penalty()`` to the loss), ``si.end_task()`` consolidates and
    detaches them. To resume inside a task after ``load_state_dict``, call ``si.attach(optimizer)``.

    Args:
        model: The model being trained.
        strength: c ≥ 0.
        damping: ξ > 0.
    """

    def __init__(self, model: nn.Module, strength: float, damping: float = 1e-3) -> None:
        super().__init__(model, strength)
        if not float(damping) > 0:
            raise ValueError(f"SI's damping ξ must be > 0; got {damping}.")
        self.damping = float(damping)
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = self.parameters_now(self.names)
        self.omega = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        self.importance: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}
        self.task_start = {n: p.detach().clone() for n, p in params.items()}
        self.steps = 0
        self._handles: list[RemovableHandle] = []
        self._before: dict[str, Tensor] = {}
        self._task_grads: dict[str, Tensor] = {}
        self._penalty_weight = 0.0

    # -- the task protocol ---------------------------------------------------------------------
    def begin_task(self, optimizer: torch.optim.Optimizer) -> None:
        """Starts a task: ω ← 0, remembers θ at its start, attaches to ``optimizer``."""
        params = self.parameters_now(self.names)
        self.task_start = {n: p.detach().clone() for n, p in params.items()}
        for value in self.omega.values():
            value.zero_()
        self.steps = 0
        self.attach(optimizer)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Hooks ``optimizer``'s steps (without resetting the task's statistics)."""
        self.detach()
        self._handles = [
            optimizer.register_step_pre_hook(lambda *_: self._before_step()),
            optimizer.register_step_post_hook(lambda *_: self._after_step()),
        ]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def end_task(self, data: Any = None) -> None:
        """Turns the task's ω into importance and moves the anchor to the current parameters.

        Raises:
            ValueError: No optimizer step was seen since ``begin_task``.
        """
        if self.steps == 0:
            raise ValueError(
                "SynapticIntelligence saw no optimizer step during this task: call si.begin_task(optimizer) "
                "with the optimizer that trains the model, before training it."
            )
        params = self.parameters_now(self.names)
        with torch.no_grad():
            for name, parameter in params.items():
                change = (parameter - self.task_start[name]).float()
                update = self.omega[name] / (change.square() + self.damping)
                self.importance[name] = self.importance[name] + update if name in self.importance else update
                self.anchor[name] = parameter.detach().clone()
        self.detach()

    # -- the hooks -----------------------------------------------------------------------------
    def _before_step(self) -> None:
        params = self.parameters_now(self.names)
        weight, self._penalty_weight = self._penalty_weight, 0.0
        with torch.no_grad():
            self._before = {n: p.detach().clone() for n, p in params.items() if p.grad is not None}
            self._task_grads = {}
            for name in self._before:
                grad = params[name].grad.float()
                if weight and name in self.importance:
                    grad = grad - weight * 2 * self.strength * self.importance[name] * (
                        params[name] - self.anchor[name]
                    )
                self._task_grads[name] = grad

    def _after_step(self) -> None:
        params = self.parameters_now(self.names)
        with torch.no_grad():
            for name, before in self._before.items():
                self.omega[name].add_(-self._task_grads[name] * (params[name] - before).float())
        self.steps += 1
        self._before, self._task_grads = {}, {}

    # -- the penalty ---------------------------------------------------------------------------
    def penalty_terms(self) -> dict[str, Tensor]:
        return self.weighted_squares(self.importance, self.anchor)

    def penalty(self) -> Tensor:
        """c · Σ Ω (θ − θ̃)²; backpropagating it is recorded so that ω excludes its gradient."""
        return _PenaltyTap.apply(super().penalty(), self) if self.importance else super().penalty()

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "SynapticIntelligence",
            "strength": self.strength,
            "damping": self.damping,
            "shapes": {n: list(v.shape) for n, v in self.task_start.items()},
            "omega": cloned(self.omega),
            "importance": cloned(self.importance),
            "anchor": cloned(self.anchor),
            "task_start": cloned(self.task_start),
            "steps": self.steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != "SynapticIntelligence":
            raise ValueError(f"state dict of {state.get('kind')} cannot be loaded into SynapticIntelligence.")
        check_state_names("SynapticIntelligence", state, self.model)
        device = next(self.model.parameters()).device
        self.strength, self.damping, self.steps = float(state["strength"]), float(state["damping"]), state["steps"]
        for key in ("omega", "importance", "anchor", "task_start"):
            setattr(self, key, cloned(state[key], device))
