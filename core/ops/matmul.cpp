// Dense layer (Conv1D orientation) and the tied-embedding LM head on the CPU, both on OpenBLAS
// sgemm (row-major; OpenBLAS runs its own threads, so no call here is inside an OpenMP region).
//   matmul:  y[n, d_out] = x[n, d_in] W[d_in, d_out] + bias
//            dx += dy W^T;  dw += x^T dy;  dbias += column sums of dy
//   lm_head: y[n, vocab] = x[n, c] E[vocab, c]^T
//            dx += dy E;    dE += dy^T x
// Gradients accumulate (sgemm with beta = 1); a null gradient pointer is not computed.
#include "core/ops/matmul.h"

#include <cblas.h>

#include <algorithm>
#include <cstddef>

#include "core/error.h"

namespace lora::ops {
namespace {
constexpr int kColumnBlock = 32;
}  // namespace

void matmul_forward_cpu(float* y, const float* x, const float* w, const float* bias, int n, int d_in,
                        int d_out) {
  LORA_CHECK(y != nullptr && x != nullptr && w != nullptr, "y, x, w must not be null");
  LORA_CHECK(n > 0 && d_in > 0 && d_out > 0, "sizes must be positive: n=", n, " d_in=", d_in,
             " d_out=", d_out);
  float beta = 0.0f;
  if (bias != nullptr) {
#pragma omp parallel for schedule(static) if (static_cast<long>(n) * d_out > 65536)
    for (int i = 0; i < n; ++i) {
      float* yi = y + static_cast<size_t>(i) * d_out;
#pragma omp simd
      for (int j = 0; j < d_out; ++j) yi[j] = bias[j];
    }
    beta = 1.0f;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d_out, d_in, 1.0f, x, d_in, w, d_out,
              beta, y, d_out);
}

void matmul_backward_cpu(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                         const float* w, int n, int d_in, int d_out) {
  LORA_CHECK(dy != nullptr, "dy must not be null");
  LORA_CHECK(n > 0 && d_in > 0 && d_out > 0, "sizes must be positive: n=", n, " d_in=", d_in,
             " d_out=", d_out);
  if (dx != nullptr) {
    LORA_CHECK(w != nullptr, "w must not be null when dx is wanted");
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, d_in, d_out, 1.0f, dy, d_out, w, d_out,
                1.0f, dx, d_in);
  }
  if (dw != nullptr) {
    LORA_CHECK(x != nullptr, "x must not be null when dw is wanted");
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, d_in, d_out, n, 1.0f, x, d_in, dy, d_out,
                1.0f, dw, d_out);
  }
  if (dbias != nullptr) {
    const int n_blocks = (d_out + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (static_cast<long>(n) * d_out > 65536)
    for (int blk = 0; blk < n_blocks; ++blk) {
      const int j0 = blk * kColumnBlock;
      const int j1 = std::min(d_out, j0 + kColumnBlock);
      for (int i = 0; i < n; ++i) {
        const float* gi = dy + static_cast<size_t>(i) * d_out;
#pragma omp simd
        for (int j = j0; j < j1; ++j) dbias[j] += gi[j];
      }
    }
  }
}

void lm_head_forward_cpu(float* y, const float* x, const float* e, int n, int c, int vocab) {
  LORA_CHECK(y != nullptr && x != nullptr && e != nullptr, "y, x, e must not be null");
  LORA_CHECK(n > 0 && c > 0 && vocab > 0, "sizes must be positive: n=", n, " c=", c,
             " vocab=", vocab);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, vocab, c, 1.0f, x, c, e, c, 0.0f, y,
              vocab);
}

void lm_head_backward_cpu(float* dx, float* de, const float* dy, const float* x, const float* e,
                          int n, int c, int vocab) {
  LORA_CHECK(dy != nullptr, "dy must not be null");
  LORA_CHECK(n > 0 && c > 0 && vocab > 0, "sizes must be positive: n=", n, " c=", c,
             " vocab=", vocab);
  if (dx != nullptr) {
    LORA_CHECK(e != nullptr, "e must not be null when dx is wanted");
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, c, vocab, 1.0f, dy, vocab, e, c,
                1.0f, dx, c);
  }
  if (de != nullptr) {
    LORA_CHECK(x != nullptr, "x must not be null when de is wanted");
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, vocab, c, n, 1.0f, dy, vocab, x, c, 1.0f,
                de, c);
  }
}

}  // namespace lora::ops
