"""What every estimator shares: argument checks, engine choice, the batch loop and its progress bar."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fisherkit.engines import Engine, LayerwiseEngine, VmapEngine
from fisherkit.engines.base import ColumnsFn, ModelInputs
from fisherkit.estimators.data import Batch, check_device, iter_batches
from fisherkit.estimators.fisher_type import check_fisher_type, make_columns_fn
from fisherkit.likelihoods import Likelihood, get_likelihood
from fisherkit.plan import Plan, build_plan

ENGINES = ("auto", "layerwise", "vmap")
DEFAULT_MEMORY_BUDGET = 2**30


def prepare_plan(model: nn.Module, fallback: bool) -> Plan:
    """Builds the plan and reports frozen parameters (they are left out of the Fisher)."""
    plan = build_plan(model, fallback=fallback)
    if not plan.names:
        raise ValueError("the model has no parameters with requires_grad=True; there is nothing to estimate.")
    if plan.frozen:
        warnings.warn(
            f"parameters with requires_grad=False are left out of the Fisher: {plan.frozen}",
            UserWarning,
            stacklevel=3,
        )
    return plan


def choose_engine(engine: str, model: nn.Module, plan: Plan, memory_budget: int) -> Engine:
    """``auto``: layerwise (rules, fast paths) unless weights are tied, then vmap.

    Raises:
        ValueError: Unknown engine name, or a module without a rule on the layerwise path.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}.")
    if engine == "vmap" or (engine == "auto" and plan.tied):
        return VmapEngine(model, plan.names, memory_budget)
    return LayerwiseEngine(model, plan, memory_budget)


def make_generator(device: torch.device, seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    """A generator seeded with ``seed`` on ``device``, the given ``generator``, or None (global RNG)."""
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both.")
    if seed is None:
        return generator
    return torch.Generator(device=device).manual_seed(seed)


def batches_with_progress(
    data: Any, batch_size: int, device: torch.device, progress: bool | None, description: str
) -> Iterator[Batch]:
    """Batches checked for device placement, behind a tqdm bar when tqdm is installed.

    ``progress=None`` shows the bar only on a terminal; ``False`` never; ``True`` always.
    """
    batches = iter_batches(data, batch_size)
    if progress is not False:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            total = len(data) if hasattr(data, "__len__") and not isinstance(data, (tuple, torch.Tensor)) else None
            batches = tqdm(batches, desc=description, total=total, disable=None if progress is None else False)
    for inputs, targets in batches:
        check_device(inputs, targets, device)
        yield inputs, targets


@dataclass
class Estimation:
    """The checked arguments every estimator shares, and its batch loop.

    Attributes:
        model: The model.
        plan: Its rules and trainable parameters.
        likelihood: The likelihood of the outputs.
        fisher_type: ``"mc"``, ``"exact"`` or ``"empirical"``.
        mc_samples: Label draws per sample for ``"mc"``.
        device: Where the parameters live.
        generator: For the MC draws (None: the global RNG).
        batch_size: Rows per batch when the data are tensors.
        progress: As in ``batches_with_progress``.
    """

    model: nn.Module
    plan: Plan
    likelihood: Likelihood
    fisher_type: str
    mc_samples: int
    device: torch.device
    generator: torch.Generator | None
    batch_size: int
    progress: bool | None

    @classmethod
    def start(
        cls,
        model: nn.Module,
        likelihood: str | Likelihood,
        fisher_type: str,
        mc_samples: int,
        fallback: bool,
        batch_size: int,
        seed: int | None,
        generator: torch.Generator | None,
        progress: bool | None,
    ) -> Estimation:
        """Checks the arguments and builds the plan (see ``diagonal_fisher`` for their meaning)."""
        check_fisher_type(fisher_type, mc_samples)
        likelihood = get_likelihood(likelihood)
        plan = prepare_plan(model, fallback)
        device = dict(model.named_parameters())[plan.names[0]].device
        generator = make_generator(device, seed, generator)
        return cls(model, plan, likelihood, fisher_type, mc_samples, device, generator, batch_size, progress)

    @property
    def parameters(self) -> dict[str, Tensor]:
        """The trainable parameters by name, in plan order."""
        named = dict(self.model.named_parameters())
        return {name: named[name] for name in self.plan.names}

    def accumulator(self, shape: torch.Size | tuple[int, ...]) -> Tensor:
        """Zeros for sums: float64 for a float64 model, float32 otherwise, on the model's device."""
        dtype = next(iter(self.parameters.values())).dtype
        return torch.zeros(shape, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=self.device)

    def batches(self, data: Any, description: str) -> Iterator[tuple[ModelInputs, ColumnsFn]]:
        """Each batch's inputs and the function from its outputs to its Fisher-type columns."""
        for inputs, targets in batches_with_progress(data, self.batch_size, self.device, self.progress, description):
            yield inputs, make_columns_fn(self.likelihood, self.fisher_type, targets, self.mc_samples, self.generator)


def check_finite(label: str, tensor: Tensor) -> None:
    """Raises ``ValueError`` naming ``label`` when ``tensor`` has NaN or Inf entries."""
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(
            f"the Fisher of {label} has NaN or Inf entries: its per-sample gradients overflowed or the "
            f"parameter itself is not finite."
        )


def check_count(count: int) -> None:
    """Raises ``ValueError`` when the data held no samples."""
    if count == 0:
        raise ValueError("the data held no samples; the Fisher is a mean over samples and needs at least one.")
