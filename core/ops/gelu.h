// GELU, tanh form (GPT-2's "gelu_new"):
//   y = 0.5 x (1 + tanh( sqrt(2/pi) (x + 0.044715 x^3) ))
// Shapes: x, y, dx, dy [n]. Backward accumulates (+=) into dx.
#pragma once

#include <cstddef>

#include "core/ops/stream.h"

namespace lora::ops {

void gelu_forward_cpu(float* y, const float* x, size_t n);
void gelu_backward_cpu(float* dx, const float* dy, const float* x, size_t n);

#ifdef LORA_WITH_CUDA
void gelu_forward_cuda(float* y, const float* x, size_t n, cudaStream_t stream);
void gelu_backward_cuda(float* dx, const float* dy, const float* x, size_t n, cudaStream_t stream);
#endif

}  // namespace lora::ops
