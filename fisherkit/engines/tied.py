"""Tied parameters: the uses of one parameter by several modules in a batch, and the squared sum
of their per-sample gradients.

In general the per-sample gradients of every use are formed and added before squaring. An
embedding whose matrix is also an output layer's weight (a tied LM head) is served without the
``(K, B, V, D)`` tensors: Σ_n (E_n + H_n)² = Σ_n E_n² + Σ_n H_n² + 2 Σ_n E_n ⊙ H_n, the first two by
each rule's own fast path, and the cross term only on the rows of the tokens sample n holds,
E_n[x_{n,s}] ⊙ H_n[x_{n,s}] with H_n[v] = Σ_t g_{n,t,v} a_{n,t}: a gather of the head's output
gradients at the token ids and one batched product per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fisherkit.plan import PlanEntry
from fisherkit.rules.base import LayerCall, OutputGrad, flatten_positions, single_grad
from fisherkit.rules.embedding import EmbeddingRule
from fisherkit.rules.linear import LinearRule


@dataclass
class TiedUse:
    """One module's use of a tied parameter in a batch: its calls and their output gradients."""

    entry: PlanEntry
    local: str
    calls: list[LayerCall]
    grads: list[OutputGrad]

    def per_sample_grads(self) -> Tensor:
        """``(K, B, *shape)`` summed over the calls."""
        total: Tensor | None = None
        for call, grad in zip(self.calls, self.grads):
            value = self.entry.layer_rule.per_sample_grads(self.entry.module, call, grad, [self.local])[self.local]
            total = value if total is None else total + value
        assert total is not None
        return total


def summed_per_sample_grads(uses: list[TiedUse]) -> Tensor:
    """``(K, B, *shape)`` per-sample gradients of the parameter, summed over every use."""
    total = uses[0].per_sample_grads()
    for use in uses[1:]:
        total = total + use.per_sample_grads()
    return total


def accumulate_tied_sqgrad(uses: list[TiedUse], out: Tensor) -> None:
    """Adds Σ_{k,n} (Σ_uses per-sample gradient)² into ``out``: by ``embedding_head_sqgrad`` where it
    applies, else from the summed per-sample gradients."""
    if not embedding_head_sqgrad(uses, out):
        out.add_(summed_per_sample_grads(uses).to(out.dtype).square().sum((0, 1)))


def embedding_head_sqgrad(uses: list[TiedUse], out: Tensor) -> bool:
    """Adds Σ_{k,n} (E_n + H_n)² into ``out`` for an embedding tied to a Linear output layer (one call
    each, see the module docstring); returns False, adding nothing, for any other pattern."""
    kinds = sorted(uses, key=lambda use: type(use.entry.rule) is not EmbeddingRule)
    if len(uses) != 2 or any(len(use.calls) != 1 for use in uses):
        return False
    embedding, head = kinds
    if type(embedding.entry.rule) is not EmbeddingRule or type(head.entry.rule) is not LinearRule:
        return False
    module = embedding.entry.module
    if head.local != "weight" or embedding.local != "weight" or not isinstance(module, nn.Embedding):
        return False
    embedding.entry.layer_rule.accumulate_sqgrad(module, embedding.calls[0], embedding.grads[0], {"weight": out})
    head.entry.layer_rule.accumulate_sqgrad(head.entry.module, head.calls[0], head.grads[0], {"weight": out})
    tokens = embedding.calls[0].input.reshape(embedding.calls[0].input.shape[0], -1)  # (B, S)
    grad_embedding, grad_head = single_grad(embedding.grads[0]), single_grad(head.grads[0])
    columns, batch = grad_embedding.shape[:2]
    grad_embedding = grad_embedding.reshape(columns, batch, tokens.shape[1], -1).to(out.dtype)
    if module.padding_idx is not None:  # the padding row gets no embedding gradient: no cross term
        grad_embedding = grad_embedding * (tokens != module.padding_idx).unsqueeze(-1).to(out.dtype)
    head_inputs = flatten_positions(head.calls[0].input, 1, 1).to(out.dtype)  # (B, T, D)
    head_grads = flatten_positions(grad_head, 2, 1).to(out.dtype)  # (K, B, T, V)
    index = tokens.unsqueeze(0).unsqueeze(2).expand(columns, batch, head_grads.shape[2], tokens.shape[1])
    at_tokens = torch.gather(head_grads, 3, index)  # (K, B, T, S): g_{n,t,x_{n,s}}
    head_rows = at_tokens.transpose(-1, -2) @ head_inputs.unsqueeze(0)  # (K, B, S, D): H_n[x_{n,s}]
    cross = 2 * grad_embedding * head_rows
    out.index_add_(0, tokens.reshape(-1).repeat(columns), cross.reshape(-1, cross.shape[-1]))
    return True
