"""persample_sqnorm: every backend and both forms (Gram, tiles) against a float64 einsum.

The op accumulates, so each run starts from random (never zero) contents of ``out`` and the
oracle adds to the same start: an element left unwritten or overwritten fails.
"""

from __future__ import annotations

import pytest
import torch
from backends import BACKENDS, run_on
from oracles import TOLERANCES

from fisherkit.ops import extension_status, implementation, persample_sqnorm
from fisherkit.ops.sqnorm import gram_is_cheaper

F32 = TOLERANCES[torch.float32]

# (K, N, T, O, I): T ∈ {1, 2, 5, 64}, sizes 1, 7, 123, tiles and Gram both chosen by the dispatch
SHAPES = [(1, 1, 1, 1, 1), (1, 7, 1, 123, 5), (3, 5, 2, 9, 11), (2, 4, 5, 7, 3), (1, 3, 64, 17, 33), (2, 3, 5, 123, 40)]


def _oracle(g: torch.Tensor, a: torch.Tensor, bias: bool) -> torch.Tensor:
    norms = torch.einsum("knto,nti->knoi", g.double(), a.double()).square().sum((-2, -1))
    return norms + g.double().sum(2).square().sum(-1) if bias else norms


def _operands(shape, dtype, seed=0):
    k, n, t, o, i = shape
    gen = torch.Generator().manual_seed(seed + sum(shape))
    g = torch.randn(k, n, t, o, generator=gen, dtype=dtype)
    a = torch.randn(n, t, i, generator=gen, dtype=dtype)
    return g, a, torch.rand(k, n, generator=gen, dtype=dtype)


def _run_form(backend: str, out, g, a, scale: float, bias: bool, gram: bool) -> None:
    """One backend's implementation with the form forced (the public function picks the cheaper one)."""
    chosen = implementation("persample_sqnorm", out, g, a, scale, bias, gram, backend=backend)
    assert chosen.backend == backend
    chosen.run(out, g, a, scale, bias, gram)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_float64_oracle(backend, dtype, shape):
    g, a, start = _operands(shape, dtype)
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    for bias in (False, True):
        out = start.clone()
        if not run_on("persample_sqnorm", backend, persample_sqnorm, out, g, a, 0.75, bias, positions=shape[2]):
            return
        torch.testing.assert_close(out.double(), start.double() + 0.75 * _oracle(g, a, bias), **tol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("gram", [True, False])
def test_both_forms_match_the_oracle(backend, gram):
    for shape in [(2, 5, 2, 9, 11), (1, 3, 64, 17, 33), (2, 4, 5, 40, 7)]:
        g, a, start = _operands(shape, torch.float32, seed=1)
        out = start.clone()
        _run_form(backend, out, g, a, 0.5, True, gram)
        torch.testing.assert_close(out.double(), start.double() + 0.5 * _oracle(g, a, True), **F32)


def test_the_cheaper_form_is_chosen():
    assert gram_is_cheaper(5, 123, 40) and gram_is_cheaper(64, 4096, 4096)
    assert not gram_is_cheaper(64, 17, 33) and not gram_is_cheaper(2, 1, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_and_strided_inputs(backend):
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(1, 6, 4, 5, generator=gen).half()
    a = torch.randn(6, 4, 3, generator=gen).half()
    out = torch.zeros(1, 6)
    assert run_on("persample_sqnorm", backend, persample_sqnorm, out, g, a, positions=4)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), _oracle(g.float(), a.float(), False), **F32)
    g = torch.randn(2, 8, 5, 6, generator=gen).permute(0, 3, 2, 1)[:, ::2]
    a = torch.randn(6, 10, 3, generator=gen)[::2, ::2]
    out = torch.zeros(2, 3)
    assert run_on("persample_sqnorm", backend, persample_sqnorm, out, g, a, bias=True, positions=5)
    torch.testing.assert_close(out.double(), _oracle(g, a, True), **F32)


def test_shape_and_dtype_errors():
    g, a = torch.zeros(2, 3, 1, 4), torch.zeros(3, 1, 5)
    with pytest.raises(ValueError, match="float32 or float64"):
        persample_sqnorm(torch.zeros(2, 3).half(), g, a)
    with pytest.raises(ValueError, match=r"out must have shape \(K, N\) = \(2, 3\)"):
        persample_sqnorm(torch.zeros(3, 2), g, a)
    with pytest.raises(ValueError, match="same N and T"):
        persample_sqnorm(torch.zeros(2, 3), g, torch.zeros(3, 2, 5))


@pytest.mark.skipif(not extension_status().available, reason="fisherkit._C not built")
def test_opcheck():
    for positions, gram in ((1, True), (7, True), (7, False)):
        args = (torch.zeros(3, 5), torch.randn(3, 5, positions, 9), torch.randn(5, positions, 11), 0.5, True, gram)
        torch.library.opcheck(torch.ops.fisherkit.persample_sqnorm_, args)


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton is not installed")
def test_triton_is_deterministic_and_passes_opcheck():
    g, a = torch.randn(2, 9, 20, 40), torch.randn(9, 20, 35)
    for gram in (True, False):
        first, second = torch.zeros(2, 9), torch.zeros(2, 9)
        _run_form("triton", first, g, a, 1.0, False, gram)
        _run_form("triton", second, g, a, 1.0, False, gram)
        assert torch.equal(first, second)
        torch.library.opcheck(torch.ops.fisherkit.persample_sqnorm_triton, (torch.zeros(2, 9), g, a, 0.5, gram))
