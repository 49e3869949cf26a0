"""A 2-process gloo run equals one process on the union of the data, for every structure."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
from distributed_worker import ESTIMATORS, model_and_data, ngd_statistics, si_omega
from oracles import TOLERANCES

import fisherkit as fk


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_two_gloo_ranks_equal_one_process(tmp_path):
    path = tmp_path / "fisher.pt"
    worker = os.path.join(os.path.dirname(os.path.dirname(__file__)), "distributed_worker.py")  # tests/
    subprocess.run([sys.executable, worker, _free_port(), str(path)], check=True, timeout=300)
    distributed = torch.load(path)
    model, x, y = model_and_data()
    estimators = {e.__name__: e for e in ESTIMATORS}
    for (name, fisher_type), state in distributed.items():
        if name == "NGDPreconditioner":
            expected = ngd_statistics(model, x).to_dense()
            torch.testing.assert_close(
                fk.Curvature.from_state_dict(state).to_dense(), expected, **TOLERANCES[torch.float64]
            )
            continue
        if name == "NGD inverse":  # blocks inverted on different ranks, broadcast
            expected = ngd_statistics(model, x).inverse(0.1).to_dense()
            torch.testing.assert_close(state, expected, **TOLERANCES[torch.float64])
            continue
        if name == "FisherOperator":
            single = fk.FisherOperator(model, (x, y)).to_dense()
            torch.testing.assert_close(state, single, **TOLERANCES[torch.float64])
            continue
        single = estimators[name](model, (x, y), fisher_type=fisher_type)
        got = fk.Curvature.from_state_dict(state)
        assert [type(b) for b in got.blocks] == [type(b) for b in single.blocks]
        torch.testing.assert_close(got.to_dense(), single.to_dense(), **TOLERANCES[torch.float64], msg=name)
    assert len(distributed) == 2 * len(ESTIMATORS) + 3
    omegas = [torch.load(f"{path}.si-rank{rank}") for rank in (0, 1)]
    single = si_omega([(x[:7], y[:7]), (x[7:], y[7:])], parallel=False)
    for name, value in single.items():  # every rank integrates DDP's averaged gradient: one ω
        assert float(value.abs().max()) > 0
        for omega in omegas:
            torch.testing.assert_close(omega[name], value, **TOLERANCES[torch.float32])
