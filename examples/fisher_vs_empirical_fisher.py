"""Fisher vs empirical Fisher as preconditioners (after Kunstner, Balles & Hennig 2019, Figure 1).

A two-parameter linear least-squares problem. At points of a grid we draw the gradient step, the
natural-gradient step with the Fisher, and the step with the empirical Fisher, each as a unit
vector field over the loss contours. The Fisher's field points at the minimum from everywhere; the
empirical Fisher's bends away from it wherever the residuals are large, because it weights each
sample by its own squared residual rather than by the model's predictive variance.

Usage::

    python examples/fisher_vs_empirical_fisher.py [--out fisher_vs_empirical.png]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import fisherkit as fk


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = 1.0 + torch.randn(100, 1, generator=g, dtype=torch.float64)
    return x, 1.0 * x + 0.5 + 0.5 * torch.randn(100, 1, generator=g, dtype=torch.float64)


def directions(weight: float, bias: float, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Unit step directions at (weight, bias): −∇L, −F⁻¹∇L, −F_emp⁻¹∇L (damping 1e-8)."""
    model = nn.Linear(1, 1).double()
    with torch.no_grad():
        model.weight.fill_(weight)
        model.bias.fill_(bias)
    model.zero_grad()
    (0.5 * (model(x) - y).square().mean()).backward()
    gradient = [model.weight.grad.clone(), model.bias.grad.clone()]
    steps = {"gradient descent": torch.cat([g.reshape(-1) for g in gradient])}
    for name, fisher_type in (("Fisher (NGD)", "exact"), ("empirical Fisher", "empirical")):
        fisher = fk.full_fisher(model, (x, y), "gaussian", fisher_type, progress=False)
        steps[name] = torch.cat([s.reshape(-1) for s in fisher.solve(gradient, 1e-8)])
    return {name: -step / step.norm() for name, step in steps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="fisher_vs_empirical.png")
    args = parser.parse_args()
    x, y = data()
    optimum = torch.linalg.lstsq(torch.cat([x, torch.ones_like(x)], 1), y).solution.reshape(-1)
    grid = torch.linspace(-2, 4, 13)
    fields: dict[str, list[tuple[float, float, float, float]]] = {}
    cosines: dict[str, list[float]] = {}
    for w in grid.tolist():
        for b in grid.tolist():
            towards = optimum - torch.tensor([w, b], dtype=torch.float64)
            for name, direction in directions(w, b, x, y).items():
                fields.setdefault(name, []).append((w, b, float(direction[0]), float(direction[1])))
                if towards.norm() > 1e-6:
                    cosines.setdefault(name, []).append(float(direction @ towards / towards.norm()))
    for name, values in cosines.items():
        mean = sum(values) / len(values)
        print(f"{name:<17} mean cosine between the step and the direction to the minimum: {mean:.3f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights, biases = torch.meshgrid(torch.linspace(-2, 4, 100), torch.linspace(-2, 4, 100), indexing="ij")
    surface = 0.5 * ((weights.reshape(-1, 1) * x.T + biases.reshape(-1, 1) - y.T) ** 2).mean(1).reshape(100, 100)
    figure, axes = plt.subplots(1, 3, figsize=(12, 4))
    for axis, (name, field) in zip(axes, fields.items()):
        arrows = torch.tensor(field)
        axis.contour(weights, biases, surface.log(), levels=20, cmap="Greys")
        axis.quiver(arrows[:, 0], arrows[:, 1], arrows[:, 2], arrows[:, 3], angles="xy", scale=18, width=0.004)
        axis.plot(float(optimum[0]), float(optimum[1]), "r*", markersize=12)
        axis.set_title(name)
        axis.set_xlabel("weight")
    axes[0].set_ylabel("bias")
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
