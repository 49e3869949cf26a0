"""sqgrad_accumulate: every backend against a float64 einsum on odd shapes.

The op accumulates, so each run starts from random (never zero) contents of ``out`` and the
oracle adds to the same start: an element left unwritten or overwritten fails.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from backends import BACKENDS, run_on
from oracles import EXACT, TOLERANCES

from fisherkit.ops import extension_status, implementation, sqgrad_accumulate

F32 = TOLERANCES[torch.float32]

SHAPES = [(1, 1, 1, 1, 1), (1, 7, 1, 123, 5), (3, 5, 2, 9, 11), (2, 4, 5, 7, 3), (1, 3, 64, 17, 33), (4, 123, 1, 7, 2)]


def _oracle(g, a, scale):
    per_sample = torch.einsum("knto,nti->knoi", g.double(), a.double())
    return scale * per_sample.square().sum((0, 1))


def _bias_oracle(g, scale):
    return scale * g.double().sum(2).square().sum((0, 1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_float64_oracle(backend, dtype, shape):
    k, n, t, o, i = shape
    gen = torch.Generator().manual_seed(sum(shape))
    g = torch.randn(k, n, t, o, generator=gen, dtype=dtype)
    a = torch.randn(n, t, i, generator=gen, dtype=dtype)
    start = torch.rand(o, i, generator=gen, dtype=dtype)
    bias_start = torch.rand(o, generator=gen, dtype=dtype)
    out, bias_out = start.clone(), bias_start.clone()
    if not run_on("sqgrad_accumulate", backend, sqgrad_accumulate, out, g, a, 0.75, bias_out, positions=t):
        return
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(out.double(), start.double() + _oracle(g, a, 0.75), **tol)
    torch.testing.assert_close(bias_out.double(), bias_start.double() + _bias_oracle(g, 0.75), **tol)
    without_bias = start.clone()
    sqgrad_accumulate(without_bias, g, a, scale=0.75, backend=backend)
    torch.testing.assert_close(without_bias, out, **EXACT)


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_inputs_accumulate_in_float32(backend):
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(1, 6, 4, 5, generator=gen).half()
    a = torch.randn(6, 4, 3, generator=gen).half()
    start = torch.rand(5, 3, generator=gen)
    out = start.clone()
    if not run_on("sqgrad_accumulate", backend, sqgrad_accumulate, out, g, a, positions=4):
        return
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), start.double() + _oracle(g.float(), a.float(), 1.0), **F32)


def test_noncontiguous_inputs():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(2, 8, 5, 6, generator=gen).permute(0, 3, 2, 1)[:, ::2]
    a = torch.randn(6, 10, 3, generator=gen)[::2, ::2]
    for backend in BACKENDS:
        out = torch.zeros(8, 3)
        if run_on("sqgrad_accumulate", backend, sqgrad_accumulate, out, g, a, positions=5):
            torch.testing.assert_close(out.double(), _oracle(g, a, 1.0), **F32)


def test_shape_and_dtype_errors():
    with pytest.raises(ValueError, match="float32 or float64"):
        sqgrad_accumulate(torch.zeros(2, 3).half(), torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 3))
    with pytest.raises(ValueError, match="shapes disagree"):
        sqgrad_accumulate(torch.zeros(2, 4), torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 3))
    with pytest.raises(ValueError, match=r"bias_out must have shape \(2,\)"):
        sqgrad_accumulate(torch.zeros(2, 3), torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 3), bias_out=torch.zeros(3))
    with pytest.raises(ValueError, match="unknown backend 'cuda-magic'"):
        sqgrad_accumulate(torch.zeros(2, 3), torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 3), backend="cuda-magic")


SQNORM_CALL = (torch.zeros(1, 2), torch.zeros(1, 2, 3, 4), torch.zeros(2, 3, 5), 1.0, False, True)


@pytest.mark.skipif(not extension_status().available, reason="fisherkit._C not built")
def test_auto_dispatch_picks_the_extension_on_cpu_where_it_has_a_kernel():
    assert implementation("persample_sqnorm", *SQNORM_CALL).backend == "cpp"
    sqgrad_call = (torch.zeros(4, 5), torch.zeros(1, 2, 3, 4), torch.zeros(2, 3, 5), 1.0, None)
    assert implementation("sqgrad_accumulate", *sqgrad_call).backend == "reference"  # no C++ kernel: kept out
    with pytest.raises(ValueError, match="sqgrad_accumulate has no cpp implementation"):
        sqgrad_accumulate(*sqgrad_call, backend="cpp")


def test_environment_preference_and_missing_extension_fall_back(monkeypatch):
    monkeypatch.setenv("FISHERKIT_BACKEND", "reference")
    assert implementation("persample_sqnorm", *SQNORM_CALL).backend == "reference"
    monkeypatch.setenv("FISHERKIT_BACKEND", "triton")  # a preference: float64 is served by what serves it
    float64_call = (torch.zeros(1, 2, dtype=torch.float64), *SQNORM_CALL[1:])
    assert implementation("persample_sqnorm", *float64_call).backend != "triton"
    monkeypatch.setenv("FISHERKIT_BACKEND", "fast")
    with pytest.raises(ValueError, match=r"unknown backend 'fast' in \$FISHERKIT_BACKEND"):
        implementation("persample_sqnorm", *SQNORM_CALL)
    monkeypatch.delenv("FISHERKIT_BACKEND")
    code = (
        "import fisherkit.ops as o, torch; s = o.extension_status(); "
        "assert not s.available and 'disabled' in s.reason; "
        "call = (torch.zeros(1, 2), torch.zeros(1, 2, 3, 4), torch.zeros(2, 3, 5), 1.0, False, True); "
        "assert o.implementation('persample_sqnorm', *call).backend == 'reference'"
    )
    env = {**os.environ, "FISHERKIT_DISABLE_EXT": "1"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_import_is_lean():
    code = (
        "import sys, torch, fisherkit; "
        "assert 'triton' not in sys.modules, 'triton imported'; "
        "assert not torch.cuda.is_initialized(), 'cuda initialised'; "
        "assert 'fisherkit._C' not in sys.modules, 'extension loaded at import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif("triton" not in BACKENDS, reason="Triton is not installed")
def test_triton_kernel_is_deterministic_and_passes_opcheck():
    gen = torch.Generator().manual_seed(3)
    g, a = torch.randn(2, 37, 9, 40, generator=gen), torch.randn(37, 9, 35, generator=gen)
    first, second = torch.zeros(40, 35), torch.zeros(40, 35)
    sqgrad_accumulate(first, g, a, backend="triton")
    sqgrad_accumulate(second, g, a, backend="triton")
    assert torch.equal(first, second)
    torch.library.opcheck(torch.ops.fisherkit.sqgrad_accumulate_triton, (torch.zeros(40, 35), g, a, 0.5))
    assert implementation("sqgrad_accumulate", first, g, a, 1.0, None).backend != "triton"  # CPU: never the interpreter
