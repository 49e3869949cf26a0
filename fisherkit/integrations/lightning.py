"""Lightning: a callback that trains with a fisherkit regularizer's penalty, one task per ``fit``.

::

    ewc = fisherkit.EWC(model, strength=100.0)
    for task in tasks:
        trainer = lightning.Trainer(callbacks=[RegularizerCallback(ewc)], ...)
        trainer.fit(module, task.train_dataloader)   # the penalty of earlier tasks in every step

``trainer.fit`` is one task: ``begin_task`` with the trainer's optimizer (and its ``GradScaler``
under 16-bit mixed precision) when training starts, ``end_task`` on the fit's training batches
(or ``data``) when it ends. The penalty's gradient is added after each backward pass of the loss,
scaled as Lightning scales the loss (the ``GradScaler``; 1 / ``accumulate_grad_batches``), before
gradient clipping and the optimizer step, as if it were part of the loss. Automatic optimization
with one optimizer only. NGD is an ordinary optimizer: return ``fisherkit.NGD(self, ...)`` from
``configure_optimizers``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from fisherkit.regularizers.regularizer import Regularizer

__all__ = ["RegularizerCallback"]


class RegularizerCallback(pl.Callback):
    """Adds ``regularizer``'s penalty to the training loss of the fits it is given to.

    Args:
        regularizer: ``fisherkit.EWC``, ``SynapticIntelligence``, ``MAS`` or another ``Regularizer``
            of the module being trained.
        data: The batches ``end_task`` consolidates on; default: the fit's training dataloader.
    """

    def __init__(self, regularizer: Regularizer, data: Any = None) -> None:
        self.regularizer = regularizer
        self.data = data

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not pl_module.automatic_optimization or len(trainer.optimizers) != 1:
            raise ValueError(
                "RegularizerCallback needs automatic optimization with one optimizer; with manual optimization "
                "add regularizer.penalty() to the loss in training_step instead."
            )
        self.regularizer.begin_task(trainer.optimizers[0], getattr(trainer.precision_plugin, "scaler", None))

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        penalty = self.regularizer.penalty() / trainer.accumulate_grad_batches
        if not penalty.requires_grad:  # before the first consolidation: nothing to add
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        (penalty if scaler is None else scaler.scale(penalty)).backward()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.regularizer.end_task(trainer.train_dataloader if self.data is None else self.data)
