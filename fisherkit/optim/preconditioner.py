"""The natural-gradient preconditioner: Fisher statistics from the training batches, their moving
average, damped inverses, and ∇ ← (F + λI)⁻¹ ∇ on the parameters' ``.grad``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fisherkit.curvature import Block, Curvature
from fisherkit.errors import NonFiniteFisherError
from fisherkit.estimators import EstimationOptions, fisher, get_structure
from fisherkit.estimators.common import prepare_plan
from fisherkit.estimators.distributed import is_distributed
from fisherkit.estimators.options import check_positive_int
from fisherkit.likelihoods import Likelihood
from fisherkit.optim.damping import LevenbergMarquardt
from fisherkit.optim.recorder import BackpropagatedForwards

Schedule = float | Callable[[int], float]
LAYERWISE_STRUCTURES = ("kfac", "ekfac", "diagonal")
"""Structures served by the layerwise engine alone (every parameter needs a layer rule)."""


def value_at(schedule: Schedule, step: int) -> float:
    """A hyperparameter that may be a number or a function of the step."""
    return float(schedule(step)) if callable(schedule) else float(schedule)


def check_damping_schedule(damping: Any) -> None:
    """Raises ``ValueError`` unless ``damping`` is a number ≥ 0, a function of the step or
    ``LevenbergMarquardt`` (the value a step uses is checked by the blocks' ``check_damping``)."""
    if callable(damping):
        return
    if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not 0 <= damping < math.inf:
        raise ValueError(
            f"damping must be a number >= 0, a function of the step or LevenbergMarquardt(...); got {damping!r}."
        )


def check_ema_decay(decay: float) -> float:
    """Returns ``decay``; raises ``ValueError`` outside [0, 1)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1); got {decay}.")
    return decay


class NGDPreconditioner:
    """Rewrites gradients to (F + λI)⁻¹ ∇ with a Fisher F estimated from the training batches.

    It records the inputs of the forwards of ``model`` that a backward pass reached since the
    last step (``BackpropagatedForwards``: accumulated micro-batches all count; ``no_grad``
    evaluation and logging forwards never do), and on statistics steps estimates the Fisher of
    those batches itself — for the true Fisher it samples labels from the model's own predictions
    and runs the extra backward, so the training loop is just
    ``loss.backward(); preconditioner.precondition()`` (or the ``NGD`` optimizer). Statistics are
    averaged, F ← β F + (1 − β) F_batch (``ema_`` of the representation); inverses are recomputed
    every ``inverse_every`` steps. The estimates run with the model in eval mode.

    Parameters it cannot precondition keep their plain gradient and are listed once, in a
    warning and in ``passed_through`` (name → reason): BatchNorm parameters (they train on batch
    statistics, which no per-sample Fisher describes) and, with ``fallback=False``, parameters of
    modules without a layer rule.

    Args:
        model: The model; its trainable parameters (or ``parameters``) are preconditioned.
        structure: A registered Fisher structure (``fisherkit.STRUCTURES``: ``"diagonal"``,
            ``"kfac"``, ``"ekfac"``, ``"block"``, ``"full"``).
        fisher_type: ``"mc"`` (true Fisher, default), ``"exact"``, ``"predicted"`` or ``"empirical"`` (needs
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
        parameters: Names of the parameters to precondition; None: every trainable parameter.
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
        parameters: Sequence[str] | None = None,
    ) -> None:
        get_structure(structure)
        if structure == "lowrank":
            raise ValueError(
                "NGD averages its statistics over steps (ema_), which a low-rank Fisher cannot do (the average of "
                "two low-rank matrices is not low rank): use structure='kfac', 'ekfac', 'diagonal' or 'block'."
            )
        EstimationOptions(likelihood=likelihood, fisher_type=fisher_type, mc_samples=mc_samples, fallback=fallback)
        check_ema_decay(value_at(ema_decay, 0))
        check_damping_schedule(damping)
        check_positive_int("stats_every", stats_every)
        check_positive_int("inverse_every", inverse_every)
        self.model = model
        self.structure, self.fisher_type, self.likelihood = structure, fisher_type, likelihood
        self.damping, self.ema_decay, self.pi_damping = damping, ema_decay, pi_damping
        self.stats_every, self.inverse_every = stats_every, inverse_every
        self.fallback = fallback
        self.options = {"mc_samples": mc_samples, "fallback": fallback, "progress": False}
        device = next(model.parameters()).device
        self.generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        self.parameter_damping: dict[str, Schedule] = {}
        self.recorder = BackpropagatedForwards(model)
        self.select(parameters)

    def select(self, parameters: Sequence[str] | None = None) -> None:
        """Chooses the parameters to precondition (None: every trainable one) and starts the
        statistics afresh; warns once about those passed through with their plain gradient."""
        trainable = [n for n, p in self.model.named_parameters() if p.requires_grad]
        wanted = trainable if parameters is None else list(parameters)
        batch_norm = {
            f"{path}.{n}" if path else n
            for path, module in self.model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
            for n, _ in module.named_parameters(recurse=False)
        }
        passed = {n: "BatchNorm trains on batch statistics" for n in wanted if n in batch_norm}
        was_training = self.model.training
        self.model.eval()
        try:
            plan = prepare_plan(self.model, self.fallback, [n for n in wanted if n not in passed])
        finally:
            self.model.train(was_training)
        if self.structure in LAYERWISE_STRUCTURES:
            for entry in plan.unsupported:
                for local in entry.local_names:
                    passed[entry.full_name(local)] = f"no layer rule for {type(entry.module).__name__} (fallback=False)"
        self.names = [n for n in plan.names if n not in passed]
        if not self.names:
            raise ValueError(
                f"NGD has no parameter it can precondition: {passed}. Use fallback=None (the default) for modules "
                "without a layer rule."
            )
        self.passed_through = passed
        if passed:
            warnings.warn(
                "NGD passes these parameters through with their plain gradient (not preconditioned): "
                + ", ".join(f"{n} ({why})" for n, why in passed.items()),
                UserWarning,
                stacklevel=3,
            )
        self.steps = 0
        self.skipped: list[str] = []
        self.fisher: Curvature | None = None
        self.inverse: Curvature | None = None

    def close(self) -> None:
        """Removes the recording hooks from the model (the optimizer does this when it is collected)."""
        self.recorder.close()

    def _statistics_batches(self, inputs: list[Any], targets: Tensor | Sequence[Tensor] | None) -> list[Any]:
        """The recorded forwards as batches the estimators read: keyword inputs as dict batches
        (their ``labels`` are the target unless ``targets`` are given), positional ones as tuples;
        ``targets`` is one tensor per recorded forward (or one tensor for one forward)."""
        if targets is None:
            per_forward: list[Tensor | None] = [None] * len(inputs)
        else:
            per_forward = [targets] if isinstance(targets, Tensor) else list(targets)
            if len(per_forward) != len(inputs):
                raise ValueError(
                    f"step(targets=...) got {len(per_forward)} target tensor(s) for {len(inputs)} backpropagated "
                    "forward(s) since the last step; pass one target tensor per forward (a list under gradient "
                    "accumulation)."
                )
        batches: list[Any] = []
        for forward, target in zip(inputs, per_forward):
            if isinstance(forward, dict):
                batches.append(forward if target is None else {**forward, "labels": target})
            else:
                batches.append((forward, target))
        return batches

    @property
    def parameters(self) -> dict[str, nn.Parameter]:
        named = dict(self.model.named_parameters())
        return {n: named[n] for n in self.names}

    def update_statistics(
        self, targets: Tensor | Sequence[Tensor] | None = None, inputs: list[Any] | None = None
    ) -> bool:
        """Estimates the Fisher on recorded forwards (``inputs``; default: those backpropagated
        since the last step) and folds it into the average.

        Returns:
            False (with a warning, statistics unchanged) when the estimate was not finite.
        """
        inputs = self.recorder.backpropagated() if inputs is None else inputs
        if not inputs:
            raise ValueError(
                "no backpropagated forward pass was recorded since the last step: run the model on a batch "
                "and call backward() before stepping."
            )
        labelled = all(isinstance(f, dict) and "labels" in f for f in inputs)
        if self.fisher_type == "empirical" and targets is None and not labelled:
            raise ValueError(
                "fisher_type='empirical' needs the batch's labels: pass targets=y to step() (or call the model "
                "with a labels= keyword, as Hugging Face models take them)."
            )
        batches = self._statistics_batches(inputs, targets)
        was_training = self.model.training
        self.model.eval()
        try:
            estimate = fisher(
                self.model,
                batches,
                self.structure,
                self.likelihood,
                self.fisher_type,
                generator=self.generator,
                parameters=self.names,
                **self.options,
            )
        except NonFiniteFisherError as error:
            self.skipped.append(f"step {self.steps}: {error}")
            warnings.warn(f"NGD skipped a statistics update: {error}", RuntimeWarning, stacklevel=3)
            return False
        finally:
            self.model.train(was_training)
        if self.fisher is None:
            self.fisher = estimate
        else:
            self.fisher.ema_(estimate, check_ema_decay(value_at(self.ema_decay, self.steps)))
        return True

    def block_dampings(self, step: int) -> list[float]:
        """λ of each Fisher block at ``step``: the damping of its parameters (``parameter_damping``,
        set per param group by ``NGD``; ``damping`` otherwise).

        Raises:
            ValueError: A block's parameters were given different dampings.
        """
        assert self.fisher is not None
        dampings = []
        for block in self.fisher.blocks:
            values = {n: value_at(self.parameter_damping.get(n, self.damping), step) for n in block.names}
            if len(set(values.values())) > 1:
                raise ValueError(
                    f"the parameters of Fisher block {block.label!r} have different dampings {values}; they are "
                    "inverted together: put them in param groups with one damping."
                )
            dampings.append(next(iter(values.values())))
        return dampings

    def precondition(self, targets: Tensor | Sequence[Tensor] | None = None) -> dict[str, Tensor] | None:
        """Replaces every ``.grad`` of the preconditioned parameters by (F + λI)⁻¹ ``.grad`` and
        returns the preconditioned gradients (None and gradients untouched when the step is skipped:
        no gradient at all, non-finite statistics before any estimate, or a non-finite
        preconditioned gradient). Parameters without ``.grad`` keep none."""
        params = self.parameters
        if all(p.grad is None for p in params.values()):
            self.recorder.clear()
            return None
        step = self.steps
        if step % self.stats_every == 0 or self.fisher is None:
            self.update_statistics(targets)
        self.recorder.clear()
        self.steps += 1
        if self.fisher is None:
            return None
        if self.inverse is None or step % self.inverse_every == 0:
            device = next(self.model.parameters()).device
            self.inverse = distributed_inverse(self.fisher, self.block_dampings(step), self.pi_damping, device)
        grads = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in params.items()}
        natural = dict(zip(self.names, self.inverse.mv([grads[n] for n in self.names])))
        if not all(bool(torch.isfinite(g).all()) for g in natural.values()):
            self.skipped.append(f"step {step}: non-finite preconditioned gradient")
            message = "NGD skipped a step: the preconditioned gradient is not finite."
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            return None
        for name, parameter in params.items():
            if parameter.grad is not None:
                parameter.grad = natural[name].to(parameter.dtype)
        return natural

    def state_dict(self) -> dict[str, Any]:
        return {
            "structure": self.structure,
            "fisher_type": self.fisher_type,
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
        saved = (state.get("structure"), state.get("fisher_type"))
        if saved != (self.structure, self.fisher_type):
            raise ValueError(
                f"NGD state of structure {saved[0]!r} and fisher_type {saved[1]!r} cannot be loaded into NGD with "
                f"structure {self.structure!r} and fisher_type {self.fisher_type!r}: build the optimizer with the "
                "settings the state was saved with."
            )
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


def distributed_inverse(
    fisher: Curvature, damping: float | Sequence[float], pi_damping: bool, device: torch.device
) -> Curvature:
    """(F + λI)⁻¹ blockwise (``damping``: one λ, or one per block); under ``torch.distributed``
    rank r inverts the blocks i ≡ r (mod world size) and broadcasts them, so the
    eigendecompositions are spread over the ranks."""
    dampings = [float(damping)] * len(fisher.blocks) if isinstance(damping, (int, float)) else list(damping)
    if not is_distributed():
        return fisher._with_blocks([b.inverse(d, pi_damping) for b, d in zip(fisher.blocks, dampings)])
    world, rank = dist.get_world_size(), dist.get_rank()
    blocks = []
    for index, (block, block_damping) in enumerate(zip(fisher.blocks, dampings)):
        owner = index % world
        payload = [block.inverse(block_damping, pi_damping).state() if owner == rank else None]
        dist.broadcast_object_list(payload, src=owner)
        state = payload[0]
        assert state is not None  # broadcast by its owner
        blocks.append(Block.from_state(state).map(lambda t: t.to(device)))
    return fisher._with_blocks(blocks)


def kl_clip_factor(steps: Sequence[tuple[float, Tensor, Tensor]], kl_clip: float) -> float:
    """ν = min(1, √(κ / Σ η² ĝᵀ g)) over (η, ĝ, g) per parameter (its group's learning rate, the
    preconditioned and the raw gradient): scales the step so its predicted KL change stays below κ."""
    quadratic = sum(lr**2 * float((natural * raw).sum()) for lr, natural, raw in steps)
    if quadratic <= 0:
        return 1.0
    return min(1.0, math.sqrt(kl_clip / quadratic))
