"""Fisher objects as SciPy linear operators on flat vectors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor


def scipy_operator(matvec: Callable[[Tensor], Tensor], dim: int, like: Tensor) -> Any:
    """A ``scipy.sparse.linalg.LinearOperator`` of shape ``(dim, dim)`` whose products are
    ``matvec`` on ``(dim,)`` tensors of ``like``'s dtype and device; its dtype is that dtype
    (float64 stays float64). Symmetric: the adjoint product is the product.

    Raises:
        ImportError: SciPy is not installed (``pip install scipy``).
    """
    try:
        from scipy.sparse.linalg import LinearOperator
    except ImportError as error:
        raise ImportError("to_scipy() needs SciPy: pip install scipy") from error
    dtype = np.dtype(str(like.dtype).removeprefix("torch."))

    def product(vector: np.ndarray) -> np.ndarray:
        flat = torch.as_tensor(np.ascontiguousarray(vector).reshape(-1), dtype=like.dtype, device=like.device)
        return matvec(flat).detach().cpu().numpy().astype(dtype, copy=False)

    return LinearOperator((dim, dim), matvec=product, rmatvec=product, dtype=dtype)
