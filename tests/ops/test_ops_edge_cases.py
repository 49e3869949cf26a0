"""The ops' edge cases on every backend: discarded factors that held NaN, empty batches, and
outputs that share memory with their inputs."""

from __future__ import annotations

import pytest
import torch
from backends import BACKENDS, run_on
from oracles import TOLERANCES

from fisherkit.ops import kfac_factor_update, persample_sqnorm, sqgrad_accumulate


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("append_ones", [False, True])
def test_beta_zero_discards_a_factor_that_held_nan(backend, append_ones):
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    factor = torch.full((4 + append_ones, 4 + append_ones), float("nan"))
    assert run_on("kfac_factor_update", backend, kfac_factor_update, factor, x, 0.5, 0.0, append_ones)
    rows = torch.cat([x, torch.ones(6, 1)], 1) if append_ones else x
    torch.testing.assert_close(factor, 0.5 * rows.T @ rows, **TOLERANCES[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("positions", [1, 3])
def test_an_empty_batch_adds_nothing(backend, positions):
    out, bias_out = torch.ones(5, 4), torch.ones(5)
    g, a = torch.zeros(2, 0, positions, 5), torch.zeros(0, positions, 4)
    if run_on("sqgrad_accumulate", backend, sqgrad_accumulate, out, g, a, 1.0, bias_out, positions=positions):
        assert torch.equal(out, torch.ones(5, 4)) and torch.equal(bias_out, torch.ones(5))
    norms = torch.ones(2, 0)
    if run_on("persample_sqnorm", backend, persample_sqnorm, norms, g, a, bias=True, positions=positions):
        assert norms.shape == (2, 0)
    factor = torch.eye(5)
    assert run_on("kfac_factor_update", backend, kfac_factor_update, factor, torch.zeros(0, 4), 1.0, 0.5, True)
    torch.testing.assert_close(factor, 0.5 * torch.eye(5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_outputs_sharing_memory_with_inputs_are_refused(backend):
    buffer = torch.randn(100)
    out, inputs = buffer[:20].view(5, 4), buffer[20:32].view(3, 1, 4)
    grad_output = torch.randn(1, 3, 1, 5)
    with pytest.raises(ValueError, match=r"out shares memory with inputs.*Pass a separate tensor as out"):
        sqgrad_accumulate(out, grad_output, inputs, backend=backend)
    with pytest.raises(ValueError, match=r"bias_out shares memory with grad_output.*separate tensor as bias_out"):
        sqgrad_accumulate(
            torch.zeros(5, 4), grad_output, inputs.clone(), bias_out=grad_output.view(-1)[:5], backend=backend
        )
    with pytest.raises(ValueError, match=r"out shares memory with grad_output"):
        persample_sqnorm(grad_output.view(-1)[:3].view(1, 3), grad_output, inputs.clone(), backend=backend)
    factor = buffer[40:56].view(4, 4)
    with pytest.raises(ValueError, match=r"factor shares memory with inputs.*separate tensor as factor"):
        kfac_factor_update(factor, buffer[60:72].view(3, 4), backend=backend)
