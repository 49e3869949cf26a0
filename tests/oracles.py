"""Independent references: a float64 per-sample loop over torch's own losses, and dense
``torch.func`` matrices. Neither uses fisherkit's likelihood gradients, columns, rules or engines."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian, jacrev
from torch.nn import functional

TOLERANCES = {
    torch.float64: {"rtol": 1e-9, "atol": 1e-12},
    torch.float32: {"rtol": 2e-4, "atol": 1e-6},
    torch.float16: {"rtol": 2e-3, "atol": 1e-2},
    torch.bfloat16: {"rtol": 2e-3, "atol": 1e-2},
}
"""A computation in the dtype (inputs, or the matrix products a GPU kernel runs on tensor cores:
TF32 for float32 there, which is why the GPU tests take ``TOLERANCES[torch.float16]`` for every
dtype) against a float64 oracle on the same inputs, with float32 or float64 accumulation. The
float16/bfloat16 atol is for sums of a few hundred products of order one."""

EXACT = {"rtol": 0.0, "atol": 0.0}
"""Bit-for-bit: the same arithmetic on the same inputs (a resumed run, a skipped step)."""

ITERATIVE = {"rtol": 1e-7, "atol": 1e-9}
"""A float64 iterative method (conjugate gradients, Lanczos) run to a residual of 1e-10 against a
direct factorization."""


def log_likelihood(
    name: str, output: Tensor, target: Tensor, variance: float | Tensor = 1.0, ignore_index: int = -100
) -> Tensor:
    """log p(y | f) summed over one sample's outputs, via torch.nn.functional."""
    if name == "categorical":
        return -functional.cross_entropy(
            output.reshape(-1, output.shape[-1]), target.reshape(-1), reduction="sum", ignore_index=ignore_index
        )
    if name == "gaussian":
        return -0.5 * ((output - target) ** 2 / variance).sum()
    if name == "bernoulli":
        return -functional.binary_cross_entropy_with_logits(output, target, reduction="sum")
    raise ValueError(name)


def _trainable(model: nn.Module) -> list[tuple[str, Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _grad(model: nn.Module, scalar: Tensor) -> list[Tensor]:
    params = [p for _, p in _trainable(model)]
    return [
        g if g is not None else torch.zeros_like(p)
        for g, p in zip(torch.autograd.grad(scalar, params, retain_graph=True, allow_unused=True), params)
    ]


def _labelings(name: str, output: Tensor, ignore: Tensor | None) -> list[tuple[Tensor, Tensor]]:
    """(weight, labels) pairs for the exact expectation E_y[(∇ log p)²] of one sample.

    The score of each position has zero mean and positions are independent, so the expectation is
    the sum over positions j of E_{y_j}[(∇ log p(y_j))²]: one labelling per (position, value),
    with every other position masked out of the log-likelihood.
    """
    pairs = []
    if name == "categorical":
        probs = output.detach().softmax(-1).reshape(-1, output.shape[-1])
        for j in range(probs.shape[0]):
            if ignore is not None and bool(ignore.reshape(-1)[j]):
                continue
            for c in range(probs.shape[1]):
                labels = torch.full((probs.shape[0],), -100, dtype=torch.long)
                labels[j] = c
                pairs.append((probs[j, c], labels.reshape(output.shape[:-1])))
    elif name == "bernoulli":
        probs = output.detach().sigmoid().reshape(-1)
        for j in range(probs.shape[0]):
            for value in (0.0, 1.0):
                pairs.append((probs[j] if value else 1 - probs[j], (j, value)))
    return pairs


def _weighted_gradients(
    model: nn.Module,
    inputs: Tensor,
    likelihood: str,
    fisher_type: str,
    targets: Tensor | None,
    sampled: list[Tensor] | None,
    variance: float,
) -> Iterator[tuple[float, list[Tensor]]]:
    """(weight, ∇_θ log p(y | x_n)) for every sample n and label y of the Fisher type, in float64,
    one sample at a time; F = (1/N) Σ weight · g gᵀ."""
    model = copy.deepcopy(model).double()  # the caller's model stays as it is
    inputs = inputs.double() if inputs.dtype.is_floating_point else inputs
    for n in range(inputs.shape[0]):
        output = model(inputs[n : n + 1])[0]
        ignore = None
        if likelihood == "categorical" and targets is not None:
            ignore = targets[n] == -100
        if fisher_type == "empirical":
            terms = [(1.0, targets[n])]
        elif fisher_type == "predicted":  # the float64 model's own most probable label per position
            label = output.argmax(-1) if likelihood == "categorical" else (output > 0).long()
            if ignore is not None:
                label[ignore] = -100
            terms = [(1.0, label)]
        elif fisher_type == "mc":
            terms = []
            for draw in sampled:
                label = draw[n].clone()
                if ignore is not None:
                    label[ignore] = -100
                terms.append((1.0 / len(sampled), label))
        elif likelihood == "gaussian":
            flat = output.reshape(-1)
            for j in range(flat.numel()):
                yield 1.0 / variance, _grad(model, flat[j])
            terms = []
        else:
            terms = _labelings(likelihood, output, ignore)
        for weight, label in terms:
            if likelihood == "bernoulli" and fisher_type == "exact":
                j, value = label
                logp = -functional.binary_cross_entropy_with_logits(
                    output.reshape(-1)[j], torch.tensor(value, dtype=torch.float64)
                )
            else:
                if likelihood != "categorical":
                    label = label.double()
                logp = log_likelihood(likelihood, output, label, variance)
            yield float(weight), _grad(model, logp)


def brute_force_diagonal(
    model: nn.Module,
    inputs: Tensor,
    likelihood: str,
    fisher_type: str,
    targets: Tensor | None = None,
    sampled: list[Tensor] | None = None,
    variance: float = 1.0,
) -> list[Tensor]:
    """(1/N) Σ_n E_y[(∇_θ log p(y | x_n))²] one sample at a time, in float64.

    Args:
        sampled: For ``mc``, the drawn label tensors (one per MC sample, full batch shape).
    """
    total = [torch.zeros_like(p, dtype=torch.float64) for _, p in _trainable(model)]
    for weight, grads in _weighted_gradients(model, inputs, likelihood, fisher_type, targets, sampled, variance):
        for t, g in zip(total, grads):
            t += weight * g**2
    return [t / inputs.shape[0] for t in total]


def brute_force_dense(
    model: nn.Module,
    inputs: Tensor,
    likelihood: str,
    fisher_type: str,
    targets: Tensor | None = None,
    sampled: list[Tensor] | None = None,
    variance: float = 1.0,
) -> Tensor:
    """(1/N) Σ_n E_y[g gᵀ], g = ∇_θ log p(y | x_n) flattened over all trainable parameters, float64."""
    total = None
    for weight, grads in _weighted_gradients(model, inputs, likelihood, fisher_type, targets, sampled, variance):
        g = flatten(grads)
        total = weight * torch.outer(g, g) + (0 if total is None else total)
    return total / inputs.shape[0]


def dense_ggn(model: nn.Module, inputs: Tensor, likelihood: str, variance: float | Tensor = 1.0) -> Tensor:
    """(1/N) Σ_n J_nᵀ H_n J_n as a dense ``(P, P)`` matrix with torch.func: J_n = ∂f_n/∂θ by
    ``jacrev``, H_n = ∂²[−log p(y | f_n)]/∂f² by ``hessian`` (the output Fisher for these
    canonical-link likelihoods; independent of y)."""
    model = copy.deepcopy(model).double()  # the caller's model stays as it is
    inputs = inputs.double() if inputs.dtype.is_floating_point else inputs
    params = {n: p.detach() for n, p in _trainable(model)}
    total = None
    for n in range(inputs.shape[0]):
        x = inputs[n : n + 1]

        def f(p: dict[str, Tensor], x: Tensor = x) -> Tensor:
            return functional_call(model, p, (x,))[0]

        output = f(params).detach()
        jac = jacrev(f)(params)
        jac = torch.cat([j.reshape(output.numel(), -1) for j in jac.values()], 1)
        dummy = (
            torch.zeros_like(output)
            if likelihood != "categorical"
            else torch.zeros(output.shape[:-1], dtype=torch.long)
        )
        nll_hessian = hessian(lambda o, d=dummy: -log_likelihood(likelihood, o, d, variance))(output)
        nll_hessian = nll_hessian.reshape(output.numel(), output.numel())
        block = jac.T @ nll_hessian @ jac
        total = block if total is None else total + block
    return total / inputs.shape[0]


def flatten(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def brute_force_per_sample_trace(
    model: nn.Module,
    inputs: Tensor,
    likelihood: str,
    fisher_type: str,
    targets: Tensor | None = None,
    sampled: list[Tensor] | None = None,
) -> Tensor:
    """``(N,)`` E_y ‖∇_θ log p(y | x_n)‖² one sample at a time, in float64."""
    traces = []
    for n in range(inputs.shape[0]):
        labels = None if targets is None else targets[n : n + 1]
        draws = None if sampled is None else [draw[n : n + 1] for draw in sampled]
        terms = _weighted_gradients(model, inputs[n : n + 1], likelihood, fisher_type, labels, draws, 1.0)
        traces.append(sum(weight * sum(float(g.square().sum()) for g in grads) for weight, grads in terms))
    return torch.tensor(traces, dtype=torch.float64)
