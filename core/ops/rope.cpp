// Rotary position embedding on the CPU: (batch, position) rows in parallel, each rotating its
// query and key heads in place with the position's cos/sin row.
#include "core/ops/rope.h"

#include <cmath>
#include <cstddef>

namespace lora::ops {
namespace {

// Rotates the first n_heads heads of one row by the angles whose cos/sin are c/s (sign = +1) or
// by their negatives (sign = -1).
inline void rotate_heads(float* row, const float* c, const float* s, int n_heads, int head_dim,
                         float sign) {
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* x1 = row + static_cast<size_t>(h) * head_dim;
    float* x2 = x1 + half;
#pragma omp simd
    for (int i = 0; i < half; ++i) {
      const float a = x1[i], b = x2[i], sn = sign * s[i];
      x1[i] = a * c[i] - b * sn;
      x2[i] = b * c[i] + a * sn;
    }
  }
}

void rope_apply(float* qkv, const float* cos, const float* sin, int n_batch, int n_seq,
                int n_head, int n_kv_head, int head_dim, float sign) {
  const int half = head_dim / 2;
  const size_t ld = static_cast<size_t>(n_head + 2 * n_kv_head) * head_dim;
  const long rows = static_cast<long>(n_batch) * n_seq;
#pragma omp parallel for schedule(static) if (rows * ld > 32768)
  for (long r = 0; r < rows; ++r) {
    const int t = static_cast<int>(r % n_seq);
    float* row = qkv + static_cast<size_t>(r) * ld;
    const float* c = cos + static_cast<size_t>(t) * half;
    const float* s = sin + static_cast<size_t>(t) * half;
    rotate_heads(row, c, s, n_head + n_kv_head, head_dim, sign);  // q heads, then k heads
  }
}

}  // namespace

std::vector<float> rope_inv_freq(int head_dim, float theta) {
  LORA_CHECK(head_dim > 0 && head_dim % 2 == 0, "head_dim must be positive and even, got ",
             head_dim);
  std::vector<float> inv(head_dim / 2);
  for (int i = 0; i < head_dim / 2; ++i) {
    const float e = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv[i] = 1.0f / std::pow(theta, e);
  }
  return inv;
}

void rope_scale_llama3(std::vector<float>& inv_freq, float factor, float low_freq_factor,
                       float high_freq_factor, int original_max_position_embeddings) {
  const float old_len = static_cast<float>(original_max_position_embeddings);
  const float low_freq_wavelen = old_len / low_freq_factor;
  const float high_freq_wavelen = old_len / high_freq_factor;
  const float two_pi = static_cast<float>(2.0 * M_PI);
  for (float& f : inv_freq) {
    const float wavelen = two_pi / f;
    float scaled = wavelen > low_freq_wavelen ? f / factor : f;
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    if (medium) {
      const float smooth = (old_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
      scaled = (1.0f - smooth) * scaled / factor + smooth * scaled;
    }
    f = scaled;
  }
}

void rope_tables(const std::vector<float>& inv_freq, int max_seq, std::vector<float>& cos,
                 std::vector<float>& sin) {
  const size_t half = inv_freq.size();
  cos.resize(static_cast<size_t>(max_seq) * half);
  sin.resize(cos.size());
  for (int t = 0; t < max_seq; ++t) {
    for (size_t i = 0; i < half; ++i) {
      const float a = static_cast<float>(t) * inv_freq[i];
      cos[t * half + i] = std::cos(a);
      sin[t * half + i] = std::sin(a);
    }
  }
}

void rope_forward_cpu(float* qkv, const float* cos, const float* sin, int n_batch, int n_seq,
                      int n_head, int n_kv_head, int head_dim) {
  detail::check_rope_args(qkv, cos, sin, n_batch, n_seq, n_head, n_kv_head, head_dim);
  rope_apply(qkv, cos, sin, n_batch, n_seq, n_head, n_kv_head, head_dim, 1.0f);
}

void rope_backward_cpu(float* dqkv, const float* cos, const float* sin, int n_batch, int n_seq,
                       int n_head, int n_kv_head, int head_dim) {
  detail::check_rope_args(dqkv, cos, sin, n_batch, n_seq, n_head, n_kv_head, head_dim);
  rope_apply(dqkv, cos, sin, n_batch, n_seq, n_head, n_kv_head, head_dim, -1.0f);
}

}  // namespace lora::ops
