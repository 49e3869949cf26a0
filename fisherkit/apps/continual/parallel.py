"""Seeds of the ``cl`` command in parallel processes (``--jobs``): each process trains whole
(method, seed) runs, one thread each, and prints its own progress lines."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import torch
from torch import Tensor

from fisherkit.apps.continual.experiment import Method, Summary, accuracy_matrix
from fisherkit.apps.continual.scenarios import Scenario
from fisherkit.apps.continual.training import TrainConfig
from fisherkit.apps.output import progress_line

_WORKER: dict[str, Any] = {}  # what a process trains: set once by its initializer


def _start_worker(scenario: Scenario, config: TrainConfig, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(scenario=scenario, config=config)


def _matrix(method: Method, seed: int) -> Tensor:
    return accuracy_matrix(_WORKER["scenario"], method, _WORKER["config"], seed, "test", progress_line)


class SeedPool:
    """``jobs`` spawned processes that run (method, seed) pairs; ``summary`` waits for one method's
    seeds, so methods are reported in order as soon as each is complete.

    Args:
        scenario, config: What every run trains (sent to each process once).
        jobs: Processes.
        threads: torch threads per process.
    """

    def __init__(self, scenario: Scenario, config: TrainConfig, jobs: int, threads: int) -> None:
        context = multiprocessing.get_context("spawn")  # forking a process that ran OpenMP can hang
        self.pool = ProcessPoolExecutor(jobs, context, _start_worker, (scenario, config, threads))

    def submit(self, method: Method, seeds: list[int]) -> list[Future[Tensor]]:
        return [self.pool.submit(_matrix, method, seed) for seed in seeds]

    @staticmethod
    def summary(method: Method, futures: list[Future[Tensor]]) -> Summary:
        return Summary(method, [future.result() for future in futures])

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)
