"""kfac_factor_update: every backend against a float64 oracle, bias column virtual, exact symmetry."""

from __future__ import annotations

import pytest
import torch
from backends import BACKENDS, run_on
from oracles import TOLERANCES

from fisherkit.ops import extension_status, kfac_factor_update

SHAPES = [(1, 1), (7, 5), (123, 3), (5, 300), (64, 513)]  # D above the 256 tile, not a multiple of it


def _symmetric(size: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    m = torch.randn(size, size, generator=generator, dtype=dtype)
    return m @ m.T / size


def _oracle(start, x, alpha, beta, append_ones):
    x = x.double()
    if append_ones:
        x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64)], 1)
    return beta * start.double() + alpha * x.T @ x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("append_ones", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_float64_oracle_and_is_symmetric(backend, dtype, append_ones, shape):
    n, d = shape
    gen = torch.Generator().manual_seed(n * 1000 + d)
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    start = _symmetric(d + int(append_ones), gen, dtype)
    factor = start.clone()
    if not run_on("kfac_factor_update", backend, kfac_factor_update, factor, x, 0.3, 0.9, append_ones):
        return
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(factor.double(), _oracle(start, x, 0.3, 0.9, append_ones), **tol)
    assert torch.equal(factor, factor.T)


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_inputs_accumulate_in_float32(backend):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(9, 6, generator=gen).half()
    factor = torch.zeros(7, 7)
    assert run_on("kfac_factor_update", backend, kfac_factor_update, factor, x, append_ones=True)
    torch.testing.assert_close(
        factor.double(), _oracle(torch.zeros(7, 7), x.float(), 1.0, 1.0, True), **TOLERANCES[torch.float32]
    )


def test_shape_errors():
    with pytest.raises(ValueError, match=r"expected \(4, 4\)"):
        kfac_factor_update(torch.zeros(3, 3), torch.zeros(2, 3), append_ones=True)
    with pytest.raises(ValueError, match="float32 or float64"):
        kfac_factor_update(torch.zeros(3, 3).half(), torch.zeros(2, 3))


@pytest.mark.skipif(not extension_status().available, reason="fisherkit._C not built")
def test_opcheck():
    for append_ones in (False, True):
        args = (torch.eye(5 + int(append_ones)), torch.randn(4, 5), 0.5, 0.25, append_ones)
        torch.library.opcheck(torch.ops.fisherkit.kfac_factor_update_, args)


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton is not installed")
def test_triton_opcheck():
    inputs = torch.randn(19, 45, generator=torch.Generator().manual_seed(1))
    torch.library.opcheck(torch.ops.fisherkit.kfac_factor_update_triton, (torch.zeros(45, 45), inputs, 0.5, 1.0))
