"""The network used by the scenarios: an MLP whose output can be masked to a task's units and whose
output layer can grow when new classes arrive."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MaskedMLP(nn.Module):
    """``features → hidden → … → outputs`` with ReLUs; ``active`` selects output units.

    Setting ``active`` to a task's units makes the shared output layer a multi-head model (the
    task-incremental setting): the logits, the loss, the predictions and the Fisher all see only
    those units. ``grow`` appends output units (the class-incremental head).

    Args:
        features: Input dimension.
        hidden: Widths of the hidden layers.
        outputs: Output units.
    """

    def __init__(self, features: int, hidden: tuple[int, ...], outputs: int) -> None:
        super().__init__()
        widths = [features, *hidden]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths, widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], outputs))
        self.net = nn.Sequential(*layers)
        self.active: Tensor | None = None

    @property
    def head(self) -> nn.Linear:
        """The output layer."""
        head = self.net[-1]
        if not isinstance(head, nn.Linear):
            raise TypeError(f"MaskedMLP's output layer must be an nn.Linear; got {type(head).__name__}.")
        return head

    def grow(self, outputs: int) -> None:
        """Appends output units up to ``outputs`` (a no-op when the head is that wide already): the
        existing rows are kept, the new ones initialized as ``nn.Linear`` initializes a layer. The
        head becomes a new parameter object (optimizers and regularizers follow it by name)."""
        old = self.head
        if outputs <= old.out_features:
            return
        new = nn.Linear(old.in_features, outputs).to(old.weight.device, old.weight.dtype)
        with torch.no_grad():
            new.weight[: old.out_features] = old.weight
            new.bias[: old.out_features] = old.bias
        self.net[-1] = new

    def forward(self, x: Tensor) -> Tensor:
        logits = self.net(x)
        return logits if self.active is None else logits[:, self.active.to(logits.device)]
