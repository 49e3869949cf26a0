"""Run by test_ops_triton_compile.py without ``TRITON_INTERPRET``: compiles every fisherkit Triton
kernel ahead of time, with the GPU launch configuration, for an NVIDIA target (no GPU needed) and
prints one line per kernel with its registers and stack (spill) bytes."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import tempfile

import triton
import triton.backends.nvidia as nvidia_backend
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fisherkit.ops.triton.common import GPU_CONFIG
from fisherkit.ops.triton.kfac_factor_update import kfac_factor_update_kernel
from fisherkit.ops.triton.persample_sqnorm import persample_sqnorm_gram_kernel, persample_sqnorm_tiles_kernel
from fisherkit.ops.triton.sqgrad_accumulate import sqgrad_accumulate_kernel

FLOAT32_POINTERS = {"partial_ptr", "factor_ptr"}
INDEX_POINTERS = {"tile_rows_ptr", "tile_cols_ptr", "pair_first_ptr", "pair_second_ptr"}
FLOAT_SCALARS = {"alpha", "beta"}
CONFIG = GPU_CONFIG
TILE_TILES = {"BLOCK_O": CONFIG.rows, "BLOCK_I": CONFIG.cols, "BLOCK_T": CONFIG.reduce}
KERNELS = {  # each kernel with the tile sizes its op's launch passes on a GPU
    sqgrad_accumulate_kernel: TILE_TILES,
    persample_sqnorm_tiles_kernel: TILE_TILES,
    persample_sqnorm_gram_kernel: {"BLOCK_T": CONFIG.gram, "BLOCK_F": CONFIG.gram_features},
    kfac_factor_update_kernel: {"BLOCK_D": CONFIG.cols, "BLOCK_N": CONFIG.reduce},
}


def signature(
    kernel: triton.JITFunction, tiles: dict[str, int], input_type: str, half: bool
) -> tuple[dict[str, str], dict[str, object]]:
    """Argument types as the ops' launches pass them, and the constexprs."""
    types, constexprs = {}, {}
    for name in inspect.signature(kernel.fn).parameters:
        if name == "HALF_INPUTS" or name in tiles:
            types[name] = "constexpr"
            constexprs[name] = half if name == "HALF_INPUTS" else tiles[name]
        elif name in FLOAT32_POINTERS:
            types[name] = "*fp32"
        elif name in INDEX_POINTERS:
            types[name] = "*i32"
        elif name.endswith("_ptr"):
            types[name] = input_type
        else:
            types[name] = "fp32" if name in FLOAT_SCALARS else "i32"
    return types, constexprs


def main(capabilities: list[int]) -> None:
    for capability in capabilities:
        compile_all(GPUTarget("cuda", capability, 32))


def compile_all(target: GPUTarget) -> None:
    options = {"num_warps": CONFIG.num_warps, "num_stages": CONFIG.num_stages}
    for kernel, tiles in KERNELS.items():
        for input_type, half in (("*fp32", False), ("*bf16", True)):
            types, constexprs = signature(kernel, tiles, input_type, half)
            source = ASTSource(kernel, types, constexprs=constexprs)
            compiled = triton.compile(source, target=target, options=options)
            usage = resource_usage(compiled.asm["cubin"])
            print(f"{kernel.fn.__name__} {input_type} sm_{target.arch}: {len(compiled.asm['cubin'])} bytes, {usage}")


def resource_usage(cubin: bytes) -> str:
    """``REG:n STACK:m`` of a cubin, from the cuobjdump that ships with Triton (STACK > 0: spills)."""
    tool = os.path.join(os.path.dirname(nvidia_backend.__file__), "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        report = subprocess.run([tool, "--dump-resource-usage", file.name], capture_output=True, text=True, check=True)
    match = re.search(r"REG:\d+ STACK:\d+", report.stdout)
    if match is None:
        raise RuntimeError(f"no resource usage in cuobjdump's report: {report.stdout}")
    return match.group()


if __name__ == "__main__":
    main([int(capability) for capability in sys.argv[1:]])
