"""Malformed MNIST-format data files: each is an error that names the file and what is wrong,
with sizes checked before anything is allocated and decompression bounded."""

from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path

import pytest
import torch
from idx_files import idx_header, write_file

from fisherkit.apps.cli import main as cli_main
from fisherkit.apps.continual.datasets import IDX_FILES, load_idx_directory
from fisherkit.apps.continual.idx import IdxFileError, read_idx


def _directory(tmp_path: Path, train: int = 5, test: int = 2, train_labels: int | None = None) -> Path:
    images = torch.randint(0, 256, (train, 3, 2), dtype=torch.uint8)
    write_file(tmp_path / IDX_FILES["train_images"], idx_header((train, 3, 2)) + images.numpy().tobytes())
    count = train if train_labels is None else train_labels
    write_file(tmp_path / IDX_FILES["train_labels"], idx_header((count,)) + bytes(range(count)))
    write_file(tmp_path / IDX_FILES["test_images"], idx_header((test, 3, 2)) + bytes(6 * test), compress=True)
    write_file(tmp_path / IDX_FILES["test_labels"], idx_header((test,)) + bytes(test))
    return tmp_path


@pytest.mark.parametrize(
    "payload, compress, words",
    [
        (b"\x00\x00\x0d\x01" + bytes(8), False, r"not an IDX file of unsigned bytes \(magic number 00000d01"),
        (b"", False, r"magic number missing"),
        (idx_header((4, 3))[:7], False, r"header is truncated \(7 of 12 bytes\)"),
        (idx_header((4, 3)) + bytes(5), False, r"declares shape \(4, 3\) \(12 bytes\) but the file holds 5 bytes"),
        (idx_header((4, 3)) + bytes(20), False, r"declares shape \(4, 3\) \(12 bytes\) but the file holds 20 bytes"),
        (idx_header((4, 3)) + bytes(5), True, r"declares shape \(4, 3\) \(12 bytes\) but the file holds 5 bytes"),
        (
            idx_header((65535, 65535, 65535)),
            False,
            r"declares shape \(65535, 65535, 65535\), 281462092005375 bytes, more than",
        ),
    ],
    ids=[
        "bad-magic",
        "empty",
        "truncated-header",
        "truncated-data",
        "trailing-data",
        "truncated-gzip",
        "overflowing-sizes",
    ],
)
def test_malformed_files_are_named_with_their_fault(tmp_path, payload, compress, words):
    path = write_file(tmp_path / "train-images-idx3-ubyte", payload, compress)
    with pytest.raises(IdxFileError, match=rf"{path.name}: .*{words}"):
        read_idx(path)


def test_a_file_that_is_not_gzip_or_is_cut_short_is_named(tmp_path):
    fake = write_file(tmp_path / "fake-idx1-ubyte.gz", idx_header((3,)) + bytes(3))  # raw bytes under a .gz name
    with pytest.raises(IdxFileError, match=r"fake-idx1-ubyte.gz: cannot be read as gzip"):
        read_idx(fake)
    whole = write_file(tmp_path / "cut-idx1-ubyte", idx_header((3000,)) + bytes(3000), compress=True).read_bytes()
    cut = tmp_path / "cut-idx1-ubyte.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(IdxFileError, match=r"cut-idx1-ubyte.gz: "):
        read_idx(cut)


def test_a_file_that_inflates_past_its_header_is_never_decompressed_whole(tmp_path):
    path = tmp_path / "bomb-idx1-ubyte.gz"
    with gzip.open(path, "wb") as handle:  # a 12-byte header, then 200 MB of zeros (≈ 200 kB compressed)
        handle.write(idx_header((10,)) + bytes(10))
        for _ in range(200):
            handle.write(bytes(2**20))
    tracemalloc.start()
    with pytest.raises(IdxFileError, match=r"bomb-idx1-ubyte.gz: .*declares shape \(10,\)"):
        read_idx(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**20  # nothing like the 200 MB the stream holds


def test_the_size_limit_is_checked_before_reading(tmp_path):
    path = write_file(tmp_path / "big-idx1-ubyte", idx_header((1000,)) + bytes(1000))
    with pytest.raises(IdxFileError, match=r"1000 bytes, more than the limit of 999 bytes \(pass max_bytes="):
        read_idx(path, max_bytes=999)
    assert read_idx(path).shape == (1000,)


def test_images_and_labels_are_cross_checked(tmp_path):
    _directory(tmp_path, train=5, train_labels=4)
    with pytest.raises(
        IdxFileError, match=r"train-images-idx3-ubyte holds 5 images but .*train-labels-idx1-ubyte 4 labels"
    ):
        load_idx_directory(tmp_path)


def test_train_and_test_images_must_have_one_shape(tmp_path):
    _directory(tmp_path)
    (tmp_path / f"{IDX_FILES['test_images']}.gz").unlink()
    write_file(tmp_path / IDX_FILES["test_images"], idx_header((2, 2, 3)) + bytes(12))
    with pytest.raises(IdxFileError, match=r"of shape \(3, 2\) but .*t10k-images-idx3-ubyte of shape \(2, 3\)"):
        load_idx_directory(tmp_path)


def test_a_well_formed_directory_reads_back_its_values(tmp_path):
    data = load_idx_directory(_directory(tmp_path))
    assert data.train_x.shape == (5, 6) and data.test_x.shape == (2, 6)
    assert data.train_y.tolist() == [0, 1, 2, 3, 4]


def test_the_command_line_reports_data_errors_in_one_line(tmp_path, capsys):
    _directory(tmp_path, train=5, train_labels=4)
    with pytest.raises(SystemExit, match=r"^fisherkit cl: .*holds 5 images but .* 4 labels"):
        cli_main(["cl", "--scenario", "split-idx", "--data-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"^fisherkit cl: no directory .*missing"):
        cli_main(["cl", "--scenario", "split-idx", "--data-dir", str(tmp_path / "missing")])
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match=r"^fisherkit cl: .*file is a file, not a directory"):
        cli_main(["cl", "--scenario", "split-idx", "--data-dir", str(tmp_path / "file")])
