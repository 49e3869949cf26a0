"""Fisher representations: what is stored and how it acts on parameter-shaped vectors."""

from fisherkit.curvature.base import Curvature
from fisherkit.curvature.block import Block
from fisherkit.curvature.dense_block import DenseBlock
from fisherkit.curvature.diagonal import DiagonalFisher
from fisherkit.curvature.diagonal_block import DiagonalBlock
from fisherkit.curvature.eigen_kronecker_block import EigenKroneckerBlock
from fisherkit.curvature.kronecker_block import KroneckerBlock
from fisherkit.curvature.low_rank_block import LowRankBlock
from fisherkit.curvature.sum_block import SumBlock
from fisherkit.curvature.verbs import FisherVerbs

__all__ = [
    "Block",
    "Curvature",
    "DenseBlock",
    "DiagonalBlock",
    "DiagonalFisher",
    "EigenKroneckerBlock",
    "FisherVerbs",
    "KroneckerBlock",
    "LowRankBlock",
    "SumBlock",
]
