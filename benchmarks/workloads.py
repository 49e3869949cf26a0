"""The three fixed benchmark workloads (CPU, float32, random inputs, 10 classes, cross-entropy)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


class MeanOverTime(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(1)


@dataclass
class Workload:
    name: str
    model: nn.Module
    inputs: Tensor
    targets: Tensor
    batch_size: int

    def batches(self, limit: int | None = None) -> list[tuple[Tensor, Tensor]]:
        """``(inputs, targets)`` batches, at most ``limit`` samples in all."""
        count = len(self.inputs) if limit is None else min(limit, len(self.inputs))
        return [
            (self.inputs[i : i + self.batch_size], self.targets[i : i + self.batch_size])
            for i in range(0, count, self.batch_size)
        ]


def make_workload(name: str, seed: int = 0) -> Workload:
    """``mlp``, ``cnn`` or ``seq`` as specified in docs/guide/benchmarks.md."""
    torch.manual_seed(seed)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
        inputs, batch = torch.randn(2048, 784), 256
    elif name == "cnn":
        model = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(4),
            nn.Flatten(),
            nn.Linear(3136, 10),
        )
        inputs, batch = torch.randn(512, 1, 28, 28), 128
    elif name == "seq":
        model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 128), MeanOverTime(), nn.Linear(128, 10))
        inputs, batch = torch.randn(512, 64, 128), 32
    else:
        raise ValueError(f"unknown workload {name!r}; choose mlp, cnn or seq")
    targets = torch.randint(0, 10, (len(inputs),))
    return Workload(name, model, inputs, targets, batch)


WORKLOADS = ("mlp", "cnn", "seq")
