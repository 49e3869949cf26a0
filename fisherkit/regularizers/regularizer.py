"""What every continual-learning regularizer shares: the task protocol, the penalty and its breakdown."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fisherkit.curvature.block import tensor_sum


class Regularizer(ABC):
    """A penalty that keeps a model near what earlier tasks needed.

    The protocol, per task: ``begin_task(optimizer)`` before training it, ``penalty()`` added to
    the loss at every step, ``end_task(data)`` after training it. Before the first ``end_task`` the
    penalty is zero (there is nothing to remember yet).

    Args:
        model: The model being trained (the regularizer reads its parameters by name).
        strength: The penalty weight (λ or c), ≥ 0.
    """

    def __init__(self, model: nn.Module, strength: float) -> None:
        strength = float(strength)
        if not strength >= 0:
            raise ValueError(f"{type(self).__name__}: the penalty strength must be >= 0; got {strength}.")
        self.model = model
        self.strength = strength

    def begin_task(  # noqa: B027 (a no-op unless overridden)
        self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None
    ) -> None:
        """Called before training a task with ``optimizer`` (and the ``GradScaler`` that scales the
        loss, if any; SI reads it)."""

    @abstractmethod
    def end_task(self, data: Any) -> None:
        """Called after training a task; ``data`` are that task's training batches."""

    @abstractmethod
    def penalty_terms(self) -> dict[str, Tensor]:
        """The penalty split by parameter group (a layer or a Fisher block), each a 0-dim tensor
        that carries gradients to the parameters; empty before the first ``end_task``."""

    def penalty(self) -> Tensor:
        """The total penalty to add to the loss (0 before the first consolidation)."""
        terms = self.penalty_terms()
        if not terms:
            return next(self.model.parameters()).new_zeros(())
        return tensor_sum(terms.values())

    def breakdown(self) -> dict[str, float]:
        """The penalty per parameter group, as numbers (diagnostics)."""
        with torch.no_grad():
            return {name: float(value) for name, value in self.penalty_terms().items()}

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume between or inside tasks."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores ``state_dict()``; refuses a state saved for another model."""

    def weighted_squares(self, importance: Mapping[str, Tensor], anchor: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """{name: strength · Σ Ω (θ − θ*)²} for the parameters with an importance (SI, MAS)."""
        owner = type(self).__name__
        params = {
            n: consolidated_part(owner, n, p, anchor[n].shape) for n, p in self.parameters_now(list(importance)).items()
        }
        return {n: self.strength * (importance[n] * (p - anchor[n]).square()).sum() for n, p in params.items()}

    def parameters_now(self, names: list[str] | tuple[str, ...]) -> dict[str, Tensor]:
        """The model's current parameters ``names`` (``consolidated_part`` checks their shapes).

        Raises:
            ValueError: A parameter is gone.
        """
        named = dict(self.model.named_parameters())
        missing = [n for n in names if n not in named]
        if missing:
            raise ValueError(
                f"{type(self).__name__}: parameters {missing} were consolidated but the model no longer has them."
            )
        return {n: named[n] for n in names}


def cloned(values: Mapping[str, Tensor], device: torch.device | None = None) -> dict[str, Tensor]:
    """Copies of named tensors (moved to ``device`` when given)."""
    return {n: (v if device is None else v.to(device)).clone() for n, v in values.items()}


def consolidated_part(owner: str, name: str, parameter: Tensor, shape: torch.Size) -> Tensor:
    """The part of ``parameter`` that was consolidated with ``shape``: all of it, or — for a
    parameter that grew along its axes since (a classifier head that gained classes, the new
    entries appended) — its leading ``shape`` slice, so that the new entries are not penalized
    until a task consolidates them (as if anchor and importance were zero-padded).

    Raises:
        ValueError: The parameter shrank or changed its number of axes.
    """
    if parameter.shape == shape:
        return parameter
    if parameter.dim() == len(shape) and all(now >= then for now, then in zip(parameter.shape, shape)):
        return parameter[tuple(slice(0, then) for then in shape)]
    raise ValueError(
        f"{owner}: parameter {name!r} has shape {tuple(parameter.shape)} but was consolidated with shape "
        f"{tuple(shape)}; only growth along its axes (a head that gains classes, new entries appended) is followed."
    )


def zero_padded(tensor: Tensor, shape: torch.Size) -> Tensor:
    """``tensor`` in the leading slice of zeros of ``shape`` (itself when the shapes agree)."""
    if tensor.shape == shape:
        return tensor
    padded = tensor.new_zeros(shape)
    padded[tuple(slice(0, then) for then in tensor.shape)] = tensor
    return padded


def check_state_names(owner: str, state: Mapping[str, Any], model: nn.Module) -> None:
    """Raises ``ValueError`` when a state mentions parameters the model does not have (with those shapes)."""
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    for name, shape in state.get("shapes", {}).items():
        now = shapes.get(name)
        grown = now is not None and len(now) == len(shape) and all(a >= b for a, b in zip(now, shape))
        if not grown:  # the same shape, or one that grew since (consolidated_part)
            raise ValueError(
                f"{owner}: the state dict was saved for a model with parameter {name!r} of shape "
                f"{tuple(shape)}; this model has {shapes.get(name, 'no such parameter')}."
            )
