// Residual add on the CPU: y = a + b (y may alias a or b); backward da += dy, db += dy.
// Shapes: all [n]. Null da or db is skipped.
#include "core/ops/residual.h"

namespace lora::ops {

void residual_forward_cpu(float* y, const float* a, const float* b, size_t n) {
  detail::check_residual_forward_args(y, a, b, n);
  const long count = static_cast<long>(n);
#pragma omp parallel for simd schedule(static) if (count > 65536)
  for (long i = 0; i < count; ++i) y[i] = a[i] + b[i];
}

void residual_backward_cpu(float* da, float* db, const float* dy, size_t n) {
  detail::check_residual_backward_args(dy, n);
  const long count = static_cast<long>(n);
  if (da != nullptr) {
#pragma omp parallel for simd schedule(static) if (count > 65536)
    for (long i = 0; i < count; ++i) da[i] += dy[i];
  }
  if (db != nullptr) {
#pragma omp parallel for simd schedule(static) if (count > 65536)
    for (long i = 0; i < count; ++i) db[i] += dy[i];
  }
}

}  // namespace lora::ops
