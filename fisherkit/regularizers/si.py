"""Synaptic Intelligence (Zenke et al. 2017), attached to any ``torch.optim`` optimizer by step hooks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from fisherkit.regularizers.regularizer import Regularizer, check_state_names, cloned, consolidated_part, zero_padded
from fisherkit.regularizers.task_gradient import PenaltyTap, TaskGradient


class SynapticIntelligence(Regularizer):
    """Penalty c · Σ_k Ω_k (θ_k − θ̃_k)², with Ω accumulated over tasks from the path integral of the loss.

    During a task, at every optimizer step, ω_k += −g_k · Δθ_k on the parameters' device, where Δθ
    is the step the optimizer took and g the gradient of the loss **without SI's own penalty**, as
    the backward passes since the last ``zero_grad`` produced it (``TaskGradient``): unscaled
    under a ``GradScaler`` given to ``begin_task``, before gradient clipping, summed over
    accumulated micro-batches, with exactly the penalty's gradient removed however the loss
    weighted it. Steps a ``GradScaler`` skips count for nothing. At ``end_task``:
    Ω_k += ω_k / (Δ_k² + ξ) with Δ_k the parameter's total change over the task, and θ̃ ← θ.
    Other terms in the loss (an EWC penalty, say) are part of g. Under ``torch.distributed`` g is
    averaged over the ranks before each step, as ``DistributedDataParallel`` averages ``.grad``, so
    every rank keeps the same ω and Ω.

    Use: ``si.begin_task(optimizer, scaler=None)`` attaches step and gradient hooks (any
    ``torch.optim`` optimizer, any param groups; the training loop is unchanged apart from adding
    ``si.penalty()`` to the loss), ``si.end_task()`` consolidates and detaches them. To resume
    inside a task after ``load_state_dict``, call ``si.attach(optimizer, scaler)``.

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
        self.task_gradient = TaskGradient(params, self._penalty_gradient)

    # -- the task protocol ---------------------------------------------------------------------
    def begin_task(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None) -> None:
        """Starts a task: ω ← 0, remembers θ at its start, attaches to ``optimizer`` (and to the
        ``GradScaler`` that scales the loss, when mixed precision trains it)."""
        params = self.parameters_now(self.names)
        self.task_start = {n: p.detach().clone() for n, p in params.items()}
        self.omega = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}  # a head may have grown
        self.steps = 0
        self.attach(optimizer, scaler)

    def attach(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None) -> None:
        """Hooks ``optimizer``'s steps and the parameters' backward passes (without resetting the
        task's statistics)."""
        if not isinstance(optimizer, torch.optim.Optimizer):
            kind = type(optimizer).__name__
            raise TypeError(f"SynapticIntelligence attaches to a torch.optim.Optimizer; got {kind}.")
        self.detach()
        self.task_gradient.parameters = self.parameters_now(self.names)  # a grown head is a new parameter object
        self.task_gradient.attach(scaler)
        self._handles = [
            optimizer.register_step_pre_hook(lambda *_: self._before_step()),
            optimizer.register_step_post_hook(lambda *_: self._after_step()),
        ]

    def detach(self) -> None:
        """Removes every hook (``end_task`` does this)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.task_gradient.detach()

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
                old = zero_padded(self.importance[name], update.shape) if name in self.importance else 0.0
                self.importance[name] = old + update
                self.anchor[name] = parameter.detach().clone()
        self.detach()

    # -- the hooks -----------------------------------------------------------------------------
    def _penalty_gradient(self, name: str, parameter: Tensor) -> Tensor | None:
        """∂ penalty / ∂θ at the parameter's current value: 2 c Ω (θ − θ̃)."""
        if name not in self.importance:
            return None
        anchor = self.anchor[name]
        consolidated = consolidated_part("SynapticIntelligence", name, parameter.detach(), anchor.shape)
        gradient = 2 * self.strength * self.importance[name] * (consolidated - anchor).float()
        return zero_padded(gradient, parameter.shape)

    def _before_step(self) -> None:
        """θ before the update. The gradients are read after it: ``optimizer.step(closure)``
        (Lightning, L-BFGS) runs the backward pass between the two hooks."""
        self._before = {n: p.detach().clone() for n, p in self.parameters_now(self.names).items()}

    def _after_step(self) -> None:
        params = self.parameters_now(self.names)
        self.task_gradient.average_over_ranks()
        grads = self.task_gradient.sums
        with torch.no_grad():
            for name, before in self._before.items():
                if name in grads and params[name].grad is not None:
                    self.omega[name].add_(-grads[name] * (params[name] - before).float())
        self.steps += 1
        self._before = {}

    # -- the penalty ---------------------------------------------------------------------------
    def penalty_terms(self) -> dict[str, Tensor]:
        return self.weighted_squares(self.importance, self.anchor)

    def penalty(self) -> Tensor:
        """c · Σ Ω (θ − θ̃)²; backpropagating it is recorded so that ω excludes its gradient."""
        return PenaltyTap.apply(super().penalty(), self.task_gradient) if self.importance else super().penalty()

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
