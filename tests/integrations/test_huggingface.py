"""The regularized Hugging Face Trainer against a Trainer with the penalty written into its loss
by hand and the task boundaries called by hand."""

from __future__ import annotations

import copy

import pytest
import torch
from oracles import TOLERANCES

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import fisherkit as fk  # noqa: E402
from fisherkit.integrations.huggingface import RegularizedTrainer  # noqa: E402

TOL = TOLERANCES[torch.float32]
VOCAB, LENGTH = 20, 6


def _model():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=LENGTH, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def _task(seed: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (16, LENGTH), generator=gen)
    labels = torch.randint(0, 3, (16,), generator=gen)
    return [
        {"input_ids": i, "attention_mask": torch.ones(LENGTH, dtype=torch.long), "labels": y}
        for i, y in zip(ids, labels)
    ]


def _args(tmp_path, batch: int, accumulate: int):
    return transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=batch, gradient_accumulation_steps=accumulate,
        num_train_epochs=1, learning_rate=0.05, lr_scheduler_type="constant", max_grad_norm=1.0,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, seed=3, disable_tqdm=True,
    )  # fmt: skip


class HandWrittenPenalty(transformers.Trainer):
    """The reference: the penalty added to the loss in ``compute_loss``."""

    def __init__(self, *args, regularizer, **kwargs):
        super().__init__(*args, **kwargs)
        self.regularizer = regularizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return loss + self.regularizer.penalty()


def _train_tasks(trainer_class, model, regularizer, tmp_path, batch, accumulate):
    for seed in (1, 2):
        trainer = trainer_class(
            model=model, args=_args(tmp_path, batch, accumulate), train_dataset=_task(seed), regularizer=regularizer
        )
        if trainer_class is HandWrittenPenalty:
            trainer.add_callback(_HandBoundaries(regularizer))
        trainer.train()


class _HandBoundaries(transformers.TrainerCallback):
    def __init__(self, regularizer):
        self.regularizer = regularizer

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.regularizer.begin_task(optimizer.optimizer)

    def on_train_end(self, args, state, control, train_dataloader=None, **kwargs):
        self.regularizer.end_task(train_dataloader)


@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("method", ["ewc", "si"])
def test_the_trainer_trains_as_the_penalty_in_the_loss(method, accumulate, tmp_path):
    def make(model):
        if method == "ewc":
            return fk.EWC(model, strength=20.0, fisher_type="exact")
        return fk.SynapticIntelligence(model, strength=2.0)

    reference, ours = _model(), _model()
    references, regularized = make(reference), make(ours)
    _train_tasks(HandWrittenPenalty, reference, references, tmp_path, 8 // accumulate, accumulate)
    _train_tasks(RegularizedTrainer, ours, regularized, tmp_path, 8 // accumulate, accumulate)
    plain = _model()  # task 2 without the penalty must end elsewhere, or the comparison proves nothing
    _train_tasks(HandWrittenPenalty, plain, fk.EWC(plain, strength=0.0), tmp_path, 8 // accumulate, accumulate)
    moved = max(float((a - b).abs().max()) for a, b in zip(reference.parameters(), plain.parameters()))
    assert moved > 1e-3
    for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, **TOL, msg=name)
    torch.testing.assert_close(regularized.penalty(), references.penalty(), **TOL)
    if method == "si":
        for name in references.importance:
            torch.testing.assert_close(regularized.importance[name], references.importance[name], **TOL)


def test_evaluation_losses_leave_the_penalty_out(tmp_path):
    model = _model()
    ewc = fk.EWC(model, strength=1e6, fisher_type="exact")
    trainer = RegularizedTrainer(model=model, args=_args(tmp_path, 8, 1), train_dataset=_task(1), regularizer=ewc)
    trainer.train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)  # far from the anchor: a penalty of the order of 1e6 · 0.01 · P
    metrics = trainer.evaluate(_task(2))
    with torch.no_grad():
        batch = {k: torch.stack([s[k] for s in _task(2)]) for k in ("input_ids", "attention_mask", "labels")}
        own = model(**batch).loss
    torch.testing.assert_close(torch.tensor(metrics["eval_loss"]), own, **TOL)
    assert float(ewc.penalty().detach()) > 1e3


def test_ngd_is_given_through_optimizers(tmp_path):
    model = _model()
    reference = copy.deepcopy(model)
    optimizer = fk.NGD(model, lr=0.05, structure="kfac", fisher_type="exact", fallback=True)
    trainer = transformers.Trainer(
        model=model, args=_args(tmp_path, 8, 1), train_dataset=_task(1), optimizers=(optimizer, None)
    )
    trainer.train()
    moved = max(float((a - b).abs().max()) for a, b in zip(model.parameters(), reference.parameters()))
    assert moved > 1e-4
    assert optimizer.preconditioner is not None and optimizer.preconditioner.steps == 2
