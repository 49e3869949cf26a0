"""What every estimator shares: argument checks, engine choice, the batch loop and its progress bar."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from fisherkit.engines import Engine, LayerwiseEngine, VmapEngine
from fisherkit.estimators.data import Batch, check_device, iter_batches
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
