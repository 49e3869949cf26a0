"""Exact sums of blocks of different kinds (EWC penalties of several tasks, KFAC + KFAC)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from fisherkit.curvature.block import Block, TensorList, check_damping, dense_damped, tensor_sum
from fisherkit.curvature.dense_block import DenseBlock


@dataclasses.dataclass(eq=False)
class SumBlock(Block):
    """F = Σ_i F_i, kept as its terms so that products, diagonals and traces stay exact and cheap.

    ``solve``, ``inverse`` and ``logdet`` have no closed form for a sum of Kronecker products; they
    go through the dense matrix for blocks of up to ``DENSE_FALLBACK_LIMIT`` parameters and are
    refused with an explanation beyond that.

    Attributes:
        terms: The summed blocks, all over the same parameters.
    """

    terms: list[Block] = dataclasses.field(default_factory=list)

    @staticmethod
    def of(first: Block, second: Block) -> SumBlock:
        """first + second, flattening nested sums; the two must cover the same parameters."""
        if (first.names, first.shapes) != (second.names, second.shapes):
            raise ValueError(f"cannot add a block over {first.label} to a block over {second.label}.")
        terms = [t for block in (first, second) for t in (block.terms if isinstance(block, SumBlock) else [block])]
        return SumBlock(first.names, first.shapes, terms)

    def mv(self, vectors: TensorList) -> TensorList:
        products = [term.mv(vectors) for term in self.terms]
        return [sum(parts) for parts in zip(*products)]

    def solve(self, vectors: TensorList, damping: float, pi_damping: bool = False) -> TensorList:
        damped = dense_damped(self, check_damping(damping))
        flat = self.flatten(vectors).to(damped.dtype)
        return self.unflatten(torch.linalg.solve(damped, flat))

    def inverse(self, damping: float, pi_damping: bool = False) -> Block:
        return DenseBlock(self.names, self.shapes, torch.linalg.inv(dense_damped(self, check_damping(damping))))

    def diagonal(self) -> TensorList:
        return [tensor_sum(parts) for parts in zip(*(term.diagonal() for term in self.terms))]

    def trace(self) -> Tensor:
        return tensor_sum(term.trace() for term in self.terms)

    def logdet(self, damping: float, pi_damping: bool = False) -> Tensor:
        return torch.linalg.slogdet(dense_damped(self, check_damping(damping)))[1]

    def to_dense(self) -> Tensor:
        return tensor_sum(term.to_dense() for term in self.terms)

    def scaled(self, scalar: float) -> SumBlock:
        return SumBlock(self.names, self.shapes, [term.scaled(scalar) for term in self.terms])
