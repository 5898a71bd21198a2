// Token + position embedding.
//   out[b, t, :] = wte[tokens[b, t], :] + wpe[t, :]
// Shapes: tokens [n_batch, n_seq] int32 in [0, vocab); wte [vocab, d_model]; wpe [max_seq, d_model];
//         out [n_batch, n_seq, d_model].
// Backward accumulates (+=) into dwte and dwpe; a null gradient pointer is skipped (frozen).
#pragma once

#include <cstdint>

#include "core/ops/stream.h"

namespace lora::ops {

void embedding_forward_cpu(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                           int n_batch, int n_seq, int d_model, int vocab);
void embedding_backward_cpu(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                            int n_batch, int n_seq, int d_model, int vocab);

#ifdef LORA_WITH_CUDA
void embedding_forward_cuda(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                            int n_batch, int n_seq, int d_model, int vocab, cudaStream_t stream);
void embedding_backward_cuda(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                             int n_batch, int n_seq, int d_model, int vocab, cudaStream_t stream);
#endif

}  // namespace lora::ops
