// Fused softmax + cross-entropy over the vocabulary on the GPU, one block per row.
//   loss[i]       = logsumexp(logits[i, :]) - logits[i, targets[i]]
//   dlogits[i, :] = (softmax(logits[i, :]) - onehot(targets[i])) * dloss     (written, not added)
// logsumexp subtracts the row max before exponentiating. dlogits may alias logits: the row
// statistics are complete (block barrier) before any thread writes, and after them each thread
// reads and writes only its own columns.
// Shapes: logits, dlogits [n, vocab]; targets [n] int32 (device); losses [n].
// The mean over the unmasked rows is one block of kThreads summing in double; it writes the mean
// and adds mean * n_unmasked to the running sum, both in device memory.
// Targets live on the device and are validated by the data loader. A negative target masks its
// row (loss 0, gradient row 0); a target >= vocab gives a NaN loss (forward) or a NaN row
// (backward) rather than an out-of-bounds read.
#include "core/ops/cross_entropy.h"

#include <cmath>

#include "core/cuda_runtime.h"
#include "core/ops/cuda_common.cuh"

namespace lora::ops {
namespace {

using cuda_detail::block_max;
using cuda_detail::block_sum;

constexpr int kThreads = 512;

// Row max and sum of exp(logit - max), returned to every thread of the block.
__device__ void row_stats(const float* row, int vocab, float* scratch, float* out_max,
                          float* out_sum) {
  float m = -INFINITY;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, row[j]);
  m = block_max(m, scratch);
  float s = 0.0f;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) s += expf(row[j] - m);
  s = block_sum(s, scratch);
  *out_max = m;
  *out_sum = s;
}

}  // namespace

static __global__ void cross_entropy_forward_kernel(float* losses, const float* logits,
                                                    const int32_t* targets, int vocab) {
  __shared__ float scratch[32];
  const int i = blockIdx.x;
  if (targets[i] < 0) {  // masked row (uniform over the block: no barrier is skipped by some only)
    if (threadIdx.x == 0) losses[i] = 0.0f;
    return;
  }
  const float* row = logits + static_cast<size_t>(i) * vocab;
  float m = 0.0f;
  float s = 0.0f;
  row_stats(row, vocab, scratch, &m, &s);
  if (threadIdx.x == 0) {
    const int t = targets[i];
    losses[i] = (t >= 0 && t < vocab) ? logf(s) + m - row[t] : __int_as_float(0x7fc00000);
  }
}

static __global__ void cross_entropy_backward_kernel(float* dlogits, const float* logits,
                                                     const int32_t* targets, float dloss,
                                                     int vocab) {
  __shared__ float scratch[32];
  const int i = blockIdx.x;
  const float* row = logits + static_cast<size_t>(i) * vocab;
  float* drow = dlogits + static_cast<size_t>(i) * vocab;
  if (targets[i] < 0) {  // masked row (uniform over the block)
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) drow[j] = 0.0f;
    return;
  }
  float m = 0.0f;
  float s = 0.0f;
  row_stats(row, vocab, scratch, &m, &s);
  const int t = targets[i];
  if (t >= vocab) {
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) drow[j] = __int_as_float(0x7fc00000);
    return;
  }
  const float inv_s = 1.0f / s;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float p = expf(row[j] - m) * inv_s;
    drow[j] = (p - (j == t ? 1.0f : 0.0f)) * dloss;
  }
}

void cross_entropy_forward_cuda(float* losses, const float* logits, const int32_t* targets, int n,
                                int vocab, cudaStream_t stream) {
  detail::check_cross_entropy_forward_args(losses, logits, targets, n, vocab);
  cross_entropy_forward_kernel<<<n, kThreads, 0, stream>>>(losses, logits, targets, vocab);
  LORA_CUDA_CHECK_LAUNCH();
}

void cross_entropy_backward_cuda(float* dlogits, const float* logits, const int32_t* targets,
                                 float dloss, int n, int vocab, cudaStream_t stream) {
  detail::check_cross_entropy_backward_args(dlogits, logits, targets, dloss, n, vocab);
  cross_entropy_backward_kernel<<<n, kThreads, 0, stream>>>(dlogits, logits, targets, dloss, vocab);
  LORA_CUDA_CHECK_LAUNCH();
}

static __global__ void cross_entropy_mean_kernel(float* mean_out, double* loss_sum,
                                                 const float* losses, const int32_t* targets,
                                                 int n, long n_unmasked) {
  __shared__ double scratch[32];
  double sum = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    if (targets[i] >= 0) sum += losses[i];
  }
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) {
    const float mean =
        n_unmasked > 0 ? static_cast<float>(sum / static_cast<double>(n_unmasked)) : 0.0f;
    *mean_out = mean;
    *loss_sum += static_cast<double>(mean) * static_cast<double>(n_unmasked);
  }
}

void cross_entropy_mean_cuda(float* mean_out, double* loss_sum, const float* losses,
                             const int32_t* targets, int n, long n_unmasked, cudaStream_t stream) {
  detail::check_cross_entropy_mean_args(mean_out, loss_sum, losses, targets, n, n_unmasked);
  cross_entropy_mean_kernel<<<1, kThreads, 0, stream>>>(mean_out, loss_sum, losses, targets, n,
                                                        n_unmasked);
  LORA_CUDA_CHECK_LAUNCH();
}

}  // namespace lora::ops
