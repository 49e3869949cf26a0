"""fisherkit: the Fisher information of PyTorch models, correct and fast.

Importing fisherkit never imports Triton, initialises CUDA, or needs the compiled extension.
"""

from fisherkit.curvature import (
    Block,
    Curvature,
    DenseBlock,
    DiagonalBlock,
    DiagonalFisher,
    EigenKroneckerBlock,
    KroneckerBlock,
    LowRankBlock,
    SumBlock,
)
from fisherkit.errors import NonFiniteFisherError, UnsupportedModelError
from fisherkit.estimators import (
    APPROXIMATIONS,
    FISHER_TYPES,
    STRUCTURES,
    EstimationOptions,
    block_fisher,
    diagonal_fisher,
    ekfac_fisher,
    fisher,
    full_fisher,
    kfac_fisher,
    per_sample_fisher_trace,
    register_structure,
)
from fisherkit.estimators.operator import FisherOperator
from fisherkit.likelihoods import Bernoulli, Categorical, Gaussian, Likelihood
from fisherkit.optim import NGD, LevenbergMarquardt, NGDPreconditioner
from fisherkit.plan import explain
from fisherkit.regularizers import EWC, MAS, Regularizer, SynapticIntelligence
from fisherkit.rules import LayerCall, LayerRule, TorchFuncRule, register_rule
from fisherkit.verify import Verification, verify

__version__ = "0.1.0"

__all__ = [
    "APPROXIMATIONS",
    "FISHER_TYPES",
    "STRUCTURES",
    "Bernoulli",
    "Block",
    "Categorical",
    "Curvature",
    "DenseBlock",
    "DiagonalBlock",
    "DiagonalFisher",
    "EWC",
    "EigenKroneckerBlock",
    "EstimationOptions",
    "FisherOperator",
    "Gaussian",
    "KroneckerBlock",
    "LowRankBlock",
    "LevenbergMarquardt",
    "MAS",
    "NGD",
    "NGDPreconditioner",
    "NonFiniteFisherError",
    "Regularizer",
    "LayerCall",
    "LayerRule",
    "Likelihood",
    "TorchFuncRule",
    "SumBlock",
    "SynapticIntelligence",
    "UnsupportedModelError",
    "Verification",
    "block_fisher",
    "diagonal_fisher",
    "ekfac_fisher",
    "explain",
    "fisher",
    "full_fisher",
    "kfac_fisher",
    "per_sample_fisher_trace",
    "register_rule",
    "register_structure",
    "verify",
]
