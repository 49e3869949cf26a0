"""The Hugging Face ``Trainer`` with a fisherkit regularizer: one task per ``train()``.

::

    ewc = fisherkit.EWC(model, strength=100.0)
    for task in tasks:
        trainer = RegularizedTrainer(model=model, args=args, train_dataset=task, regularizer=ewc)
        trainer.train()    # the penalty of earlier tasks in every step; consolidates at the end

``train()`` is one task: ``begin_task`` with the trainer's optimizer (and its ``GradScaler`` under
fp16) when training begins, ``end_task`` on the training dataloader (or ``consolidation_data``)
when it ends — the batches the Trainer builds, dicts whose ``labels`` fisherkit reads as the
target. The penalty is added to the training loss in ``compute_loss``, so the Trainer treats it as
the loss (the same division under gradient accumulation, the same loss scaling and clipping);
evaluation losses stay the model's own. NGD is an ordinary optimizer:
``Trainer(..., optimizers=(fisherkit.NGD(model, ...), None))``.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import Trainer, TrainerCallback

from fisherkit.regularizers.regularizer import Regularizer

__all__ = ["RegularizedTrainer"]


class RegularizedTrainer(Trainer):
    """A ``transformers.Trainer`` that trains with ``regularizer``'s penalty.

    Args:
        *args: As ``Trainer``.
        regularizer: ``fisherkit.EWC``, ``SynapticIntelligence``, ``MAS`` or another
            ``Regularizer`` of the trained model.
        consolidation_data: The batches ``end_task`` consolidates on; default: the training dataloader.
        **kwargs: As ``Trainer``.
    """

    def __init__(self, *args: Any, regularizer: Regularizer, consolidation_data: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.regularizer = regularizer
        self.add_callback(_TaskBoundaries(self, consolidation_data))

    def compute_loss(
        self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        """The Trainer's loss plus the penalty while training (evaluation losses stay the model's own)."""
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not model.training:
            return result
        if isinstance(result, tuple):  # return_outputs=True
            loss, outputs = result
            return loss + self.regularizer.penalty(), outputs
        return result + self.regularizer.penalty()


class _TaskBoundaries(TrainerCallback):
    """``begin_task`` when training begins, ``end_task`` when it ends."""

    def __init__(self, trainer: RegularizedTrainer, data: Any) -> None:
        self.trainer, self.data = trainer, data

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        optimizer = kwargs["optimizer"]
        optimizer = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer inside accelerate's wrapper
        self.trainer.regularizer.begin_task(optimizer, getattr(self.trainer.accelerator, "scaler", None))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        data = kwargs["train_dataloader"] if self.data is None else self.data
        self.trainer.regularizer.end_task(data)
