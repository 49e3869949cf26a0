"""Output distributions: categorical, Gaussian and Bernoulli likelihoods."""

from __future__ import annotations

from fisherkit.likelihoods.base import Likelihood
from fisherkit.likelihoods.bernoulli import Bernoulli
from fisherkit.likelihoods.categorical import Categorical
from fisherkit.likelihoods.gaussian import Gaussian

_BY_NAME = {"categorical": Categorical, "gaussian": Gaussian, "bernoulli": Bernoulli}


def get_likelihood(likelihood: str | Likelihood) -> Likelihood:
    """Returns a ``Likelihood`` for a name (``"categorical"``, ``"gaussian"``, ``"bernoulli"``) or instance."""
    if isinstance(likelihood, Likelihood):
        return likelihood
    if isinstance(likelihood, str) and likelihood in _BY_NAME:
        return _BY_NAME[likelihood]()
    raise ValueError(
        f"unknown likelihood {likelihood!r}; use one of {sorted(_BY_NAME)} or a Likelihood instance "
        f"such as fisherkit.Gaussian(variance=0.5)."
    )


__all__ = ["Bernoulli", "Categorical", "Gaussian", "Likelihood", "get_likelihood"]
