"""Avalanche: a strategy plugin that trains with a fisherkit regularizer, one task per experience.

::

    ewc = fisherkit.EWC(model, strength=100.0, structure="kfac")      # KFAC-EWC; or SI, MAS, online EWC
    strategy = Naive(model, optimizer, criterion, plugins=[RegularizerPlugin(ewc)], ...)
    for experience in benchmark.train_stream:
        strategy.train(experience)

Each experience is a task: ``begin_task`` with the strategy's optimizer before it trains,
the penalty added to ``strategy.loss`` before every backward pass (Avalanche's convention for
regularization plugins), ``end_task`` on the experience's dataset after it (batches of
``strategy.train_mb_size``, the dataset's ``collate_fn``; Avalanche's ``(x, y, task label)``
samples give fisherkit the inputs and the targets). A classifier that grows between experiences
(``IncrementalClassifier``: new units appended) is followed: the regularizers penalize the
consolidated rows only, until an experience consolidates the new ones. The plugin follows
Avalanche's ``SupervisedPlugin`` protocol without importing Avalanche: hooks it does not define are
no-ops. Models that take task labels (``MultiTaskModule``) are refused: fisherkit calls ``model(x)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import DataLoader

from fisherkit.regularizers.regularizer import Regularizer

__all__ = ["RegularizerPlugin"]


class RegularizerPlugin:
    """Adds ``regularizer``'s penalty to an Avalanche strategy's loss and consolidates after each
    experience.

    Args:
        regularizer: ``fisherkit.EWC`` (separate, online, any structure), ``SynapticIntelligence``,
            ``MAS`` or another ``Regularizer`` of the strategy's model.
    """

    def __init__(self, regularizer: Regularizer) -> None:
        self.regularizer = regularizer

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if hasattr(strategy.model, "forward_single_task"):
            raise ValueError(
                f"{type(strategy.model).__name__} takes task labels (a MultiTaskModule); fisherkit estimates on "
                "model(x). Wrap the model so that its forward takes the inputs alone."
            )
        self.regularizer.begin_task(strategy.optimizer)

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        strategy.loss += self.regularizer.penalty()

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        dataset = strategy.experience.dataset
        loader = DataLoader(dataset, batch_size=strategy.train_mb_size, collate_fn=getattr(dataset, "collate_fn", None))
        self.regularizer.end_task(loader)

    def __getattr__(self, name: str) -> Callable[..., None]:
        """The hooks of Avalanche's plugin protocol that this plugin does not use: no-ops."""
        if name.startswith(("before_", "after_")):
            return _no_op
        raise AttributeError(name)


def _no_op(*args: Any, **kwargs: Any) -> None:
    """A plugin hook that does nothing."""
