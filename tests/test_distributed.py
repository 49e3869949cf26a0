"""A 2-process gloo run equals one process on the union of the data."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
from distributed_worker import model_and_data
from oracles import TOLERANCES

import fisherkit as fk


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_two_gloo_ranks_equal_one_process(tmp_path):
    path = tmp_path / "fisher.pt"
    worker = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
    subprocess.run([sys.executable, worker, _free_port(), str(path)], check=True, timeout=300)
    distributed = torch.load(path)
    model, x, y = model_and_data()
    for fisher_type, state in distributed.items():
        single = fk.diagonal_fisher(model, (x, y), fisher_type=fisher_type)
        for got, want in zip(fk.Curvature.from_state_dict(state).diagonals, single.diagonals):
            torch.testing.assert_close(got, want, **TOLERANCES[torch.float64])
