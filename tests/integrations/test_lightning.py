"""The Lightning callback against the same training written as a plain loop: EWC and SI with the
penalty, gradient accumulation and clipping give the loop's parameters and importances."""

from __future__ import annotations

import copy

import pytest
import torch
from oracles import TOLERANCES
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

import fisherkit as fk  # noqa: E402
from fisherkit.integrations.lightning import RegularizerCallback  # noqa: E402

TOL = TOLERANCES[torch.float64]
LR, CLIP = 0.2, 0.5


class Classifier(pl.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_index):
        x, y = batch
        return functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _task(seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 4, generator=gen, dtype=torch.float64)
    return DataLoader(TensorDataset(x, torch.randint(0, 3, (24,), generator=gen)), batch_size=4)


def _fit(module, regularizer, loader, accumulate: int) -> None:
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accumulate_grad_batches=accumulate, gradient_clip_val=CLIP,
        callbacks=[RegularizerCallback(regularizer)],
    )  # fmt: skip
    trainer.fit(module, loader)


def _loop(net, regularizer, loader, accumulate: int) -> None:
    """What the callback must amount to: the penalty added to the loss, Lightning's loss scaling."""
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    regularizer.begin_task(optimizer)
    for index, (x, y) in enumerate(loader):
        loss = functional.cross_entropy(net(x), y) + regularizer.penalty()
        (loss / accumulate).backward()
        if (index + 1) % accumulate == 0 or index + 1 == len(loader):
            nn.utils.clip_grad_norm_(net.parameters(), CLIP)
            optimizer.step()
            optimizer.zero_grad()
    regularizer.end_task(loader)


@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("method", ["ewc", "si"])
def test_the_callback_trains_as_the_loop_with_the_penalty_in_the_loss(method, accumulate):
    def make(net):
        if method == "ewc":
            return fk.EWC(net, strength=50.0, fisher_type="exact")
        return fk.SynapticIntelligence(net, strength=5.0)

    module = Classifier(_net())
    net = copy.deepcopy(module.net)
    ours, reference = make(module.net), make(net)
    for seed in (1, 2):  # task 2 trains with the penalty of task 1 (which moves it: checked below)
        _fit(module, ours, _task(seed), accumulate)
        _loop(net, reference, _task(seed), accumulate)
        for (name, a), b in zip(module.net.named_parameters(), net.parameters()):
            torch.testing.assert_close(a, b, **TOL, msg=name)
    torch.testing.assert_close(ours.penalty(), reference.penalty(), **TOL)
    if method == "si":  # SI keeps ω in float32; the penalty's own backward pass adds rounding there
        for name in reference.importance:
            torch.testing.assert_close(ours.importance[name], reference.importance[name], **TOLERANCES[torch.float32])


def test_the_penalty_changes_what_task_2_learns():
    """The comparison above would not see a callback that adds nothing: the penalty moves task 2."""
    with_penalty, without = Classifier(_net()), Classifier(_net())
    ewc = fk.EWC(with_penalty.net, strength=50.0, fisher_type="exact")
    _fit(with_penalty, ewc, _task(1), 1)
    _fit(with_penalty, ewc, _task(2), 1)
    plain = fk.EWC(without.net, strength=0.0)
    _fit(without, plain, _task(1), 1)
    _fit(without, plain, _task(2), 1)
    change = max(float((a - b).abs().max()) for a, b in zip(with_penalty.parameters(), without.parameters()))
    assert change > 1e-3


def test_manual_optimization_is_refused_with_the_fix():
    class Manual(Classifier):
        def __init__(self, net):
            super().__init__(net)
            self.automatic_optimization = False

        def training_step(self, batch, batch_index):
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(super().training_step(batch, batch_index))
            optimizer.step()

    module = Manual(_net())
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[RegularizerCallback(fk.EWC(module.net, strength=1.0))])  # fmt: skip
    with pytest.raises(ValueError, match="automatic optimization.*add regularizer.penalty\\(\\) to the loss"):
        trainer.fit(module, _task(1))


def test_ngd_is_the_optimizer_a_module_returns():
    class NaturalGradient(Classifier):
        def configure_optimizers(self):
            return fk.NGD(self.net, lr=0.1, structure="kfac", fisher_type="exact", kl_clip=None)

    module = NaturalGradient(_net())
    net = copy.deepcopy(module.net)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, _task(1))
    optimizer = fk.NGD(net, lr=0.1, structure="kfac", fisher_type="exact", kl_clip=None)
    for x, y in _task(1):
        optimizer.zero_grad()
        functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    for a, b in zip(module.net.parameters(), net.parameters()):
        torch.testing.assert_close(a, b, **TOL)
