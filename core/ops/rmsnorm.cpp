// RMSNorm on the CPU: rows in parallel (OpenMP); the sums of squares and the backward's row dot
// product accumulate in double. dweight is summed in column blocks (each thread owns its columns,
// rows in order), so the result does not depend on the thread count.
#include "core/ops/rmsnorm.h"

#include <algorithm>
#include <cmath>
#include <cstddef>

namespace lora::ops {
namespace {
constexpr int kColumnBlock = 32;

// One row: rstd and y of xi.
inline void rmsnorm_row(float* yi, float* rstd_i, const float* xi, const float* weight, float eps,
                        int c) {
  double ss = 0.0;
#pragma omp simd reduction(+ : ss)
  for (int j = 0; j < c; ++j) ss += static_cast<double>(xi[j]) * xi[j];
  const float r = static_cast<float>(1.0 / std::sqrt(ss / c + static_cast<double>(eps)));
  *rstd_i = r;
#pragma omp simd
  for (int j = 0; j < c; ++j) yi[j] = weight[j] * (xi[j] * r);
}

}  // namespace

void rmsnorm_forward_cpu(float* y, float* rstd, const float* x, const float* weight, float eps,
                         int n, int c) {
  detail::check_rmsnorm_forward_args(y, rstd, x, weight, eps, n, c);
#pragma omp parallel for schedule(static) if (static_cast<long>(n) * c > 32768)
  for (int i = 0; i < n; ++i) {
    rmsnorm_row(y + static_cast<size_t>(i) * c, rstd + i, x + static_cast<size_t>(i) * c, weight,
                eps, c);
  }
}

void residual_rmsnorm_forward_cpu(float* x_out, float* y, float* rstd, const float* a,
                                  const float* b, const float* weight, float eps, int n, int c) {
  detail::check_rmsnorm_forward_args(y, rstd, x_out, weight, eps, n, c);
  LORA_CHECK(a != nullptr && b != nullptr, "a and b must not be null");
#pragma omp parallel for schedule(static) if (static_cast<long>(n) * c > 32768)
  for (int i = 0; i < n; ++i) {
    const size_t off = static_cast<size_t>(i) * c;
    float* xi = x_out + off;
#pragma omp simd
    for (int j = 0; j < c; ++j) xi[j] = a[off + j] + b[off + j];
    rmsnorm_row(y + off, rstd + i, xi, weight, eps, c);
  }
}

void rmsnorm_backward_cpu(float* dx, float* dweight, const float* dy, const float* x,
                          const float* weight, const float* rstd, int n, int c) {
  detail::check_rmsnorm_backward_args(dx, dy, x, weight, rstd, n, c);
#pragma omp parallel for schedule(static) if (static_cast<long>(n) * c > 32768)
  for (int i = 0; i < n; ++i) {
    const float* xi = x + static_cast<size_t>(i) * c;
    const float* gi = dy + static_cast<size_t>(i) * c;
    float* dxi = dx + static_cast<size_t>(i) * c;
    const float r = rstd[i];
    double dot = 0.0;
#pragma omp simd reduction(+ : dot)
    for (int j = 0; j < c; ++j) dot += static_cast<double>(weight[j] * gi[j]) * xi[j];
    const float k = static_cast<float>(dot / c) * r * r;
#pragma omp simd
    for (int j = 0; j < c; ++j) dxi[j] += r * (weight[j] * gi[j] - xi[j] * k);
  }
  if (dweight == nullptr) return;
  const int n_blocks = (c + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (static_cast<long>(n) * c > 32768)
  for (int blk = 0; blk < n_blocks; ++blk) {
    const int j0 = blk * kColumnBlock, j1 = std::min(c, j0 + kColumnBlock);
    for (int i = 0; i < n; ++i) {
      const float* xi = x + static_cast<size_t>(i) * c;
      const float* gi = dy + static_cast<size_t>(i) * c;
      const float r = rstd[i];
#pragma omp simd
      for (int j = j0; j < j1; ++j) dweight[j] += gi[j] * xi[j] * r;
    }
  }
}

}  // namespace lora::ops
