// CPU implementation of fisherkit::sqgrad_accumulate_.
//
// T == 1: one GEMM, out += scale * (sum_k G_k^2)^T (A^2).
// T  > 1: samples are split over threads; each thread forms one per-sample gradient tile
// P = G_{k,n}^T A_n (O x I) at a time in a cache-resident scratch buffer, squares it and adds it
// into its private accumulator. A [N, O, I] tensor never exists. Partials are added in thread order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

namespace fisherkit {

void sqgrad_accumulate_cpu(at::Tensor out, const at::Tensor& grad_output, const at::Tensor& inputs, double scale) {
  TORCH_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble,
              "sqgrad_accumulate_: out must be float32 or float64");
  TORCH_CHECK(grad_output.dim() == 4 && inputs.dim() == 3, "sqgrad_accumulate_: need g (K,N,T,O) and a (N,T,I)");
  const int64_t samples = grad_output.size(1), positions = grad_output.size(2);
  const int64_t out_features = grad_output.size(3), in_features = inputs.size(2);
  TORCH_CHECK(inputs.size(0) == samples && inputs.size(1) == positions, "sqgrad_accumulate_: N or T disagree");
  TORCH_CHECK(out.size(0) == out_features && out.size(1) == in_features, "sqgrad_accumulate_: out shape disagrees");
  const auto dtype = out.scalar_type();
  if (positions == 1) {
    auto g_squared = grad_output.select(2, 0).to(dtype).square().sum(0);
    auto a_squared = inputs.select(1, 0).to(dtype).square();
    out.addmm_(g_squared.t(), a_squared, /*beta=*/1.0, /*alpha=*/scale);
    return;
  }
  const auto g = grad_output.to(dtype).contiguous();
  const auto a = inputs.to(dtype).contiguous();
  const int64_t columns = g.size(0);
  std::vector<at::Tensor> partials(at::get_num_threads());
  at::parallel_for(0, samples, 1, [&](int64_t begin, int64_t end) {
    auto& partial = partials[at::get_thread_num()];
    if (!partial.defined()) {
      partial = at::zeros({out_features, in_features}, out.options());
    }
    auto tile = at::empty({out_features, in_features}, out.options());
    for (int64_t n = begin; n < end; ++n) {
      const auto a_n = a.select(0, n);
      for (int64_t k = 0; k < columns; ++k) {
        at::mm_out(tile, g.select(0, k).select(0, n).t(), a_n);
        partial.addcmul_(tile, tile);
      }
    }
  });
  for (const auto& partial : partials) {
    if (partial.defined()) {
      out.add_(partial, scale);
    }
  }
}

TORCH_LIBRARY_IMPL(fisherkit, CPU, m) { m.impl("sqgrad_accumulate_", &sqgrad_accumulate_cpu); }

}  // namespace fisherkit
