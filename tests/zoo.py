"""Small models covering every layer rule on odd shapes, each with inputs and a likelihood."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


class MeanOverPositions(nn.Module):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(self.axis)


class Scale(nn.Module):
    """A layer with no registered rule: y = x ⊙ s (served by the torch.func fallback)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, features))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class ScaledRMS(nn.Module):
    """An RMSNorm written by hand, as model libraries do (no registered rule: matched by behaviour)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, features))

    def forward(self, x: Tensor) -> Tensor:
        return self.weight * (x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6))


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], Tensor]
    likelihood: str = "categorical"
    output_shape: tuple[int, ...] = (3,)
    fallback: bool = False


def _randn(*shape: int) -> Callable[[torch.Generator], Tensor]:
    return lambda g: torch.randn(*shape, generator=g)


CASES = [
    Case("linear", lambda: nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)), _randn(6, 5)),
    Case("linear-batch1", lambda: nn.Sequential(nn.Linear(5, 3)), _randn(1, 5)),
    Case(
        "linear-shared-3d",
        lambda: nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), MeanOverPositions(1), nn.Linear(4, 3)),
        _randn(4, 3, 5),
    ),
    Case(
        "conv1d-stride-dilation",
        lambda: nn.Sequential(
            nn.Conv1d(2, 4, 3, stride=2, dilation=2, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(20, 3)
        ),
        _randn(3, 2, 11),
    ),
    Case(
        "conv2d-groups-reflect",
        lambda: nn.Sequential(
            nn.Conv2d(4, 6, (3, 2), padding=1, groups=2, padding_mode="reflect"),
            nn.Tanh(),
            nn.Conv2d(6, 3, 3, padding="same", dilation=2, bias=False),
            MeanOverPositions((2, 3)),
        ),
        _randn(3, 4, 5, 6),
    ),
    Case(
        "conv3d",
        lambda: nn.Sequential(
            nn.Conv3d(2, 3, 2, stride=(1, 2, 1)), nn.Tanh(), MeanOverPositions((2, 3, 4)), nn.Linear(3, 3)
        ),
        _randn(2, 2, 3, 4, 3),
    ),
    Case(
        "embedding",
        lambda: nn.Sequential(nn.Embedding(7, 4, padding_idx=1), MeanOverPositions(1), nn.Linear(4, 3)),
        lambda g: torch.tensor([[0, 1, 2, 2, 6], [3, 3, 3, 1, 0], [5, 4, 6, 2, 2]]),
    ),
    Case(
        "layernorm-rmsnorm",
        lambda: nn.Sequential(nn.Linear(5, 6), nn.LayerNorm(6), nn.Tanh(), nn.RMSNorm(6), nn.Linear(6, 3)),
        _randn(5, 5),
    ),
    Case(
        "groupnorm-batchnorm-eval",
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3),
            nn.GroupNorm(2, 4),
            nn.Tanh(),
            nn.BatchNorm2d(4),
            MeanOverPositions((2, 3)),
            nn.Linear(4, 3),
        ).eval(),
        _randn(3, 2, 5, 5),
    ),
    Case(
        "fallback",
        lambda: nn.Sequential(nn.Linear(5, 4), Scale(4), nn.Tanh(), nn.Linear(4, 3)),
        _randn(4, 5),
        fallback=True,
    ),
    Case(
        "conv-transpose-groups",
        lambda: nn.Sequential(
            nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
            nn.Tanh(),
            MeanOverPositions((2, 3)),
            nn.Linear(6, 3),
        ),
        _randn(3, 4, 3, 2),
    ),
    Case(
        "conv-transpose-1d",
        lambda: nn.Sequential(
            nn.ConvTranspose1d(2, 3, 3, stride=2, dilation=2, bias=False), nn.Tanh(), nn.Flatten(), nn.Linear(51, 3)
        ),
        _randn(3, 2, 7),
    ),
    Case(
        "rmsnorm-by-behaviour",
        lambda: nn.Sequential(nn.Linear(5, 4), ScaledRMS(4), nn.Tanh(), nn.Linear(4, 3)),
        _randn(4, 5),
    ),
    Case(
        "sequence-output",
        lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)),
        _randn(3, 4, 4),
        output_shape=(4, 3),
    ),
    Case(
        "gaussian", lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)), _randn(5, 4), "gaussian", (2,)
    ),
    Case(
        "bernoulli", lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)), _randn(5, 4), "bernoulli", (3,)
    ),
]

FISHER_TYPES = ("mc", "exact", "empirical", "predicted")
CASES_AND_TYPES = [  # the predicted Fisher of a Gaussian is refused (test_diagonal_oracles)
    (case, t) for case in CASES for t in FISHER_TYPES if not (case.likelihood == "gaussian" and t == "predicted")
]
CASE_AND_TYPE_IDS = [f"{case.name}-{t}" for case, t in CASES_AND_TYPES]


def build_case(case: Case, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """The case's float64 model (with randomized BatchNorm statistics), inputs and random targets."""
    torch.manual_seed(seed)
    model = case.build().double()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, ScaledRMS)):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            if getattr(module, "bias", None) is not None:
                nn.init.uniform_(module.bias, -0.5, 0.5)
    generator = torch.Generator().manual_seed(seed)
    inputs = case.inputs(generator)
    if inputs.dtype.is_floating_point:
        inputs = inputs.double()
    batch = inputs.shape[0]
    if case.likelihood == "categorical":
        targets = torch.randint(0, case.output_shape[-1], (batch, *case.output_shape[:-1]), generator=generator)
    elif case.likelihood == "gaussian":
        targets = torch.randn(batch, *case.output_shape, generator=generator, dtype=torch.float64)
    else:
        targets = torch.randint(0, 2, (batch, *case.output_shape), generator=generator).double()
    return model, inputs, targets
