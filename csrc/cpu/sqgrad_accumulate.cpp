// CPU implementation of fisherkit::sqgrad_accumulate_.
//
// T == 1: one GEMM, out += scale * (sum_k G_k * G_k)^T (A * A); the bias sum reuses sum_k G_k * G_k.
// T  > 1: per-sample gradient tiles P = G_{k,n}^T A_n (O x I) are formed a few samples at a time by
// one batched GEMM into a reused scratch buffer, squared in place and summed into out.
// A [N, O, I] tensor never exists; chunks are added in a fixed order (deterministic).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <algorithm>

namespace fisherkit {
namespace {

// Per-sample tiles formed at once (8 MB was no faster end to end, and used more memory).
constexpr int64_t kScratchBytes = 2 << 20;

void check_shapes(const at::Tensor& out, const std::optional<at::Tensor>& bias_out, const at::Tensor& g,
                  const at::Tensor& a) {
  TORCH_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble,
              "sqgrad_accumulate_: out must be float32 or float64");
  TORCH_CHECK(g.dim() == 4 && a.dim() == 3, "sqgrad_accumulate_: need g (K,N,T,O) and a (N,T,I)");
  TORCH_CHECK(a.size(0) == g.size(1) && a.size(1) == g.size(2), "sqgrad_accumulate_: N or T disagree");
  TORCH_CHECK(out.size(0) == g.size(3) && out.size(1) == a.size(2), "sqgrad_accumulate_: out shape disagrees");
  if (bias_out.has_value()) {
    TORCH_CHECK(bias_out->dim() == 1 && bias_out->size(0) == g.size(3), "sqgrad_accumulate_: bias_out must be (O,)");
    TORCH_CHECK(bias_out->scalar_type() == out.scalar_type(), "sqgrad_accumulate_: bias_out dtype must match out");
  }
}

void unshared(at::Tensor& out, const std::optional<at::Tensor>& bias_out, const at::Tensor& g, const at::Tensor& a,
              double scale) {
  const auto dtype = out.scalar_type();
  const auto g0 = g.select(2, 0).to(dtype);
  const auto g_squared = at::mul(g0, g0).sum(0);
  const auto a0 = a.select(1, 0).to(dtype);
  out.addmm_(g_squared.t(), at::mul(a0, a0), /*beta=*/1.0, /*alpha=*/scale);
  if (bias_out.has_value()) {
    bias_out->add_(g_squared.sum(0), scale);
  }
}

void shared(at::Tensor& out, const std::optional<at::Tensor>& bias_out, const at::Tensor& grad_output,
            const at::Tensor& inputs, double scale) {
  // Any strides: the batched GEMM reads its operands in place (conv layouts are position-minor).
  const auto g = grad_output.to(out.scalar_type());
  const auto a = inputs.to(out.scalar_type());
  const int64_t columns = g.size(0), samples = g.size(1);
  const int64_t tile_bytes = g.size(3) * a.size(2) * out.element_size();
  const int64_t chunk = std::clamp<int64_t>(kScratchBytes / std::max<int64_t>(1, tile_bytes), 1, samples);
  // One scratch buffer for every chunk: a fresh allocation per chunk was measured to cost more
  // than the batched GEMM itself (page faults on every first touch).
  auto scratch = at::empty({chunk, g.size(3), a.size(2)}, out.options());
  auto reduced = at::empty_like(out);
  for (int64_t k = 0; k < columns; ++k) {
    for (int64_t start = 0; start < samples; start += chunk) {
      const int64_t length = std::min(chunk, samples - start);
      auto tiles = scratch.narrow(0, 0, length);
      at::bmm_out(tiles, g.select(0, k).narrow(0, start, length).transpose(-1, -2), a.narrow(0, start, length));
      tiles.mul_(tiles);
      at::sum_out(reduced, tiles, at::IntArrayRef{0});
      out.add_(reduced, scale);
    }
  }
  if (bias_out.has_value()) {
    const auto per_sample_bias = g.sum(2);
    bias_out->add_(at::mul(per_sample_bias, per_sample_bias).sum(at::IntArrayRef{0, 1}), scale);
  }
}

}  // namespace

void sqgrad_accumulate_cpu(at::Tensor out, std::optional<at::Tensor> bias_out, const at::Tensor& grad_output,
                           const at::Tensor& inputs, double scale) {
  check_shapes(out, bias_out, grad_output, inputs);
  if (grad_output.size(2) == 1) {
    unshared(out, bias_out, grad_output, inputs, scale);
  } else {
    shared(out, bias_out, grad_output, inputs, scale);
  }
}

TORCH_LIBRARY_IMPL(fisherkit, CPU, m) { m.impl("sqgrad_accumulate_", &sqgrad_accumulate_cpu); }

}  // namespace fisherkit
