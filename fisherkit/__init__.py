"""fisherkit: the Fisher information of PyTorch models, correct and fast.

Importing fisherkit never imports Triton, initialises CUDA, or needs the compiled extension.
"""

from fisherkit.curvature import Curvature, DiagonalFisher
from fisherkit.estimators import FISHER_TYPES, diagonal_fisher
from fisherkit.likelihoods import Bernoulli, Categorical, Gaussian, Likelihood
from fisherkit.plan import UnsupportedModelError, explain
from fisherkit.rules import LayerCall, LayerRule, TorchFuncRule, register_rule

__version__ = "0.1.0"

__all__ = [
    "FISHER_TYPES",
    "Bernoulli",
    "Categorical",
    "Curvature",
    "DiagonalFisher",
    "Gaussian",
    "LayerCall",
    "LayerRule",
    "Likelihood",
    "TorchFuncRule",
    "UnsupportedModelError",
    "diagonal_fisher",
    "explain",
    "register_rule",
]
