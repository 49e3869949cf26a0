"""The ops on CUDA tensors (auto dispatch picks Triton there) against float64 oracles; skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
from oracles import TOLERANCES

from fisherkit.ops import implementation, kfac_factor_update, persample_sqnorm, sqgrad_accumulate

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("positions", [1, 2, 5, 64])
def test_sqgrad_on_cuda(dtype, positions):
    gen = torch.Generator().manual_seed(positions)
    g = torch.randn(3, 37, positions, 70, generator=gen).to("cuda", dtype)
    a = torch.randn(37, positions, 45, generator=gen).to("cuda", dtype)
    start = torch.rand(70, 45, generator=gen).cuda()
    bias_start = torch.rand(70, generator=gen).cuda()
    out, bias = start.clone(), bias_start.clone()
    expected = "triton" if positions > 1 else "reference"  # T = 1 is one cuBLAS GEMM
    assert implementation("sqgrad_accumulate", out, g, a, 0.5, bias).backend == expected
    sqgrad_accumulate(out, g, a, 0.5, bias)
    per_sample = torch.einsum("knto,nti->knoi", g.double(), a.double())
    torch.testing.assert_close(
        out.double(), start.double() + 0.5 * per_sample.square().sum((0, 1)), **TOLERANCES[torch.float16]
    )
    bias_want = bias_start.double() + 0.5 * g.double().sum(2).square().sum((0, 1))
    torch.testing.assert_close(bias.double(), bias_want, **TOLERANCES[torch.float16])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kfac_factor_on_cuda(dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 123, generator=gen).to("cuda", dtype)
    start = torch.rand(124, 124, generator=gen)
    start = (start + start.T).cuda()
    factor = start.clone()
    kfac_factor_update(factor, x, alpha=0.5, beta=0.9, append_ones=True)
    ones = torch.cat([x.double(), torch.ones(300, 1, dtype=torch.float64, device="cuda")], 1)
    torch.testing.assert_close(factor.double(), 0.9 * start.double() + 0.5 * ones.T @ ones, **TOLERANCES[torch.float16])
    assert torch.equal(factor, factor.T)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 37, 1, 70, 45), (2, 37, 5, 70, 45), (1, 9, 64, 20, 33), (1, 5, 128, 256, 256)])
def test_persample_sqnorm_on_cuda(dtype, shape):
    k, n, t, o, i = shape
    gen = torch.Generator().manual_seed(t)
    g = torch.randn(k, n, t, o, generator=gen).to("cuda", dtype)
    a = torch.randn(n, t, i, generator=gen).to("cuda", dtype)
    start = torch.rand(k, n, generator=gen).cuda()
    out = start.clone()
    persample_sqnorm(out, g, a, 0.5, bias=True)
    norms = torch.einsum("knto,nti->knoi", g.double(), a.double()).square().sum((-2, -1))
    want = start.double() + 0.5 * (norms + g.double().sum(2).square().sum(-1))
    torch.testing.assert_close(out.double(), want, **TOLERANCES[torch.float16])
