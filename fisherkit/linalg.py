"""Matrix-free linear algebra on flat vectors: conjugate gradients, Lanczos, Hutchinson's trace."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

MatVec = Callable[[Tensor], Tensor]


def conjugate_gradient(
    matvec: MatVec, b: Tensor, damping: float = 0.0, tol: float = 1e-6, max_iter: int | None = None
) -> Tensor:
    """Solves (A + damping·I) x = b for a symmetric positive (semi-)definite A given as ``matvec``.

    Args:
        matvec: x ↦ A x on ``(P,)`` vectors.
        b: ``(P,)`` right-hand side.
        damping: Added to the diagonal; > 0 makes a semi-definite A solvable.
        tol: Stop when ‖r‖ ≤ tol·‖b‖.
        max_iter: At most this many products (default P).

    Raises:
        ValueError: No convergence within ``max_iter`` (the residual is reported).
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = r @ r
    target = tol * torch.linalg.vector_norm(b)
    max_iter = b.numel() if max_iter is None else max_iter
    for _ in range(max_iter):
        if torch.sqrt(rr) <= target:
            return x
        ap = matvec(p) + damping * p
        curvature = p @ ap
        if curvature <= 0:
            raise ValueError("conjugate gradients met a direction of zero curvature; pass damping > 0.")
        step = rr / curvature
        x += step * p
        r -= step * ap
        rr_next = r @ r
        p = r + (rr_next / rr) * p
        rr = rr_next
    if torch.sqrt(rr) <= target:
        return x
    raise ValueError(
        f"conjugate gradients did not reach tol={tol} in {max_iter} iterations (relative residual "
        f"{float(torch.sqrt(rr) / torch.linalg.vector_norm(b)):.3g}); raise max_iter or damping."
    )


def lanczos(
    matvec: MatVec, dim: int, iterations: int, like: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``iterations`` Lanczos steps with full reorthogonalization from a random start.

    Returns:
        The ``(m, m)`` tridiagonal matrix T and the ``(m, dim)`` orthonormal basis Q with
        Q A Qᵀ = T, m ≤ ``iterations`` (fewer when an invariant subspace is found).
    """
    iterations = min(iterations, dim)
    q = torch.randn(dim, generator=generator, dtype=like.dtype).to(like.device)
    basis = [q / torch.linalg.vector_norm(q)]
    alphas, betas = [], []
    for step in range(iterations):
        w = matvec(basis[-1])
        alphas.append(basis[-1] @ w)
        stacked = torch.stack(basis)
        w = w - stacked.T @ (stacked @ w)
        w = w - stacked.T @ (stacked @ w)  # twice is enough (Kahan–Parlett)
        beta = torch.linalg.vector_norm(w)
        if step + 1 == iterations or beta <= 1e-10 * max(1.0, float(abs(alphas[-1]))):
            break
        betas.append(beta)
        basis.append(w / beta)
    tridiagonal = torch.diag(torch.stack(alphas))
    if betas:
        off = torch.stack(betas)
        tridiagonal = tridiagonal + torch.diag(off, 1) + torch.diag(off, -1)
    return tridiagonal, torch.stack(basis[: len(alphas)])


def lanczos_eigenvalues(
    matvec: MatVec, dim: int, iterations: int, like: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Ritz values of a symmetric operator after ``iterations`` Lanczos steps (``lanczos``).

    The extreme ones converge first: ``[-1]`` approximates the largest eigenvalue, ``[0]`` the
    smallest. Exact for all eigenvalues when ``iterations == dim``.

    Returns:
        ``(m,)`` ascending, m ≤ ``iterations`` (fewer when an invariant subspace is found).
    """
    return torch.linalg.eigvalsh(lanczos(matvec, dim, iterations, like, generator)[0])


def lanczos_eigenpairs(
    matvec: MatVec, dim: int, k: int, iterations: int, like: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The ``k`` largest Ritz pairs of a symmetric operator after ``iterations`` Lanczos steps.

    Returns:
        ``(k,)`` values, descending, and ``(dim, k)`` orthonormal vectors (Qᵀ S for T = S Θ Sᵀ);
        fewer than ``k`` when the Krylov space has fewer dimensions.
    """
    tridiagonal, basis = lanczos(matvec, dim, iterations, like, generator)
    values, rotations = torch.linalg.eigh(tridiagonal)
    top = values.argsort(descending=True)[:k]
    return values[top], basis.T @ rotations[:, top]


def hutchinson_trace(
    matvec: MatVec, dim: int, probes: int, like: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """tr(A) ≈ mean of zᵀ A z over Rademacher probes z, with its standard error.

    Returns:
        ``(estimate, standard_error)`` as 0-dim tensors.
    """
    if probes < 2:
        raise ValueError(f"Hutchinson's estimator needs at least 2 probes for an error estimate; got {probes}.")
    samples = []
    for _ in range(probes):
        z = torch.randint(0, 2, (dim,), generator=generator).to(like) * 2 - 1
        samples.append(z @ matvec(z))
    values = torch.stack(samples)
    return values.mean(), values.std() / probes**0.5
