"""Elastic weight consolidation (Kirkpatrick et al. 2017), separate and online (Schwarz et al. 2018),
on any Fisher structure (KFAC: Ritter et al. 2018) and any Fisher type."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from fisherkit.curvature import Curvature
from fisherkit.curvature.quadratic_form import block_quadratic
from fisherkit.estimators import EstimationOptions, fisher
from fisherkit.estimators.structures import split_structure_options
from fisherkit.regularizers.regularizer import Regularizer, check_state_names, consolidated_part

MODES = ("separate", "online")


class EWC(Regularizer):
    """Penalty λ/2 · Σ_terms (θ − θ*)ᵀ F (θ − θ*), evaluated by each representation's blocks.

    ``end_task(data)`` estimates the Fisher at the trained θ* with ``fisherkit``'s estimators
    (per-sample mean; the true Fisher by default, not the empirical one) and stores (θ*, F):

    - ``mode="separate"``: one pair per task (the penalty sums over tasks);
    - ``mode="online"``: one anchor, the latest θ*, and F ← γ·F + F_new (``decay`` = γ).

    Parameters added after a task (a new head) are not penalized until a later consolidation
    covers them; a parameter that grew along its axes (a head that gained classes, new entries
    appended) is penalized on its consolidated entries only (``consolidated_part``); any other
    change of shape is an error.

    Args:
        model: The model being trained.
        strength: λ ≥ 0.
        mode: ``"separate"`` or ``"online"``.
        decay: γ ∈ [0, 1] for ``"online"``.
        structure: A registered Fisher structure (``fisherkit.STRUCTURES``: ``"diagonal"``,
            ``"kfac"``, ``"ekfac"``, ``"block"``, ``"full"``).
        fisher_type: ``"mc"`` (default), ``"exact"``, ``"empirical"`` or ``"predicted"``.
        **estimator_options: Passed to ``fisherkit.fisher`` (``EstimationOptions`` such as
            ``likelihood``, ``mc_samples``, ``seed``, ``batch_size``, and the structure's own, such as
            ``approximation``); checked here, before any training.
    """

    def __init__(
        self,
        model: nn.Module,
        strength: float,
        mode: str = "separate",
        decay: float = 1.0,
        structure: str = "diagonal",
        fisher_type: str = "mc",
        **estimator_options: Any,
    ) -> None:
        super().__init__(model, strength)
        if mode not in MODES:
            raise ValueError(f"unknown EWC mode {mode!r}; choose one of {MODES}.")
        _, _, shared = split_structure_options(structure, estimator_options)
        EstimationOptions.from_keywords({"fisher_type": fisher_type, **shared})
        if not 0.0 <= float(decay) <= 1.0:
            raise ValueError(f"online EWC's decay γ must lie in [0, 1]; got {decay}.")
        self.mode, self.decay, self.structure = mode, float(decay), structure
        self.fisher_type = fisher_type
        self.estimator_options = {"progress": False, **estimator_options}
        self.anchors: list[dict[str, Tensor]] = []
        self.fishers: list[list[Curvature]] = []  # per anchor: Fisher terms sharing it

    def end_task(self, data: Any) -> None:
        """Estimates the Fisher at the current parameters and consolidates it."""
        was_training = self.model.training
        self.model.eval()
        try:
            estimate = fisher(self.model, data, self.structure, fisher_type=self.fisher_type, **self.estimator_options)
        finally:
            self.model.train(was_training)
        self.consolidate(estimate)

    def consolidate(self, estimate: Curvature) -> None:
        """Stores a Fisher estimated at the current parameters (any ``Curvature`` over the model's
        parameter names, e.g. from ``fisherkit.fisher``), anchored at the current parameters."""
        named = dict(self.model.named_parameters())
        missing = [n for n in estimate.names if n not in named]
        if missing:
            raise ValueError(f"the Fisher covers parameters {missing} that the model does not have.")
        anchor = {n: named[n].detach().clone() for n in estimate.names}
        if self.mode == "separate" or not self.anchors:
            self.anchors.append(anchor)
            self.fishers.append([estimate])
            return
        previous = [f * self.decay for f in self.fishers[0]]
        last = previous[-1]
        same_blocks = [(b.names, b.shapes) for b in last.blocks] == [(b.names, b.shapes) for b in estimate.blocks]
        if (last.names, last.shapes) == (estimate.names, estimate.shapes) and same_blocks:
            previous[-1] = last + estimate
        else:  # parameters that changed (a new or grown head): keep the terms apart, same anchor
            previous.append(estimate)
        self.anchors[0] = {**self.anchors[0], **anchor}
        self.fishers[0] = previous

    def penalty_terms(self) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        for anchor, fishers in zip(self.anchors, self.fishers):
            now = self.parameters_now(list(anchor))
            for term in fishers:
                for block in term.blocks:
                    shapes = list(zip(block.names, block.shapes))
                    current = [consolidated_part("EWC", n, now[n], shape) for n, shape in shapes]
                    anchored = [consolidated_part("EWC", n, anchor[n], shape) for n, shape in shapes]
                    value = block_quadratic(block, current, anchored)
                    key = block.label
                    terms[key] = terms[key] + value if key in terms else value
        return {key: 0.5 * self.strength * value for key, value in terms.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "EWC",
            "mode": self.mode,
            "structure": self.structure,
            "strength": self.strength,
            "decay": self.decay,
            "shapes": {n: list(a.shape) for anchor in self.anchors for n, a in anchor.items()},
            "anchors": [{n: a.clone() for n, a in anchor.items()} for anchor in self.anchors],
            "fishers": [[f.state_dict() for f in fishers] for fishers in self.fishers],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != "EWC" or (state["mode"], state["structure"]) != (self.mode, self.structure):
            raise ValueError(
                f"state dict of {state.get('kind')} ({state.get('mode')}, {state.get('structure')}) cannot be "
                f"loaded into EWC ({self.mode}, {self.structure})."
            )
        check_state_names("EWC", state, self.model)
        device = next(self.model.parameters()).device
        self.strength, self.decay = float(state["strength"]), float(state["decay"])
        self.anchors = [{n: a.to(device) for n, a in anchor.items()} for anchor in state["anchors"]]
        self.fishers = [[Curvature.from_state_dict(s).to(device) for s in fishers] for fishers in state["fishers"]]
