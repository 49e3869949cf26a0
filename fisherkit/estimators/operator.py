"""The matrix-free Fisher estimator: exact products F v from Jacobian-vector products, never forming F."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp

from fisherkit.curvature.base import ParameterVector, TensorList
from fisherkit.curvature.scipy_operator import scipy_operator
from fisherkit.engines.base import ModelCall
from fisherkit.estimators.common import Estimation, check_count, make_generator
from fisherkit.estimators.distributed import all_reduce_sums
from fisherkit.estimators.options import EstimationOptions, check_positive_int
from fisherkit.likelihoods import Likelihood
from fisherkit.linalg import conjugate_gradient, hutchinson_trace, lanczos_eigenpairs, lanczos_eigenvalues


class FisherOperator:
    """F v = (1/N) Σ_n J_nᵀ S_n S_nᵀ J_n v over ``data``, with J_n the Jacobian of the model output
    for sample n and S_n the Fisher-type columns (``fisherkit.estimators.fisher_type``): the
    output-Fisher square root for ``"exact"`` (the GGN for canonical links), sampled-label
    gradients for ``"mc"`` (redrawn from ``seed`` at every product, so the operator is one fixed
    matrix), dataset-label gradients for ``"empirical"``.

    Each product is one pass over the data: a forward-mode Jacobian-vector product and a
    vector-Jacobian product per batch (``torch.func``). Scaling: per-sample mean. It shares the
    representation's verbs (``fisherkit.curvature.verbs.FisherVerbs``: ``mv``, ``quadratic``,
    ``solve``, ``trace``, ``to_dense``) with the same meaning; ``trace`` is Hutchinson's estimate.
    The estimation start checks the model as every estimator does (train-mode BatchNorm or dropout)
    and gives the parameter names; no layer rule is looked up, so a module that no rule serves (or
    whose rule refuses its configuration) is served all the same.

    Args:
        model, data, likelihood: As in ``diagonal_fisher``; every module is supported (no layer
            rules are involved).
        fisher_type: ``"exact"`` (default), ``"mc"``, ``"empirical"`` or ``"predicted"``.
        seed: Seed of the MC draws.
        **options: ``fisherkit.EstimationOptions`` (``mc_samples``, ``batch_size``, ``progress``
            (default False), the batch layout); ``engine``, ``fallback`` and ``memory_budget`` play
            no part.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        likelihood: str | Likelihood = "categorical",
        fisher_type: str = "exact",
        *,
        seed: int = 0,
        **options: Any,
    ) -> None:
        keywords = {"progress": False, **options}
        keywords.update(likelihood=likelihood, fisher_type=fisher_type, seed=seed)
        self.job = Estimation.start(model, EstimationOptions.from_keywords(keywords), layer_rules=False)
        self.data = data
        self.seed = seed
        params = self.job.parameters
        self.names = tuple(params)
        self.shapes = tuple(p.shape for p in params.values())

    @property
    def dim(self) -> int:
        return sum(s.numel() for s in self.shapes)

    def _like(self) -> Tensor:
        return next(iter(self.job.parameters.values())).detach()

    def flatten(self, vectors: ParameterVector) -> Tensor:
        """A parameter-shaped list or dict → ``(P,)``."""
        ordered = [vectors[n] for n in self.names] if isinstance(vectors, Mapping) else list(vectors)
        return torch.cat([v.reshape(-1) for v in ordered])

    def unflatten(self, flat: Tensor) -> TensorList:
        return [p.reshape(s) for p, s in zip(flat.split([s.numel() for s in self.shapes]), self.shapes)]

    def mv(self, v: ParameterVector) -> TensorList:
        """F v as a parameter-shaped list."""
        flat = self.flatten(v)
        if flat.numel() != self.dim:
            raise ValueError(f"vector of {flat.numel()} entries for a Fisher over {self.dim} parameters")
        return self.unflatten(self.matvec(flat))

    def matvec(self, flat: Tensor) -> Tensor:
        """F v on flat ``(P,)`` vectors."""
        params = {n: p.detach() for n, p in self.job.parameters.items()}
        tangents = dict(zip(self.names, self.unflatten(flat.to(self._like()))))
        self.job.generator = make_generator(self.job.device, self.seed, None)
        totals = [torch.zeros_like(p) for p in params.values()]
        count = 0
        for call, columns_fn in self.job.batches(self.data, "Fisher-vector product"):

            def forward(p: dict[str, Tensor], call: ModelCall = call) -> Tensor:
                return call(lambda *args, **kwargs: functional_call(self.job.model, p, args, kwargs))

            output, directional = jvp(forward, (params,), (tangents,))[:2]
            columns = columns_fn(output)  # (K, B, ...)
            weights = (columns * directional.unsqueeze(0)).flatten(2).sum(-1)  # s_kᵀ J v per sample
            cotangent = (weights.reshape(*weights.shape, *[1] * (columns.dim() - 2)) * columns).sum(0)
            pullback = vjp(forward, params)[1]
            for total, grad in zip(totals, pullback(cotangent)[0].values()):
                total.add_(grad)
            count += output.shape[0]
        totals, count = all_reduce_sums(totals, count)
        check_count(count)
        return torch.cat([t.reshape(-1) for t in totals]) / count

    def quadratic(self, v: ParameterVector) -> Tensor:
        """vᵀ F v."""
        flat = self.flatten(v)
        return flat @ self.matvec(flat)

    def solve(self, v: ParameterVector, damping: float, tol: float = 1e-6, max_iter: int | None = None) -> TensorList:
        """(F + damping·I)⁻¹ v by conjugate gradients (see ``fisherkit.linalg.conjugate_gradient``)."""
        flat = self.flatten(v).to(self._like())
        return self.unflatten(conjugate_gradient(self.matvec, flat, damping, tol, max_iter))

    def trace(self, probes: int = 100, seed: int = 0) -> Tensor:
        """Hutchinson's estimate of tr(F), a 0-dim tensor (``trace_estimate`` adds its standard error)."""
        return self.trace_estimate(probes, seed)[0]

    def trace_estimate(self, probes: int = 100, seed: int = 0) -> tuple[Tensor, Tensor]:
        """Hutchinson's estimate of tr(F) and its standard error."""
        generator = torch.Generator().manual_seed(seed)
        return hutchinson_trace(self.matvec, self.dim, probes, self._like(), generator)

    def eigenvalues(self, iterations: int = 50, seed: int = 0) -> Tensor:
        """Lanczos Ritz values, ascending: the last approximates the largest eigenvalue of F."""
        generator = torch.Generator().manual_seed(seed)
        return lanczos_eigenvalues(self.matvec, self.dim, iterations, self._like(), generator)

    def eigenpairs(self, k: int, iterations: int | None = None, seed: int = 0) -> tuple[Tensor, Tensor]:
        """The ``k`` largest eigenvalues and their eigenvectors, by Lanczos with full
        reorthogonalization (``iterations`` products; default min(P, 2k + 40)).

        Returns:
            ``(k,)`` values, descending, and ``(P, k)`` orthonormal vectors over the flattened
            parameters in ``names`` order (``unflatten`` turns a column into parameter shapes).
        """
        check_positive_int("k", k)
        iterations = min(self.dim, 2 * k + 40) if iterations is None else iterations
        generator = torch.Generator().manual_seed(seed)
        return lanczos_eigenpairs(self.matvec, self.dim, k, iterations, self._like(), generator)

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` on flat ``(P,)`` vectors in the parameters' dtype."""
        return scipy_operator(self.matvec, self.dim, self._like())

    def to_dense(self) -> Tensor:
        """``(P, P)`` by P products with unit vectors (tests and tiny models only)."""
        eye = torch.eye(self.dim, dtype=self._like().dtype, device=self._like().device)
        return torch.stack([self.matvec(column) for column in eye], 1)
