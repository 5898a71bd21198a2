// Inverted dropout with a counter-based mask, used on the LoRA input.
//   keep[i] = uniform01(hash(seed, stream, row_id[i / cols], i % cols)) >= p
//   y[i] = keep[i] ? x[i] / (1 - p) : 0
// Each row has a caller-chosen 64-bit id (the global sequence index and position), so the mask
// of a sequence does not depend on which rank or micro-batch processes it.
// Backward accumulates (+=) dx[i] += keep[i] ? dy[i] / (1 - p) : 0, recomputing the mask.
// Shapes: x, y, dx, dy [rows, cols]; row_ids [rows]. 0 <= p < 1.
#pragma once

#include <cstdint>

#include "core/error.h"
#include "core/ops/stream.h"

namespace lora::ops {

void dropout_forward_cpu(float* y, const float* x, const uint64_t* row_ids, float p, uint64_t seed,
                         uint64_t stream, int rows, int cols);
void dropout_backward_cpu(float* dx, const float* dy, const uint64_t* row_ids, float p,
                          uint64_t seed, uint64_t stream, int rows, int cols);

#ifdef LORA_WITH_CUDA
void dropout_forward_cuda(float* y, const float* x, const uint64_t* row_ids, float p, uint64_t seed,
                          uint64_t stream_id, int rows, int cols, cudaStream_t stream);
void dropout_backward_cuda(float* dx, const float* dy, const uint64_t* row_ids, float p,
                           uint64_t seed, uint64_t stream_id, int rows, int cols,
                           cudaStream_t stream);
#endif

// Argument checks shared by the CPU and CUDA entry points.
namespace detail {

inline void check_dropout_args(const uint64_t* row_ids, float p, int rows, int cols) {
  LORA_CHECK(row_ids != nullptr, "row_ids must not be null");
  LORA_CHECK(rows > 0 && cols > 0, "sizes must be positive: rows=", rows, " cols=", cols);
  LORA_CHECK(p >= 0.0f && p < 1.0f, "dropout probability must be in [0, 1), got ", p);
}

inline void check_dropout_forward_args(const float* y, const float* x, const uint64_t* row_ids,
                                       float p, int rows, int cols) {
  LORA_CHECK(y != nullptr && x != nullptr, "y and x must not be null");
  check_dropout_args(row_ids, p, rows, cols);
}

inline void check_dropout_backward_args(const float* dx, const float* dy, const uint64_t* row_ids,
                                        float p, int rows, int cols) {
  LORA_CHECK(dx != nullptr && dy != nullptr, "dx and dy must not be null");
  check_dropout_args(row_ids, p, rows, cols);
}

}  // namespace detail

}  // namespace lora::ops
