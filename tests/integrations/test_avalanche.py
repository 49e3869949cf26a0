"""The Avalanche plugin in a stand-in of Avalanche's training loop (Avalanche imports torchvision,
which cannot be installed beside this torch): the loop of ``SupervisedTemplate.training_epoch`` —
zero_grad, forward, ``loss = criterion``, ``before_backward``, backward, step — with experiences of
``(x, y, task label)`` samples, against the penalty written into a plain loop."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from oracles import TOLERANCES
from torch import nn
from torch.nn import functional
from torch.utils.data import DataLoader, Dataset

import fisherkit as fk
from fisherkit.integrations.avalanche import RegularizerPlugin

TOL = TOLERANCES[torch.float64]
LR, BATCH = 0.2, 4


class Experience(Dataset):
    """An Avalanche-style experience dataset: samples ``(x, y, task label)``."""

    def __init__(self, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(16, 4, generator=gen, dtype=torch.float64)
        self.y = torch.randint(0, 3, (16,), generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index):
        return self.x[index], self.y[index], 0


class StandInStrategy:
    """The part of Avalanche's ``SupervisedTemplate`` a plugin sees, with Avalanche's call order."""

    def __init__(self, model, plugins) -> None:
        self.model, self.plugins = model, plugins
        self.optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        self.train_mb_size = BATCH

    def _trigger(self, event: str) -> None:
        for plugin in self.plugins:
            getattr(plugin, event)(self)

    def train(self, experience: Dataset) -> None:
        self.experience = SimpleNamespace(dataset=experience)
        self._trigger("before_training")
        self._trigger("before_training_exp")
        for batch in DataLoader(experience, batch_size=self.train_mb_size):
            self.mbatch = batch
            self._trigger("before_training_iteration")
            self.optimizer.zero_grad()
            self._trigger("before_forward")
            self.mb_output = self.model(self.mbatch[0])
            self._trigger("after_forward")
            self.loss = functional.cross_entropy(self.mb_output, self.mbatch[1])
            self._trigger("before_backward")
            self.loss.backward()
            self._trigger("after_backward")
            self._trigger("before_update")
            self.optimizer.step()
            self._trigger("after_update")
        self._trigger("after_training_exp")
        self._trigger("after_training")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _loop(net, regularizer, experience) -> None:
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    regularizer.begin_task(optimizer)
    loader = DataLoader(experience, batch_size=BATCH)
    for x, y, _ in loader:
        optimizer.zero_grad()
        (functional.cross_entropy(net(x), y) + regularizer.penalty()).backward()
        optimizer.step()
    regularizer.end_task(loader)


REGULARIZERS = {
    "ewc": lambda net: fk.EWC(net, strength=50.0, fisher_type="exact"),
    "online-kfac-ewc": lambda net: fk.EWC(net, strength=50.0, mode="online", decay=0.9, structure="kfac", seed=0),
    "si": lambda net: fk.SynapticIntelligence(net, strength=5.0),
    "mas": lambda net: fk.MAS(net, strength=5.0),
}


@pytest.mark.parametrize("method", list(REGULARIZERS))
def test_the_plugin_trains_as_the_penalty_in_the_loss(method):
    net = _net()
    reference_net = copy.deepcopy(net)
    ours, reference = REGULARIZERS[method](net), REGULARIZERS[method](reference_net)
    strategy = StandInStrategy(net, [RegularizerPlugin(ours)])
    plain = _net()
    plain_strategy = StandInStrategy(plain, [])
    for seed in (1, 2, 3):
        strategy.train(Experience(seed))
        plain_strategy.train(Experience(seed))
        _loop(reference_net, reference, Experience(seed))
    for a, b in zip(net.parameters(), reference_net.parameters()):
        torch.testing.assert_close(a, b, **TOL)
    moved = max(float((a - b).abs().max()) for a, b in zip(net.parameters(), plain.parameters()))
    assert moved > 1e-3  # the penalty changed what later experiences learned
    torch.testing.assert_close(ours.penalty(), reference.penalty(), **TOL)


class GrowingStrategy(StandInStrategy):
    """Grows the classifier to the classes seen so far before each experience and resets the
    optimizer to the new parameters, as Avalanche's IncrementalClassifier and make_optimizer do."""

    def train(self, experience: Dataset) -> None:
        _grow(self.model, int(experience.y.max()) + 1)
        self.optimizer.param_groups[0]["params"] = list(self.model.parameters())
        self.optimizer.state.clear()
        super().train(experience)


def _grow(model: nn.Module, classes: int) -> None:
    old = model[2]
    if old.out_features >= classes:
        return
    new = nn.Linear(old.in_features, classes).double()
    with torch.no_grad():  # new units initialized from their own seed, so that both runs get the same
        gen = torch.Generator().manual_seed(classes)
        new.weight.copy_(0.3 * torch.randn(new.weight.shape, generator=gen, dtype=torch.float64))
        new.bias.zero_()
        new.weight[: old.out_features] = old.weight
        new.bias[: old.out_features] = old.bias
    model[2] = new


class ClassesOf(Experience):
    """An experience of classes ``2k, 2k+1``."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.y = self.y % 2 + 2 * (seed - 1)


@pytest.mark.parametrize("method", ["ewc", "si", "mas"])
def test_the_plugin_follows_a_head_that_grows_between_experiences(method):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    reference_net = copy.deepcopy(net)
    ours, reference = REGULARIZERS[method](net), REGULARIZERS[method](reference_net)
    strategy = GrowingStrategy(net, [RegularizerPlugin(ours)])
    for seed in (1, 2, 3):  # 2, 4, 6 classes
        strategy.train(ClassesOf(seed))
        _grow(reference_net, 2 * seed)
        _loop(reference_net, reference, ClassesOf(seed))
    assert net[2].out_features == 6
    for a, b in zip(net.parameters(), reference_net.parameters()):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(ours.penalty(), reference.penalty(), **TOL)


def test_a_model_that_takes_task_labels_is_refused_with_the_fix():
    class MultiTask(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def forward(self, x):
            return self.net(x)

        def forward_single_task(self, x, task):
            return self.net(x)

    model = MultiTask()
    strategy = StandInStrategy(model, [RegularizerPlugin(fk.EWC(model, strength=1.0))])
    with pytest.raises(ValueError, match="MultiTaskModule.*Wrap the model so that its forward takes the inputs alone"):
        strategy.train(Experience(1))


def test_hooks_the_plugin_does_not_use_are_no_ops_and_other_names_are_not_hooks():
    plugin = RegularizerPlugin(fk.EWC(_net(), strength=1.0))
    assert plugin.before_eval_exp(object()) is None
    with pytest.raises(AttributeError):
        _ = plugin.penalty_weight
