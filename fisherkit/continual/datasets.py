"""Image classification data for continual-learning scenarios: scikit-learn's digits (bundled),
Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package, and any directory of MNIST-format IDX files."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass
class Dataset:
    """Flattened images in [0, 1] and integer labels.

    Attributes:
        name: For reports.
        train_x: ``(N, D)`` float32.
        train_y: ``(N,)`` int64.
        test_x: ``(M, D)`` float32.
        test_y: ``(M,)`` int64.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor

    @property
    def num_classes(self) -> int:
        return int(self.train_y.max()) + 1

    @property
    def num_features(self) -> int:
        return self.train_x.shape[1]


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """scikit-learn's 1,797 8×8 digits (bundled with scikit-learn), split at random into train and test."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:
        raise SystemExit("the digits data need scikit-learn: pip install 'fisherkit[data]'") from error
    digits = sklearn_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test = int(len(x) * test_fraction)
    return Dataset("digits", x[order[test:]], y[order[test:]], x[order[:test]], y[order[:test]])


def _read_idx(path: Path) -> np.ndarray:
    """An IDX array (``.gz`` or raw): magic (0, 0, dtype 0x08, ndim), big-endian sizes, uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (bad magic number {data[:4].hex()}).")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {array.size} values (truncated file?).")
    return array.reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(stem)


def load_idx_directory(directory: str | Path, name: str | None = None) -> Dataset:
    """A directory holding the four MNIST-format files (``train-images-idx3-ubyte[.gz]``, …): MNIST,
    Fashion-MNIST, KMNIST.

    Raises:
        FileNotFoundError: Files are missing; the message says where it looked and how to get them.
    """
    directory = Path(directory)
    try:
        paths = {key: _find(directory, stem) for key, stem in IDX_FILES.items()}
    except FileNotFoundError as missing:
        hint = (
            "install Debian's package: apt-get install -y dataset-fashion-mnist"
            if directory == FASHION_MNIST_DIR
            else "put the four MNIST-format files there (MNIST, Fashion-MNIST or KMNIST)"
        )
        raise FileNotFoundError(
            f"no {missing.args[0]}[.gz] in {directory} (it needs {', '.join(IDX_FILES.values())}, each "
            f"optionally .gz); {hint}."
        ) from None
    arrays = {key: _read_idx(path) for key, path in paths.items()}

    def images(key: str) -> Tensor:
        return torch.from_numpy(arrays[key].reshape(len(arrays[key]), -1).astype(np.float32) / 255.0)

    def labels(key: str) -> Tensor:
        return torch.from_numpy(arrays[key].astype(np.int64))

    return Dataset(
        name or directory.name,
        images("train_images"),
        labels("train_labels"),
        images("test_images"),
        labels("test_labels"),
    )


def load_fashion_mnist() -> Dataset:
    """Fashion-MNIST (MIT) from ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``)."""
    return load_idx_directory(FASHION_MNIST_DIR, "fashion-mnist")
