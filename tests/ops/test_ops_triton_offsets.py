"""The Triton kernels' offsets across samples and columns are 64-bit: a ``grad_output`` of shape
(17, 64, 512, 4096) (4.2 GiB in fp16) has elements past 2³¹, which 32-bit offsets would wrap.
Checked without allocating such a tensor: ``offset_64`` (what every kernel uses for its sample,
column, split and factor-row offsets) runs in the interpreter on the last sample's indices and
strides, beside the 32-bit product that wraps."""

from __future__ import annotations

import pytest
import torch
from backends import BACKENDS

if "triton" not in BACKENDS:
    pytest.skip("Triton is not installed", allow_module_level=True)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from fisherkit.ops.triton.common import offset_64  # noqa: E402

SHAPE = (17, 64, 512, 4096)  # (K, N, T, O)
STRIDES = (64 * 512 * 4096, 512 * 4096, 4096, 1)


@triton.jit
def offsets_kernel(out_ptr, k, stride_k, n, stride_n):
    tl.store(out_ptr, offset_64(k, stride_k, n, stride_n))
    tl.store(out_ptr + 1, (k * stride_k + n * stride_n).to(tl.int64))  # the 32-bit product


def test_sample_offsets_past_two_to_the_31_do_not_wrap():
    k, n = SHAPE[0] - 1, SHAPE[1] - 1
    exact = k * STRIDES[0] + n * STRIDES[1]
    assert exact >= 2**31  # the last sample starts past 2³¹ elements
    out = torch.zeros(2, dtype=torch.int64)
    offsets_kernel[(1,)](out, k, STRIDES[0], n, STRIDES[1])
    assert int(out[0]) == exact
    assert int(out[1]) != exact  # what the kernels computed before: wrapped to a negative offset
