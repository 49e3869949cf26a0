"""Run by test_distributed.py: two gloo ranks estimate every structure on disjoint shards; rank 0 saves them."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fisherkit as fk
from fisherkit.optim.preconditioner import distributed_inverse

ESTIMATORS = (fk.diagonal_fisher, fk.kfac_fisher, fk.ekfac_fisher, fk.block_fisher, fk.full_fisher)


def ngd_statistics(model: nn.Module, x: torch.Tensor) -> fk.Curvature:
    """The KFAC statistics an NGD preconditioner gathers from one batch (all-reduced across ranks)."""
    preconditioner = fk.NGDPreconditioner(model, structure="kfac", fisher_type="exact")
    model(x).sum().backward()
    preconditioner.update_statistics()
    preconditioner.close()
    return preconditioner.fisher


SI_STEPS = 3


def si_omega(shards: list[tuple[torch.Tensor, torch.Tensor]], parallel: bool) -> dict[str, torch.Tensor]:
    """SI's ω after SGD steps on a fresh model: each rank on its shard through DistributedDataParallel
    (``parallel``), or one process on the mean of the shards' mean losses (what DDP averages)."""
    model, _, _ = model_and_data()
    si = fk.SynapticIntelligence(model, strength=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    si.begin_task(optimizer)
    trained = nn.parallel.DistributedDataParallel(model) if parallel else model
    for _ in range(SI_STEPS):
        optimizer.zero_grad()
        losses = [nn.functional.cross_entropy(trained(x), y) for x, y in shards]
        (sum(losses) / len(losses)).backward()
        optimizer.step()
    return {name: value.clone() for name, value in si.omega.items()}


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(11, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (11,))
    return model, x, y


def run(rank: int, world: int, port: str, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, x, y = model_and_data()
    shard = slice(0, 7) if rank == 0 else slice(7, 11)  # uneven shards: counts must be reduced too
    data = (x[shard], y[shard])
    results = {
        (estimator.__name__, t): estimator(model, data, fisher_type=t).state_dict()
        for estimator in ESTIMATORS
        for t in ("exact", "empirical")
    }
    results[("FisherOperator", "exact")] = fk.FisherOperator(model, data).to_dense()
    statistics = ngd_statistics(model, x[shard])
    results[("NGDPreconditioner", "exact")] = statistics.state_dict()
    results[("NGD inverse", "exact")] = distributed_inverse(statistics, 0.1, False, torch.device("cpu")).to_dense()
    omega = si_omega([data], parallel=True)
    if rank == 0:
        torch.save(results, path)
    torch.save(omega, f"{path}.si-rank{rank}")
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(run, args=(2, sys.argv[1], sys.argv[2]), nprocs=2, join=True)
