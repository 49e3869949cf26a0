"""The gradient of the task loss alone, accumulated the way ``.grad`` is: unscaled, before any
clipping, without a regularizer's own penalty — what Synaptic Intelligence integrates."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd import Variable
from torch.utils.hooks import RemovableHandle

from fisherkit.estimators.distributed import is_distributed

PenaltyGradient = Callable[[str, Tensor], Tensor | None]


class PenaltyTap(torch.autograd.Function):
    """Identity on a penalty that tells its ``TaskGradient`` d(root)/d(penalty) of every backward
    pass through it, so that the penalty's gradient can be removed exactly however the loss
    weighted (or scaled) it."""

    @staticmethod
    def forward(ctx: Any, penalty: Tensor, owner: TaskGradient) -> Tensor:
        ctx.owner = owner
        return penalty.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        state = ctx.owner.pass_state()
        state["penalty_weight"] = state["penalty_weight"] + grad.detach().float()
        return grad, None


class TaskGradient:
    """Per-parameter sums of the task-loss gradient over the backward passes since ``.grad`` was last reset.

    Each ``backward()`` that accumulates into a parameter's ``.grad`` contributes
    (contribution − w · ∇penalty) / S, read by a tensor hook *before* accumulation: S is the
    ``GradScaler``'s scale in that pass (1 without one), w the weight the pass gave the penalty
    (recorded by ``PenaltyTap``), ∇penalty from ``penalty_gradient(name, parameter)``. The sum is
    reset when a pass finds ``.grad`` reset (``None`` or all zeros: ``zero_grad``), so it follows
    gradient accumulation over micro-batches, ignores gradient clipping and unscaling (which edit
    ``.grad`` after the pass), skipped steps (the next ``zero_grad`` drops them) and
    ``torch.autograd.grad`` calls (which do not accumulate).

    Args:
        parameters: {name: parameter} to follow.
        penalty_gradient: (name, parameter) → the penalty's gradient at the parameter's value in
            the pass, per unit weight, or None where the penalty does not involve it.
    """

    def __init__(self, parameters: Mapping[str, Tensor], penalty_gradient: PenaltyGradient) -> None:
        self.parameters = dict(parameters)
        self.penalty_gradient = penalty_gradient
        self.sums: dict[str, Tensor] = {}
        self.scaler: torch.amp.GradScaler | None = None
        self._pending: dict[str, tuple[Tensor, Tensor | None]] = {}
        self._pass: dict[str, Any] | None = None
        self._handles: list[RemovableHandle] = []

    def attach(self, scaler: torch.amp.GradScaler | None = None) -> None:
        """Starts following backward passes (``scaler``: the ``GradScaler`` that scales the loss, if any)."""
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise TypeError(f"scaler must be a torch.amp.GradScaler (the one that scales the loss); got {scaler!r}.")
        self.detach()
        self.scaler, self.sums, self._pending = scaler, {}, {}
        for name, parameter in self.parameters.items():
            self._handles.append(parameter.register_hook(self._before_accumulation(name, parameter)))
            self._handles.append(parameter.register_post_accumulate_grad_hook(self._after_accumulation(name)))

    def average_over_ranks(self) -> None:
        """Under ``torch.distributed``, replaces every sum by its mean over the ranks — what
        ``DistributedDataParallel`` does to ``.grad`` — so that every rank integrates the same gradient."""
        if not is_distributed():
            return
        world = dist.get_world_size()
        for name in sorted(self.sums):
            dist.all_reduce(self.sums[name])
            self.sums[name].div_(world)

    def detach(self) -> None:
        """Stops following backward passes."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def pass_state(self) -> dict[str, Any]:
        """The state of the backward pass in progress (the penalty's weight, the loss scale),
        created on first use and dropped when the pass ends."""
        if self._pass is None:
            self._pass = {"penalty_weight": 0.0, "scale": None}
            Variable._execution_engine.queue_callback(self._end_pass)
        return self._pass

    def _loss_scale(self) -> Tensor | float:
        """The scaler's loss scale as a tensor on its device, read without a host synchronization
        (``get_scale()`` would copy it to the host in every backward pass); 1 without a scaler."""
        if self.scaler is None or not self.scaler.is_enabled():
            return 1.0
        scale = self.scaler._get_scale_async()  # the tensor behind get_scale(); None until scale() made one
        return 1.0 if scale is None else scale

    def _end_pass(self) -> None:
        self._pass = None

    def _before_accumulation(self, name: str, parameter: Tensor) -> Callable[[Tensor], None]:
        def record(grad: Tensor) -> None:
            self.pass_state()
            had_gradient = None if parameter.grad is None else parameter.grad.ne(0).any()
            self._pending[name] = (grad.detach(), had_gradient)

        return record

    def _after_accumulation(self, name: str) -> Callable[[Tensor], None]:
        def commit(parameter: Tensor) -> None:
            grad, had_gradient = self._pending.pop(name)
            state = self.pass_state()
            if state["scale"] is None:
                state["scale"] = self._loss_scale()
            task = grad.float()
            penalty = self.penalty_gradient(name, parameter)
            weight = state["penalty_weight"]
            if penalty is not None and isinstance(weight, Tensor):
                task = task - weight.to(task.device) * penalty
            task = task / state["scale"]
            if had_gradient is None or name not in self.sums:
                self.sums[name] = task
            else:
                self.sums[name] = torch.where(had_gradient, self.sums[name], 0.0) + task

        return commit
