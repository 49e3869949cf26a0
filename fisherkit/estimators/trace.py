"""Per-sample Fisher traces: E_y ‖∇_θ log p(y | x_n)‖² for every sample."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fisherkit.errors import NonFiniteFisherError
from fisherkit.estimators.common import Estimation, check_count, run_estimator
from fisherkit.likelihoods import Likelihood


def per_sample_fisher_trace(
    model: nn.Module,
    data: Any,
    likelihood: str | Likelihood = "categorical",
    fisher_type: str = "mc",
    **options: Any,
) -> Tensor:
    """The trace of every sample's Fisher, ``tr F_n = E_y ‖∇_θ log p(y | x_n)‖²``.

    With ``"empirical"`` this is the squared norm of each sample's log-likelihood gradient at its
    dataset label (the quantity per-sample gradient clipping and gradient-norm data scores use);
    with ``"mc"`` the mean over ``mc_samples`` sampled labels; with ``"exact"`` the expectation in
    closed form. Scaling: ``per_sample_fisher_trace(...).mean()`` equals
    ``diagonal_fisher(...).trace()`` for the same draws. The layerwise engine computes the norms
    with ``fisherkit.ops.persample_sqnorm`` (Linear and Conv layers: no per-sample gradient is
    formed); other layers and the vmap engine square their per-sample gradients.

    Args: as for ``fisherkit.diagonal_fisher`` (options: ``fisherkit.EstimationOptions``).

    Returns:
        ``(N,)`` float32 (float64 for float64 models), one entry per sample in data order. Under
        ``torch.distributed`` each rank returns the traces of its own samples.

    Raises:
        ValueError: As ``diagonal_fisher``; also when a trace is not finite.
    """
    return run_estimator(estimate_traces, model, data, likelihood, fisher_type, options)


def estimate_traces(job: Estimation, data: Any) -> Tensor:
    """Per-sample Fisher traces of ``job``'s model on ``data`` (see ``per_sample_fisher_trace``)."""
    engine = job.engine()
    traces = []
    for call, columns_fn in job.batches(data, "per-sample Fisher trace"):
        norms = job.accumulator((call.batch_size,))
        engine.accumulate_sqnorm(call, columns_fn, norms)
        traces.append(norms)
    check_count(len(traces))
    result = torch.cat(traces)
    if not bool(torch.isfinite(result).all()):
        raise NonFiniteFisherError("a per-sample Fisher trace is NaN or Inf: its per-sample gradients overflowed.")
    return result
