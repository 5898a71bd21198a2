// Residual add: y = a + b. Backward accumulates (+=) dy into da and db.
// Shapes: all [n]. y may alias a or b.
#pragma once

#include <cstddef>

#include "core/error.h"
#include "core/ops/stream.h"

namespace lora::ops {

void residual_forward_cpu(float* y, const float* a, const float* b, size_t n);
void residual_backward_cpu(float* da, float* db, const float* dy, size_t n);

#ifdef LORA_WITH_CUDA
void residual_forward_cuda(float* y, const float* a, const float* b, size_t n, cudaStream_t stream);
void residual_backward_cuda(float* da, float* db, const float* dy, size_t n, cudaStream_t stream);
#endif

// Argument checks shared by the CPU and CUDA entry points.
namespace detail {

inline void check_residual_forward_args(const float* y, const float* a, const float* b, size_t n) {
  LORA_CHECK(y != nullptr && a != nullptr && b != nullptr, "y, a, b must not be null");
  LORA_CHECK(n > 0, "n must be positive");
}

// da and db may be null (skipped).
inline void check_residual_backward_args(const float* dy, size_t n) {
  LORA_CHECK(dy != nullptr, "dy must not be null");
  LORA_CHECK(n > 0, "n must be positive");
}

}  // namespace detail

}  // namespace lora::ops
