"""The Fisher types as the columns s that are backpropagated through the model.

For a batch with outputs f the diagonal accumulates Σ_{k,n} (J_nᵀ s_{k,n})², where J_n is the
Jacobian of f_n with respect to the parameters and s_k comes from the type:

- ``mc`` (true Fisher): s_k = ∇_f[−log p(y_k | f)] / √K with y_k ~ p(y | f), K = ``mc_samples``;
- ``exact``: s_k are the columns of a square root of the output Fisher (the expectation over y
  in closed form; equals the GGN for canonical links);
- ``empirical``: s = ∇_f[−log p(y | f)] with the dataset labels y. Not a curvature estimate.
- ``predicted``: s = ∇_f[−log p(ŷ | f)] with ŷ the model's most probable target (arg max of the
  logits). Not an unbiased estimate of the Fisher either: the approximation that the EWC code of
  van de Ven & Tolias (2019) and Hsu et al. (2018) uses, offered to reproduce their protocols.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from fisherkit.errors import NonFiniteFisherError
from fisherkit.likelihoods import Likelihood

FISHER_TYPES = ("mc", "exact", "empirical", "predicted")


def make_columns_fn(
    likelihood: Likelihood,
    fisher_type: str,
    target: Tensor | None,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
    positions: Tensor | None = None,
) -> Callable[[Tensor], Tensor]:
    """The function from a batch's outputs ``(B, *)`` to its columns ``(K, B, *)``.

    It validates outputs and targets against the likelihood, rejects non-finite outputs, and
    zeroes positions the likelihood masks (an ignore index) and those ``positions`` marks False.

    Args:
        likelihood: The output distribution.
        fisher_type: ``"mc"``, ``"exact"``, ``"empirical"`` or ``"predicted"``.
        target: The batch's targets, or None.
        mc_samples: Draws per sample for ``"mc"``.
        generator: For the draws.
        positions: ``(B, T...)`` booleans, True at real (unpadded) positions of sequence outputs
            ``(B, T..., C)``; ignored for outputs without positions ``(B, C)``.
    """
    if fisher_type == "empirical" and target is None:
        raise ValueError(
            "fisher_type='empirical' needs the dataset's labels, but the batches carry no targets; "
            "pass (inputs, targets) batches, or use fisher_type='mc' or 'exact'."
        )

    def columns_fn(output: Tensor) -> Tensor:
        axis = likelihood.event_axis(output)
        if axis == output.dim() - 1:
            return last_axis_columns(output)
        return last_axis_columns(output.movedim(axis, -1)).movedim(-1, axis + 1)

    def last_axis_columns(output: Tensor) -> Tensor:
        likelihood.check(output, target, check_values=fisher_type == "empirical")
        if not bool(torch.isfinite(output).all()):
            raise NonFiniteFisherError(
                "the model produced NaN or Inf outputs for a batch; the Fisher is undefined there."
            )
        real = _real_positions(output, positions)
        if fisher_type == "exact":
            columns = likelihood.sqrt_output_fisher(output, target)
        elif fisher_type == "empirical":
            assert target is not None  # the batch reader refuses the empirical Fisher without labels
            columns = likelihood.grad_nll(output, target).unsqueeze(0)
        else:  # labels of the model's own: its most probable one, or draws from it
            if fisher_type == "predicted":
                columns = likelihood.grad_nll(output, likelihood.mode(output)).unsqueeze(0)
            else:
                draws = [likelihood.grad_nll(output, likelihood.sample(output, generator)) for _ in range(mc_samples)]
                columns = torch.stack(draws)
                if mc_samples > 1:
                    columns /= math.sqrt(mc_samples)
            mask = likelihood.mask(output, target)
            columns = columns if mask is None else columns * mask
        return columns if real is None else columns * real

    return columns_fn


def _real_positions(output: Tensor, positions: Tensor | None) -> Tensor | None:
    """``positions`` shaped to multiply ``(K, B, T..., C)`` columns, or None when it does not apply."""
    if positions is None or output.dim() < 3:
        return None
    if tuple(output.shape[: positions.dim()]) != tuple(positions.shape) or positions.dim() != output.dim() - 1:
        raise ValueError(
            f"the attention mask of shape {tuple(positions.shape)} does not fit model outputs of shape "
            f"{tuple(output.shape)}: it must mark the outputs' positions {tuple(output.shape[:-1])}. Pass "
            f"mask_key=<another entry> or drop the mask from the batch."
        )
    return positions.unsqueeze(-1).to(output.dtype)
