"""The classic picture of natural gradient descent: a two-parameter linear regression (weight and bias).

The inputs are far from centered, so the loss surface is a long, thin valley: gradient descent
crawls along it at a small learning rate (0.15) and diverges across it at a large one (0.5), while
NGD with the exact Fisher (here the Gauss-Newton matrix) converges in a few steps at both.

Usage::

    python examples/ngd_two_parameters.py [--out ngd_two_parameters.png] [--steps 30]

Prints the loss after each optimizer's last step and writes the trajectories over the loss contours
and the loss curves to a PNG (needs matplotlib).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import fisherkit as fk


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = 3.0 + torch.randn(64, 1, generator=g, dtype=torch.float64)
    return x, 2.0 * x - 1.0 + 0.3 * torch.randn(64, 1, generator=g, dtype=torch.float64)


def run(optimizer_name: str, lr: float, steps: int) -> tuple[list[tuple[float, float]], list[float]]:
    """Trajectory of (weight, bias) and the loss per step, from (−2, 3)."""
    x, y = data()
    model = nn.Linear(1, 1).double()
    with torch.no_grad():
        model.weight.fill_(-2.0)
        model.bias.fill_(3.0)
    if optimizer_name == "SGD":
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    else:
        optimizer = fk.NGD(
            model, lr=lr, structure="block", fisher_type="exact", likelihood="gaussian", damping=1e-8,
            ema_decay=0.0, stats_every=1, inverse_every=1, kl_clip=None,
        )  # fmt: skip
    path, losses = [], []
    for _ in range(steps + 1):
        loss = 0.5 * (model(x) - y).square().mean()
        path.append((float(model.weight.detach()), float(model.bias.detach())))
        losses.append(float(loss))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return path, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="ngd_two_parameters.png")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    runs = {f"{name} lr={lr}": run(name, lr, args.steps) for name in ("SGD", "NGD") for lr in (0.15, 0.5)}
    for label, (_, losses) in runs.items():
        print(f"{label:<14} loss after {args.steps} steps: {losses[-1]:.4g}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y = data()
    weights, biases = torch.meshgrid(torch.linspace(-3, 5, 200), torch.linspace(-6, 5, 200), indexing="ij")
    surface = 0.5 * ((weights.reshape(-1, 1) * x.T.float() + biases.reshape(-1, 1) - y.T.float()) ** 2).mean(1)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.contour(weights, biases, surface.reshape(200, 200).log(), levels=30, cmap="Greys")
    for label, (path, losses) in runs.items():
        path_tensor = torch.tensor(path).clamp(-10, 10)
        left.plot(path_tensor[:, 0], path_tensor[:, 1], marker=".", label=label)
        right.semilogy([min(v, 1e6) for v in losses], label=label)
    left.set_xlim(-3, 5)
    left.set_ylim(-6, 5)
    left.set_xlabel("weight")
    left.set_ylabel("bias")
    left.legend(fontsize=8)
    right.set_xlabel("step")
    right.set_ylabel("loss")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
