"""fisherkit's laplace-torch backend against laplace-torch's own curvlinops backend on the same
models and data: the fitted curvature, the log marginal likelihood and the predictive."""

from __future__ import annotations

import pytest
import torch
from oracles import TOLERANCES, brute_force_dense, brute_force_diagonal
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

laplace = pytest.importorskip("laplace")
from laplace.curvature import CurvlinopsEF, CurvlinopsGGN  # noqa: E402

from fisherkit.integrations.laplace import FisherkitEF, FisherkitGGN  # noqa: E402
from fisherkit.likelihoods import get_likelihood  # noqa: E402

TOL = TOLERANCES[torch.float64]
FULL_TOL = TOLERANCES[torch.float32]
"""laplace-torch's curvlinops backend forms the full matrix from a float32 identity."""
BACKENDS = {"ggn": (FisherkitGGN, CurvlinopsGGN), "ef": (FisherkitEF, CurvlinopsEF)}


def _mlp(outputs: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, outputs)).double()


def _convnet() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).double()


def _data(likelihood: str, inputs: tuple[int, ...] = (4,), outputs: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20, *inputs, generator=gen, dtype=torch.float64)
    if likelihood == "classification":
        return x, torch.randint(0, outputs, (20,), generator=gen)
    return x, torch.randn(20, outputs, generator=gen, dtype=torch.float64)


def _fitted(model, likelihood, structure, backend, x, y, subset_of_weights="all", **kwargs):
    la = laplace.Laplace(
        model, likelihood, subset_of_weights=subset_of_weights, hessian_structure=structure, backend=backend, **kwargs
    )
    # three batches (laplace adds their curvatures); the loader's own generator leaves torch's global one
    # to the MC draws
    la.fit(DataLoader(TensorDataset(x, y), batch_size=8, generator=torch.Generator()))
    return la


def _dense(la) -> torch.Tensor:
    H = la.H
    if hasattr(H, "to_matrix"):
        return H.to_matrix()
    return torch.diag(H) if H.dim() == 1 else H


def _assert_same_laplace(ours, theirs, x_test, tolerance=TOL) -> None:
    torch.testing.assert_close(_dense(ours), _dense(theirs), **tolerance)
    torch.testing.assert_close(ours.loss, theirs.loss, **TOL)
    for precision in (0.5, 2.0):
        prior = torch.tensor(precision, dtype=torch.float64)
        torch.testing.assert_close(
            ours.log_marginal_likelihood(prior), theirs.log_marginal_likelihood(prior), **tolerance
        )
    ours.prior_precision, theirs.prior_precision = 1.0, 1.0
    for a, b in zip(_as_tuple(ours(x_test)), _as_tuple(theirs(x_test))):
        torch.testing.assert_close(a, b, **tolerance)


def _as_tuple(value):
    return value if isinstance(value, tuple) else (value,)


@pytest.mark.parametrize("fisher", list(BACKENDS))
@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
@pytest.mark.parametrize("likelihood", ["classification", "regression"])
def test_the_backend_reproduces_laplace_torchs_curvlinops_backend(likelihood, structure, fisher):
    ours_backend, theirs_backend = BACKENDS[fisher]
    outputs = 3 if likelihood == "classification" else 2
    x, y = _data(likelihood, outputs=outputs)
    ours = _fitted(_mlp(outputs), likelihood, structure, ours_backend, x, y)
    theirs = _fitted(_mlp(outputs), likelihood, structure, theirs_backend, x, y)
    _assert_same_laplace(ours, theirs, x[:5], FULL_TOL if structure == "full" else TOL)
    if structure == "full":  # and at float64 precision against the float64 per-sample loop
        model, name = _mlp(outputs), "categorical" if likelihood == "classification" else "gaussian"
        fisher_type = "exact" if fisher == "ggn" else "empirical"
        scale = 2.0 if (fisher, likelihood) == ("ef", "regression") else 1.0  # laplace's EF convention
        expected = 20 * scale * brute_force_dense(model, x, name, fisher_type, y)
        torch.testing.assert_close(_dense(ours), expected, **TOL)


@pytest.mark.parametrize("structure", ["diag", "kron", "full"])
def test_last_layer_laplace_matches(structure):
    x, y = _data("classification")
    ours = _fitted(_mlp(3), "classification", structure, FisherkitGGN, x, y, subset_of_weights="last_layer")
    theirs = _fitted(_mlp(3), "classification", structure, CurvlinopsGGN, x, y, subset_of_weights="last_layer")
    assert _dense(ours).shape == (6 * 3 + 3, 6 * 3 + 3)
    _assert_same_laplace(ours, theirs, x[:5], FULL_TOL if structure == "full" else TOL)


@pytest.mark.parametrize("structure", ["diag", "kron"])
def test_a_convolution_matches(structure):
    x, y = _data("classification", inputs=(1, 6, 6))
    ours = _fitted(_convnet(), "classification", structure, FisherkitGGN, x, y)
    theirs = _fitted(_convnet(), "classification", structure, CurvlinopsGGN, x, y)
    _assert_same_laplace(ours, theirs, x[:5])


def test_subnetwork_laplace_takes_the_rows_and_columns_of_its_indices():
    x, y = _data("classification")
    indices = torch.tensor([0, 3, 7, 30, 41, 47, 50])
    fits = [
        _fitted(
            _mlp(3), "classification", "full", backend, x, y, subset_of_weights="subnetwork",
            subnetwork_indices=indices,
        )
        for backend in (FisherkitGGN, CurvlinopsGGN)
    ]  # fmt: skip
    assert _dense(fits[0]).shape == (7, 7)
    _assert_same_laplace(*fits, x[:5], FULL_TOL)
    expected = 20 * brute_force_dense(_mlp(3), x, "categorical", "exact")
    torch.testing.assert_close(_dense(fits[0]), expected[indices][:, indices], **TOL)


def test_mc_fisher_uses_the_labels_it_draws():
    """The MC Fisher against the float64 per-sample loop on the labels replayed from the same seed."""
    model, (x, y) = _mlp(3), _data("classification")
    torch.manual_seed(7)
    la = _fitted(model, "classification", "diag", FisherkitGGN, x, y, backend_kwargs={"stochastic": True})
    torch.manual_seed(7)
    expected = torch.zeros(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    for start in range(0, 20, 8):
        batch = x[start : start + 8]
        with torch.no_grad():
            draws = [get_likelihood("categorical").sample(model(batch), None)]
        diagonal = brute_force_diagonal(model, batch, "categorical", "mc", sampled=draws)
        expected += len(batch) * torch.cat([d.reshape(-1) for d in diagonal])
    torch.testing.assert_close(la.H, expected, **TOL)


class _DictModel(nn.Module):
    """A model that takes a dict batch, as laplace-torch passes Hugging Face-style batches."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp(3)

    def forward(self, batch):
        return self.net(batch["features"])


def test_dict_batches_are_read_by_laplace_torchs_keys():
    x, y = _data("classification")
    loader = DataLoader([{"features": a, "labels": b} for a, b in zip(x, y)], batch_size=8)
    fits = []
    for backend in (FisherkitGGN, CurvlinopsGGN):
        la = laplace.Laplace(_DictModel(), "classification", "all", hessian_structure="kron", backend=backend,
                             dict_key_x="features", dict_key_y="labels")  # fmt: skip
        la.fit(loader)
        fits.append(la)
    torch.testing.assert_close(_dense(fits[0]), _dense(fits[1]), **TOL)
    prior = torch.tensor(1.0, dtype=torch.float64)
    torch.testing.assert_close(fits[0].log_marginal_likelihood(prior), fits[1].log_marginal_likelihood(prior), **TOL)


def test_kron_refuses_a_layer_without_a_pair_of_factors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 3)).double()
    x, y = _data("classification")
    la = laplace.Laplace(model, "classification", "all", hessian_structure="kron", backend=FisherkitGGN)
    la.fit(DataLoader(TensorDataset(x, y), batch_size=20))  # LayerNorm's vectors: diagonal factors
    grouped = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).double()
    xs = torch.randn(20, 2, 6, 6, dtype=torch.float64)
    la = laplace.Laplace(grouped, "classification", "all", hessian_structure="kron", backend=FisherkitGGN)
    with pytest.raises(ValueError, match="grouped convolution.*hessian_structure='diag' or 'full'"):
        la.fit(DataLoader(TensorDataset(xs, y), batch_size=20))
