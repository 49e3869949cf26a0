"""GPU op benchmark: the fused squared-gradient and per-sample-norm kernels and the KFAC factor update
against cuBLAS.

Usage (on a CUDA machine)::

    python benchmarks/bench_gpu_ops.py [--repeats 20]

Linear 4096 × 4096, B = 64, T ∈ {1, 128, 512}, float32 and bfloat16 inputs. For each case: time of
``sqgrad_accumulate`` (auto dispatch: Triton for T > 1, one cuBLAS GEMM for T = 1), time of the plain
weight-gradient GEMM Gᵀ A over the same (N·T) rows in the same run, useful TFLOP/s (the per-sample
tiles' 2·N·T·O·I FLOPs), effective GB/s of the inputs read, the ratio, and peak memory; the same
for ``persample_sqnorm`` (at these shapes the Gram form). Then ``kfac_factor_update`` on
(N·T, 4096) rows against ``torch.addmm`` on the full square.
"""

from __future__ import annotations

import argparse

import torch

from fisherkit.ops import kfac_factor_update, persample_sqnorm, sqgrad_accumulate


def cuda_seconds(fn, repeats: int) -> float:
    """Median of CUDA-event timings after a warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


def peak_bytes(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu_ops.py needs a CUDA device.")
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}\n")
    print("| op | dtype | T | ms | TFLOP/s | GB/s | cuBLAS GEMM ms | × GEMM | peak MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    features, batch = 4096, 64
    for dtype in (torch.float32, torch.bfloat16):
        for positions in (1, 128, 512):
            g = torch.randn(1, batch, positions, features, device="cuda", dtype=dtype)
            a = torch.randn(batch, positions, features, device="cuda", dtype=dtype)
            out = torch.zeros(features, features, device="cuda")
            rows_g, rows_a = g.reshape(-1, features), a.reshape(-1, features)

            def fused(out=out, g=g, a=a) -> None:
                sqgrad_accumulate(out, g, a)

            def gemm(rows_g=rows_g, rows_a=rows_a) -> None:
                torch.matmul(rows_g.T, rows_a)

            norms = torch.zeros(1, batch, device="cuda")

            def sqnorm(norms=norms, g=g, a=a) -> None:
                persample_sqnorm(norms, g, a)

            baseline = cuda_seconds(gemm, args.repeats)
            flops = 2 * batch * positions * features * features
            read = (g.numel() + a.numel()) * g.element_size()
            for name, op in (("sqgrad_accumulate", fused), ("persample_sqnorm", sqnorm)):
                seconds = cuda_seconds(op, args.repeats)
                print(
                    f"| {name} | {str(dtype)[6:]} | {positions} | {1000 * seconds:.2f} | "
                    f"{flops / seconds / 1e12:.1f} | {read / seconds / 1e9:.0f} | {1000 * baseline:.2f} | "
                    f"{seconds / baseline:.2f} | {peak_bytes(op) / 2**20:.0f} |"
                )
            factor = torch.zeros(features, features, device="cuda")

            def syrk(factor=factor, rows=rows_a) -> None:
                kfac_factor_update(factor, rows)

            def addmm(factor=factor, rows=rows_a) -> None:
                factor.addmm_(rows.T.float(), rows.float())

            seconds, baseline = cuda_seconds(syrk, args.repeats), cuda_seconds(addmm, args.repeats)
            flops = 2 * rows_a.shape[0] * features * features
            print(
                f"| kfac_factor_update | {str(dtype)[6:]} | {positions} | {1000 * seconds:.2f} | "
                f"{flops / seconds / 1e12:.1f} | {rows_a.numel() * rows_a.element_size() / seconds / 1e9:.0f} | "
                f"{1000 * baseline:.2f} | {seconds / baseline:.2f} | {peak_bytes(syrk) / 2**20:.0f} |"
            )


if __name__ == "__main__":
    main()
