// Rotary position embedding on the GPU, in place on the query and key heads of qkv
// [n_batch, n_seq, (n_head + 2 n_kv_head) head_dim] (rotate-half pairs (i, i + head_dim / 2)):
//   forward:  x1' = x1 cos - x2 sin;   x2' = x2 cos + x1 sin      (angle of position t, pair i)
//   backward: the same with -sin (the transposed rotation), on dqkv in place.
// cos, sin: device tables [max_seq, head_dim / 2]. One thread per (row, head, pair), grid-stride;
// the value heads are not touched.
#include "core/ops/rope.h"

#include "core/cuda_runtime.h"
#include "core/ops/cuda_common.cuh"

namespace lora::ops {
namespace {

using cuda_detail::grid_for;
using cuda_detail::kBlockSize;

}  // namespace

static __global__ void rope_kernel(float* qkv, const float* cos, const float* sin, size_t n_pairs,
                                   int n_seq, int n_rotated_heads, int half, size_t ld,
                                   float sign) {
  const size_t pairs_per_row = static_cast<size_t>(n_rotated_heads) * half;
  for (size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; idx < n_pairs;
       idx += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t row = idx / pairs_per_row;
    const int in_row = static_cast<int>(idx % pairs_per_row);
    const int head = in_row / half;
    const int i = in_row % half;
    const int t = static_cast<int>(row % n_seq);
    float* x1 = qkv + row * ld + static_cast<size_t>(head) * 2 * half + i;
    float* x2 = x1 + half;
    const float c = cos[static_cast<size_t>(t) * half + i];
    const float s = sign * sin[static_cast<size_t>(t) * half + i];
    const float a = *x1, b = *x2;
    *x1 = a * c - b * s;
    *x2 = b * c + a * s;
  }
}

namespace {

void rope_launch(float* qkv, const float* cos, const float* sin, int n_batch, int n_seq,
                 int n_head, int n_kv_head, int head_dim, float sign, cudaStream_t stream) {
  const int half = head_dim / 2;
  const size_t n_pairs =
      static_cast<size_t>(n_batch) * n_seq * static_cast<size_t>(n_head + n_kv_head) * half;
  const size_t ld = static_cast<size_t>(n_head + 2 * n_kv_head) * head_dim;
  rope_kernel<<<grid_for(n_pairs), kBlockSize, 0, stream>>>(qkv, cos, sin, n_pairs, n_seq,
                                                            n_head + n_kv_head, half, ld, sign);
  LORA_CUDA_CHECK_LAUNCH();
}

}  // namespace

void rope_forward_cuda(float* qkv, const float* cos, const float* sin, int n_batch, int n_seq,
                       int n_head, int n_kv_head, int head_dim, cudaStream_t stream) {
  detail::check_rope_args(qkv, cos, sin, n_batch, n_seq, n_head, n_kv_head, head_dim);
  rope_launch(qkv, cos, sin, n_batch, n_seq, n_head, n_kv_head, head_dim, 1.0f, stream);
}

void rope_backward_cuda(float* dqkv, const float* cos, const float* sin, int n_batch, int n_seq,
                        int n_head, int n_kv_head, int head_dim, cudaStream_t stream) {
  detail::check_rope_args(dqkv, cos, sin, n_batch, n_seq, n_head, n_kv_head, head_dim);
  rope_launch(dqkv, cos, sin, n_batch, n_seq, n_head, n_kv_head, head_dim, -1.0f, stream);
}

}  // namespace lora::ops
