"""Diagonal Fisher speed and memory on the mlp, cnn and seq workloads, against fwd+bwd.

Usage::

    python benchmarks/bench_diagonal.py [--workloads mlp cnn seq] [--repeats 5] [--slow-samples 256]

Reports seconds per 1,000 samples, the ratio to one forward+backward of the same model on the
same batches measured in the same run, and peak tensor memory allocated during the call
(absolute, and as a ratio to fwd+bwd on the same samples; see ``measure.py``). The
batch-of-one loop and the torch.func/vmap methods run on the first ``--slow-samples`` samples
and are scaled per 1,000 samples like the rest. Peer libraries are measured when installed.
"""

from __future__ import annotations

import copy
import importlib.util
from collections.abc import Callable

import torch
from harness import Method, run_benchmarks
from torch import nn
from torch.func import functional_call, grad, vmap
from workloads import Workload

import fisherkit as fk


def fisherkit_diagonal(fisher_type: str, engine: str) -> Method:
    def method(workload: Workload, batches: list) -> Callable[[], None]:
        def run() -> None:
            fk.diagonal_fisher(workload.model, batches, fisher_type=fisher_type, engine=engine, seed=0, progress=False)

        return run

    return method


def batch_of_one_loop(workload: Workload, batches: list) -> Callable[[], None]:
    """The textbook MC diagonal Fisher: one sample at a time, sampled label, squared gradient."""
    params = list(workload.model.parameters())

    def run() -> None:
        totals = [torch.zeros_like(p) for p in params]
        for x, _ in batches:
            for n in range(len(x)):
                output = workload.model(x[n : n + 1])
                label = torch.multinomial(output.detach().softmax(-1), 1)[:, 0]
                grads = torch.autograd.grad(nn.functional.cross_entropy(output, label), params)
                for t, g in zip(totals, grads):
                    t += g * g

    return run


def plain_vmap(workload: Workload, batches: list) -> Callable[[], None]:
    """Plain torch.func: vmap(grad) per-sample gradients of the sampled-label loss, squared and summed."""
    model = workload.model
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p, x, y):
        return nn.functional.cross_entropy(functional_call(model, p, (x.unsqueeze(0),)), y.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))

    def run() -> None:
        totals = {n: torch.zeros_like(p) for n, p in params.items()}
        for x, _ in batches:
            with torch.no_grad():
                labels = torch.multinomial(model(x).softmax(-1), 1)[:, 0]
            for n, g in per_sample(params, x, labels).items():
                totals[n] += (g * g).sum(0)

    return run


def backpack_extension(extension_name: str) -> Method:
    """A BackPACK extension (e.g. ``DiagGGNMC``, ``KFAC``) on a private copy of the model, since
    BackPACK's ``extend`` leaves hooks on the modules it extends."""

    def method(workload: Workload, batches: list) -> Callable[[], None] | None:
        from backpack import backpack, extend, extensions

        extended = extend(copy.deepcopy(workload.model))
        loss_fn = extend(nn.CrossEntropyLoss())
        extension = getattr(extensions, extension_name)
        x, y = batches[0]
        try:
            with backpack(extension()):
                loss_fn(extended(x), y).backward()
        except NotImplementedError:  # a layer BackPACK has no extension for
            return None

        def run() -> None:
            for x, y in batches:
                with backpack(extension()):
                    loss_fn(extended(x), y).backward()
            extended.zero_grad(set_to_none=True)

        return run

    return method


FAST: dict[str, Method] = {
    **{f"fisherkit {t} layerwise": fisherkit_diagonal(t, "layerwise") for t in fk.FISHER_TYPES},
}
if importlib.util.find_spec("backpack") is not None:
    FAST["BackPACK DiagGGNMC (mc)"] = backpack_extension("DiagGGNMC")
    FAST["BackPACK DiagGGNExact (exact)"] = backpack_extension("DiagGGNExact")
SLOW: dict[str, Method] = {
    **{f"fisherkit {t} vmap": fisherkit_diagonal(t, "vmap") for t in fk.FISHER_TYPES},
    "batch-of-one loop (mc)": batch_of_one_loop,
    "torch.func vmap (mc)": plain_vmap,
}


def main() -> None:
    run_benchmarks(__doc__, FAST, SLOW)


if __name__ == "__main__":
    main()
