"""Per-sample Fisher traces: E_y ‖∇_θ log p(y | x_n)‖² for every sample."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fisherkit.estimators.common import DEFAULT_MEMORY_BUDGET, Estimation, check_count, choose_engine
from fisherkit.likelihoods import Likelihood


def per_sample_fisher_trace(
    model: nn.Module,
    data: Any,
    likelihood: str | Likelihood = "categorical",
    fisher_type: str = "mc",
    *,
    mc_samples: int = 1,
    engine: str = "auto",
    fallback: bool = False,
    batch_size: int = 256,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Tensor:
    """The trace of every sample's Fisher, ``tr F_n = E_y ‖∇_θ log p(y | x_n)‖²``.

    With ``"empirical"`` this is the squared norm of each sample's log-likelihood gradient at its
    dataset label (the quantity per-sample gradient clipping and gradient-norm data scores use);
    with ``"mc"`` the mean over ``mc_samples`` sampled labels; with ``"exact"`` the expectation in
    closed form. Scaling: ``per_sample_fisher_trace(...).mean()`` equals
    ``diagonal_fisher(...).trace()`` for the same draws. The layerwise engine computes the norms
    with ``fisherkit.ops.persample_sqnorm`` (Linear and Conv layers: no per-sample gradient is
    formed); other layers and the vmap engine square their per-sample gradients.

    Args: as for ``fisherkit.diagonal_fisher``.

    Returns:
        ``(N,)`` float32 (float64 for float64 models), one entry per sample in data order. Under
        ``torch.distributed`` each rank returns the traces of its own samples.

    Raises:
        ValueError: As ``diagonal_fisher``; also when a trace is not finite.
    """
    job = Estimation.start(model, likelihood, fisher_type, mc_samples, fallback, batch_size, seed, generator, progress)
    engine_impl = choose_engine(engine, model, job.plan, memory_budget)
    traces = []
    for inputs, columns_fn in job.batches(data, "per-sample Fisher trace"):
        norms = job.accumulator(len(inputs) if isinstance(inputs, Tensor) else len(inputs[0]))
        engine_impl.accumulate_sqnorm(inputs, columns_fn, norms)
        traces.append(norms)
    check_count(len(traces))
    result = torch.cat(traces)
    if not bool(torch.isfinite(result).all()):
        raise ValueError("a per-sample Fisher trace is NaN or Inf: its per-sample gradients overflowed.")
    return result
