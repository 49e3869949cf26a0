"""The natural-gradient preconditioner: Fisher statistics from the training batches, their moving
average, damped inverses, and ∇ ← (F + λI)⁻¹ ∇ on the parameters' ``.grad``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fisherkit.curvature import Block, Curvature
from fisherkit.errors import NonFiniteFisherError
from fisherkit.estimators import fisher, get_structure
from fisherkit.estimators.common import prepare_plan
from fisherkit.estimators.distributed import is_distributed
from fisherkit.likelihoods import Likelihood
from fisherkit.optim.damping import LevenbergMarquardt

Schedule = float | Callable[[int], float]


def value_at(schedule: Schedule, step: int) -> float:
    """A hyperparameter that may be a number or a function of the step."""
    return float(schedule(step)) if callable(schedule) else float(schedule)


def check_ema_decay(decay: float) -> float:
    """Returns ``decay``; raises ``ValueError`` outside [0, 1)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1); got {decay}.")
    return decay


class NGDPreconditioner:
    """Rewrites gradients to (F + λI)⁻¹ ∇ with a Fisher F estimated from the training batches.

    It records the inputs of every forward of ``model`` (a forward pre-hook), and on statistics
    steps estimates the Fisher of the last batch itself — for the true Fisher it samples labels
    from the model's own predictions and runs the extra backward, so the training loop is just
    ``loss.backward(); preconditioner.precondition()`` (or the ``NGD`` optimizer). Statistics are
    averaged, F ← β F + (1 − β) F_batch (``ema_`` of the representation); inverses are recomputed
    every ``inverse_every`` steps.

    Args:
        model: The model; its trainable parameters are preconditioned.
        structure: A registered Fisher structure (``fisherkit.STRUCTURES``: ``"diagonal"``,
            ``"kfac"``, ``"ekfac"``, ``"block"``, ``"full"``).
        fisher_type: ``"mc"`` (true Fisher, default), ``"exact"`` or ``"empirical"`` (needs
            ``targets`` passed to ``precondition``).
        likelihood: ``"categorical"``, ``"gaussian"``, ``"bernoulli"`` or a ``Likelihood``.
        damping: λ > 0 (Tikhonov; π-damped for Kronecker blocks when ``pi_damping``), a number or a
            function of the step.
        ema_decay: β ∈ [0, 1) for the statistics (0 keeps only the latest batch), a number or a
            function of the step (e.g. a warm-up from 0).
        stats_every: Steps between statistics updates.
        inverse_every: Steps between inverse recomputations.
        pi_damping: Factored damping for Kronecker blocks (cheaper inverse: two matrix products).
        mc_samples: Label draws per sample for ``"mc"``.
        seed: Seeds the label draws.
        fallback: As in the estimators (``None``: modules without a rule use the fallback, with a warning).
    """

    def __init__(
        self,
        model: nn.Module,
        structure: str = "kfac",
        fisher_type: str = "mc",
        likelihood: str | Likelihood = "categorical",
        damping: Schedule = 1e-3,
        ema_decay: Schedule = 0.95,
        stats_every: int = 10,
        inverse_every: int = 10,
        pi_damping: bool = True,
        mc_samples: int = 1,
        seed: int | None = None,
        fallback: bool | None = None,
    ) -> None:
        get_structure(structure)
        check_ema_decay(value_at(ema_decay, 0))
        if stats_every < 1 or inverse_every < 1:
            raise ValueError("stats_every and inverse_every must be positive integers.")
        plan = prepare_plan(model, fallback)
        if structure in ("kfac", "ekfac", "diagonal"):
            plan.require_layerwise()
        self.model = model
        self.names = list(plan.names)
        self.structure, self.fisher_type, self.likelihood = structure, fisher_type, likelihood
        self.damping, self.ema_decay, self.pi_damping = damping, ema_decay, pi_damping
        self.stats_every, self.inverse_every = stats_every, inverse_every
        self.options = {"mc_samples": mc_samples, "fallback": fallback, "progress": False}
        device = next(model.parameters()).device
        self.generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        self.steps = 0
        self.skipped: list[str] = []
        self.fisher: Curvature | None = None
        self.inverse: Curvature | None = None
        self._inputs: Any = None
        self._estimating = False
        self._hook = model.register_forward_pre_hook(self._record_inputs, with_kwargs=True)

    def _record_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._estimating:  # the estimator's own forward passes are not training batches
            return
        if args and kwargs:
            raise TypeError(
                "NGD records a model called with positional inputs (model(x), model(*xs)) or with keyword "
                "inputs (model(**batch)), not both."
            )
        if kwargs:
            self._inputs = {k: v.detach() if isinstance(v, Tensor) else v for k, v in kwargs.items()}
        else:
            inputs = [a.detach() for a in args]
            self._inputs = inputs[0] if len(inputs) == 1 else inputs

    def remove(self) -> None:
        """Detaches the input hook from the model."""
        self._hook.remove()

    def _recorded_batch(self, targets: Tensor | None) -> Any:
        """The last training batch in a form the estimators read: keyword inputs as a dict batch
        (its ``labels`` are the target unless ``targets`` is given), positional ones as a tuple."""
        if isinstance(self._inputs, dict):
            return self._inputs if targets is None else {**self._inputs, "labels": targets}
        return (self._inputs, targets)

    @property
    def parameters(self) -> dict[str, nn.Parameter]:
        named = dict(self.model.named_parameters())
        return {n: named[n] for n in self.names}

    def update_statistics(self, targets: Tensor | None = None) -> bool:
        """Estimates the Fisher on the last recorded batch and folds it into the average.

        Returns:
            False (with a warning, statistics unchanged) when the estimate was not finite.
        """
        if self._inputs is None:
            raise ValueError("no forward pass was recorded: run the model on a batch before stepping.")
        labelled = isinstance(self._inputs, dict) and "labels" in self._inputs
        if self.fisher_type == "empirical" and targets is None and not labelled:
            raise ValueError(
                "fisher_type='empirical' needs the batch's labels: pass targets=y to step() (or call the model "
                "with a labels= keyword, as Hugging Face models take them)."
            )
        was_training = self.model.training
        self.model.eval()
        self._estimating = True
        try:
            batch = [self._recorded_batch(targets)]
            estimate = fisher(
                self.model,
                batch,
                self.structure,
                self.likelihood,
                self.fisher_type,
                generator=self.generator,
                **self.options,
            )
        except NonFiniteFisherError as error:
            self.skipped.append(f"step {self.steps}: {error}")
            warnings.warn(f"NGD skipped a statistics update: {error}", RuntimeWarning, stacklevel=3)
            return False
        finally:
            self._estimating = False
            self.model.train(was_training)
        if self.fisher is None:
            self.fisher = estimate
        else:
            self.fisher.ema_(estimate, check_ema_decay(value_at(self.ema_decay, self.steps)))
        return True

    def precondition(self, targets: Tensor | None = None) -> dict[str, Tensor] | None:
        """Replaces every ``.grad`` by (F + λI)⁻¹ ``.grad`` and returns the preconditioned gradients
        (None and gradients untouched when the step is skipped: non-finite statistics before any
        estimate, or a non-finite preconditioned gradient)."""
        step = self.steps
        if step % self.stats_every == 0 or self.fisher is None:
            self.update_statistics(targets)
        self.steps += 1
        if self.fisher is None:
            return None
        if self.inverse is None or step % self.inverse_every == 0:
            device = next(self.model.parameters()).device
            self.inverse = distributed_inverse(self.fisher, value_at(self.damping, step), self.pi_damping, device)
        params = self.parameters
        grads = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in params.items()}
        natural = dict(zip(self.names, self.inverse.mv([grads[n] for n in self.names])))
        if not all(bool(torch.isfinite(g).all()) for g in natural.values()):
            self.skipped.append(f"step {step}: non-finite preconditioned gradient")
            message = "NGD skipped a step: the preconditioned gradient is not finite."
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            return None
        for name, parameter in params.items():
            parameter.grad = natural[name].to(parameter.dtype)
        return natural

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "names": list(self.names),
            "shapes": [list(p.shape) for p in self.parameters.values()],
            "fisher": None if self.fisher is None else self.fisher.state_dict(),
            "inverse": None if self.inverse is None else self.inverse.state_dict(),
            "generator": None if self.generator is None else self.generator.get_state(),
            "skipped": list(self.skipped),
            "damping": self.damping.value if isinstance(self.damping, LevenbergMarquardt) else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        shapes = [list(p.shape) for p in self.parameters.values()]
        if (list(state["names"]), [list(s) for s in state["shapes"]]) != (self.names, shapes):
            raise ValueError(
                f"NGD state of parameters {list(zip(state['names'], state['shapes']))} cannot be loaded for "
                f"parameters {list(zip(self.names, shapes))}."
            )
        self.steps = int(state["steps"])
        device = next(self.model.parameters()).device

        def restored(key: str) -> Curvature | None:
            return None if state[key] is None else Curvature.from_state_dict(state[key]).to(device)

        self.fisher, self.inverse = restored("fisher"), restored("inverse")
        if state["generator"] is not None and self.generator is not None:
            self.generator.set_state(state["generator"])
        self.skipped = list(state["skipped"])
        if isinstance(self.damping, LevenbergMarquardt) and state.get("damping") is not None:
            self.damping.value = float(state["damping"])


def distributed_inverse(fisher: Curvature, damping: float, pi_damping: bool, device: torch.device) -> Curvature:
    """(F + λI)⁻¹ blockwise; under ``torch.distributed`` rank r inverts the blocks i ≡ r (mod world
    size) and broadcasts them, so the eigendecompositions are spread over the ranks."""
    if not is_distributed():
        return fisher.inverse(damping, pi_damping)
    world, rank = dist.get_world_size(), dist.get_rank()
    blocks = []
    for index, block in enumerate(fisher.blocks):
        owner = index % world
        payload = [block.inverse(damping, pi_damping).state() if owner == rank else None]
        dist.broadcast_object_list(payload, src=owner)
        blocks.append(Block.from_state(payload[0]).map(lambda t: t.to(device)))
    return fisher._with_blocks(blocks)


def kl_clip_factor(natural: dict[str, Tensor], grads: dict[str, Tensor], lr: float, kl_clip: float) -> float:
    """ν = min(1, √(κ / (η² Σ ĝᵀ g))): scales the step so its predicted KL change stays below κ."""
    quadratic = sum(float((natural[n] * grads[n]).sum()) for n in natural)
    if quadratic <= 0:
        return 1.0
    return min(1.0, math.sqrt(kl_clip / (lr**2 * quadratic)))
