// Token + position embedding on the GPU.
//   forward:  out[b, t, :] = wte[tokens[b, t], :] + wpe[t, :]   (wpe may be null: no positions)
//   backward: dwte[tokens[b, t], :] += dout[b, t, :];  dwpe[t, :] += sum_b dout[b, t, :]
// Shapes: tokens [n_batch, n_seq] int32 (device); wte [vocab, d_model]; wpe [>= n_seq, d_model];
// out, dout [n_batch, n_seq, d_model].
// Token ids live on the device, so unlike the CPU version they are not range-checked on the host:
// the data loader validates them. A token outside [0, vocab) yields NaN rows (forward) and is
// skipped (backward) instead of reading or writing out of bounds.
// dwpe is summed over the batch by one thread per (t, column), in batch order; dwte uses atomics
// (tokens repeat), so its summation order is not fixed.
#include "core/ops/embedding.h"

#include "core/cuda_runtime.h"
#include "core/ops/cuda_common.cuh"

namespace lora::ops {
namespace {

using cuda_detail::grid_for;
using cuda_detail::kBlockSize;

}  // namespace

static __global__ void embedding_forward_kernel(float* out, const int32_t* tokens, const float* wte,
                                                const float* wpe, size_t n_rows, int n_seq,
                                                int d_model, int vocab) {
  const size_t total = n_rows * d_model;
  for (size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t row = idx / d_model;
    const int j = static_cast<int>(idx % d_model);
    const int t = static_cast<int>(row % n_seq);
    const int token = tokens[row];
    if (token < 0 || token >= vocab) {
      out[idx] = __int_as_float(0x7fc00000);  // quiet NaN marks the bad token
      continue;
    }
    const float pe = wpe != nullptr ? wpe[static_cast<size_t>(t) * d_model + j] : 0.0f;
    out[idx] = wte[static_cast<size_t>(token) * d_model + j] + pe;
  }
}

static __global__ void embedding_backward_wte_kernel(float* dwte, const float* dout,
                                                     const int32_t* tokens, size_t n_rows,
                                                     int d_model, int vocab) {
  const size_t total = n_rows * d_model;
  for (size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t row = idx / d_model;
    const int j = static_cast<int>(idx % d_model);
    const int token = tokens[row];
    if (token < 0 || token >= vocab) continue;
    atomicAdd(dwte + static_cast<size_t>(token) * d_model + j, dout[idx]);
  }
}

static __global__ void embedding_backward_wpe_kernel(float* dwpe, const float* dout, int n_batch,
                                                     int n_seq, int d_model) {
  const size_t total = static_cast<size_t>(n_seq) * d_model;
  const size_t batch_stride = total;
  for (size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<size_t>(gridDim.x) * blockDim.x) {
    float sum = 0.0f;
    for (int b = 0; b < n_batch; ++b) sum += dout[b * batch_stride + idx];
    dwpe[idx] += sum;
  }
}

void embedding_forward_cuda(float* out, const int32_t* tokens, const float* wte, const float* wpe,
                            int n_batch, int n_seq, int d_model, int vocab, cudaStream_t stream) {
  detail::check_embedding_forward_args(out, tokens, wte, wpe, n_batch, n_seq, d_model, vocab);
  const size_t n_rows = static_cast<size_t>(n_batch) * n_seq;
  embedding_forward_kernel<<<grid_for(n_rows * d_model), kBlockSize, 0, stream>>>(
      out, tokens, wte, wpe, n_rows, n_seq, d_model, vocab);
  LORA_CUDA_CHECK_LAUNCH();
}

void embedding_backward_cuda(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                             int n_batch, int n_seq, int d_model, int vocab, cudaStream_t stream) {
  detail::check_embedding_backward_args(dout, tokens, n_batch, n_seq, d_model, vocab);
  const size_t n_rows = static_cast<size_t>(n_batch) * n_seq;
  if (dwte != nullptr) {
    embedding_backward_wte_kernel<<<grid_for(n_rows * d_model), kBlockSize, 0, stream>>>(
        dwte, dout, tokens, n_rows, d_model, vocab);
    LORA_CUDA_CHECK_LAUNCH();
  }
  if (dwpe != nullptr) {
    embedding_backward_wpe_kernel<<<grid_for(static_cast<size_t>(n_seq) * d_model), kBlockSize, 0,
                                    stream>>>(dwpe, dout, n_batch, n_seq, d_model);
    LORA_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace lora::ops
