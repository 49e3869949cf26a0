"""``nn.Embedding``: per-sample gradients are sums of output gradients over repeated tokens."""

from __future__ import annotations

from collections.abc import Collection, Iterator

import torch
from torch import Tensor, nn

from fisherkit.curvature.kronecker_layout import KroneckerLayout
from fisherkit.rules.base import LayerCall, LayerRule, requested
from fisherkit.rules.registry import register_rule


@register_rule(nn.Embedding)
class EmbeddingRule(LayerRule[nn.Embedding]):
    """Per-sample ∇W[v] = Σ_{t: x_{n,t} = v} g_{n,t}; rows of ``padding_idx`` get no gradient.

    The fast path sums gradients per (column, sample, token) once and squares those sums, so it
    never allocates the ``(K, B, V, D)`` per-sample gradient.

    Kronecker form: the inputs are one-hot, so the input factor is diagonal (token frequencies,
    never a dense V × V matrix) and sits on the left of the ``(V, D)`` weight; KFAC treats
    positions as independent (KFAC-expand) whatever the requested approximation, because reducing
    one-hot inputs over positions would make the input factor dense.
    """

    input_factor_diagonal = True

    def check(self, module: nn.Embedding) -> None:
        if module.max_norm is not None:
            raise ValueError("nn.Embedding with max_norm rewrites its weight during forward; unsupported.")
        if module.scale_grad_by_freq:
            raise ValueError(
                "nn.Embedding with scale_grad_by_freq scales gradients by batch frequencies, which "
                "couples samples; per-sample gradients are undefined. Turn it off for the Fisher."
            )

    def _keys_and_grads(self, module: nn.Embedding, call: LayerCall, grad_output: Tensor) -> tuple[Tensor, Tensor]:
        """Flattened (column·sample·vocab) keys and their gradients, padding positions removed."""
        columns, batch = grad_output.shape[:2]
        tokens = call.input.reshape(batch, -1)
        sample = torch.arange(batch, device=tokens.device).unsqueeze(1)
        keys = (sample * module.num_embeddings + tokens).reshape(1, -1)
        keys = keys + torch.arange(columns, device=tokens.device).unsqueeze(1) * batch * module.num_embeddings
        grads = grad_output.reshape(columns, -1, module.embedding_dim)
        keys, grads = keys.reshape(-1), grads.reshape(-1, module.embedding_dim)
        if module.padding_idx is not None:
            keep = (keys % module.num_embeddings) != module.padding_idx
            keys, grads = keys[keep], grads[keep]
        return keys, grads

    def per_sample_grads(
        self, module: nn.Embedding, call: LayerCall, grad_output: Tensor, names: Collection[str]
    ) -> dict[str, Tensor]:
        if not requested(names, module, "weight"):
            return {}
        columns, batch = grad_output.shape[:2]
        keys, grads = self._keys_and_grads(module, call, grad_output)
        out = grads.new_zeros(columns * batch * module.num_embeddings, module.embedding_dim)
        out.index_add_(0, keys, grads)
        return {"weight": out.reshape(columns, batch, *module.weight.shape)}

    def accumulate_sqgrad(
        self, module: nn.Embedding, call: LayerCall, grad_output: Tensor, out: dict[str, Tensor]
    ) -> None:
        if "weight" not in out:
            return
        keys, grads = self._keys_and_grads(module, call, grad_output)
        unique, slot = torch.unique(keys, return_inverse=True)
        dtype = out["weight"].dtype
        sums = grads.new_zeros(unique.numel(), module.embedding_dim, dtype=dtype).index_add_(0, slot, grads.to(dtype))
        out["weight"].index_add_(0, unique % module.num_embeddings, sums.square())

    def kronecker_layout(self, module: nn.Embedding, names: Collection[str]) -> KroneckerLayout | None:
        return KroneckerLayout(1, module.num_embeddings, False) if requested(names, module, "weight") else None

    def kronecker_inputs(self, module: nn.Embedding, call: LayerCall) -> Iterator[Tensor]:
        tokens = call.input.reshape(call.input.shape[0], 1, -1)
        if module.padding_idx is not None:
            tokens = tokens.masked_fill(tokens == module.padding_idx, -1)
        yield tokens

    def kronecker_grads(self, module: nn.Embedding, call: LayerCall, grad_output: Tensor) -> Tensor:
        return grad_output.reshape(*grad_output.shape[:2], 1, -1, module.embedding_dim)
