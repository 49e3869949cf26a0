"""Block, full, KFAC and EKFAC estimators against the float64 per-sample loop's dense Fisher."""

from __future__ import annotations

import pytest
import torch
from oracles import TOLERANCES, brute_force_dense, flatten
from replay import replay_draws
from torch import nn
from torch.nn import functional
from zoo import CASE_AND_TYPE_IDS, CASES, CASES_AND_TYPES, MeanOverPositions, build_case

import fisherkit as fk

TOL = TOLERANCES[torch.float64]


def flat_offsets(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each trainable parameter's positions in the flattened parameter vector."""
    offsets, start = {}, 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            offsets[name] = torch.arange(start, start + p.numel())
            start += p.numel()
    return offsets


def block_index(model: nn.Module, names: tuple[str, ...]) -> torch.Tensor:
    offsets = flat_offsets(model)
    return torch.cat([offsets[n] for n in names])


def assert_blocks_match(fisher: fk.Curvature, model: nn.Module, dense: torch.Tensor) -> None:
    """Every block equals the same block of ``dense`` (diagonal blocks: its diagonal), and ``to_dense``
    is zero outside the blocks."""
    got = fisher.to_dense()
    covered = torch.zeros_like(dense, dtype=torch.bool)
    for block in fisher.blocks:
        index = block_index(model, block.names)
        want = dense[index.unsqueeze(1), index.unsqueeze(0)]
        if isinstance(block, fk.DiagonalBlock):
            want = torch.diag(torch.diagonal(want))
        torch.testing.assert_close(got[index.unsqueeze(1), index.unsqueeze(0)], want, **TOL, msg=block.label)
        covered[index.unsqueeze(1), index.unsqueeze(0)] = True
    assert float(got[~covered].abs().sum()) == 0.0


def oracle(model, inputs, targets, likelihood, fisher_type, mc_samples=2, batch_size=4, seed=7):
    sampled = None
    if fisher_type == "mc":
        sampled = replay_draws(model, inputs, likelihood, seed, mc_samples, batch_size)
    return brute_force_dense(model, inputs, likelihood, fisher_type, targets, sampled)


ESTIMATORS = {
    "block-layerwise": lambda **kw: fk.block_fisher(engine="layerwise", **kw),
    "block-vmap": lambda **kw: fk.block_fisher(engine="vmap", **kw),
    "full": lambda **kw: fk.full_fisher(**kw),
}


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("case, fisher_type", CASES_AND_TYPES, ids=CASE_AND_TYPE_IDS)
def test_block_and_full_equal_the_per_sample_loop(case, fisher_type, estimator):
    model, inputs, targets = build_case(case)
    fisher = ESTIMATORS[estimator](
        model=model,
        data=(inputs, targets),
        likelihood=case.likelihood,
        fisher_type=fisher_type,
        mc_samples=2,
        fallback=case.fallback,
        batch_size=4,
        seed=7,
    )
    dense = oracle(model, inputs, targets, case.likelihood, fisher_type)
    assert all(isinstance(b, fk.DenseBlock) for b in fisher.blocks)
    assert len(fisher.blocks) == (1 if estimator == "full" else len({n.rsplit(".", 1)[0] for n in fisher.names}))
    assert_blocks_match(fisher, model, dense)
    assert float(dense.abs().sum()) > 0


def _one_position_models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Single-sample models whose every weight-shared layer sees one position: KFAC is exact there."""
    torch.manual_seed(3)
    mixed = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 3))
    conv = nn.Sequential(nn.Conv2d(4, 6, (3, 2)), nn.Tanh(), nn.Flatten(), nn.Linear(6, 3))
    embedding = nn.Sequential(nn.Embedding(6, 4), nn.Flatten(), nn.Tanh(), nn.Linear(4, 3))
    return {
        "linear-layernorm": (mixed.double(), torch.randn(1, 4, dtype=torch.float64)),
        "conv": (conv.double(), torch.randn(1, 4, 3, 2, dtype=torch.float64)),
        "embedding": (embedding.double(), torch.tensor([[4]])),
    }


@pytest.mark.parametrize("structure", ["kfac", "ekfac"])
@pytest.mark.parametrize("fisher_type", ["mc", "exact", "empirical", "predicted"])
@pytest.mark.parametrize("name", ["linear-layernorm", "conv", "embedding"])
def test_kronecker_structures_are_exact_for_one_sample_at_one_position(name, fisher_type, structure):
    model, x = _one_position_models()[name]
    y = torch.tensor([2])
    estimate = fk.kfac_fisher if structure == "kfac" else fk.ekfac_fisher
    fisher = estimate(model, (x, y), fisher_type=fisher_type, mc_samples=3, seed=7)
    kinds = {type(b) for b in fisher.blocks}
    assert (fk.KroneckerBlock if structure == "kfac" else fk.EigenKroneckerBlock) in kinds
    if structure == "ekfac" and fisher_type == "mc":
        # the scaling pass draws fresh labels: compare with the exact EKFAC of those draws instead
        return _check_ekfac_scaling(fisher, model, x, y, fisher_type, seed=7)
    assert_blocks_match(fisher, model, oracle(model, x, y, "categorical", fisher_type, mc_samples=3))


def _check_ekfac_scaling(fisher, model, x, y, fisher_type, seed):
    """EKFAC's eigenvalues are the second moments in its eigenbasis: diag(Qᵀ F Q) of the second pass's Fisher."""
    generator = torch.Generator().manual_seed(seed)
    lik = fk.Categorical()
    with torch.no_grad():
        output = model(x)
    [lik.sample(output, generator) for _ in range(3)]  # the first pass's draws
    sampled = [lik.sample(output, generator) for _ in range(3)]
    dense = brute_force_dense(model, x, "categorical", fisher_type, y, sampled)
    for block in fisher.blocks:
        if isinstance(block, fk.EigenKroneckerBlock):
            _assert_scaling_is_diagonal_in_basis(block, model, dense)


def _assert_scaling_is_diagonal_in_basis(block: fk.EigenKroneckerBlock, model: nn.Module, dense: torch.Tensor) -> None:
    index = block_index(model, block.names)
    true_block = dense[index.unsqueeze(1), index.unsqueeze(0)]
    view_index = block.layout.flat_index(block.shapes, torch.device("cpu"))  # view entry → position in the block
    for group in range(block.groups):
        rows, cols = block.scaling.shape[1:]
        left = torch.eye(rows, dtype=dense.dtype) if block.left_basis is None else block.left_basis[group]
        right = torch.eye(cols, dtype=dense.dtype) if block.right_basis is None else block.right_basis[group]
        basis = torch.kron(left.contiguous(), right.contiguous())
        positions = view_index[group].reshape(-1)
        sub = true_block[positions.unsqueeze(1), positions.unsqueeze(0)]
        torch.testing.assert_close(
            torch.diagonal(basis.T @ sub @ basis), block.scaling[group].reshape(-1), **TOL, msg=block.label
        )


@pytest.mark.parametrize("case", ["linear", "conv2d-groups-reflect", "embedding", "linear-shared-3d"])
def test_ekfac_scaling_is_the_diagonal_in_the_kfac_eigenbasis_and_beats_kfac(case):
    model, inputs, targets = build_case(next(c for c in CASES if c.name == case))
    kfac = fk.kfac_fisher(model, inputs, fisher_type="exact")
    ekfac = fk.ekfac_fisher(model, inputs, fisher_type="exact")
    dense = oracle(model, inputs, targets, "categorical", "exact")
    for k_block, e_block in zip(kfac.blocks, ekfac.blocks):
        if not isinstance(e_block, fk.EigenKroneckerBlock):
            continue
        _assert_scaling_is_diagonal_in_basis(e_block, model, dense)
        index = block_index(model, e_block.names)
        true_block = dense[index.unsqueeze(1), index.unsqueeze(0)]
        kfac_error = torch.linalg.matrix_norm(k_block.to_dense() - true_block)
        ekfac_error = torch.linalg.matrix_norm(e_block.to_dense() - true_block)
        assert float(ekfac_error) <= float(kfac_error) + 1e-12, e_block.label


def test_kfac_factors_equal_their_definitions_over_many_samples():
    """G = the bias block of the true Fisher (expand with one position; reduce with many),
    A = the mean outer product of [a, 1] (or of its mean over positions) from forward hooks."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), MeanOverPositions(1), nn.Linear(6, 3)).double()
    x = torch.randn(7, 4, 5, dtype=torch.float64)  # 4 positions for the first layer
    dense = oracle(model, x, None, "categorical", "exact")
    inputs = {}
    for name in ("0", "3"):
        model.get_submodule(name).register_forward_hook(lambda m, a, o, name=name: inputs.__setitem__(name, a[0]))
    fisher = fk.kfac_fisher(model, x, fisher_type="exact", approximation="reduce")
    for name in ("0", "3"):
        block = next(b for b in fisher.blocks if b.names[0] == f"{name}.weight")
        bias = block_index(model, (f"{name}.bias",))
        torch.testing.assert_close(block.left[0], dense[bias.unsqueeze(1), bias.unsqueeze(0)], **TOL)
        a = inputs[name] if inputs[name].dim() == 2 else inputs[name].mean(1)
        a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
        torch.testing.assert_close(block.right[0], a.T @ a / len(a), **TOL)


def test_conv_kfac_reduce_factors_equal_their_definitions():
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 6, (3, 2), padding=1, groups=2, padding_mode="reflect")
    model = nn.Sequential(conv, nn.Tanh(), MeanOverPositions((2, 3)), nn.Linear(6, 3)).double()
    x = torch.randn(5, 4, 5, 6, dtype=torch.float64)
    dense = oracle(model, x, None, "categorical", "exact")
    fisher = fk.kfac_fisher(model, x, fisher_type="exact", approximation="reduce")
    block = fisher.blocks[0]
    patches = functional.unfold(functional.pad(x, (1, 1, 1, 1), mode="reflect"), (3, 2)).mean(-1)  # (N, C·kh·kw)
    bias = block_index(model, ("0.bias",))
    for group in range(2):
        a = patches[:, group * 12 : (group + 1) * 12]
        a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
        torch.testing.assert_close(block.right[group], a.T @ a / len(a), **TOL)
        own = bias[group * 3 : (group + 1) * 3]
        torch.testing.assert_close(block.left[group], dense[own.unsqueeze(1), own.unsqueeze(0)], **TOL)


def test_kfac_reduce_is_exact_when_every_position_sees_the_same_input():
    """With a_t = a for all t, ∇W = (Σ_t g_t) aᵀ: KFAC-reduce is exact for one sample, expand is not."""

    class Broadcast(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.unsqueeze(1).expand(-1, 4, -1)

    class AddPositions(nn.Module):  # makes the positions differ after the shared layer
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("offsets", torch.randn(4, 5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.offsets

    torch.manual_seed(4)
    model = nn.Sequential(
        Broadcast(), nn.Linear(3, 5), AddPositions(), nn.Tanh(), nn.Linear(5, 4), MeanOverPositions(1), nn.Linear(4, 3)
    ).double()
    x = torch.randn(1, 3, dtype=torch.float64)
    dense = oracle(model, x, None, "categorical", "exact")
    reduce = fk.kfac_fisher(model, x, fisher_type="exact", approximation="reduce")
    index = block_index(model, ("1.weight", "1.bias"))
    true_block = dense[index.unsqueeze(1), index.unsqueeze(0)]
    torch.testing.assert_close(reduce.blocks[0].to_dense(), true_block, **TOL)
    expand = fk.kfac_fisher(model, x, fisher_type="exact", approximation="expand")
    assert not torch.allclose(expand.blocks[0].to_dense(), true_block)


def test_structured_estimators_refuse_what_they_cannot_do():
    model = nn.Sequential(nn.Linear(3, 2)).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown KFAC approximation"):
        fk.kfac_fisher(model, x, approximation="mean")
    with pytest.raises(ValueError, match=r"needs .* GiB .* Raise memory_budget"):
        fk.full_fisher(model, x, memory_budget=100)
    with pytest.raises(ValueError, match="iterated twice"):
        fk.ekfac_fisher(model, iter([x[:2], x[2:]]))
    with pytest.raises(fk.UnsupportedModelError, match="fallback=True"):
        fk.kfac_fisher(nn.Sequential(nn.Linear(3, 3), nn.PReLU()), torch.randn(4, 3), fallback=False)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_kfac_and_ekfac_relations_hold_on_every_model(case):
    """On any model (exact Fisher): KFAC-reduce's output factor G of a layer with a bias is that bias's
    true Fisher block (per group), its input factor's bias corner is 1, diagonal blocks are the true
    diagonal, and EKFAC's eigenvalues are the true Fisher's diagonal in its eigenbasis."""
    model, inputs, targets = build_case(case)
    data = (inputs, targets)
    options = {"likelihood": case.likelihood, "fisher_type": "exact", "fallback": case.fallback}
    kfac = fk.kfac_fisher(model, data, approximation="reduce", **options)
    ekfac = fk.ekfac_fisher(model, data, **options)
    dense = oracle(model, inputs, targets, case.likelihood, "exact")
    checked = 0
    for block in kfac.blocks:
        if isinstance(block, fk.DiagonalBlock):
            index = block_index(model, block.names)
            torch.testing.assert_close(flatten(block.diagonal()), torch.diagonal(dense)[index], **TOL)
        elif block.has_bias:
            bias = block_index(model, block.names[1:]).reshape(block.groups, block.rows)
            for group, own in enumerate(bias):
                torch.testing.assert_close(block.left[group], dense[own.unsqueeze(1), own.unsqueeze(0)], **TOL)
                torch.testing.assert_close(block.right[group, -1, -1], torch.tensor(1.0, dtype=torch.float64), **TOL)
            checked += 1
    for block in ekfac.blocks:
        if isinstance(block, fk.EigenKroneckerBlock):
            _assert_scaling_is_diagonal_in_basis(block, model, dense)
            checked += 1
    assert checked > 0
