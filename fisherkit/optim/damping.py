"""Adaptive Levenberg–Marquardt damping for natural-gradient steps (Martens & Grosse 2015, §6.5)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LevenbergMarquardt:
    """Damping λ adapted from how well the quadratic model predicted the loss change.

    Every ``every`` steps the optimizer compares the actual change of the loss on the batch,
    L(θ + Δ) − L(θ), with the change the Fisher's quadratic model predicts, q(Δ) = ∇Lᵀ Δ + ½ Δᵀ F Δ:
    ρ = actual / predicted. λ ← λ·ω when ρ > 3/4 (the model is trustworthy), λ ← λ/ω when ρ < 1/4,
    with ω = ``decay`` ** ``every``. Needs ``optimizer.step(closure)`` on those steps (one extra
    evaluation of the loss).

    Attributes:
        value: The current λ (> 0).
        every: Steps between adaptations.
        decay: ω per step (< 1).
        minimum: Lower bound of λ.
        last_ratio: ρ of the latest adaptation (None before the first).
    """

    value: float = 1e-2
    every: int = 5
    decay: float = 0.95
    minimum: float = 1e-8
    last_ratio: float | None = None

    def __post_init__(self) -> None:
        if not (self.value > 0 and 0 < self.decay < 1 and self.every >= 1 and self.minimum > 0):
            raise ValueError("LevenbergMarquardt needs value > 0, 0 < decay < 1, every >= 1 and minimum > 0.")

    def __call__(self, step: int) -> float:
        return self.value

    def adapt(self, actual: float, predicted: float) -> None:
        """Updates λ from the actual and the predicted change of the loss (both usually negative)."""
        if predicted >= 0:  # the model predicts no decrease: trust it less
            self.last_ratio = float("-inf")
            self.value /= self.decay**self.every
            return
        self.last_ratio = actual / predicted
        factor = self.decay**self.every
        if self.last_ratio > 0.75:
            self.value = max(self.minimum, self.value * factor)
        elif self.last_ratio < 0.25:
            self.value = self.value / factor
