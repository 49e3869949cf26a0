"""The visitors: what an estimator does with each batch an engine runs, and the three every
estimator of squared gradients, norms or per-sample gradients uses."""

from __future__ import annotations

from torch import Tensor

from fisherkit.engines.base import PerSampleConsumer
from fisherkit.engines.tied import TiedUse, accumulate_tied_sqgrad, summed_per_sample_grads
from fisherkit.errors import UnsupportedModelError
from fisherkit.plan import PlanEntry
from fisherkit.rules.base import LayerCall, OutputGrad, leading_grad


class Visitor:
    """What an estimator does with a batch, the one protocol of the engines (``Engine.visit``).

    The layerwise engine shows a visitor every module's inputs and output gradients and the tied
    parameters' uses (``inputs``, ``grads``, ``tied_uses``/``tied``, ``chunk_done``); the vmap
    engine, which sees no layers, hands it whole-model per-sample gradients (``per_sample``). A
    visitor implements what it can use; one that needs layers (KFAC's factors) leaves
    ``per_sample`` to refuse the vmap engine.
    """

    def inputs(self, entry: PlanEntry, calls: list[LayerCall]) -> None:
        """Called once per batch with a module's captured calls, before any gradient."""

    def grads(self, entry: PlanEntry, calls: list[LayerCall], grads: list[OutputGrad]) -> None:
        """Called once per column chunk with ``(K, B, ...)`` output gradients, one per call, for the
        module's ``own_names`` (the parameters no other module shares)."""

    def tied_uses(self, name: str, uses: list[TiedUse]) -> None:
        """Called once per column chunk with every use of a tied parameter; by default hands their
        summed per-sample gradients to ``tied`` (visitors with a cheaper form override this)."""
        self.tied(name, summed_per_sample_grads(uses))

    def tied(self, name: str, grads: Tensor) -> None:
        """The ``(K, B, *shape)`` per-sample gradients of a tied parameter, summed over every module
        that uses it. A visitor must handle them: none may be dropped, so the default raises."""
        raise NotImplementedError(f"{type(self).__name__} does not handle the tied parameter {name!r}")

    def chunk_done(self) -> None:
        """Called after every module has seen a column chunk."""

    def per_sample(self, samples: slice, grads: dict[str, Tensor]) -> None:
        """Called by the vmap engine per chunk of samples with ``{name: (b, K, *shape)}`` per-sample
        gradients of every parameter (b samples ``samples`` of the batch, K columns).

        Raises:
            UnsupportedModelError: The visitor needs the layer view (the default).
        """
        raise UnsupportedModelError(
            f"{type(self).__name__} needs each layer's inputs and output gradients, which engine='vmap' does not "
            "provide; use engine='auto' or 'layerwise'."
        )


def entry_per_sample_grads(
    entry: PlanEntry, calls: list[LayerCall], grads: list[OutputGrad], names: list[str] | None = None
) -> dict[str, Tensor]:
    """``{full parameter name: (K, B, *shape)}`` per-sample gradients of one module's ``names``
    (default: its ``own_names``), summed over its calls."""
    total: dict[str, Tensor] = {}
    wanted = entry.own_names if names is None else names
    for call, grad in zip(calls, grads):
        for name, value in entry.layer_rule.per_sample_grads(entry.module, call, grad, wanted).items():
            total[name] = total[name] + value if name in total else value
    return {entry.full_name(name): value for name, value in total.items()}


def accumulate_entry_sqgrad(
    entry: PlanEntry, calls: list[LayerCall], grads: list[OutputGrad], out: dict[str, Tensor]
) -> None:
    """Adds one module's squared per-sample gradient sums into ``out`` (keyed by direct name); a
    module called several times in one forward gets its per-call gradients added before squaring."""
    if len(calls) == 1:
        entry.layer_rule.accumulate_sqgrad(entry.module, calls[0], grads[0], out)
        return
    for name, value in entry_per_sample_grads(entry, calls, grads).items():
        local = name.rsplit(".", 1)[-1]
        out[local].add_(value.square().sum((0, 1)))


class SquaredGradients(Visitor):
    """Adds every parameter's Σ_{k,n} (per-sample gradient)² into ``sums`` (by full name)."""

    def __init__(self, sums: dict[str, Tensor]) -> None:
        self.sums = sums

    def grads(self, entry: PlanEntry, calls: list[LayerCall], grads: list[OutputGrad]) -> None:
        out = {name: self.sums[entry.full_name(name)] for name in entry.own_names}
        accumulate_entry_sqgrad(entry, calls, grads, out)

    def tied_uses(self, name: str, uses: list[TiedUse]) -> None:
        accumulate_tied_sqgrad(uses, self.sums[name])

    def per_sample(self, samples: slice, grads: dict[str, Tensor]) -> None:
        for name, g in grads.items():
            self.sums[name].add_(g.to(self.sums[name].dtype).square().sum((0, 1)))


class SquaredNorms(Visitor):
    """Adds every module's Σ_k ‖per-sample gradient‖² into ``norms`` (``(B,)``); a module called
    several times in one forward gets its per-call gradients added before the norm is taken."""

    def __init__(self, norms: Tensor) -> None:
        self.norms = norms

    def grads(self, entry: PlanEntry, calls: list[LayerCall], grads: list[OutputGrad]) -> None:
        if len(calls) == 1:
            out = self.norms.new_zeros(leading_grad(grads[0]).shape[:2])
            entry.layer_rule.accumulate_sqnorm(entry.module, calls[0], grads[0], entry.own_names, out)
            self.norms.add_(out.sum(0))
            return
        for value in entry_per_sample_grads(entry, calls, grads).values():
            self._add(value)

    def tied(self, name: str, grads: Tensor) -> None:
        self._add(grads)

    def _add(self, grads: Tensor) -> None:
        self.norms.add_(grads.to(self.norms.dtype).flatten(2).square().sum((0, 2)))

    def per_sample(self, samples: slice, grads: dict[str, Tensor]) -> None:
        for g in grads.values():
            self.norms[samples].add_(g.to(self.norms.dtype).flatten(1).square().sum(1))


class PerSampleGradients(Visitor):
    """Collects every module's per-sample gradients of a column chunk and hands them on together."""

    def __init__(self, consume: PerSampleConsumer) -> None:
        self.consume = consume
        self.chunk: dict[str, Tensor] = {}

    def grads(self, entry: PlanEntry, calls: list[LayerCall], grads: list[OutputGrad]) -> None:
        for name, value in entry_per_sample_grads(entry, calls, grads).items():
            self.chunk[name] = value.flatten(0, 1)

    def tied(self, name: str, grads: Tensor) -> None:
        self.chunk[name] = grads.flatten(0, 1)

    def chunk_done(self) -> None:
        self.consume(self.chunk)
        self.chunk = {}

    def per_sample(self, samples: slice, grads: dict[str, Tensor]) -> None:
        self.consume({name: g.flatten(0, 1) for name, g in grads.items()})
