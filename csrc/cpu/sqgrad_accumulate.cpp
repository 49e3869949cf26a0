// CPU implementation of fisherkit::sqgrad_accumulate_.
//
// T == 1: one GEMM, out += scale * (sum_k G_k * G_k)^T (A * A); the bias sum reuses sum_k G_k * G_k.
// T  > 1: samples are split over threads; each thread forms one per-sample gradient tile
// P = G_{k,n}^T A_n (O x I) at a time in a cache-resident scratch buffer, squares it and adds it
// into its private accumulator. A [N, O, I] tensor never exists. Partials are added in thread order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <vector>

namespace fisherkit {
namespace {

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
  const auto options = out.options();
  const auto g = grad_output.to(out.scalar_type()).contiguous();
  const auto a = inputs.to(out.scalar_type()).contiguous();
  const int64_t columns = g.size(0), samples = g.size(1), out_features = g.size(3), in_features = a.size(2);
  const bool with_bias = bias_out.has_value();
  std::vector<at::Tensor> partials(at::get_num_threads()), bias_partials(at::get_num_threads());
  at::parallel_for(0, samples, 1, [&](int64_t begin, int64_t end) {
    const int thread = at::get_thread_num();
    auto& partial = partials[thread];
    auto& bias_partial = bias_partials[thread];
    if (!partial.defined()) {
      partial = at::zeros({out_features, in_features}, options);
      bias_partial = at::zeros({out_features}, options);
    }
    auto tile = at::empty({out_features, in_features}, options);
    for (int64_t n = begin; n < end; ++n) {
      const auto a_n = a.select(0, n);
      for (int64_t k = 0; k < columns; ++k) {
        const auto g_kn = g.select(0, k).select(0, n);
        at::mm_out(tile, g_kn.t(), a_n);
        partial.addcmul_(tile, tile);
        if (with_bias) {
          const auto b = g_kn.sum(0);
          bias_partial.addcmul_(b, b);
        }
      }
    }
  });
  for (size_t thread = 0; thread < partials.size(); ++thread) {
    if (partials[thread].defined()) {
      out.add_(partials[thread], scale);
      if (with_bias) {
        bias_out->add_(bias_partials[thread], scale);
      }
    }
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
