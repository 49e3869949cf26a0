"""Memory aware synapses (Aljundi et al. 2018): importance from the sensitivity of the output norm."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from fisherkit.estimators import Estimation, EstimationOptions
from fisherkit.estimators.common import check_count
from fisherkit.regularizers.regularizer import Regularizer, check_state_names, cloned, zero_padded


class MAS(Regularizer):
    """Penalty λ · Σ_k Ω_k (θ_k − θ*_k)², Ω += (1/N) Σ_n abs(∇_θ ‖f(x_n)‖²) at the end of each task.

    The per-sample gradients come from fisherkit's engines (columns s = 2 f, one per sample), so
    every layer with a rule is supported and no labels are needed. The anchor θ* is the latest
    end-of-task parameters.

    Args:
        model: The model being trained.
        strength: λ ≥ 0.
        **options: ``fisherkit.EstimationOptions`` for reading the data and the engines
            (``batch_size``, ``engine``, ``fallback``, ``memory_budget``, the batch layout);
            ``likelihood``, ``fisher_type`` and the MC options play no part.
    """

    def __init__(self, model: nn.Module, strength: float, **options: Any) -> None:
        super().__init__(model, strength)
        self.options = EstimationOptions.from_keywords({"progress": False, **options})
        self.importance: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}

    def end_task(self, data: Any) -> None:
        """Adds this task's importance (inputs of ``data``; labels are ignored) and moves the anchor.

        Memory: the magnitudes need each sample's gradient, so a batch of B samples holds B × (the
        largest layer's parameters) values at once; give ``data`` in batches that fit (a ``(x, y)``
        tuple is split by ``batch_size``, default 256)."""
        was_training = self.model.training
        self.model.eval()
        try:
            job = Estimation.start(self.model, self.options)
            engine = job.engine()
            sums = {name: job.accumulator(p.shape) for name, p in job.parameters.items()}

            def add_magnitudes(grads: dict[str, Tensor]) -> None:
                for name, g in grads.items():
                    sums[name].add_(g.abs().sum(0).to(sums[name].dtype))

            def output_norm_gradient(output: Tensor) -> Tensor:
                return 2 * output.detach().unsqueeze(0)

            count = 0
            for call, columns in job.batches(data, "MAS importance", columns=output_norm_gradient):
                count += engine.per_sample_grads(call, columns, add_magnitudes)
            check_count(count)
        finally:
            self.model.train(was_training)
        params = job.parameters
        for name, total in sums.items():
            update = total / count
            old = zero_padded(self.importance[name], update.shape) if name in self.importance else 0.0
            self.importance[name] = old + update
            self.anchor[name] = params[name].detach().clone()

    def penalty_terms(self) -> dict[str, Tensor]:
        return self.weighted_squares(self.importance, self.anchor)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "MAS",
            "strength": self.strength,
            "shapes": {n: list(v.shape) for n, v in self.anchor.items()},
            "importance": cloned(self.importance),
            "anchor": cloned(self.anchor),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != "MAS":
            raise ValueError(f"state dict of {state.get('kind')} cannot be loaded into MAS.")
        check_state_names("MAS", state, self.model)
        device = next(self.model.parameters()).device
        self.strength = float(state["strength"])
        self.importance = cloned(state["importance"], device)
        self.anchor = cloned(state["anchor"], device)
