"""Turning what users pass as data into ``(inputs, targets)`` batches, with device checks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from fisherkit.engines.base import ModelInputs

Batch = tuple[ModelInputs, Tensor | None]


def iter_batches(data: Any, batch_size: int = 256) -> Iterator[Batch]:
    """Yields ``(inputs, targets or None)`` batches.

    Args:
        data: One of
            - a ``Tensor`` of inputs (no targets), split into ``batch_size`` rows;
            - a ``tuple`` ``(inputs, targets)`` of tensors with equal first dimension, split likewise;
            - any other iterable (e.g. a ``DataLoader``) of batches, each a tensor of inputs or a
              sequence ``(inputs, targets, ...)``; ``inputs`` may be a list of tensors for a model
              taking several arguments.
        batch_size: Rows per batch when ``data`` holds whole tensors.
    """
    if isinstance(data, Tensor):
        data = (data,)
    if isinstance(data, tuple) and data and all(isinstance(t, Tensor) for t in data):
        if len(data) > 2 or len({t.shape[0] for t in data}) != 1:
            raise ValueError(
                "data given as a tuple of tensors must be (inputs,) or (inputs, targets) with equal "
                f"first dimensions; got shapes {[tuple(t.shape) for t in data]}."
            )
        rows = data[0].shape[0]
        for start in range(0, rows, batch_size):
            part = [t[start : start + batch_size] for t in data]
            yield part[0], part[1] if len(part) == 2 else None
        return
    if not isinstance(data, Iterable):
        raise TypeError(
            f"data must be a tensor, a tuple (inputs, targets), or an iterable of batches; got {type(data)}"
        )
    for batch in data:
        yield _split_batch(batch)


def _split_batch(batch: Any) -> Batch:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0], batch[1] if len(batch) > 1 else None
    raise TypeError(
        f"a batch must be a tensor of inputs or a sequence (inputs, targets); got {type(batch).__name__}. "
        f"Dict batches: map them to (inputs, targets) first."
    )


def check_device(inputs: ModelInputs, targets: Tensor | None, device: torch.device) -> None:
    """Raises ``ValueError`` when a batch tensor lives elsewhere than the model's parameters."""
    tensors = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    if targets is not None:
        tensors.append(targets)
    for tensor in tensors:
        if isinstance(tensor, Tensor) and tensor.device != device:
            raise ValueError(
                f"a batch tensor is on {tensor.device} but the model's parameters are on {device}; "
                f"move the data (or the model) so that both are on one device."
            )
