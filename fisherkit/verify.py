"""``verify``: the fast paths the estimators use on a model, checked against a per-sample autograd
loop on a few of the user's own samples."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fisherkit.engines.base import ModelCall
from fisherkit.estimators.batches import raw_batches
from fisherkit.estimators.common import Estimation
from fisherkit.estimators.fisher_type import make_columns_fn
from fisherkit.estimators.options import EstimationOptions
from fisherkit.likelihoods import Categorical, Likelihood
from fisherkit.plan import Explanation

TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


@dataclass
class ParameterCheck:
    """One parameter's squared per-sample gradients by each fast path against the loop.

    Attributes:
        name: The parameter.
        module: The modules whose rules serve it (several for a tied parameter), and the rules.
        sqgrad_error: Relative error ‖fast − loop‖ / ‖loop‖ of Σ_n g_n² by the squared-gradient path.
        per_sample_error: The same for the per-sample gradient path (block and full Fisher, EKFAC).
    """

    name: str
    module: str
    sqgrad_error: float
    per_sample_error: float


@dataclass
class Verification:
    """What ``verify`` found.

    Attributes:
        parameters: One check per trainable parameter.
        trace_error: Largest relative error of the per-sample squared norms (``per_sample_fisher_trace``).
        tolerance: The bound every error must stay below for ``ok`` (by the model's dtype).
        samples: How many samples were checked.
    """

    parameters: list[ParameterCheck]
    trace_error: float
    tolerance: float
    samples: int

    @property
    def worst(self) -> float:
        """The largest error of any path."""
        return max([self.trace_error] + [max(p.sqgrad_error, p.per_sample_error) for p in self.parameters])

    @property
    def ok(self) -> bool:
        """True when every fast path agrees with the loop within ``tolerance``."""
        return self.worst <= self.tolerance

    def report(self) -> Explanation:
        """A table of the checks, worst first."""
        rows = [("parameter", "served by", "squared-gradient error", "per-sample error")]
        for check in sorted(self.parameters, key=lambda c: -max(c.sqgrad_error, c.per_sample_error)):
            rows.append((check.name, check.module, f"{check.sqgrad_error:.1e}", f"{check.per_sample_error:.1e}"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        verdict = "OK" if self.ok else "MISMATCH"
        lines.append(
            f"per-sample trace error {self.trace_error:.1e}; {self.samples} samples; tolerance {self.tolerance:.0e}: "
            f"{verdict}"
        )
        return Explanation("\n".join(lines))


def verify(
    model: nn.Module, data: Any, likelihood: str | Likelihood = "categorical", *, samples: int = 4, **options: Any
) -> Verification:
    """Checks every fast path the estimators would use on ``model`` against a per-sample loop.

    The first ``samples`` rows of the first batch of ``data`` get labels (the batch's targets, or
    labels drawn from the model with ``seed``); the squared-gradient path (``diagonal_fisher``), the
    per-sample gradient path (``block_fisher``, EKFAC) and the per-sample norm path
    (``per_sample_fisher_trace``) of the layerwise engine then run on them, and a loop computes each
    sample's ∇_θ log p(y_n | x_n) by autograd through the whole model, one sample at a time —
    without layer rules, hooks or fisherkit's engines. Use it on your own model before trusting a
    Fisher from it; ``report()`` names the rule that served each parameter.

    Args:
        model: The model, in eval mode.
        data: As in the estimators (only the first batch is read).
        likelihood: As in the estimators.
        samples: Rows checked (the loop costs one backward per row).
        **options: ``EstimationOptions`` (batch layout, ``fallback``, ``seed`` for the drawn labels).

    Returns:
        A ``Verification``; ``ok`` is True when every error is below the tolerance of the model's dtype.
    """
    keywords = {"progress": False, "seed": 0, **options, "likelihood": likelihood, "fisher_type": "empirical"}
    job = Estimation.start(model, EstimationOptions.from_keywords(keywords))
    batch = job.reader.read(next(iter(raw_batches(data, job.options.batch_size))))
    rows = slice(0, min(samples, batch.call.batch_size))
    call = batch.call.rows(rows)
    like = job.options.resolved_likelihood
    with torch.no_grad():
        output = call(model)
    target = batch.target[rows] if batch.target is not None else like.sample(output, job.generator)
    mask = batch.mask[rows] if batch.mask is not None else None
    params = job.parameters
    engine = job.layerwise_engine()

    def columns() -> Any:
        return make_columns_fn(like, "empirical", target, positions=mask)

    fast = {name: job.accumulator(p.shape) for name, p in params.items()}
    engine.accumulate_sqgrad(call, columns(), fast)
    per_sample = {name: job.accumulator(p.shape) for name, p in params.items()}

    def add_squares(grads: dict[str, Tensor]) -> None:
        for name, grad in grads.items():
            per_sample[name].add_(grad.to(per_sample[name].dtype).square().sum(0))

    engine.per_sample_grads(call, columns(), add_squares)
    norms = job.accumulator((call.batch_size,))
    engine.accumulate_sqnorm(call, columns(), norms)
    loop, loop_norms = _loop(model, call, like, target, mask, params)
    served: dict[str, list[str]] = {}
    for entry in job.plan.entries:
        for local in entry.local_names:
            served.setdefault(entry.full_name(local), []).append(f"{entry.path or '<root>'} ({entry.rule_name})")
    checks = [
        ParameterCheck(
            name, " + ".join(served.get(name, [])), _error(fast[name], loop[name]), _error(per_sample[name], loop[name])
        )
        for name in params
    ]
    dtype = next(iter(params.values())).dtype
    return Verification(checks, _error(norms, loop_norms, per_entry=True), TOLERANCE.get(dtype, 1e-4), call.batch_size)


def _loop(
    model: nn.Module, call: ModelCall, likelihood: Likelihood, target: Tensor, mask: Tensor | None, params: dict
) -> tuple[dict[str, Tensor], Tensor]:
    """Σ_n (∇ log p(y_n | x_n))² per parameter and ‖∇ log p(y_n | x_n)‖² per sample, by autograd."""
    sums = {name: torch.zeros_like(p, dtype=torch.float64) for name, p in params.items()}
    norms = torch.zeros(call.batch_size, dtype=torch.float64, device=target.device)
    for n in range(call.batch_size):
        label = target[n : n + 1]
        with torch.enable_grad():
            output = call.rows(slice(n, n + 1))(model)
            if mask is not None and output.dim() >= 3:
                if not isinstance(likelihood, Categorical):
                    raise ValueError("verify applies attention masks to categorical outputs only; drop the mask.")
                label = label.masked_fill(~mask[n : n + 1], likelihood.ignore_index)
            log_prob = likelihood.log_prob(_classes_last(likelihood, output), label).sum()
            grads = torch.autograd.grad(log_prob, list(params.values()), allow_unused=True)
        for name, grad in zip(params, grads):
            if grad is not None:
                sums[name] += grad.double().square()
                norms[n] += grad.double().square().sum()
    return sums, norms


def _classes_last(likelihood: Likelihood, output: Tensor) -> Tensor:
    axis = likelihood.event_axis(output)
    return output if axis == output.dim() - 1 else output.movedim(axis, -1)


def _error(fast: Tensor, loop: Tensor, per_entry: bool = False) -> float:
    fast, loop = fast.double(), loop.double()
    if per_entry:
        return float(((fast - loop).abs() / loop.abs().clamp(min=1e-30)).max()) if loop.numel() else 0.0
    scale = float(loop.norm())
    return float((fast - loop).norm()) / scale if scale > 0 else float(fast.norm())
