"""Every block kind and a mixed representation: each operation against the same one on the dense matrix."""

from __future__ import annotations

import pytest
import torch
from oracles import TOLERANCES, flatten

import fisherkit as fk
from fisherkit.curvature.quadratic_form import block_quadratic

TOL = TOLERANCES[torch.float64]
F64 = torch.float64


def _spd(g: torch.Generator, *shape: int, rank: int | None = None) -> torch.Tensor:
    """Random symmetric PSD matrices ``(*shape[:-1], n, n)`` (rank-deficient when ``rank`` < n)."""
    n = shape[-1]
    x = torch.randn(*shape[:-1], n, rank or n + 2, generator=g, dtype=F64)
    return x @ x.transpose(-1, -2) / n


def explicit_kronecker_dense(
    left: torch.Tensor, right: torch.Tensor, out_features: int, has_bias: bool
) -> torch.Tensor:
    """F over [weight (O, C), bias (O)] for grouped output rows, built entry by entry:
    F[(o, c), (o', c')] = L_g[o, o'] R_g[c, c'] when o and o' lie in the same group g."""
    rows = left.shape[1]
    cols = right.shape[-1]
    weight_cols = cols - int(has_bias)
    size = out_features * weight_cols + (out_features if has_bias else 0)
    dense = torch.zeros(size, size, dtype=F64)

    def position(o: int, c: int) -> int:
        return out_features * weight_cols + o if c == weight_cols else o * weight_cols + c

    for o in range(out_features):
        for o2 in range(out_features):
            if o // rows != o2 // rows:
                continue
            g = o // rows
            for c in range(cols):
                for c2 in range(cols):
                    dense[position(o, c), position(o2, c2)] = left[g, o % rows, o2 % rows] * right[g, c, c2]
    return dense


def _blocks(seed: int) -> list[fk.Block]:
    g = torch.Generator().manual_seed(seed)
    conv_shapes = (torch.Size([4, 3, 2]), torch.Size([4]))  # 2 groups of 2 output channels, 3·2 inputs each
    left_basis = torch.linalg.qr(torch.randn(2, 2, 2, generator=g, dtype=F64))[0]
    right_basis = torch.linalg.qr(torch.randn(2, 7, 7, generator=g, dtype=F64))[0]
    return [
        fk.KroneckerBlock(("conv.weight", "conv.bias"), conv_shapes, 2, 2, True, _spd(g, 2, 2), _spd(g, 2, 7)),
        fk.KroneckerBlock(
            ("emb.weight",), (torch.Size([5, 3]),), 1, 5, False, torch.rand(1, 5, generator=g, dtype=F64), _spd(g, 1, 3)
        ),
        fk.EigenKroneckerBlock(
            ("conv2.weight", "conv2.bias"),
            conv_shapes,
            2,
            2,
            True,
            left_basis,
            right_basis,
            torch.rand(2, 2, 7, generator=g, dtype=F64) + 0.05,
        ),
        fk.EigenKroneckerBlock(
            ("emb2.weight",),
            (torch.Size([3, 2]),),
            1,
            3,
            False,
            None,
            torch.linalg.qr(torch.randn(1, 2, 2, generator=g, dtype=F64))[0],
            torch.rand(1, 3, 2, generator=g, dtype=F64),
        ),
        fk.DenseBlock(("norm.weight", "norm.bias"), (torch.Size([3]), torch.Size([3])), _spd(g, 6)),
        fk.DiagonalBlock(("scale",), (torch.Size([2, 2]),), [torch.rand(2, 2, generator=g, dtype=F64) + 0.1]),
    ]


def _curvature(seed: int) -> fk.Curvature:
    blocks = _blocks(seed)
    names = [n for b in blocks for n in b.names][::-1]  # parameter order differs from block order
    shapes = {n: s for b in blocks for n, s in zip(b.names, b.shapes)}
    return fk.Curvature(names, [shapes[n] for n in names], blocks)


def _vector(fisher: fk.Curvature, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=F64) for s in fisher.shapes]


def test_kronecker_to_dense_matches_an_entrywise_construction():
    block = _blocks(0)[0]
    expected = explicit_kronecker_dense(block.left, block.right, 4, True)
    torch.testing.assert_close(block.to_dense(), expected, **TOL)
    embedding = _blocks(0)[1]
    expected = torch.kron(torch.diag(embedding.left[0]), embedding.right[0])
    torch.testing.assert_close(embedding.to_dense(), expected, **TOL)


def test_eigen_kronecker_to_dense_matches_its_definition():
    block = _blocks(0)[2]
    for group in range(2):
        basis = torch.kron(block.left_basis[group], block.right_basis[group])
        expected = basis @ torch.diag(block.scaling[group].reshape(-1)) @ basis.T
        rows = torch.arange(group * 2, group * 2 + 2)
        weight_positions = (rows.unsqueeze(1) * 6 + torch.arange(6)).reshape(2, 6)
        positions = torch.cat([weight_positions, (24 + rows).unsqueeze(1)], 1).reshape(-1)
        got = block.to_dense()[positions.unsqueeze(1), positions.unsqueeze(0)]
        torch.testing.assert_close(got, expected, **TOL)


def test_every_operation_matches_the_dense_matrix():
    fisher = _curvature(0)
    v = _vector(fisher, 1)
    dense, flat = fisher.to_dense(), flatten(v)
    eye = torch.eye(dense.shape[0], dtype=F64)
    torch.testing.assert_close(dense, dense.T, **TOL)
    torch.testing.assert_close(flatten(fisher.mv(v)), dense @ flat, **TOL)
    torch.testing.assert_close(fisher.quadratic(dict(zip(fisher.names, v))), flat @ dense @ flat, **TOL)
    torch.testing.assert_close(flatten(fisher.solve(v, 0.3)), torch.linalg.solve(dense + 0.3 * eye, flat), **TOL)
    torch.testing.assert_close(fisher.inverse(0.3).to_dense(), torch.linalg.inv(dense + 0.3 * eye), **TOL)
    torch.testing.assert_close(flatten(fisher.diagonal()), torch.diagonal(dense), **TOL)
    torch.testing.assert_close(fisher.trace(), torch.trace(dense), **TOL)
    torch.testing.assert_close(fisher.logdet(0.2), torch.logdet(dense + 0.2 * eye), **TOL)
    other = _curvature(2)
    torch.testing.assert_close((fisher + other).to_dense(), dense + other.to_dense(), **TOL)
    torch.testing.assert_close((0.5 * fisher).to_dense(), 0.5 * dense, **TOL)
    total = fisher + other
    torch.testing.assert_close(
        flatten(total.solve(v, 0.3)), torch.linalg.solve(total.to_dense() + 0.3 * eye, flat), **TOL
    )
    assert any(isinstance(b, fk.SumBlock) for b in total.blocks)


def test_pi_damping_uses_the_factored_heuristic():
    block = _blocks(0)[0]
    damping = 0.4
    expected_blocks = []
    for group in range(2):
        left, right = block.left[group], block.right[group]
        pi = torch.sqrt((torch.trace(left) / 2) / (torch.trace(right) / 7))
        damped_left = left + pi * damping**0.5 * torch.eye(2, dtype=F64)
        damped_right = right + damping**0.5 / pi * torch.eye(7, dtype=F64)
        expected_blocks.append((damped_left, damped_right))
    damped = fk.KroneckerBlock(
        block.names, block.shapes, 2, 2, True,
        torch.stack([a for a, _ in expected_blocks]), torch.stack([b for _, b in expected_blocks]),
    )  # fmt: skip
    g = torch.Generator().manual_seed(3)
    v = [torch.randn(s, generator=g, dtype=F64) for s in block.shapes]
    expected = torch.linalg.solve(damped.to_dense(), flatten(v))
    torch.testing.assert_close(flatten(block.solve(v, damping, pi_damping=True)), expected, **TOL)
    torch.testing.assert_close(
        block.inverse(damping, pi_damping=True).to_dense(), torch.linalg.inv(damped.to_dense()), **TOL
    )
    torch.testing.assert_close(block.logdet(damping, pi_damping=True), torch.logdet(damped.to_dense()), **TOL)


def test_moving_averages():
    fisher, other = _curvature(0), _curvature(2)
    dense, new = fisher.to_dense(), other.to_dense()
    fisher.ema_(other, 0.9)
    got = fisher.to_dense()
    for block, before in zip(fisher.blocks, _curvature(0).blocks):
        if isinstance(block, (fk.DenseBlock, fk.DiagonalBlock)):
            torch.testing.assert_close(
                block.to_dense(), 0.9 * before.to_dense() + 0.1 * _match(other, block).to_dense(), **TOL
            )
    new_kron = _match(other, fisher.blocks[0])
    before = _curvature(0).blocks[0]
    torch.testing.assert_close(fisher.blocks[0].left, 0.9 * before.left + 0.1 * new_kron.left, **TOL)
    torch.testing.assert_close(fisher.blocks[0].right, 0.9 * before.right + 0.1 * new_kron.right, **TOL)
    assert not torch.allclose(got, dense) and not torch.allclose(got, new)
    same_basis = _blocks(0)[2]
    scaled = same_basis.scaled(3.0)
    same_basis.ema_(scaled, 0.5)
    torch.testing.assert_close(same_basis.to_dense(), 2.0 * _blocks(0)[2].to_dense(), **TOL)


def _match(fisher: fk.Curvature, block: fk.Block) -> fk.Block:
    return next(b for b in fisher.blocks if b.names == block.names)


def test_cached_eigendecomposition_is_invalidated_by_updates():
    block = _blocks(0)[0]
    v = [torch.ones(s, dtype=F64) for s in block.shapes]
    block.solve(v, 0.1)
    block.ema_(_blocks(5)[0], 0.0)
    fresh = _blocks(5)[0]
    torch.testing.assert_close(flatten(block.solve(v, 0.1)), flatten(fresh.solve(v, 0.1)), **TOL)


def test_state_dict_round_trips_and_refuses_other_structures(tmp_path):
    fisher = _curvature(0)
    path = tmp_path / "fisher.pt"
    torch.save(fisher.state_dict(), path)
    restored = fk.Curvature.from_state_dict(torch.load(path, weights_only=True))
    torch.testing.assert_close(restored.to_dense(), fisher.to_dense(), **TOL)
    target = _curvature(3)
    target.load_state_dict(fisher.state_dict())
    torch.testing.assert_close(target.to_dense(), fisher.to_dense(), **TOL)
    assert target.to(torch.float32).blocks[0].left.dtype == torch.float32
    diagonal = fk.DiagonalFisher(list(fisher.names), [torch.ones(s, dtype=F64) for s in fisher.shapes])
    with pytest.raises(ValueError, match="cannot be loaded"):
        diagonal.load_state_dict(fisher.state_dict())
    with pytest.raises(ValueError, match="different blocks"):
        diagonal + fisher
    with pytest.raises(ValueError, match=">= 0"):
        fisher * -1.0
    with pytest.raises(ValueError, match="decay must lie"):
        fisher.ema_(_curvature(1), 1.5)


def test_non_finite_factors_and_singular_matrices_are_named():
    block = _blocks(0)[0]
    block.left[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="conv.weight, conv.bias.*NaN"):
        block.solve([torch.ones(s, dtype=F64) for s in block.shapes], 0.1)
    singular = fk.KroneckerBlock(
        ("w",), (torch.Size([2, 2]),), 1, 2, False, torch.zeros(1, 2, 2, dtype=F64), torch.eye(2, dtype=F64)[None]
    )
    with pytest.raises(ValueError, match="singular; pass damping > 0"):
        singular.solve([torch.ones(2, 2, dtype=F64)], 0.0)
    with pytest.raises(ValueError, match="w: a damped Kronecker factor is singular in float64"):
        singular.inverse(0.0, pi_damping=True)
    with pytest.raises(ValueError, match="conv.weight, conv.bias.*NaN"):
        block.inverse(0.1, pi_damping=True)
    dense = fk.DenseBlock(("w",), (torch.Size([2]),), torch.zeros(2, 2, dtype=F64))
    with pytest.raises(ValueError, match="not positive definite; pass damping > 0"):
        dense.solve([torch.ones(2, dtype=F64)], 0.0)


def test_block_quadratic_value_and_gradient_match_the_dense_form_and_finite_differences():
    blocks = _blocks(5)
    blocks.append(fk.SumBlock(blocks[0].names, blocks[0].shapes, [blocks[0], _blocks(6)[0].scaled(0.5)]))
    g = torch.Generator().manual_seed(9)
    for block in blocks:
        params = [torch.randn(s, generator=g, dtype=F64, requires_grad=True) for s in block.shapes]
        anchors = [torch.randn(s, generator=g, dtype=F64) for s in block.shapes]
        value = block_quadratic(block, params, anchors)
        difference = flatten([p.detach() - a for p, a in zip(params, anchors)])
        dense = block.to_dense()
        torch.testing.assert_close(value, difference @ dense @ difference, **TOLERANCES[F64])
        value.backward()
        torch.testing.assert_close(flatten([p.grad for p in params]), 2 * dense @ difference, **TOLERANCES[F64])
        torch.autograd.gradcheck(lambda *p, block=block, a=anchors: block_quadratic(block, p, a), tuple(params))


def test_the_representation_quadratic_keeps_its_product_for_the_gradient():
    blocks = _blocks(7)
    names = tuple(n for b in blocks for n in b.names)
    shapes = tuple(s for b in blocks for s in b.shapes)
    fisher = fk.Curvature(names, shapes, blocks)
    g = torch.Generator().manual_seed(3)
    v = [torch.randn(s, generator=g, dtype=F64, requires_grad=True) for s in shapes]
    value = fisher.quadratic(v)
    dense = fisher.to_dense()
    torch.testing.assert_close(value, flatten(v).detach() @ dense @ flatten(v).detach(), **TOLERANCES[F64])
    stack = value.grad_fn.next_functions[0][0]  # sum(stack([one node per block]))
    assert [type(node).__name__ for node, _ in stack.next_functions] == ["_QuadraticFormBackward"] * len(blocks)
    value.backward()
    torch.testing.assert_close(flatten([x.grad for x in v]), 2 * dense @ flatten(v).detach(), **TOLERANCES[F64])
