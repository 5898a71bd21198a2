// Residual add: y = a + b. Backward accumulates (+=) dy into da and db.
// Shapes: all [n]. y may alias a or b.
#pragma once

#include <cstddef>

#include "core/ops/stream.h"

namespace lora::ops {

void residual_forward_cpu(float* y, const float* a, const float* b, size_t n);
void residual_backward_cpu(float* da, float* db, const float* dy, size_t n);

#ifdef LORA_WITH_CUDA
void residual_forward_cuda(float* y, const float* a, const float* b, size_t n, cudaStream_t stream);
void residual_backward_cuda(float* da, float* db, const float* dy, size_t n, cudaStream_t stream);
#endif

}  // namespace lora::ops
