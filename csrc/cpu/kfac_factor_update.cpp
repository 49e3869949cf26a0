// CPU implementation of fisherkit::kfac_factor_update_: factor <- beta * factor + alpha * X'^T X'
// with X' = [X, 1] when append_ones (the bias column is handled virtually: its row is the column
// sums of X and its corner is N, so X is never copied).
//
// Only lower-triangle tiles are computed (a blocked SYRK: about half the FLOPs of a full GEMM for
// large D), accumulated in the factor's dtype (float32 or float64), then mirrored to the upper
// triangle, so the result is exactly symmetric.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>

namespace fisherkit {
namespace {

constexpr int64_t kTile = 256;

}  // namespace

void kfac_factor_update_cpu(at::Tensor factor, const at::Tensor& inputs, double alpha, double beta,
                            bool append_ones) {
  TORCH_CHECK(factor.scalar_type() == at::kFloat || factor.scalar_type() == at::kDouble,
              "kfac_factor_update_: factor must be float32 or float64");
  TORCH_CHECK(inputs.dim() == 2, "kfac_factor_update_: inputs must be (N, D)");
  const int64_t dim = inputs.size(1), extra = append_ones ? 1 : 0;
  TORCH_CHECK(factor.dim() == 2 && factor.size(0) == dim + extra && factor.size(1) == dim + extra,
              "kfac_factor_update_: factor must be (D + append_ones) square");
  const auto x = inputs.to(factor.scalar_type());
  auto block = factor.narrow(0, 0, dim).narrow(1, 0, dim);
  for (int64_t row = 0; row < dim; row += kTile) {
    const int64_t rows = std::min(kTile, dim - row);
    const auto x_rows = x.narrow(1, row, rows);
    for (int64_t col = 0; col <= row; col += kTile) {
      const int64_t cols = std::min(kTile, dim - col);
      auto tile = block.narrow(0, row, rows).narrow(1, col, cols);
      tile.addmm_(x_rows.t(), x.narrow(1, col, cols), beta, alpha);
      if (col == row) {  // GEMM rounding leaves a diagonal tile only nearly symmetric
        tile.copy_(tile.tril() + tile.tril(-1).t());
      }
    }
  }
  // mirror the strictly-upper tiles from the lower ones
  for (int64_t row = 0; row < dim; row += kTile) {
    const int64_t rows = std::min(kTile, dim - row);
    for (int64_t col = row + kTile; col < dim; col += kTile) {
      const int64_t cols = std::min(kTile, dim - col);
      block.narrow(0, row, rows).narrow(1, col, cols).copy_(block.narrow(0, col, cols).narrow(1, row, rows).t());
    }
  }
  if (append_ones) {
    auto last_row = factor.select(0, dim).narrow(0, 0, dim);
    last_row.mul_(beta).add_(x.sum(0), alpha);
    factor.select(1, dim).narrow(0, 0, dim).copy_(last_row);
    auto corner = factor.select(0, dim).select(0, dim);
    corner.mul_(beta).add_(static_cast<double>(inputs.size(0)) * alpha);
  }
}

TORCH_LIBRARY_IMPL(fisherkit, CPU, m) { m.impl("kfac_factor_update_", &kfac_factor_update_cpu); }

}  // namespace fisherkit
