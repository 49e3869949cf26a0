"""Image classification data for continual-learning scenarios: scikit-learn's digits (bundled),
Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package, and any directory of MNIST-format IDX files."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fisherkit.apps.continual.idx import MAX_IDX_BYTES, IdxFileError, read_idx

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
        raise ImportError("the digits data need scikit-learn: pip install 'fisherkit[data]'") from error
    digits = sklearn_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test = int(len(x) * test_fraction)
    return Dataset("digits", x[order[test:]], y[order[test:]], x[order[:test]], y[order[:test]])


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(stem)


def load_idx_directory(directory: str | Path, name: str | None = None, max_bytes: int = MAX_IDX_BYTES) -> Dataset:
    """A directory holding the four MNIST-format files (``train-images-idx3-ubyte[.gz]``, …): MNIST,
    Fashion-MNIST, KMNIST.

    Args:
        directory: Where the files are.
        name: For reports (default: the directory's name).
        max_bytes: The most data bytes one file may declare (see ``fisherkit.apps.continual.idx``).

    Raises:
        FileNotFoundError: The directory or files are missing (or a file was given for the
            directory); the message says where it looked and how to get them.
        IdxFileError: A file is malformed, or images and labels disagree; the message names the files.
    """
    directory = Path(directory)
    if not directory.exists():
        raise FileNotFoundError(f"no directory {directory}; pass the directory that holds the MNIST-format files.")
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory} is a file, not a directory; pass the directory that holds the four MNIST-format files."
        )
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
    arrays = {key: read_idx(path, max_bytes) for key, path in paths.items()}
    for split in ("train", "test"):
        image_path, label_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        image_array, label_array = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if image_array.ndim < 2 or label_array.ndim != 1:
            raise IdxFileError(
                f"{image_path} and {label_path}: need images of shape (N, H, W) and labels of shape (N,); got "
                f"{image_array.shape} and {label_array.shape}."
            )
        if len(image_array) != len(label_array):
            raise IdxFileError(
                f"{image_path} holds {len(image_array)} images but {label_path} {len(label_array)} labels."
            )
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise IdxFileError(
            f"{paths['train_images']} holds images of shape {arrays['train_images'].shape[1:]} but "
            f"{paths['test_images']} of shape {arrays['test_images'].shape[1:]}."
        )

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


def prepared(dataset: Dataset, pad: int = 0, normalize: tuple[float, float] | None = None) -> Dataset:
    """The dataset as a protocol feeds it to its network: square images zero-padded by ``pad``
    pixels on every side (28×28 → 32×32 with 2), then standardized as (x − mean) / std.

    Raises:
        ValueError: ``pad`` > 0 on images that are not square.
    """
    if pad == 0 and normalize is None:
        return dataset

    def transform(images: Tensor) -> Tensor:
        if pad:
            side = math.isqrt(images.shape[1])
            if side * side != images.shape[1]:
                raise ValueError(f"padding needs square images; {dataset.name} has {images.shape[1]} pixels.")
            images = torch.nn.functional.pad(images.reshape(-1, side, side), (pad, pad, pad, pad)).flatten(1)
        if normalize is not None:
            mean, std = normalize
            images = (images - mean) / std
        return images

    return Dataset(dataset.name, transform(dataset.train_x), dataset.train_y, transform(dataset.test_x), dataset.test_y)
