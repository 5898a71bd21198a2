// GELU, tanh form (GPT-2's "gelu_new"):
//   y = 0.5 x (1 + tanh( sqrt(2/pi) (x + 0.044715 x^3) ))
// Shapes: x, y, dx, dy [n]. Backward accumulates (+=) into dx; the _write form overwrites dx
// (no need to clear it first).
#pragma once

#include <cstddef>

#include "core/error.h"
#include "core/ops/stream.h"

namespace lora::ops {

void gelu_forward_cpu(float* y, const float* x, size_t n);
void gelu_backward_cpu(float* dx, const float* dy, const float* x, size_t n);
void gelu_backward_write_cpu(float* dx, const float* dy, const float* x, size_t n);

#ifdef LORA_WITH_CUDA
void gelu_forward_cuda(float* y, const float* x, size_t n, cudaStream_t stream);
void gelu_backward_cuda(float* dx, const float* dy, const float* x, size_t n, cudaStream_t stream);
#endif

// Argument checks shared by the CPU and CUDA entry points.
namespace detail {

inline void check_gelu_forward_args(const float* y, const float* x, size_t n) {
  LORA_CHECK(y != nullptr && x != nullptr, "y and x must not be null");
  LORA_CHECK(n > 0, "n must be positive");
}

inline void check_gelu_backward_args(const float* dx, const float* dy, const float* x, size_t n) {
  LORA_CHECK(dx != nullptr && dy != nullptr && x != nullptr, "dx, dy, x must not be null");
  LORA_CHECK(n > 0, "n must be positive");
}

}  // namespace detail

}  // namespace lora::ops
