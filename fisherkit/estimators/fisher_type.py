"""The three Fisher types as the columns s that are backpropagated through the model.

For a batch with outputs f the diagonal accumulates Σ_{k,n} (J_nᵀ s_{k,n})², where J_n is the
Jacobian of f_n with respect to the parameters and s_k comes from the type:

- ``mc`` (true Fisher): s_k = ∇_f[−log p(y_k | f)] / √K with y_k ~ p(y | f), K = ``mc_samples``;
- ``exact``: s_k are the columns of a square root of the output Fisher (the expectation over y
  in closed form; equals the GGN for canonical links);
- ``empirical``: s = ∇_f[−log p(y | f)] with the dataset labels y. Not a curvature estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from fisherkit.likelihoods import Likelihood

FISHER_TYPES = ("mc", "exact", "empirical")


def check_fisher_type(fisher_type: str, mc_samples: int) -> None:
    """Raises ``ValueError`` for an unknown type or a non-positive number of MC samples."""
    if fisher_type not in FISHER_TYPES:
        raise ValueError(f"unknown fisher_type {fisher_type!r}; choose one of {FISHER_TYPES}.")
    if not isinstance(mc_samples, int) or mc_samples < 1:
        raise ValueError(f"mc_samples must be a positive integer; got {mc_samples!r}.")


def make_columns_fn(
    likelihood: Likelihood,
    fisher_type: str,
    target: Tensor | None,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
) -> Callable[[Tensor], Tensor]:
    """The function from a batch's outputs ``(B, *)`` to its columns ``(K, B, *)``.

    It validates outputs and targets against the likelihood, rejects non-finite outputs, and
    zeroes positions the likelihood masks (an ignore index).
    """
    if fisher_type == "empirical" and target is None:
        raise ValueError(
            "fisher_type='empirical' needs the dataset's labels, but the batches carry no targets; "
            "pass (inputs, targets) batches, or use fisher_type='mc' or 'exact'."
        )

    def columns_fn(output: Tensor) -> Tensor:
        likelihood.check(output, target, check_values=fisher_type == "empirical")
        if not bool(torch.isfinite(output).all()):
            raise ValueError("the model produced NaN or Inf outputs for a batch; the Fisher is undefined there.")
        if fisher_type == "exact":
            return likelihood.sqrt_output_fisher(output, target)
        if fisher_type == "empirical":
            return likelihood.grad_nll(output, target).unsqueeze(0)
        draws = [likelihood.grad_nll(output, likelihood.sample(output, generator)) for _ in range(mc_samples)]
        columns = torch.stack(draws)
        if mc_samples > 1:
            columns /= math.sqrt(mc_samples)
        mask = likelihood.mask(output, target)
        return columns if mask is None else columns * mask

    return columns_fn
