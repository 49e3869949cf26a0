"""MNIST-format IDX files for the data tests: the header, a tensor's bytes, a file raw or gzipped."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import torch
from torch import Tensor


def idx_header(shape: tuple[int, ...]) -> bytes:
    """The header of an unsigned-byte IDX file of ``shape``."""
    return struct.pack(">BBBB", 0, 0, 8, len(shape)) + b"".join(struct.pack(">I", s) for s in shape)


def idx_bytes(array: Tensor) -> bytes:
    """``array`` (values 0–255) as a whole IDX file."""
    return idx_header(tuple(array.shape)) + array.to(torch.uint8).numpy().tobytes()


def write_file(path: Path, payload: bytes, compress: bool = False) -> Path:
    """Writes ``payload`` to ``path``, or gzipped to ``path`` + ``.gz``; returns the path written."""
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
    return path
