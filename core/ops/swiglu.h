// SwiGLU, the Llama family's MLP activation, on the fused gate|up product:
//   gate_up [n, 2f]: gate = columns [0, f), up = columns [f, 2f)
//   out[i, j] = silu(gate[i, j]) * up[i, j],   silu(g) = g * sigmoid(g)
// Backward accumulates (+=) into d_gate_up [n, 2f]:
//   d_gate += dout * up * silu'(g),  silu'(g) = s (1 + g (1 - s)),  s = sigmoid(g)
//   d_up   += dout * silu(g)
// Shapes: out, dout [n, f]. CPU only so far.
#pragma once

#include "core/error.h"

namespace lora::ops {

void swiglu_forward_cpu(float* out, const float* gate_up, int n, int f);
void swiglu_backward_cpu(float* d_gate_up, const float* dout, const float* gate_up, int n, int f);

namespace detail {

inline void check_swiglu_sizes(int n, int f) {
  LORA_CHECK(n > 0 && f > 0, "sizes must be positive: n=", n, " f=", f);
}

}  // namespace detail

}  // namespace lora::ops
