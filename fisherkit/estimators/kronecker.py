"""KFAC and EKFAC estimators: Kronecker factors per layer, diagonal blocks where no factorization exists.

Per group of a layer with inputs a (bias folded in as a trailing 1) and output gradients g of
the Fisher-type columns (see ``fisherkit.estimators.fisher_type``):

- ``expand`` (positions are independent samples; Eschenhagen et al. 2023): A = Σ_{n,t} a aᵀ /
  Σ_n T_n and G = Σ_{k,n,t} g gᵀ / N;
- ``reduce`` (positions are pooled first): A = Σ_n ā ā ᵀ / N with ā_n = mean_t a_{n,t}, and
  G = Σ_{k,n} ḡ ḡᵀ / N with ḡ_{k,n} = Σ_t g_{k,n,t}.

F ≈ G ⊗ A on the ``(out, in + 1)`` weight-and-bias matrix (``fisherkit.curvature.kronecker_layout``).
With one position per sample both are the same, and exact for a single sample. EKFAC keeps the
KFAC eigenbasis and replaces the eigenvalues by the per-sample-mean second moments of the
gradients in that basis (a second pass over the data).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fisherkit.curvature import Curvature, DiagonalBlock, EigenKroneckerBlock, KroneckerBlock
from fisherkit.curvature.block import Block
from fisherkit.curvature.kronecker_layout import KroneckerLayout
from fisherkit.engines.tied import TiedUse, accumulate_tied_sqgrad
from fisherkit.engines.visitors import Visitor, accumulate_entry_sqgrad, entry_per_sample_grads
from fisherkit.estimators.common import Estimation, check_count, check_finite, run_estimator
from fisherkit.estimators.distributed import all_reduce_sums
from fisherkit.likelihoods import Likelihood
from fisherkit.ops import kfac_factor_update, sqgrad_accumulate
from fisherkit.plan import PlanEntry
from fisherkit.rules.base import LayerCall, OutputGrad, single_grad

APPROXIMATIONS = ("expand", "reduce")
BUFFERED_ROWS = 2048  # rows gathered before one SYRK: a short inner dimension wastes half a GEMM's speed
DIRECT_ROWS = 1024  # a chunk this long is added at once: gathering it would only hold its memory (every
# layer of a transformer batch of 8 × 128 tokens kept its rows: KFAC at 2.3× the fwd+bwd memory on BERT)


class _RowBuffer:
    """Gathers ``(groups, M, D)`` rows and adds their Gram matrices into a factor in large SYRKs."""

    def __init__(self, factor: Tensor, append_ones: bool) -> None:
        self.factor = factor
        self.append_ones = append_ones
        self.pending: list[Tensor] = []
        self.rows = 0

    def add(self, rows: Tensor) -> None:
        self.pending.append(rows)
        self.rows += rows.shape[1]
        if self.rows >= BUFFERED_ROWS or rows.shape[1] >= DIRECT_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        rows = torch.cat(self.pending, 1) if len(self.pending) > 1 else self.pending[0]
        for factor, group_rows in zip(self.factor, rows):
            kfac_factor_update(factor, group_rows, append_ones=self.append_ones)
        self.pending, self.rows = [], 0


class _Factors:
    """Running sums of one module's Kronecker factors.

    Attributes:
        inputs: ``(groups, cols, cols)`` Σ a aᵀ, or ``(1, vocab)`` token counts for a diagonal input factor.
        grads: ``(groups, rows, rows)`` Σ g gᵀ (``(1, dim, dim)`` for an embedding).
        rows_seen: Rows added to ``inputs`` (the A normalizer), a 1-element tensor.
    """

    def __init__(self, entry: PlanEntry, layout: KroneckerLayout, job: Estimation, reduce: bool) -> None:
        self.entry, self.layout = entry, layout
        self.diagonal_input = entry.layer_rule.input_factor_diagonal
        self.reduce = reduce and not self.diagonal_input
        weight = entry.module.get_parameter("weight")
        if self.diagonal_input:
            self.inputs = job.accumulator((1, layout.rows))
            self.grads = job.accumulator((1, weight.shape[1], weight.shape[1]))
        else:
            cols = weight.numel() // (layout.groups * layout.rows) + int(layout.has_bias)
            self.inputs = job.accumulator((layout.groups, cols, cols))
            self.grads = job.accumulator((layout.groups, layout.rows, layout.rows))
        self.rows_seen = job.accumulator((1,))
        self.input_buffer = _RowBuffer(self.inputs, layout.has_bias)
        self.grad_buffer = _RowBuffer(self.grads, False)

    @property
    def names(self) -> list[str]:
        return [self.entry.full_name(n) for n in ("weight", "bias")[: 1 + int(self.layout.has_bias)]]

    def add_inputs(self, a: Tensor) -> None:
        if self.diagonal_input:
            tokens = a[a >= 0]
            self.inputs[0].add_(torch.bincount(tokens, minlength=self.layout.rows).to(self.inputs.dtype))
            self.rows_seen += tokens.numel()
            return
        rows = a.mean(2) if self.reduce else a.transpose(0, 1).flatten(1, 2)  # (groups, M, D) for expand
        if self.reduce:
            rows = rows.transpose(0, 1)
        self.rows_seen += rows.shape[1]
        self.input_buffer.add(rows)

    def add_grads(self, g: Tensor, tokens: Tensor | None) -> None:
        """``g (K, B, groups, T, rows)``; ``tokens (B, 1, T)`` masks positions for a diagonal input factor."""
        if tokens is not None:
            rows = g[:, :, 0][:, tokens[:, 0] >= 0].reshape(1, -1, g.shape[-1])
        elif self.reduce:
            rows = g.sum(3).permute(2, 0, 1, 3).flatten(1, 2)
        else:
            rows = g.permute(2, 0, 1, 3, 4).flatten(1, 3)
        self.grad_buffer.add(rows)

    def flush(self) -> None:
        """Adds the rows still buffered (call once after the last batch)."""
        self.input_buffer.flush()
        self.grad_buffer.flush()


class _FactorVisitor(Visitor):
    """First pass: Kronecker factors for modules with a Kronecker rule, squared gradients for the rest."""

    def __init__(self, factors: dict[int, _Factors], diagonal_sums: dict[str, Tensor]) -> None:
        self.factors = factors
        self.diagonal_sums = diagonal_sums

    def inputs(self, entry: PlanEntry, calls: list[LayerCall]) -> None:
        factors = self.factors.get(id(entry.module))
        if factors is not None:
            for call in calls:
                for a in entry.layer_rule.kronecker_inputs(entry.module, call):
                    factors.add_inputs(a)

    def grads(self, entry: PlanEntry, calls: list[LayerCall], grads: list[OutputGrad]) -> None:
        factors = self.factors.get(id(entry.module))
        if factors is None:
            out = {name: self.diagonal_sums[entry.full_name(name)] for name in entry.own_names}
            accumulate_entry_sqgrad(entry, calls, grads, out)
            return
        for call, grad in zip(calls, grads):
            tokens = next(entry.layer_rule.kronecker_inputs(entry.module, call)) if factors.diagonal_input else None
            factors.add_grads(entry.layer_rule.kronecker_grads(entry.module, call, grad), tokens)

    def tied_uses(self, name: str, uses: list[TiedUse]) -> None:
        accumulate_tied_sqgrad(uses, self.diagonal_sums[name])


class _ScalingVisitor(Visitor):
    """Second pass of EKFAC: squared per-sample gradients in each Kronecker eigenbasis."""

    def __init__(self, blocks: dict[int, KroneckerBlock], sums: dict[int, Tensor]) -> None:
        self.blocks = blocks
        self.sums = sums

    def tied_uses(self, name: str, uses: list[TiedUse]) -> None:
        """Tied parameters have diagonal blocks, complete after the first pass: nothing to form."""

    def grads(self, entry: PlanEntry, calls: list[LayerCall], grads: list[OutputGrad]) -> None:
        block = self.blocks.get(id(entry.module))
        if block is None:
            return
        _, left, _, right = block.eigen()
        right = _dense_basis(right, block)
        scaling = self.sums[id(entry.module)]
        if entry.layer_rule.input_factor_diagonal:  # only the output side rotates (the left basis is the identity)
            rotated: list[OutputGrad] = [grad @ right.to(grad.dtype)[0] for grad in map(single_grad, grads)]
            accumulate_entry_sqgrad(entry, calls, rotated, {"weight": scaling[0]})
            return
        left = _dense_basis(left, block)
        if len(calls) == 1:
            self._rotated_sqgrad(entry, calls[0], grads[0], left, right, block.has_bias, scaling)
        else:  # per-call gradients add before squaring: rotate the summed per-sample gradients
            per_sample = entry_per_sample_grads(entry, calls, grads)
            view = block.layout.to_view([per_sample[name].flatten(0, 1) for name in block.names], batch_dims=1)
            scaling.add_((left.transpose(-1, -2).to(view.dtype) @ view @ right.to(view.dtype)).square().sum(0))

    @staticmethod
    def _rotated_sqgrad(
        entry: PlanEntry, call: LayerCall, grad: OutputGrad, left: Tensor, right: Tensor, has_bias: bool, out: Tensor
    ) -> None:
        for a, g in entry.layer_rule.kronecker_pairs(entry.module, call, grad):
            if has_bias:
                a = torch.cat([a, a.new_ones(*a.shape[:-1], 1)], -1)
            for group in range(out.shape[0]):
                rotated_a = a[:, group].to(right.dtype) @ right[group]
                rotated_g = g[:, :, group].to(left.dtype) @ left[group]
                sqgrad_accumulate(out[group], rotated_g, rotated_a)


def _dense_basis(basis: Tensor | None, block: KroneckerBlock) -> Tensor:
    """The eigenvectors of a dense factor (``factor_eigh`` gives None only for a diagonal one)."""
    if basis is None:
        raise TypeError(f"block {block.label}: expected the eigenvectors of a dense Kronecker factor.")
    return basis


def _kronecker_entries(job: Estimation, approximation: str) -> dict[int, _Factors]:
    if approximation not in APPROXIMATIONS:
        raise ValueError(f"unknown KFAC approximation {approximation!r}; choose one of {APPROXIMATIONS}.")
    job.plan.require_layerwise()
    factors = {}
    for entry in job.plan.entries:
        if entry.tied_names:  # a factor is per module: a module sharing a parameter gets diagonal blocks
            continue
        layout = entry.layer_rule.kronecker_layout(entry.module, entry.local_names)
        if layout is not None:
            factors[id(entry.module)] = _Factors(entry, layout, job, approximation == "reduce")
    return factors


def _estimate_factors(
    job: Estimation, data: Any, approximation: str, description: str
) -> tuple[dict[int, _Factors], dict[str, Tensor], int]:
    """One pass: normalized factors (A by rows seen, G by samples) and diagonal means for the rest."""
    factors = _kronecker_entries(job, approximation)
    covered = {name for f in factors.values() for name in f.names}
    diagonal_sums = {n: job.accumulator(p.shape) for n, p in job.parameters.items() if n not in covered}
    engine = job.engine()
    visitor = _FactorVisitor(factors, diagonal_sums)
    count = 0
    for call, columns_fn in job.batches(data, description):
        count += engine.visit(call, columns_fn, visitor)
    ordered = list(factors.values())
    for f in ordered:
        f.flush()
    tensors = [t for f in ordered for t in (f.inputs, f.grads, f.rows_seen)] + list(diagonal_sums.values())
    totals, count = all_reduce_sums(tensors, count)
    check_count(count)
    for index, f in enumerate(ordered):
        f.inputs, f.grads, f.rows_seen = totals[3 * index : 3 * index + 3]
        f.inputs.div_(f.rows_seen.clamp(min=1))
        f.grads.div_(count)
        for factor in (f.inputs, f.grads):
            check_finite(f"layer {f.entry.path or '<root>'}", factor)
    diagonals = dict(zip(diagonal_sums, totals[3 * len(ordered) :]))
    for name, total in diagonals.items():
        total.div_(count)
        check_finite(f"parameter {name!r}", total)
    return factors, diagonals, count


def _assemble(job: Estimation, blocks: dict[int, Block], diagonals: dict[str, Tensor]) -> Curvature:
    """Blocks in plan order: each module's structured block, then a diagonal block per other parameter."""
    ordered: list[Block] = []
    placed: set[str] = set()
    for entry in job.plan.entries:
        if id(entry.module) in blocks:
            ordered.append(blocks[id(entry.module)])
        for local in entry.local_names:
            name = entry.full_name(local)
            if name in diagonals and name not in placed:
                placed.add(name)
                ordered.append(DiagonalBlock((name,), (diagonals[name].shape,), [diagonals[name]]))
    names = job.plan.names
    return Curvature(names, [job.parameters[n].shape for n in names], ordered)


def _kronecker_block(job: Estimation, factors: _Factors) -> KroneckerBlock:
    layout = factors.layout
    left, right = (factors.inputs, factors.grads) if factors.diagonal_input else (factors.grads, factors.inputs)
    shapes = tuple(job.parameters[n].shape for n in factors.names)
    return KroneckerBlock(
        tuple(factors.names), shapes, layout.groups, layout.rows, layout.has_bias, left, right, layout.transposed
    )


def kfac_fisher(
    model: nn.Module,
    data: Any,
    likelihood: str | Likelihood = "categorical",
    fisher_type: str = "mc",
    *,
    approximation: str = "expand",
    **options: Any,
) -> Curvature:
    """Estimates the KFAC approximation of the Fisher of ``model`` on ``data``.

    Linear (any leading dims), Conv1d/2d/3d (per group, unfolded patches; Grosse & Martens 2016)
    and Embedding (diagonal input factor) layers get ``KroneckerBlock`` blocks with the bias folded into
    the input factor as a column of ones; modules without a Kronecker rule (normalization layers,
    the fallback) get exact ``DiagonalBlock`` blocks from the same pass.

    Scaling: per-sample mean, like every estimator (F ≈ G ⊗ A ≈ (1/N) Σ_n E_y[g_n g_nᵀ]); the
    factor normalizations are in the module docstring.

    Args:
        model: The model (``nn.Module``).
        data: Batches, as in ``diagonal_fisher``.
        likelihood: ``"categorical"``, ``"gaussian"``, ``"bernoulli"`` or a ``Likelihood``.
        fisher_type: ``"mc"``, ``"exact"``, ``"empirical"`` or ``"predicted"``.
        approximation: ``"expand"`` or ``"reduce"`` for layers whose weights are shared over
            positions (sequences, conv locations); the same when there is one position.
        **options: The shared options, ``fisherkit.EstimationOptions`` (the layerwise engine
            always serves KFAC).

    Returns:
        A ``Curvature`` of Kronecker and diagonal blocks over the trainable parameters.

    Raises:
        ValueError: As ``diagonal_fisher``. A module sharing a parameter with another (tied weights)
            gets exact diagonal blocks for its parameters (a Kronecker factor is per module).
    """
    return run_estimator(estimate_kfac, model, data, likelihood, fisher_type, options, approximation=approximation)


def estimate_kfac(job: Estimation, data: Any, approximation: str = "expand") -> Curvature:
    """KFAC of ``job``'s model on ``data`` (see ``kfac_fisher``)."""
    factors, diagonals, _ = _estimate_factors(job, data, approximation, "KFAC")
    return _assemble(job, {key: _kronecker_block(job, f) for key, f in factors.items()}, diagonals)


def ekfac_fisher(
    model: nn.Module,
    data: Any,
    likelihood: str | Likelihood = "categorical",
    fisher_type: str = "mc",
    *,
    approximation: str = "expand",
    **options: Any,
) -> Curvature:
    """Estimates the EKFAC approximation (George et al. 2018): the KFAC eigenbasis with the exact
    per-sample-mean second moments of the gradients in that basis as its eigenvalues.

    Two passes over ``data`` (the factors, then the scalings), so ``data`` must be iterable twice
    (a tensor, a list of batches, a ``DataLoader``). The scaling pass rotates layer inputs and
    output gradients into the eigenbasis and reuses ``sqgrad_accumulate``; with ``"mc"`` it draws
    fresh labels. Arguments, scaling and errors as in ``kfac_fisher``.

    Returns:
        A ``Curvature`` of ``EigenKroneckerBlock`` blocks and diagonal blocks.
    """
    return run_estimator(estimate_ekfac, model, data, likelihood, fisher_type, options, approximation=approximation)


def estimate_ekfac(job: Estimation, data: Any, approximation: str = "expand") -> Curvature:
    """EKFAC of ``job``'s model on ``data`` (see ``ekfac_fisher``)."""
    factors, diagonals, count = _estimate_factors(job, data, approximation, "EKFAC factors")
    kronecker = {key: _kronecker_block(job, f) for key, f in factors.items()}
    sums = {key: job.accumulator((b.groups, b.rows, f.grads.shape[-1] if f.diagonal_input else f.inputs.shape[-1]))
            for (key, b), f in zip(kronecker.items(), factors.values())}  # fmt: skip
    engine = job.engine()
    visitor = _ScalingVisitor(kronecker, sums)
    second = 0
    for call, columns_fn in job.batches(data, "EKFAC scalings"):
        second += engine.visit(call, columns_fn, visitor)
    totals, second = all_reduce_sums(list(sums.values()), second)
    if second != count:
        raise ValueError(
            f"EKFAC makes two passes over the data, but the second saw {second} samples and the first "
            f"{count}; pass data that can be iterated twice (a tensor, a list, a DataLoader), not a "
            f"one-shot iterator."
        )
    blocks: dict[int, Block] = {}
    for (key, block), total in zip(kronecker.items(), totals):
        check_finite(f"layer {factors[key].entry.path or '<root>'}", total)
        _, left, _, right = block.eigen()
        blocks[key] = EigenKroneckerBlock(
            block.names,
            block.shapes,
            block.groups,
            block.rows,
            block.has_bias,
            left,
            right,
            total.div_(count),
            block.transposed,
        )
    return _assemble(job, blocks, diagonals)
