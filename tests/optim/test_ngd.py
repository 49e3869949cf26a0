"""The NGD optimizer and preconditioner: closed forms, invariance, resume, schedules and bad input."""

from __future__ import annotations

import pytest
import torch
from oracles import TOLERANCES
from torch import nn

import fisherkit as fk

F64 = torch.float64


def _regression(seed: int = 0, scale: torch.Tensor | None = None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(20, 3, generator=g, dtype=F64)
    y = x @ torch.tensor([[1.5], [-2.0], [0.5]], dtype=F64) + 0.3 + 0.1 * torch.randn(20, 1, generator=g, dtype=F64)
    return (x if scale is None else x * scale), y


def _exact_ngd(model: nn.Module, structure: str, lr: float = 1.0) -> fk.NGD:
    return fk.NGD(
        model, lr=lr, structure=structure, fisher_type="exact", likelihood="gaussian", damping=0.0,
        ema_decay=0.0, stats_every=1, inverse_every=1, pi_damping=False, kl_clip=None,
    )  # fmt: skip


def _gaussian_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer.zero_grad()
    (0.5 * (model(x) - y).square().sum(1).mean()).backward()  # per-sample-mean Gaussian NLL, variance 1
    optimizer.step()


@pytest.mark.parametrize("structure", ["kfac", "block"])
def test_one_exact_ngd_step_with_lr_1_solves_linear_least_squares(structure):
    x, y = _regression()
    torch.manual_seed(1)
    model = nn.Linear(3, 1).double()
    _gaussian_step(model, _exact_ngd(model, structure), x, y)
    design = torch.cat([x, torch.ones(20, 1, dtype=F64)], 1)
    solution = torch.linalg.lstsq(design, y).solution.reshape(-1)
    got = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])
    torch.testing.assert_close(got, solution, **TOLERANCES[torch.float64])


def test_exact_ngd_is_invariant_to_rescaling_the_inputs():
    scale = torch.tensor([2.0, 0.5, 3.0], dtype=F64)
    x, y = _regression()
    x_scaled, _ = _regression(scale=scale)
    torch.manual_seed(1)
    model = nn.Linear(3, 1).double()
    scaled = nn.Linear(3, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.3, -0.1, 0.2]], dtype=F64))
        scaled.weight.copy_(model.weight / scale)  # the same function of the unscaled inputs
        scaled.bias.copy_(model.bias)
    first, second = _exact_ngd(model, "block", lr=0.3), _exact_ngd(scaled, "block", lr=0.3)
    for _ in range(4):
        _gaussian_step(model, first, x, y)
        _gaussian_step(scaled, second, x_scaled, y)
        torch.testing.assert_close(scaled(x_scaled), model(x), **TOLERANCES[torch.float64])
    sgd_model, sgd_scaled = nn.Linear(3, 1).double(), nn.Linear(3, 1).double()
    with torch.no_grad():
        sgd_model.weight.copy_(model.weight.new_tensor([[0.3, -0.1, 0.2]]))
        sgd_scaled.weight.copy_(sgd_model.weight / scale)
        sgd_scaled.bias.copy_(sgd_model.bias)
    _gaussian_step(sgd_model, torch.optim.SGD(sgd_model.parameters(), lr=0.3), x, y)
    _gaussian_step(sgd_scaled, torch.optim.SGD(sgd_scaled.parameters(), lr=0.3), x_scaled, y)
    assert not torch.allclose(sgd_scaled(x_scaled), sgd_model(x))  # plain gradient descent is not invariant


def _classifier(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(3)
    return model, torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)


def _train(model, optimizer, x, y, steps: int, scheduler=None) -> None:
    for step in range(steps):
        batch = slice(8 * (step % 4), 8 * (step % 4) + 8)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


@pytest.mark.parametrize("structure", ["diagonal", "kfac", "ekfac", "block"])
def test_a_run_resumed_from_state_dicts_is_identical(structure, tmp_path):
    def fresh():
        model, x, y = _classifier()
        options = {"structure": structure, "damping": 0.1, "stats_every": 2, "inverse_every": 3, "seed": 5}
        return model, fk.NGD(model, lr=0.05, momentum=0.9, **options), x, y

    model, optimizer, x, y = fresh()
    _train(model, optimizer, x, y, 7)
    expected = [p.detach().clone() for p in model.parameters()]
    model, optimizer, x, y = fresh()
    _train(model, optimizer, x, y, 4)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "c.pt")
    checkpoint = torch.load(tmp_path / "c.pt", weights_only=False)
    model, optimizer, x, y = fresh()
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    for step in range(4, 7):  # continue with the same batches
        batch = slice(8 * (step % 4), 8 * (step % 4) + 8)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
    for got, want in zip(model.parameters(), expected):
        torch.testing.assert_close(got, want, **TOLERANCES[torch.float32])


def test_preconditioner_rewrites_gradients_for_another_optimizer():
    model, x, y = _classifier()
    preconditioner = fk.NGDPreconditioner(model, structure="kfac", damping=0.1, stats_every=1, seed=0)
    adam = torch.optim.Adam(model.parameters(), lr=1e-3)
    adam.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    raw = [p.grad.clone() for p in model.parameters()]
    preconditioner.precondition()
    expected = preconditioner.fisher.solve(raw, 0.1, pi_damping=True)
    for p, want in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, want)
    adam.step()


def test_kl_clipping_scales_the_step():
    def step(kl_clip):
        model, x, y = _classifier()
        optimizer = fk.NGD(model, lr=0.5, kl_clip=kl_clip, damping=0.1, seed=0)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        raw = {n: p.grad.clone() for n, p in model.named_parameters()}
        optimizer.step()
        change = [p.detach() - b for p, b in zip(model.parameters(), before)]
        return change, raw

    free, raw = step(None)
    clipped, _ = step(1e-4)
    natural = {n: -c / 0.5 for n, c in zip(raw, free)}
    quadratic = sum(float((natural[n] * raw[n]).sum()) for n in raw)
    factor = min(1.0, (1e-4 / (0.25 * quadratic)) ** 0.5)
    assert factor < 1
    for a, b in zip(clipped, free):
        torch.testing.assert_close(a, factor * b, **TOLERANCES[torch.float32])


def test_non_finite_statistics_are_skipped_and_never_reach_the_weights():
    model, x, y = _classifier()
    optimizer = fk.NGD(model, lr=0.1, damping=0.1, stats_every=1, seed=0)
    _train(model, optimizer, x, y, 1)
    before = [p.detach().clone() for p in model.parameters()]
    poisoned = x[:8].clone()
    poisoned[0, 0] = float("nan")
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(poisoned), y[:8]).backward()
    with pytest.warns(RuntimeWarning, match="NGD skipped"):
        optimizer.step()
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b)
    assert optimizer.preconditioner.skipped


def test_bad_input_is_refused_clearly():
    model, x, y = _classifier()
    optimizer = fk.NGD(model, fisher_type="empirical")
    model(x).sum().backward()
    with pytest.raises(ValueError, match="pass targets=y"):
        optimizer.step()
    optimizer.step(targets=y)
    other, _, _ = _classifier()
    other[0] = nn.Linear(6, 5)
    other[2] = nn.Linear(5, 3)
    with pytest.raises(ValueError, match="cannot be loaded"):
        fk.NGD(other).load_state_dict(optimizer.state_dict())
    singular = nn.Sequential(nn.Linear(3, 2))
    ngd = fk.NGD(singular, damping=0.0, pi_damping=False, fisher_type="exact")
    singular(torch.zeros(4, 3)).sum().backward()
    with pytest.raises(ValueError, match="0.weight, 0.bias.*singular"):
        ngd.step()


def test_levenberg_marquardt_damping_follows_the_quadratic_model():
    x, y = _regression()
    torch.manual_seed(1)
    model = nn.Linear(3, 1).double()
    damping = fk.LevenbergMarquardt(1.0, every=1, decay=0.5)
    optimizer = fk.NGD(
        model, lr=0.5, structure="block", fisher_type="exact", likelihood="gaussian", damping=damping,
        ema_decay=0.0, stats_every=1, inverse_every=1, kl_clip=None,
    )  # fmt: skip

    def closure():
        optimizer.zero_grad()
        loss = 0.5 * (model(x) - y).square().sum(1).mean()
        loss.backward()
        return loss

    optimizer.step(closure)
    assert damping.last_ratio == pytest.approx(1.0)  # a linear-Gaussian model is exactly quadratic
    assert damping.value == pytest.approx(0.5)
    with pytest.raises(ValueError, match="call step\\(closure\\)"):
        closure()
        optimizer.step()

    model, x_cls, y_cls = _classifier()
    damping = fk.LevenbergMarquardt(1e-4, every=1, decay=0.5)
    optimizer = fk.NGD(model, lr=50.0, damping=damping, stats_every=1, seed=0, kl_clip=None)

    def classifier_closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x_cls), y_cls)
        loss.backward()
        return loss

    optimizer.step(classifier_closure)  # a huge step overshoots: the model is not trusted
    assert damping.last_ratio < 0.25 and damping.value == pytest.approx(2e-4)


def test_moving_average_decay_may_be_a_schedule():
    model, x, _ = _classifier()
    decays = [0.0, 0.25, 0.75]
    preconditioner = fk.NGDPreconditioner(
        model, structure="diagonal", fisher_type="exact", ema_decay=lambda step: decays[step], stats_every=1
    )
    expected = None
    for step in range(3):
        batch = x[8 * step : 8 * step + 8]
        model.zero_grad()
        model(batch).sum().backward()
        preconditioner.precondition()
        estimate = torch.cat([d.flatten() for d in fk.diagonal_fisher(model, batch, fisher_type="exact").diagonals])
        expected = estimate if expected is None else decays[step] * expected + (1 - decays[step]) * estimate
    got = torch.cat([d.flatten() for d in preconditioner.fisher.diagonal()])
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match=r"ema_decay must lie in \[0, 1\); got 1.5"):
        fk.NGDPreconditioner(model, ema_decay=lambda step: 1.5)


def test_outputs_that_do_not_fit_the_likelihood_are_refused_before_the_weights_move():
    model = nn.Sequential(nn.Linear(3, 1), nn.Flatten(0))
    optimizer = fk.NGD(model)
    model(torch.randn(4, 3)).sum().backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"categorical likelihood needs logits of shape \(B, C\)"):
        optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert optimizer.preconditioner.steps == 0
