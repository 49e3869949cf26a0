"""Reading MNIST-format IDX files (raw or gzip-compressed) defensively: every malformed file is an
error that names it, sizes are checked before anything is allocated, decompression is bounded."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

MAX_IDX_BYTES = 2**30
"""The most data bytes one IDX file may declare (1 GiB; MNIST's training images are 47 MB)."""


class IdxFileError(ValueError):
    """An IDX file that cannot be read as it claims to be; the message names the file and the fault."""


def read_idx(path: Path, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """An IDX array of unsigned bytes: magic (0, 0, 0x08, ndim), ndim big-endian uint32 sizes, data.

    The declared size is checked against ``max_bytes`` and against the file's real size (a raw
    file's length; a ``.gz`` file's recorded uncompressed size) before the data are read, and at
    most the declared number of bytes plus one is ever decompressed.

    Raises:
        IdxFileError: Bad magic number, truncated header or data, trailing data, a declared size
            over ``max_bytes`` or different from the file's, or a corrupt gzip stream.
    """
    compressed = path.suffix == ".gz"
    try:
        with (gzip.open if compressed else open)(path, "rb") as handle:
            magic = handle.read(4)
            if len(magic) < 4 or magic[:3] != b"\x00\x00\x08" or not 1 <= magic[3] <= 8:
                found = magic.hex() or "missing"
                raise IdxFileError(f"{path}: not an IDX file of unsigned bytes (magic number {found}).")
            ndim = magic[3]
            sizes = handle.read(4 * ndim)
            if len(sizes) < 4 * ndim:
                raise IdxFileError(f"{path}: the header is truncated ({4 + len(sizes)} of {4 + 4 * ndim} bytes).")
            shape = tuple(int.from_bytes(sizes[4 * i : 4 * i + 4], "big") for i in range(ndim))
            declared = math.prod(shape)
            if declared > max_bytes:
                raise IdxFileError(
                    f"{path}: the header declares shape {shape}, {declared} bytes, more than the limit of "
                    f"{max_bytes} bytes (pass max_bytes= to read larger files)."
                )
            stored = _stored_data_bytes(path, compressed, 4 + 4 * ndim)
            if stored is not None and stored != (declared % 2**32 if compressed else declared):
                raise IdxFileError(
                    f"{path}: the header declares shape {shape} ({declared} bytes) but the file holds "
                    f"{stored} bytes of data (truncated or not this file's header?)."
                )
            data = handle.read(declared + 1)
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise IdxFileError(f"{path}: cannot be read{' as gzip' if compressed else ''} ({error}).") from None
    if len(data) != declared:
        fault = "truncated" if len(data) < declared else "longer than its header says"
        raise IdxFileError(f"{path}: the data are {fault} (header shape {shape}, {declared} bytes).")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def _stored_data_bytes(path: Path, compressed: bool, header: int) -> int | None:
    """Data bytes the file holds after its header: from a raw file's length, or from a gzip
    file's trailer (uncompressed size mod 2³²); None when the trailer is missing."""
    size = path.stat().st_size
    if not compressed:
        return size - header
    if size < 18:  # a gzip header and trailer take 18 bytes
        return None
    with open(path, "rb") as raw:
        raw.seek(-4, 2)
        return (int.from_bytes(raw.read(4), "little") - header) % 2**32
