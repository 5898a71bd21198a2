// LayerNorm over the last dimension on the CPU (eps = kLayerNormEps).
//   forward:  mean[i], rstd[i] of row i;  y[i, j] = (x[i, j] - mean[i]) rstd[i] w[j] + b[j]
//   backward, with xhat = (x - mean) rstd and g = dy * w:
//     dx[i, :]  += rstd[i] (g - mean_j(g) - xhat mean_j(g xhat))
//     dweight   += sum_i dy[i, :] xhat[i, :];   dbias += sum_i dy[i, :]
// Shapes: x, y, dx, dy [n, c]; weight, bias, dweight, dbias [c]; mean, rstd [n].
// dx is computed in parallel over rows; dweight/dbias in parallel over column blocks (each
// thread owns its columns and sums the rows in order: no races, no thread-count dependence).
#include "core/ops/layernorm.h"

#include <algorithm>
#include <cmath>
#include <cstddef>

namespace lora::ops {
namespace {
constexpr int kColumnBlock = 32;

// One row: mean, rstd and y of xi.
inline void layernorm_row(float* yi, float* mean_i, float* rstd_i, const float* xi,
                          const float* weight, const float* bias, int c) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < c; ++j) sum += xi[j];
  const float m = sum / static_cast<float>(c);
  float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
  for (int j = 0; j < c; ++j) {
    const float d = xi[j] - m;
    sq += d * d;
  }
  const float s = 1.0f / std::sqrt(sq / static_cast<float>(c) + kLayerNormEps);
#pragma omp simd
  for (int j = 0; j < c; ++j) yi[j] = (xi[j] - m) * s * weight[j] + bias[j];
  *mean_i = m;
  *rstd_i = s;
}

}  // namespace

void layernorm_forward_cpu(float* y, float* mean, float* rstd, const float* x, const float* weight,
                           const float* bias, int n, int c) {
  detail::check_layernorm_forward_args(y, mean, rstd, x, weight, bias, n, c);
#pragma omp parallel for schedule(static) if (static_cast<long>(n) * c > 32768)
  for (int i = 0; i < n; ++i) {
    layernorm_row(y + static_cast<size_t>(i) * c, mean + i, rstd + i,
                  x + static_cast<size_t>(i) * c, weight, bias, c);
  }
}

void residual_layernorm_forward_cpu(float* x_out, float* y, float* mean, float* rstd, const float* a,
                                    const float* b, const float* weight, const float* bias, int n,
                                    int c) {
  detail::check_layernorm_forward_args(y, mean, rstd, x_out, weight, bias, n, c);
  LORA_CHECK(a != nullptr && b != nullptr, "a and b must not be null");
#pragma omp parallel for schedule(static) if (static_cast<long>(n) * c > 32768)
  for (int i = 0; i < n; ++i) {
    const size_t off = static_cast<size_t>(i) * c;
    float* xi = x_out + off;
#pragma omp simd
    for (int j = 0; j < c; ++j) xi[j] = a[off + j] + b[off + j];
    layernorm_row(y + off, mean + i, rstd + i, xi, weight, bias, c);
  }
}

void layernorm_backward_cpu(float* dx, float* dweight, float* dbias, const float* dy, const float* x,
                            const float* weight, const float* mean, const float* rstd, int n,
                            int c) {
  detail::check_layernorm_backward_args(dx, dy, x, weight, mean, rstd, n, c);
  const bool parallel = static_cast<long>(n) * c > 32768;
  const float inv_c = 1.0f / static_cast<float>(c);
#pragma omp parallel for schedule(static) if (parallel)
  for (int i = 0; i < n; ++i) {
    const float* xi = x + static_cast<size_t>(i) * c;
    const float* gi = dy + static_cast<size_t>(i) * c;
    float* dxi = dx + static_cast<size_t>(i) * c;
    const float m = mean[i];
    const float s = rstd[i];
    float sum_g = 0.0f, sum_gx = 0.0f;
#pragma omp simd reduction(+ : sum_g, sum_gx)
    for (int j = 0; j < c; ++j) {
      const float g = gi[j] * weight[j];
      sum_g += g;
      sum_gx += g * (xi[j] - m) * s;
    }
    const float mean_g = sum_g * inv_c;
    const float mean_gx = sum_gx * inv_c;
#pragma omp simd
    for (int j = 0; j < c; ++j) {
      const float xhat = (xi[j] - m) * s;
      dxi[j] += s * (gi[j] * weight[j] - mean_g - xhat * mean_gx);
    }
  }
  if (dweight == nullptr && dbias == nullptr) return;
  const int n_blocks = (c + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (parallel)
  for (int blk = 0; blk < n_blocks; ++blk) {
    const int j0 = blk * kColumnBlock;
    const int j1 = std::min(c, j0 + kColumnBlock);
    for (int i = 0; i < n; ++i) {
      const float* xi = x + static_cast<size_t>(i) * c;
      const float* gi = dy + static_cast<size_t>(i) * c;
      const float m = mean[i];
      const float s = rstd[i];
      if (dweight != nullptr) {
#pragma omp simd
        for (int j = j0; j < j1; ++j) dweight[j] += gi[j] * (xi[j] - m) * s;
      }
      if (dbias != nullptr) {
#pragma omp simd
        for (int j = j0; j < j1; ++j) dbias[j] += gi[j];
      }
    }
  }
}

}  // namespace lora::ops
