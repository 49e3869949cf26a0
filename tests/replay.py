"""Replaying the MC labels an estimator draws, so the float64 oracles can use the same labels."""

from __future__ import annotations

import torch

from fisherkit.likelihoods import get_likelihood


def replay_draws(model, inputs, likelihood: str, seed: int, mc_samples: int, batch_size: int) -> list[torch.Tensor]:
    """The labels the estimator draws with this seed: the same generator, batches and order of draws."""
    generator = torch.Generator().manual_seed(seed)
    lik = get_likelihood(likelihood)
    per_batch = []
    for start in range(0, len(inputs), batch_size):
        with torch.no_grad():
            output = model(inputs[start : start + batch_size])
        per_batch.append([lik.sample(output, generator) for _ in range(mc_samples)])
    return [torch.cat([draws[k] for draws in per_batch]) for k in range(mc_samples)]
