// SwiGLU, the Llama family's MLP activation, on the fused gate|up product:
//   gate_up [n, 2f]: gate = columns [0, f), up = columns [f, 2f)
//   out[i, j] = silu(gate[i, j]) * up[i, j],   silu(g) = g * sigmoid(g)
// Backward accumulates (+=) into d_gate_up [n, 2f]:
//   d_gate += dout * up * silu'(g),  silu'(g) = s (1 + g (1 - s)),  s = sigmoid(g)
//   d_up   += dout * silu(g)
// swiglu_backward_write_cpu overwrites d_gate_up instead (no need to clear it first).
// Shapes: out, dout [n, f]. The CUDA entry points take device pointers and run on the given
// stream.
#pragma once

#include "core/error.h"
#include "core/ops/stream.h"

namespace lora::ops {

void swiglu_forward_cpu(float* out, const float* gate_up, int n, int f);
void swiglu_backward_cpu(float* d_gate_up, const float* dout, const float* gate_up, int n, int f);
void swiglu_backward_write_cpu(float* d_gate_up, const float* dout, const float* gate_up, int n,
                               int f);

#ifdef LORA_WITH_CUDA
void swiglu_forward_cuda(float* out, const float* gate_up, int n, int f, cudaStream_t stream);
void swiglu_backward_cuda(float* d_gate_up, const float* dout, const float* gate_up, int n, int f,
                          cudaStream_t stream);
#endif

namespace detail {

inline void check_swiglu_sizes(int n, int f) {
  LORA_CHECK(n > 0 && f > 0, "sizes must be positive: n=", n, " f=", f);
}

inline void check_swiglu_forward_args(const float* out, const float* gate_up, int n, int f) {
  LORA_CHECK(out != nullptr && gate_up != nullptr, "out and gate_up must not be null");
  check_swiglu_sizes(n, f);
}

inline void check_swiglu_backward_args(const float* d_gate_up, const float* dout,
                                       const float* gate_up, int n, int f) {
  LORA_CHECK(d_gate_up != nullptr && dout != nullptr && gate_up != nullptr,
             "d_gate_up, dout, gate_up must not be null");
  check_swiglu_sizes(n, f);
}

}  // namespace detail

}  // namespace lora::ops
