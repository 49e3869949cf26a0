"""The network used by the scenarios: an MLP whose output can be masked to a task's units."""

from __future__ import annotations

from torch import Tensor, nn


class MaskedMLP(nn.Module):
    """``features → hidden → … → outputs`` with ReLUs; ``active`` selects output units.

    Setting ``active`` to a task's units makes the shared output layer a multi-head model (the
    task-incremental setting): the logits, the loss, the predictions and the Fisher all see only
    those units.

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

    def forward(self, x: Tensor) -> Tensor:
        logits = self.net(x)
        return logits if self.active is None else logits[:, self.active.to(logits.device)]
