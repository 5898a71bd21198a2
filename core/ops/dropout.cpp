// Inverted dropout on the CPU with a counter-based mask (see core/rng.h):
//   keep(r, j) = uniform01(hash_u64(seed, stream, row_ids[r], j)) >= p
//   forward:  y[r, j] = keep ? x[r, j] / (1 - p) : 0
//   backward: dx[r, j] += keep ? dy[r, j] / (1 - p) : 0     (mask recomputed, not stored)
// The mask depends only on (seed, stream, row id, column), never on the thread or rank that
// computes it. With p = 0 every element is kept and no hash is evaluated.
// Shapes: x, y, dx, dy [rows, cols]; row_ids [rows].
#include "core/ops/dropout.h"

#include <cstddef>

#include "core/rng.h"

namespace lora::ops {

void dropout_forward_cpu(float* y, const float* x, const uint64_t* row_ids, float p, uint64_t seed,
                         uint64_t stream, int rows, int cols) {
  detail::check_dropout_forward_args(y, x, row_ids, p, rows, cols);
  const float keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (static_cast<long>(rows) * cols > 16384)
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + static_cast<size_t>(r) * cols;
    float* yr = y + static_cast<size_t>(r) * cols;
    if (p == 0.0f) {
#pragma omp simd
      for (int j = 0; j < cols; ++j) yr[j] = xr[j];
      continue;
    }
    const uint64_t id = row_ids[r];
    for (int j = 0; j < cols; ++j) {
      const bool keep = uniform01(hash_u64(seed, stream, id, static_cast<uint64_t>(j))) >= p;
      yr[j] = keep ? xr[j] * keep_scale : 0.0f;
    }
  }
}

void dropout_backward_cpu(float* dx, const float* dy, const uint64_t* row_ids, float p,
                          uint64_t seed, uint64_t stream, int rows, int cols) {
  detail::check_dropout_backward_args(dx, dy, row_ids, p, rows, cols);
  const float keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (static_cast<long>(rows) * cols > 16384)
  for (int r = 0; r < rows; ++r) {
    const float* gr = dy + static_cast<size_t>(r) * cols;
    float* dxr = dx + static_cast<size_t>(r) * cols;
    if (p == 0.0f) {
#pragma omp simd
      for (int j = 0; j < cols; ++j) dxr[j] += gr[j];
      continue;
    }
    const uint64_t id = row_ids[r];
    for (int j = 0; j < cols; ++j) {
      const bool keep = uniform01(hash_u64(seed, stream, id, static_cast<uint64_t>(j))) >= p;
      dxr[j] += keep ? gr[j] * keep_scale : 0.0f;
    }
  }
}

}  // namespace lora::ops
