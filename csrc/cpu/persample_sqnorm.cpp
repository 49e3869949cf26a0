// CPU implementation of fisherkit::persample_sqnorm_.
//
// out[k, n] += scale * ||sum_t g[k,n,t,:] a[n,t,:]^T||_F^2 (+ ||sum_t g[k,n,t,:]||^2 with bias).
// T == 1: ||g||^2 ||a||^2. T > 1, gram: sum_{t,t'} (G G^T)_{tt'} (A A^T)_{tt'}; otherwise the
// per-sample tiles G^T A are formed a few samples at a time into a reused scratch buffer,
// squared and summed. The caller chooses the cheaper form; a [N, O, I] tensor never exists.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>

namespace fisherkit {
namespace {

constexpr int64_t kScratchBytes = 2 << 20;  // as SCRATCH_BYTES in fisherkit/ops/sqgrad.py

}  // namespace

void persample_sqnorm_cpu(at::Tensor out, const at::Tensor& grad_output, const at::Tensor& inputs, double scale,
                          bool bias, bool gram) {
  TORCH_CHECK(out.scalar_type() == at::kFloat || out.scalar_type() == at::kDouble,
              "persample_sqnorm_: out must be float32 or float64");
  TORCH_CHECK(grad_output.dim() == 4 && inputs.dim() == 3, "persample_sqnorm_: need g (K,N,T,O) and a (N,T,I)");
  TORCH_CHECK(inputs.size(0) == grad_output.size(1) && inputs.size(1) == grad_output.size(2),
              "persample_sqnorm_: N or T disagree");
  TORCH_CHECK(out.dim() == 2 && out.size(0) == grad_output.size(0) && out.size(1) == grad_output.size(1),
              "persample_sqnorm_: out must be (K, N)");
  const auto dtype = out.scalar_type();
  const auto g = grad_output.to(dtype);
  const auto a = inputs.to(dtype);
  const int64_t columns = g.size(0), samples = g.size(1), positions = g.size(2);
  if (positions == 1) {
    const auto g_squared = g.select(2, 0).square().sum(-1);
    auto a_squared = a.select(1, 0).square().sum(-1);
    if (bias) {
      a_squared.add_(1.0);
    }
    out.add_(g_squared * a_squared, scale);
    return;
  }
  if (gram) {
    const int64_t chunk = std::clamp<int64_t>(
        kScratchBytes / std::max<int64_t>(1, columns * positions * positions * out.element_size()), 1, samples);
    for (int64_t start = 0; start < samples; start += chunk) {
      const int64_t length = std::min(chunk, samples - start);
      const auto g_chunk = g.narrow(1, start, length);
      const auto a_chunk = a.narrow(0, start, length);
      const auto norms =
          (at::matmul(g_chunk, g_chunk.transpose(-1, -2)) * at::matmul(a_chunk, a_chunk.transpose(-1, -2)))
              .sum(at::IntArrayRef{-2, -1});
      out.narrow(1, start, length).add_(norms, scale);
    }
  } else {
    // One scratch buffer for every chunk of tiles (a fresh allocation per chunk costs page faults).
    const int64_t tile_bytes = g.size(3) * a.size(2) * out.element_size();
    const int64_t chunk = std::clamp<int64_t>(kScratchBytes / std::max<int64_t>(1, tile_bytes), 1, samples);
    auto scratch = at::empty({chunk, g.size(3), a.size(2)}, out.options());
    for (int64_t k = 0; k < columns; ++k) {
      for (int64_t start = 0; start < samples; start += chunk) {
        const int64_t length = std::min(chunk, samples - start);
        auto tiles = scratch.narrow(0, 0, length);
        at::bmm_out(tiles, g.select(0, k).narrow(0, start, length).transpose(-1, -2), a.narrow(0, start, length));
        out.select(0, k).narrow(0, start, length).add_(tiles.mul_(tiles).sum(at::IntArrayRef{-2, -1}), scale);
      }
    }
  }
  if (bias) {
    out.add_(g.sum(2).square().sum(-1), scale);
  }
}

TORCH_LIBRARY_IMPL(fisherkit, CPU, m) { m.impl("persample_sqnorm_", &persample_sqnorm_cpu); }

}  // namespace fisherkit
