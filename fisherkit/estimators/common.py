"""What every estimator shares: the checked options, the plan, engine choice, the batch loop and its progress bar."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fisherkit.engines import Engine, LayerwiseEngine, VmapEngine
from fisherkit.engines.base import ColumnsFn, ModelCall
from fisherkit.errors import NonFiniteFisherError
from fisherkit.estimators.batches import BatchReader, check_device, raw_batches
from fisherkit.estimators.fisher_type import make_columns_fn
from fisherkit.estimators.options import EstimationOptions
from fisherkit.plan import Plan, build_plan


def prepare_plan(
    model: nn.Module, fallback: bool | None, only: Sequence[str] | None = None, layer_rules: bool = True
) -> Plan:
    """Builds the plan (for the parameters ``only``, or all trainable ones; ``layer_rules`` as in
    ``build_plan``); reports frozen parameters (left out of the Fisher) and modules served by the
    slow per-layer fallback (``fallback=None``), each in one warning."""
    plan = build_plan(model, fallback=fallback, only=only, layer_rules=layer_rules)
    if not plan.names:
        raise ValueError("the model has no parameters with requires_grad=True; there is nothing to estimate.")
    meta = [n for n, p in model.named_parameters() if n in plan.names and p.is_meta]
    if meta:
        raise ValueError(
            f"parameters {meta[:5]}{' …' if len(meta) > 5 else ''} are on the meta device and hold no values: "
            "materialize the model first (model.to_empty(device=...) and load its weights)."
        )
    if plan.frozen:
        warnings.warn(
            f"parameters with requires_grad=False are left out of the Fisher: {plan.frozen}",
            UserWarning,
            stacklevel=5,
        )
    if fallback is None and plan.fallback:
        described = ", ".join(f"{e.path or '<root>'} ({type(e.module).__name__})" for e in plan.fallback)
        warnings.warn(
            f"no layer rule for {described}: served by per-sample torch.func gradients of each call, which is "
            f"exact but slower. Register a rule with @fisherkit.register_rule, or pass fallback=True to "
            f"silence this warning (fallback=False makes it an error).",
            UserWarning,
            stacklevel=5,
        )
    return plan


def make_generator(device: torch.device, seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    """A generator seeded with ``seed`` on ``device``, the given ``generator``, or None (global RNG)."""
    if seed is None:
        return generator
    return torch.Generator(device=device).manual_seed(seed)


def with_progress(batches: Iterator[Any], data: Any, progress: bool | None, description: str) -> Iterator[Any]:
    """``batches`` behind a tqdm bar when tqdm is installed.

    ``progress=None`` shows the bar only on a terminal; ``False`` never; ``True`` always.
    """
    if progress is False:
        return batches
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return batches
    total = len(data) if hasattr(data, "__len__") and not isinstance(data, (tuple, torch.Tensor)) else None
    return iter(tqdm(batches, desc=description, total=total, disable=None if progress is None else False))


@dataclass
class Estimation:
    """The checked options of one estimation, its plan, and its batch loop.

    Attributes:
        model: The model.
        options: The checked options.
        plan: Its rules and trainable parameters.
        device: Where the parameters live.
        generator: For the MC draws (None: the global RNG).
        reader: Reads raw batches by the options' layout.
    """

    model: nn.Module
    options: EstimationOptions
    plan: Plan
    device: torch.device
    generator: torch.Generator | None
    reader: BatchReader

    @classmethod
    def start(cls, model: nn.Module, options: EstimationOptions, layer_rules: bool = True) -> Estimation:
        """Builds the plan (``layer_rules`` as in ``build_plan``) and the generator for ``model`` under
        ``options``."""
        plan = prepare_plan(model, options.fallback, options.parameters, layer_rules)
        device = dict(model.named_parameters())[plan.names[0]].device
        generator = make_generator(device, options.seed, options.generator)
        return cls(model, options, plan, device, generator, BatchReader(options, model))

    @property
    def parameters(self) -> dict[str, Tensor]:
        """The trainable parameters by name, in plan order."""
        named = dict(self.model.named_parameters())
        return {name: named[name] for name in self.plan.names}

    def accumulator(self, shape: torch.Size | tuple[int, ...]) -> Tensor:
        """Zeros for sums: float64 for a float64 model, float32 otherwise, on the model's device."""
        dtype = next(iter(self.parameters.values())).dtype
        return torch.zeros(shape, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=self.device)

    def engine(self) -> Engine:
        """The engine of ``options.engine``; ``auto`` is the layerwise engine (rules, fast paths).

        Raises:
            UnsupportedModelError: A module without a rule on the layerwise path.
        """
        if self.options.engine == "vmap":
            return VmapEngine(self.model, self.plan.names, self.options.memory_budget)
        return self.layerwise_engine()

    def layerwise_engine(self) -> LayerwiseEngine:
        """The layerwise engine (the structured estimators need its per-layer view)."""
        return LayerwiseEngine(self.model, self.plan, self.options.memory_budget)

    def batches(
        self, data: Any, description: str, columns: ColumnsFn | None = None
    ) -> Iterator[tuple[ModelCall, ColumnsFn]]:
        """Each batch's model call and the function from its outputs to the columns to backpropagate.

        Args:
            data: As in the estimators.
            description: Label of the progress bar.
            columns: Replaces the Fisher-type columns (``(B, *)`` outputs → ``(K, B, *)``): the hook for
                estimators of other quantities (MAS backpropagates 2 f, the gradient of ‖f‖²).
        """
        options = self.options
        for raw in with_progress(raw_batches(data, options.batch_size), data, options.progress, description):
            batch = self.reader.read(raw)
            check_device(batch, self.device)
            if columns is not None:
                yield batch.call, columns
                continue
            yield (
                batch.call,
                make_columns_fn(
                    options.resolved_likelihood,
                    options.fisher_type,
                    batch.target,
                    options.mc_samples,
                    self.generator,
                    batch.mask,
                ),
            )


def check_finite(label: str, tensor: Tensor) -> None:
    """Raises ``NonFiniteFisherError`` naming ``label`` when ``tensor`` has NaN or Inf entries."""
    if not bool(torch.isfinite(tensor).all()):
        raise NonFiniteFisherError(
            f"the Fisher of {label} has NaN or Inf entries: its per-sample gradients overflowed or the "
            f"parameter itself is not finite."
        )


def check_count(count: int) -> None:
    """Raises ``ValueError`` when the data held no samples."""
    if count == 0:
        raise ValueError("the data held no samples; the Fisher is a mean over samples and needs at least one.")


def run_estimator(
    estimate: Any,
    model: nn.Module,
    data: Any,
    likelihood: Any,
    fisher_type: str,
    options: dict[str, Any],
    **specific: Any,
) -> Any:
    """Checks ``options`` once (``EstimationOptions``) and runs ``estimate(job, data, **specific)``."""
    keywords = {"likelihood": likelihood, "fisher_type": fisher_type, **options}
    return estimate(Estimation.start(model, EstimationOptions.from_keywords(keywords)), data, **specific)
