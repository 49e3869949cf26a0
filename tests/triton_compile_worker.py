"""Run by test_ops_triton_compile.py without ``TRITON_INTERPRET``: compiles every fisherkit Triton
kernel ahead of time for an NVIDIA target (no GPU needed) and prints one line per kernel."""

from __future__ import annotations

import inspect
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fisherkit.ops import triton_kernels as kernels

FLOAT32_POINTERS = {"partial_ptr", "norms_ptr", "factor_ptr"}
INDEX_POINTERS = {"tile_rows_ptr", "tile_cols_ptr"}
FLOAT_SCALARS = {"alpha", "beta"}
TILES = {"BLOCK_O": 32, "BLOCK_I": 32, "BLOCK_T": 16, "BLOCK_F": 32, "BLOCK_D": 32, "BLOCK_N": 16}
KERNELS = (
    kernels.sqgrad_tiles_kernel,
    kernels.sqnorm_tiles_kernel,
    kernels.sqnorm_gram_kernel,
    kernels.syrk_lower_kernel,
)


def signature(kernel: triton.JITFunction, input_type: str, half: bool) -> tuple[dict[str, str], dict[str, object]]:
    """Argument types as the launches in ``triton_backend`` pass them, and the constexprs."""
    types, constexprs = {}, {}
    for name in inspect.signature(kernel.fn).parameters:
        if name == "HALF_INPUTS" or name in TILES:
            types[name] = "constexpr"
            constexprs[name] = half if name == "HALF_INPUTS" else TILES[name]
        elif name in FLOAT32_POINTERS:
            types[name] = "*fp32"
        elif name in INDEX_POINTERS:
            types[name] = "*i32"
        elif name.endswith("_ptr"):
            types[name] = input_type
        else:
            types[name] = "fp32" if name in FLOAT_SCALARS else "i32"
    return types, constexprs


def main(capability: int) -> None:
    target = GPUTarget("cuda", capability, 32)
    for kernel in KERNELS:
        for input_type, half in (("*fp32", False), ("*bf16", True)):
            types, constexprs = signature(kernel, input_type, half)
            compiled = triton.compile(ASTSource(kernel, types, constexprs=constexprs), target=target)
            print(f"{kernel.fn.__name__} {input_type} sm_{capability}: {len(compiled.asm['cubin'])} bytes of cubin")


if __name__ == "__main__":
    main(int(sys.argv[1]))
