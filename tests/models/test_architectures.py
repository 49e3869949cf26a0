"""The architectures users train, written in torch (the vision models by hand: torchvision does not
install beside the CPU torch): a transformer encoder, LSTM/GRU classifiers, a ResNet block stack
with eval-mode BatchNorm, a U-Net with a transposed convolution, and LoRA adapters on a frozen
base — each with default arguments against the float64 per-sample loop."""

import warnings

import pytest
import torch
from oracles import TOLERANCES, brute_force_diagonal, flatten
from torch import nn

import fisherkit as fk
from fisherkit.regularizers import EWC

TOL = TOLERANCES[torch.float64]


class EncoderClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(9, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(1))


class RecurrentClassifier(nn.Module):
    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        self.embed = nn.Embedding(9, 6)
        self.rnn = cell(6, 5, num_layers=2, batch_first=True)
        self.head = nn.Linear(5, 3)

    def forward(self, tokens):
        outputs, _ = self.rnn(self.embed(tokens))
        return self.head(outputs[:, -1])


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.blocks = nn.Sequential(ResidualBlock(4), ResidualBlock(4))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class TinyUNet(nn.Module):
    """Down by a strided conv, up by a transposed conv, a skip connection, per-pixel class logits."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Conv2d(2, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1)
        self.decode = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        skip = torch.tanh(self.encode(x))
        up = torch.tanh(self.up(torch.tanh(self.down(skip))))
        return self.decode(torch.cat([skip, up], 1)).movedim(1, -1)  # (B, H, W, classes)


class LoRALinear(nn.Module):
    """A frozen base layer plus a trainable low-rank update B A (an adapter as in LoRA)."""

    def __init__(self, base: nn.Linear, rank: int) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.normal_(self.up.weight, std=0.1)

    def forward(self, x):
        return self.base(x) + self.up(self.down(x))


def _randomize_batchnorm(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    return model.eval()


def _tokens(shape=(4, 5)):
    return torch.randint(0, 9, shape, generator=torch.Generator().manual_seed(0))


CASES = {
    "transformer-encoder": (EncoderClassifier, lambda: _tokens(), None),
    "lstm": (lambda: RecurrentClassifier(nn.LSTM), lambda: _tokens(), None),
    "gru": (lambda: RecurrentClassifier(nn.GRU), lambda: _tokens(), None),
    "resnet-batchnorm-eval": (lambda: _randomize_batchnorm(TinyResNet()), lambda: torch.randn(3, 3, 6, 6), None),
    "unet-conv-transpose": (TinyUNet, lambda: torch.randn(3, 2, 6, 4), (6, 4)),
    "lora-adapters": (
        lambda: nn.Sequential(LoRALinear(nn.Linear(6, 8), 2), nn.Tanh(), LoRALinear(nn.Linear(8, 3), 2)),
        lambda: torch.randn(5, 6),
        None,
    ),
}


def _build(name: str):
    """The case's float64 model, inputs, labels, and likelihood: per-pixel logits (B, H, W, C) must
    say where their classes are; every other case is all defaults."""
    build, inputs, positions = CASES[name]
    torch.manual_seed(0)
    model, x = build().double(), inputs()
    x = x.double() if x.dtype.is_floating_point else x
    shape = (x.shape[0], *positions) if positions else (x.shape[0],)
    y = torch.randint(0, 3, shape, generator=torch.Generator().manual_seed(1))
    return model, x, y, fk.Categorical(class_dim=-1) if positions else "categorical"


@pytest.mark.parametrize("name", CASES)
def test_default_arguments_give_the_exact_diagonal(name):
    model, x, y, likelihood = _build(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        empirical = fk.diagonal_fisher(model, (x, y), likelihood, fisher_type="empirical")
        exact = fk.diagonal_fisher(model, (x, y), likelihood, fisher_type="exact")
    fallback_warnings = [str(w.message) for w in caught if "no layer rule" in str(w.message)]
    assert len(fallback_warnings) <= 2  # at most one per estimator call, naming every slow module
    for fisher, fisher_type in ((empirical, "empirical"), (exact, "exact")):
        want = brute_force_diagonal(model, x, "categorical", fisher_type, y)
        torch.testing.assert_close(flatten(fisher.diagonals), flatten(want), **TOL, msg=fisher_type)
    kfac = fk.kfac_fisher(model, (x, y), likelihood, fisher_type="empirical")
    for block in kfac.blocks:
        if isinstance(block, fk.DiagonalBlock):  # exact where no Kronecker rule applies
            for name_, diagonal in zip(block.names, block.diagonal()):
                torch.testing.assert_close(diagonal, empirical.diagonals[empirical.names.index(name_)], **TOL)
    assert float(fk.ekfac_fisher(model, (x, y), likelihood, fisher_type="empirical").trace()) > 0


def test_frozen_base_of_adapters_is_left_out_by_name():
    model = nn.Sequential(LoRALinear(nn.Linear(6, 8), 2))
    with pytest.warns(UserWarning, match=r"left out of the Fisher: \['0.base.weight', '0.base.bias'\]"):
        fisher = fk.diagonal_fisher(model, torch.randn(4, 6), seed=0)
    assert fisher.names == ("0.down.weight", "0.up.weight")


@pytest.mark.parametrize(
    "layer", [nn.LSTM(4, 3), nn.GRU(4, 3), nn.MultiheadAttention(4, 2)], ids=["lstm", "gru", "attention"]
)
def test_batch_second_layers_are_refused_with_the_fix(layer):
    model = nn.Sequential(layer)
    with pytest.raises(fk.UnsupportedModelError, match="batch_first=False.*Build it with batch_first=True"):
        fk.diagonal_fisher(model, torch.randn(3, 2, 4))


@pytest.mark.parametrize("name", CASES)
def test_ewc_and_ngd_train_every_architecture_with_default_arguments(name):
    model, x, y, likelihood = _build(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the fallback's one warning per estimation
        ewc = EWC(model, 1.0, structure="kfac", likelihood=likelihood, fisher_type="empirical")
        ewc.end_task((x, y))
        want = fk.kfac_fisher(model, (x, y), likelihood, fisher_type="empirical")
        torch.testing.assert_close(flatten(ewc.fishers[0][0].diagonal()), flatten(want.diagonal()), **TOL)
        optimizer = fk.NGD(model, lr=1e-2, likelihood=likelihood, damping=1e-2, stats_every=1, seed=0)
        before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        optimizer.zero_grad()
        output = model(x)
        nn.functional.cross_entropy(output.reshape(-1, 3), y.reshape(-1)).backward()
        optimizer.step()
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert all(bool(torch.isfinite(p).all()) for p in after)
    assert any(not torch.equal(b, a) for b, a in zip(before, after))
    assert float(ewc.penalty().detach()) > 0
