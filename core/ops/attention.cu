// Causal self-attention with grouped-query heads on the GPU: straightforward kernels, one block
// per (batch, head, row), the scores row in shared memory.
//   qkv [n_batch, n_seq, (NH + 2 NKV) hs]: query head h at columns h hs, key head g at (NH + g) hs,
//   value head g at (NH + NKV + g) hs; query head h reads key/value head g = h / (NH / NKV)
//   (GPT-2's c_attn q | k | v is the case NKV = NH).
//   forward:  att[b, h, t, u] = softmax_{u <= t}(q_t . k_u / sqrt(hs)), 0 for u > t;
//             out[b, t, h * hs + d] = sum_u att[b, h, t, u] v_u[d]
//   backward (accumulates into dqkv), with datt[t, u] = dout_t . v_u and
//             D[t] = sum_u att[t, u] datt[t, u]:
//             ds[t, u] = att[t, u] (datt[t, u] - D[t])
//             dq_t += sum_{u <= t} ds[t, u] k_u / sqrt(hs)        (one block per query head, row t)
//             dk_u += sum_h sum_{t >= u} ds_h[t, u] q_t / sqrt(hs) (one block per key head, row u,
//             dv_u += sum_h sum_{t >= u} att_h[t, u] dout_t         summing its group's heads h)
// The backward runs as two kernels so that every gradient row has exactly one writer (no
// atomics, deterministic): the query-row kernel also stores D[t] into a temporary
// [n_batch, n_head, n_seq] buffer (stream-ordered allocation) that the key-row kernel reads.
// Shapes: out, dout [n_batch, n_seq, NH hs]; att [n_batch, NH, n_seq, n_seq].
// Shared memory per block: each kernel's static part (the reduction scratch) plus the dynamic part
// sized by n_seq and hs must fit the device's per-block limit; above the 48 KiB default the
// kernel's dynamic limit is raised (cudaFuncSetAttribute) before the launch.
#include "core/ops/attention.h"

#include <cmath>

#include "core/cuda_runtime.h"
#include "core/ops/cuda_common.cuh"

namespace lora::ops {
namespace {

using cuda_detail::block_max;
using cuda_detail::block_sum;
using cuda_detail::kWarpSize;
using cuda_detail::warp_sum;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / kWarpSize;
// More shared memory per block than any device offers (Hopper's opt-in limit is 227 KiB): larger
// requests are refused on the host before the device is asked.
constexpr size_t kMaxSharedBytesAnyDevice = 256 * 1024;

struct Dims {
  int n_seq;
  int n_head;
  int n_kv_head;
  int hs;
  int group;      // query heads per key/value head: n_head / n_kv_head
  size_t ld;      // qkv row: (n_head + 2 n_kv_head) hs
  size_t q_dim;   // out row: n_head hs
  __device__ size_t k_col(int kv_head) const { return static_cast<size_t>(n_head + kv_head) * hs; }
  __device__ size_t v_col(int kv_head) const {
    return static_cast<size_t>(n_head + n_kv_head + kv_head) * hs;
  }
};

// Which (b, head, row) a block of a [n_batch * n_heads * n_seq] grid handles.
__device__ __forceinline__ void block_coords(int n_seq, int n_heads, int* b, int* head, int* row) {
  const int idx = blockIdx.x;
  *row = idx % n_seq;
  *head = (idx / n_seq) % n_heads;
  *b = idx / (n_seq * n_heads);
}

size_t query_row_shared_bytes(int n_seq, int hs) {
  return (static_cast<size_t>(hs) + n_seq) * sizeof(float);
}

size_t key_row_shared_bytes(int hs) {
  return (1 + 2 * static_cast<size_t>(kWarps)) * hs * sizeof(float);
}

// The limits that need no device, checked after the shared size checks (sizes positive, n_kv_head
// dividing n_head).
void check_launch_limits(int n_batch, int n_seq, int n_head, int hs) {
  LORA_CHECK(static_cast<long long>(n_batch) * n_head * n_seq <= 0x7fffffffLL,
             "n_batch * n_head * n_seq too large for one grid: ", n_batch, " * ", n_head, " * ",
             n_seq);
  LORA_CHECK(query_row_shared_bytes(n_seq, hs) <= kMaxSharedBytesAnyDevice &&
                 key_row_shared_bytes(hs) <= kMaxSharedBytesAnyDevice,
             "n_seq ", n_seq, " with head size ", hs, " needs more shared memory than ",
             kMaxSharedBytesAnyDevice, " bytes per block");
}

// Makes `kernel` launchable with `dynamic_bytes` of dynamic shared memory on the current device:
// its static shared memory (cudaFuncGetAttributes) plus dynamic_bytes must fit the device's opt-in
// per-block limit, and above the default the kernel's dynamic limit is raised to dynamic_bytes.
template <typename Kernel>
void prepare_shared_memory(Kernel* kernel, size_t dynamic_bytes, int n_seq, int hs,
                           const char* kernel_name) {
  cudaFuncAttributes attr{};
  LORA_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  int device = 0;
  LORA_CUDA_CHECK(cudaGetDevice(&device));
  int optin = 0;
  LORA_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  const size_t static_bytes = attr.sharedSizeBytes;
  LORA_CHECK(static_bytes + dynamic_bytes <= static_cast<size_t>(optin), "attention ", kernel_name,
             ": n_seq ", n_seq, " with head size ", hs, " needs ", dynamic_bytes,
             " bytes of dynamic shared memory plus ", static_bytes,
             " static, more than the device's ", optin, " bytes per block");
  // maxDynamicSharedSizeBytes starts at the default minus the static part.
  if (dynamic_bytes > static_cast<size_t>(attr.maxDynamicSharedSizeBytes)) {
    LORA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(dynamic_bytes)));
  }
}

}  // namespace

// One block per (b, h, t). Shared: q_t [hs], then the scores row [n_seq].
static __global__ void attention_forward_kernel(float* out, float* att, const float* qkv,
                                                Dims dims) {
  extern __shared__ float smem[];
  __shared__ float scratch[32];
  const int hs = dims.hs;
  float* q_s = smem;
  float* scores = smem + hs;
  int b = 0, h = 0, t = 0;
  block_coords(dims.n_seq, dims.n_head, &b, &h, &t);
  const size_t row_stride = dims.ld;
  const size_t k_col = dims.k_col(h / dims.group);
  const size_t v_col = dims.v_col(h / dims.group);
  const float* base = qkv + static_cast<size_t>(b) * dims.n_seq * row_stride;
  const float* q = base + t * row_stride + h * hs;
  for (int d = threadIdx.x; d < hs; d += blockDim.x) q_s[d] = q[d];
  __syncthreads();

  const float scale = 1.0f / sqrtf(static_cast<float>(hs));
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  for (int u = warp; u <= t; u += kWarps) {
    const float* k = base + u * row_stride + k_col;
    float dot = 0.0f;
    for (int d = lane; d < hs; d += kWarpSize) dot += q_s[d] * k[d];
    dot = warp_sum(dot);
    if (lane == 0) scores[u] = dot * scale;
  }
  __syncthreads();

  float m = -INFINITY;
  for (int u = threadIdx.x; u <= t; u += blockDim.x) m = fmaxf(m, scores[u]);
  m = block_max(m, scratch);
  float sum = 0.0f;
  for (int u = threadIdx.x; u <= t; u += blockDim.x) {
    const float e = expf(scores[u] - m);
    scores[u] = e;
    sum += e;
  }
  sum = block_sum(sum, scratch);  // its barriers also publish the exponentials
  const float inv_sum = 1.0f / sum;
  float* att_row = att + ((static_cast<size_t>(b) * dims.n_head + h) * dims.n_seq + t) * dims.n_seq;
  for (int u = threadIdx.x; u < dims.n_seq; u += blockDim.x) {
    const float p = u <= t ? scores[u] * inv_sum : 0.0f;
    att_row[u] = p;
    if (u <= t) scores[u] = p;
  }
  __syncthreads();

  float* out_row = out + (static_cast<size_t>(b) * dims.n_seq + t) * dims.q_dim + h * hs;
  for (int d = threadIdx.x; d < hs; d += blockDim.x) {
    float acc = 0.0f;
    for (int u = 0; u <= t; ++u) acc += scores[u] * base[u * row_stride + v_col + d];
    out_row[d] = acc;
  }
}

// One block per (b, h, t): dq_t and D[t]. Shared: dout_t [hs], then ds row [n_seq].
static __global__ void attention_backward_query_kernel(float* dqkv, float* d_sums, const float* dout,
                                                       const float* qkv, const float* att,
                                                       Dims dims) {
  extern __shared__ float smem[];
  __shared__ float scratch[32];
  const int hs = dims.hs;
  float* dout_s = smem;
  float* ds = smem + hs;
  int b = 0, h = 0, t = 0;
  block_coords(dims.n_seq, dims.n_head, &b, &h, &t);
  const size_t row_stride = dims.ld;
  const size_t k_col = dims.k_col(h / dims.group);
  const size_t v_col = dims.v_col(h / dims.group);
  const float* base = qkv + static_cast<size_t>(b) * dims.n_seq * row_stride;
  const float* dout_row = dout + (static_cast<size_t>(b) * dims.n_seq + t) * dims.q_dim + h * hs;
  for (int d = threadIdx.x; d < hs; d += blockDim.x) dout_s[d] = dout_row[d];
  __syncthreads();

  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  for (int u = warp; u <= t; u += kWarps) {
    const float* v = base + u * row_stride + v_col;
    float dot = 0.0f;
    for (int d = lane; d < hs; d += kWarpSize) dot += dout_s[d] * v[d];
    dot = warp_sum(dot);
    if (lane == 0) ds[u] = dot;  // datt[t, u]
  }
  __syncthreads();

  const size_t bh_row = (static_cast<size_t>(b) * dims.n_head + h) * dims.n_seq + t;
  const float* att_row = att + bh_row * dims.n_seq;
  float partial = 0.0f;
  for (int u = threadIdx.x; u <= t; u += blockDim.x) partial += att_row[u] * ds[u];
  const float d_sum = block_sum(partial, scratch);
  for (int u = threadIdx.x; u <= t; u += blockDim.x) ds[u] = att_row[u] * (ds[u] - d_sum);
  __syncthreads();
  if (threadIdx.x == 0) d_sums[bh_row] = d_sum;

  const float scale = 1.0f / sqrtf(static_cast<float>(hs));
  float* dq_row = dqkv + (static_cast<size_t>(b) * dims.n_seq + t) * row_stride + h * hs;
  for (int d = threadIdx.x; d < hs; d += blockDim.x) {
    float acc = 0.0f;
    for (int u = 0; u <= t; ++u) acc += ds[u] * base[u * row_stride + k_col + d];
    dq_row[d] += scale * acc;
  }
}

// One block per (b, g, u): dk_u and dv_u of key/value head g, summed over the query heads of its
// group. Each warp handles rows t = u + warp, u + warp + kWarps, ... of each of those heads in
// turn and accumulates into its own slice of shared memory; the slices are summed at the end.
// Shared: v_u [hs], dv partials [kWarps][hs], dk partials [kWarps][hs].
static __global__ void attention_backward_key_kernel(float* dqkv, const float* d_sums,
                                                     const float* dout, const float* qkv,
                                                     const float* att, Dims dims) {
  extern __shared__ float smem[];
  const int hs = dims.hs;
  float* v_s = smem;
  float* dv_part = smem + hs;
  float* dk_part = dv_part + kWarps * hs;
  int b = 0, g = 0, u = 0;
  block_coords(dims.n_seq, dims.n_kv_head, &b, &g, &u);
  const size_t row_stride = dims.ld;
  const float* base = qkv + static_cast<size_t>(b) * dims.n_seq * row_stride;
  const float* v = base + u * row_stride + dims.v_col(g);
  for (int d = threadIdx.x; d < hs; d += blockDim.x) v_s[d] = v[d];
  for (int i = threadIdx.x; i < 2 * kWarps * hs; i += blockDim.x) dv_part[i] = 0.0f;
  __syncthreads();

  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  float* dv_w = dv_part + warp * hs;
  float* dk_w = dk_part + warp * hs;
  for (int h = g * dims.group; h < (g + 1) * dims.group; ++h) {
    const size_t bh = static_cast<size_t>(b) * dims.n_head + h;
    for (int t = u + warp; t < dims.n_seq; t += kWarps) {
      const float* dout_row =
          dout + (static_cast<size_t>(b) * dims.n_seq + t) * dims.q_dim + h * hs;
      const float* q = base + t * row_stride + h * hs;
      float dot = 0.0f;
      for (int d = lane; d < hs; d += kWarpSize) dot += dout_row[d] * v_s[d];
      dot = warp_sum(dot);  // datt[t, u], every lane
      const float a = att[(bh * dims.n_seq + t) * dims.n_seq + u];
      const float ds = a * (dot - d_sums[bh * dims.n_seq + t]);
      for (int d = lane; d < hs; d += kWarpSize) {
        dv_w[d] += a * dout_row[d];
        dk_w[d] += ds * q[d];
      }
    }
  }
  __syncthreads();

  const float scale = 1.0f / sqrtf(static_cast<float>(hs));
  float* row = dqkv + (static_cast<size_t>(b) * dims.n_seq + u) * row_stride;
  for (int d = threadIdx.x; d < hs; d += blockDim.x) {
    float dk = 0.0f;
    float dv = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
      dk += dk_part[w * hs + d];
      dv += dv_part[w * hs + d];
    }
    row[dims.k_col(g) + d] += scale * dk;
    row[dims.v_col(g) + d] += dv;
  }
}

namespace {

Dims make_dims(int n_seq, int n_head, int n_kv_head, int head_dim) {
  return Dims{n_seq,
              n_head,
              n_kv_head,
              head_dim,
              n_head / n_kv_head,
              static_cast<size_t>(n_head + 2 * n_kv_head) * head_dim,
              static_cast<size_t>(n_head) * head_dim};
}

}  // namespace

void attention_forward_cuda(float* out, float* att, const float* qkv, int n_batch, int n_seq,
                            int n_head, int n_kv_head, int head_dim, cudaStream_t stream) {
  detail::check_attention_forward_args(out, att, qkv, n_batch, n_seq, n_head, n_kv_head, head_dim);
  check_launch_limits(n_batch, n_seq, n_head, head_dim);
  const Dims dims = make_dims(n_seq, n_head, n_kv_head, head_dim);
  const unsigned int blocks = static_cast<unsigned int>(n_batch) * n_head * n_seq;
  const size_t shared_bytes = query_row_shared_bytes(n_seq, dims.hs);
  prepare_shared_memory(attention_forward_kernel, shared_bytes, n_seq, dims.hs, "forward");
  attention_forward_kernel<<<blocks, kThreads, shared_bytes, stream>>>(out, att, qkv, dims);
  LORA_CUDA_CHECK_LAUNCH();
}

void attention_backward_cuda(float* dqkv, const float* dout, const float* qkv, const float* att,
                             int n_batch, int n_seq, int n_head, int n_kv_head, int head_dim,
                             cudaStream_t stream) {
  detail::check_attention_backward_args(dqkv, dout, qkv, att, n_batch, n_seq, n_head, n_kv_head,
                                        head_dim);
  check_launch_limits(n_batch, n_seq, n_head, head_dim);
  const Dims dims = make_dims(n_seq, n_head, n_kv_head, head_dim);
  const unsigned int query_blocks = static_cast<unsigned int>(n_batch) * n_head * n_seq;
  const unsigned int key_blocks = static_cast<unsigned int>(n_batch) * n_kv_head * n_seq;
  const size_t query_bytes = query_row_shared_bytes(n_seq, dims.hs);
  const size_t key_bytes = key_row_shared_bytes(dims.hs);
  prepare_shared_memory(attention_backward_query_kernel, query_bytes, n_seq, dims.hs,
                        "backward (query rows)");
  prepare_shared_memory(attention_backward_key_kernel, key_bytes, n_seq, dims.hs,
                        "backward (key rows)");
  float* d_sums = nullptr;
  LORA_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&d_sums),
                                  query_blocks * sizeof(float), stream));
  attention_backward_query_kernel<<<query_blocks, kThreads, query_bytes, stream>>>(
      dqkv, d_sums, dout, qkv, att, dims);
  const cudaError_t launch_query = cudaGetLastError();
  if (launch_query == cudaSuccess) {
    attention_backward_key_kernel<<<key_blocks, kThreads, key_bytes, stream>>>(dqkv, d_sums, dout,
                                                                             qkv, att, dims);
  }
  const cudaError_t launch_key = cudaGetLastError();
  LORA_CUDA_CHECK(cudaFreeAsync(d_sums, stream));
  LORA_CUDA_CHECK(launch_query);
  LORA_CUDA_CHECK(launch_key);
}

}  // namespace lora::ops
