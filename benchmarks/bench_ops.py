"""The ops against the GEMM they replace, per backend, on CPU.

Usage::

    python benchmarks/bench_ops.py [--repeats 9] [--threads 2]

sqgrad_accumulate and persample_sqnorm are compared with the plain weight-gradient GEMM Gᵀ A of
the same shape (``torch.matmul``), persample_sqnorm also with materializing the per-sample
gradients (einsum) and taking their norms; kfac_factor_update with ``torch.addmm`` on the full square. Reported: median
time, the ratio to that baseline measured in the same run, useful GFLOP/s (the FLOPs the op must
do: 2·K·N·T·O·I, resp. D²·N for the triangle), and peak tensor memory.
"""

from __future__ import annotations

import argparse

import torch
from measure import interleaved_median_seconds, peak_tensor_bytes

from fisherkit.ops import extension_status, implementations, kfac_factor_update, persample_sqnorm, sqgrad_accumulate
from fisherkit.ops.dispatch import backend_unavailable

LAYER_SHAPES = {  # (K, N, T, O, I): mlp- and seq-sized layers
    "mlp 784→512, T=1": (1, 256, 1, 512, 784),
    "seq 128→256, T=64": (1, 32, 64, 256, 128),
    "seq 256→256, T=512": (1, 8, 512, 256, 256),
}
KFAC_SHAPES = {"D=785 (mlp input + bias), N=256": (256, 784), "D=2049, N=1024": (1024, 2048)}


def _backends(op: str) -> list[str]:
    """The CPU backends with an implementation of ``op`` (Triton on CPU is only its interpreter, a
    correctness tool)."""
    return [b for b in ("reference", "cpp") if b in implementations(op) and backend_unavailable(b) is None]


def bench_layer_ops(repeats: int) -> list[str]:
    """sqgrad_accumulate and persample_sqnorm per backend against the weight-gradient GEMM."""
    rows = []
    for label, (k, n, t, o, i) in LAYER_SHAPES.items():
        g, a = torch.randn(k, n, t, o), torch.randn(n, t, i)
        g_flat, a_flat = g.reshape(-1, o), a.expand(k, n, t, i).reshape(-1, i)
        ops = {
            "sqgrad": (torch.zeros(o, i), sqgrad_accumulate, "sqgrad_accumulate"),
            "sqnorm": (torch.zeros(k, n), persample_sqnorm, "persample_sqnorm"),
        }
        for op, (out, function, name) in ops.items():
            runs = {"matmul Gᵀ A": lambda g_flat=g_flat, a_flat=a_flat: g_flat.T @ a_flat}
            if op == "sqnorm":
                runs["per-sample einsum, then norms"] = lambda g=g, a=a: (
                    torch.einsum("knto,nti->knoi", g, a).square().sum((-2, -1))
                )
            for backend in _backends(name):
                runs[backend] = lambda b=backend, g=g, a=a, out=out, f=function: f(out, g, a, backend=b)
            seconds = interleaved_median_seconds(runs, repeats)
            flops = 2 * k * n * t * o * i
            for name, run in runs.items():
                rows.append(
                    f"| {op} {label} | {name} | {seconds[name] * 1e3:.3f} | "
                    f"{seconds[name] / seconds['matmul Gᵀ A']:.2f} | {flops / seconds[name] / 1e9:.1f} | "
                    f"{peak_tensor_bytes(run) / 2**20:.2f} |"
                )
    return rows


def bench_kfac(repeats: int) -> list[str]:
    rows = []
    for label, (n, d) in KFAC_SHAPES.items():
        x = torch.randn(n, d)
        factor = torch.eye(d + 1)
        full = torch.eye(d)
        runs = {"addmm full square": lambda x=x, full=full: full.addmm_(x.T, x, beta=0.95, alpha=0.05)}
        for backend in _backends("kfac_factor_update"):
            runs[backend] = lambda b=backend, x=x, f=factor: kfac_factor_update(f, x, 0.05, 0.95, True, backend=b)
        seconds = interleaved_median_seconds(runs, repeats)
        flops = d * d * n
        for name, run in runs.items():
            rows.append(
                f"| kfac {label} | {name} | {seconds[name] * 1e3:.3f} | "
                f"{seconds[name] / seconds['addmm full square']:.2f} | {flops / seconds[name] / 1e9:.1f} | "
                f"{peak_tensor_bytes(run) / 2**20:.2f} |"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, fisherkit._C: {extension_status().reason}\n")
    print("| op, shape | implementation | ms | × baseline | useful GFLOP/s | peak MB |")
    print("|---|---|---:|---:|---:|---:|")
    print("\n".join(bench_layer_ops(args.repeats) + bench_kfac(args.repeats)))


if __name__ == "__main__":
    main()
