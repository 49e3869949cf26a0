"""A laplace-torch curvature backend computed by fisherkit.

``Laplace(model, "classification", backend=FisherkitGGN)`` fits a Laplace approximation whose
curvature comes from fisherkit's estimators: ``hessian_structure="diag"`` from the diagonal
Fisher, ``"kron"`` from KFAC, ``"full"`` (and ``SubnetLaplace``) from the full Fisher; last-layer
Laplace estimates on the last layer's parameters only. ``FisherkitGGN`` is the GGN (the exact
Fisher; ``stochastic=True`` draws ``num_samples`` labels per sample, the MC Fisher) and
``FisherkitEF`` the empirical Fisher, as laplace-torch's ``CurvlinopsGGN``/``CurvlinopsEF``.

laplace-torch's conventions, which these backends follow: the curvature and the loss are *sums*
over the batch (fisherkit's estimates are per-sample means, multiplied here by the batch size);
``"regression"`` is a Gaussian likelihood of unit variance, and its empirical Fisher is formed from
the gradients of the summed squared error, times 1/2 (twice the Gaussian log-likelihood's
empirical Fisher); Kronecker factors are given per parameter, ``[G, A]`` for a weight and ``[G]``
for its bias, with A rescaled by the batch's share of the data (laplace-torch adds the factors of
every batch). Batches may be dicts (laplace-torch's ``dict_key_x``/``dict_key_y``); the model
takes the batch as its one positional input, as laplace-torch calls it.

Requires ``laplace-torch`` (``pip install --no-deps laplace-torch`` beside this torch: its
``torchvision`` requirement is not used by the backends).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from laplace.curvature import CurvatureInterface, EFInterface, GGNInterface
from laplace.utils import Kron
from torch import Tensor, nn

from fisherkit.curvature import Curvature, DiagonalBlock, KroneckerBlock
from fisherkit.estimators.structures import fisher

__all__ = ["FisherkitEF", "FisherkitGGN"]

LIKELIHOODS = {"classification": "categorical", "regression": "gaussian"}


class FisherkitInterface(CurvatureInterface):
    """The estimates every fisherkit backend shares; subclasses choose the Fisher type."""

    fisher_type = "exact"
    mc_samples = 1

    def _names(self) -> list[str]:
        """Names, in ``self.model``, of the parameters laplace-torch asks for (``self.params``)."""
        by_id = {id(p): n for n, p in self.model.named_parameters()}
        return [by_id[id(p)] for p in self.params]

    def _estimate(self, structure: str, x: Any, y: Tensor, **options: Any) -> tuple[Tensor, Curvature, int]:
        """(laplace's loss, fisherkit's per-sample-mean estimate, batch size) on one batch."""
        batch = len(y)
        estimate = fisher(
            self.model,
            [(x, y)],
            structure,
            LIKELIHOODS[str(self.likelihood)],
            self.fisher_type,
            mc_samples=self.mc_samples,
            parameters=self._names(),
            batch_size=batch,
            progress=False,
            fallback=True,
            **options,
        )
        with torch.no_grad():
            loss = self.factor * self.lossfunc(self.model(x), y)
        return loss.detach(), estimate, batch

    @property
    def _sum_scale(self) -> float:
        """laplace's empirical Fisher for regression is twice the Gaussian one (module docstring)."""
        return 2.0 if self.fisher_type == "empirical" and self.likelihood == "regression" else 1.0

    def diag(self, x: Any, y: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """``(loss, (P,) diagonal)`` summed over the batch."""
        loss, estimate, batch = self._estimate("diagonal", x, y)
        diagonal = torch.cat([d.reshape(-1) for d in estimate.diagonal()])
        return loss, (batch * self._sum_scale * diagonal).to(self.params[0].dtype)

    def full(self, x: Any, y: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """``(loss, (P, P) Fisher)`` summed over the batch; for ``SubnetLaplace`` the rows and
        columns of ``subnetwork_indices``."""
        loss, estimate, batch = self._estimate("full", x, y)
        dense = batch * self._sum_scale * estimate.to_dense()
        if self.subnetwork_indices is not None:
            dense = dense[self.subnetwork_indices][:, self.subnetwork_indices]
        return loss, dense.to(self.params[0].dtype)

    def kron(self, x: Any, y: Tensor, N: int, **kwargs: Any) -> tuple[Tensor, Kron]:
        """``(loss, Kron)``: KFAC factors per parameter in laplace-torch's layout (module docstring).

        Args:
            x: The batch's inputs (a tensor or a dict).
            y: Its targets.
            N: The number of samples in the data (A is rescaled by ``len(y) / N``).
            **kwargs: ``kfac_approx``: ``"expand"`` (default) or ``"reduce"``, as in laplace-torch's
                curvlinops backend.

        Raises:
            ValueError: A weight without Kronecker factors in fisherkit's KFAC (an embedding, a
                normalization weight of two or more axes), a grouped convolution or a transposed
                layout, which laplace-torch's ``Kron`` cannot hold.
        """
        unknown = set(kwargs) - {"kfac_approx"}
        if unknown:
            raise TypeError(f"unknown Kronecker option(s) {sorted(unknown)}; fisherkit's backend takes kfac_approx.")
        loss, estimate, batch = self._estimate("kfac", x, y, approximation=kwargs.get("kfac_approx", "expand"))
        scale = batch * self._sum_scale
        dtype = self.params[0].dtype
        factors: dict[str, list[Tensor]] = {}
        for block in estimate.blocks:
            if isinstance(block, KroneckerBlock):
                factors.update(_kronecker_factors(block, scale, batch / N))
            elif isinstance(block, DiagonalBlock):
                factors.update(_diagonal_factors(block, scale))
            else:
                raise ValueError(f"block {block.label}: a {type(block).__name__} has no Kron form.")
        kfacs = [[f.to(dtype) for f in factors[name]] for name in self._names()]
        return loss, Kron(cast(Any, kfacs))  # lists, as laplace-torch builds them (it rescales them in place)


def _kronecker_factors(block: KroneckerBlock, scale: float, share: float) -> dict[str, list[Tensor]]:
    """``{weight: [scale·G, share·A], bias: [scale·G]}`` of one layer (the bias column of A is 1)."""
    if block.groups != 1 or block.transposed or block.left.dim() != 3 or block.right.dim() != 3:
        raise ValueError(
            f"block {block.label}: laplace-torch's Kron holds one dense pair of factors per weight; a grouped "
            "convolution, a transposed layout (Hugging Face Conv1D) or an embedding has no such pair. Use "
            "hessian_structure='diag' or 'full'."
        )
    grads, inputs = block.left[0] * scale, block.right[0]
    weight, *bias = block.names
    if not bias:
        return {weight: [grads, inputs * share]}
    return {weight: [grads, inputs[:-1, :-1] * share], bias[0]: [grads * inputs[-1, -1]]}


def _diagonal_factors(block: DiagonalBlock, scale: float) -> dict[str, list[Tensor]]:
    """``{name: [diag(scale·d)]}`` for vectors; a matrix-shaped parameter is refused (``Kron`` wants
    two factors for it)."""
    factors = {}
    for name, diagonal in zip(block.names, block.diagonals):
        if diagonal.dim() != 1:
            raise ValueError(
                f"parameter {name!r} has no Kronecker factors in fisherkit's KFAC (its module has no Kronecker "
                "rule), and laplace-torch's Kron needs two for a weight of two or more axes. Use "
                "hessian_structure='diag' or 'full'."
            )
        factors[name] = [torch.diag(scale * diagonal)]
    return factors


class FisherkitGGN(FisherkitInterface, GGNInterface):
    """The GGN (= the exact Fisher for laplace-torch's likelihoods) or, with ``stochastic=True``,
    the MC Fisher with ``num_samples`` labels per sample, by fisherkit.

    Args:
        model, likelihood, last_layer, subnetwork_indices, dict_key_x, dict_key_y: As
            laplace-torch's ``CurvatureInterface``.
        stochastic: The MC Fisher instead of the exact one (draws from torch's global generator).
        num_samples: Labels drawn per sample when ``stochastic``.
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: str,
        last_layer: bool = False,
        subnetwork_indices: torch.LongTensor | None = None,
        dict_key_x: str = "input_ids",
        dict_key_y: str = "labels",
        stochastic: bool = False,
        num_samples: int = 1,
    ) -> None:
        super().__init__(
            model, likelihood, last_layer, subnetwork_indices, dict_key_x, dict_key_y, stochastic, num_samples
        )
        self.fisher_type = "mc" if stochastic else "exact"
        self.mc_samples = num_samples


class FisherkitEF(FisherkitInterface, EFInterface):
    """The empirical Fisher (dataset labels) by fisherkit, in laplace-torch's convention."""

    fisher_type = "empirical"
