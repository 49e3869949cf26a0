"""fisherkit against every peer library in one run: the exact diagonal Fisher (GGN diagonal) and
KFAC of an MLP and a small CNN, each peer's normalisation undone and its result checked against
fisherkit's before it is timed.

Peers (all installed by ``.ci/install-peers``): BackPACK
(``DiagGGNExact`` on a summed loss, divided by N), NNGeometry (``FIM`` with ``PMatDiag``,
``classif_logits``: the per-sample mean), ASDL (``fisher_exact`` diagonal with ``data_size=1``: a
sum, divided by N), curvlinops (``KFACLinearOperator``, type-2 = exact, the bias folded into the
input factor as fisherkit does, on a summed loss, divided by N), Opacus (per-sample gradients of
the summed loss, squared: the empirical diagonal). Times are medians of interleaved rounds, as
ratios to a forward+backward of the same model and batch measured in the same run.

Usage::

    python benchmarks/bench_peers.py [--batch 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
from collections.abc import Callable

import torch
from measure import interleaved_median_seconds
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import fisherkit as fk

TOLERANCE = 1e-4  # float32: relative to the largest entry
Estimate = Callable[[], Tensor]


def workloads(batch: int) -> dict[str, tuple[nn.Module, Tensor, Tensor]]:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    cnn = nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 24 * 24, 10)
    )  # fmt: skip
    y = torch.randint(0, 10, (batch,))
    return {
        "MLP 784-256-256-10": (mlp, torch.randn(batch, 784), y),
        "CNN 2×conv3×3-16": (cnn, torch.randn(batch, 1, 28, 28), y),
    }


def flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def diagonal_methods(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, tuple[Estimate, str]]:
    """{name: (estimate of the per-sample-mean exact diagonal, Fisher type)}."""
    n = len(x)

    def ours(fisher_type: str) -> Estimate:
        return lambda: flat(fk.diagonal_fisher(model, (x, y), fisher_type=fisher_type).diagonals)

    methods: dict[str, tuple[Estimate, str]] = {
        "fisherkit diagonal (exact)": (ours("exact"), "exact"),
        "fisherkit diagonal (empirical)": (ours("empirical"), "empirical"),
    }
    if importlib.util.find_spec("backpack") is not None:
        from backpack import backpack, extend, extensions

        extended, loss = extend(copy.deepcopy(model)), extend(nn.CrossEntropyLoss(reduction="sum"))

        def backpack_diagonal() -> Tensor:
            extended.zero_grad()
            with backpack(extensions.DiagGGNExact()):
                loss(extended(x), y).backward()
            return flat([p.diag_ggn_exact for p in extended.parameters()]) / n

        methods["BackPACK DiagGGNExact"] = (backpack_diagonal, "exact")
    if importlib.util.find_spec("nngeometry") is not None:
        from nngeometry.metrics import FIM
        from nngeometry.object import PMatDiag

        loader = DataLoader(TensorDataset(x, y), batch_size=n)
        methods["NNGeometry FIM PMatDiag"] = (
            lambda: FIM(model=model, loader=loader, representation=PMatDiag, variant="classif_logits").get_diag(),
            "exact",
        )
    if importlib.util.find_spec("asdl") is not None:
        from asdl.fisher import FisherConfig, get_fisher_maker
        from asdl.grad_maker import LOSS_CROSS_ENTROPY
        from asdl.matrices import FISHER_EXACT, SHAPE_DIAG

        copied = copy.deepcopy(model)

        def asdl_diagonal() -> Tensor:
            config = FisherConfig(
                fisher_type=FISHER_EXACT, loss_type=LOSS_CROSS_ENTROPY, fisher_shapes=[SHAPE_DIAG], data_size=1
            )
            maker = get_fisher_maker(copied, config)
            maker.setup_model_call(copied, x)
            maker.forward_and_backward()
            parts = []
            for module in copied.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    parts += [module.fisher.diag.weight, module.fisher.diag.bias]
            return flat(parts) / n

        methods["ASDL fisher_exact diag"] = (asdl_diagonal, "exact")
    if importlib.util.find_spec("opacus") is not None:
        from opacus import GradSampleModule

        sampled = GradSampleModule(copy.deepcopy(model), loss_reduction="sum")

        def opacus_diagonal() -> Tensor:
            sampled.zero_grad()
            nn.functional.cross_entropy(sampled(x), y, reduction="sum").backward()
            return flat([p.grad_sample.square().sum(0) for p in sampled.parameters()]) / n

        methods["Opacus per-sample gradients²"] = (opacus_diagonal, "empirical")
    return methods


def kfac_methods(model: nn.Module, x: Tensor, y: Tensor, probe: Tensor) -> dict[str, tuple[Estimate, str]]:
    """{name: (KFAC (exact, expand) applied to ``probe``, "exact")}: products compare every layout."""
    n = len(x)
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    vectors = [part.reshape(s) for part, s in zip(probe.split([s.numel() for s in shapes]), shapes)]

    def ours() -> Tensor:
        return flat(fk.kfac_fisher(model, (x, y), fisher_type="exact").mv(dict(zip(names, vectors))))

    methods = {"fisherkit KFAC (exact)": (ours, "exact")}
    if importlib.util.find_spec("curvlinops") is not None:
        from curvlinops import KFACLinearOperator

        def curvlinops_kfac() -> Tensor:
            operator = KFACLinearOperator(
                model, nn.CrossEntropyLoss(reduction="sum"), list(model.parameters()), [(x, y)],
                fisher_type="type-2", kfac_approx="expand", separate_weight_and_bias=False, check_deterministic=False,
            )  # fmt: skip
            return flat(operator @ vectors) / n

        methods["curvlinops KFAC (type-2)"] = (curvlinops_kfac, "exact")
    return methods


def checked_and_timed(methods: dict[str, tuple[Estimate, str]], floor: Callable[[], None], repeats: int) -> list[str]:
    """Checks every method against fisherkit's estimate of its Fisher type, times those that agree,
    prints the table and returns the names of those that disagree."""
    references = {kind: estimate() for name, (estimate, kind) in methods.items() if name.startswith("fisherkit")}
    runs: dict[str, Callable[[], object]] = {"forward+backward": floor}
    disagreeing = []
    for name, (estimate, kind) in methods.items():
        result, reference = estimate(), references[kind]
        error = float((result - reference).abs().max() / reference.abs().max())
        if error > TOLERANCE:
            print(f"  {name:34s} disagrees with fisherkit ({kind}): relative error {error:.2e}; not timed")
            disagreeing.append(name)
            continue
        runs[name] = estimate
        print(f"  {name:34s} agrees with fisherkit ({kind}): relative error {error:.1e}")
    seconds = interleaved_median_seconds(runs, repeats)
    base = seconds["forward+backward"]
    print("  | method | median s | × fwd+bwd |\n  |---|---:|---:|")
    for name, value in seconds.items():
        print(f"  | {name} | {value:.4f} | {value / base:.2f} |")
    return disagreeing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="samples per batch (default 256)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds (default 5)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    disagreeing = []
    for workload, (model, x, y) in workloads(args.batch).items():

        def floor(model: nn.Module = model, x: Tensor = x, y: Tensor = y) -> None:
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()

        probe = torch.randn(sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(1))
        print(f"\n{workload}, batch {args.batch} — diagonal")
        disagreeing += checked_and_timed(diagonal_methods(model, x, y), floor, args.repeats)
        print(f"\n{workload}, batch {args.batch} — KFAC product")
        disagreeing += checked_and_timed(kfac_methods(model, x, y, probe), floor, args.repeats)
    if disagreeing:
        raise SystemExit(f"peers that disagree with fisherkit: {disagreeing}")


if __name__ == "__main__":
    main()
