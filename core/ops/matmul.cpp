// Dense layers (Conv1D and nn.Linear orientations) and the LM head on the CPU, all on OpenBLAS
// sgemm (row-major; OpenBLAS runs its own threads, so no call here is inside an OpenMP region).
//   matmul:  y[n, d_out] = x[n, d_in] W[d_in, d_out] + bias
//            dx += dy W^T;  dw += x^T dy;  dbias += column sums of dy
//   linear:  y[n, d_out] = x[n, d_in] W[d_out, d_in]^T + bias
//            dx += dy W;    dw += dy^T x;  dbias += column sums of dy
//   lm_head: y[n, vocab] = x[n, c] E[vocab, c]^T
//            dx += dy E;    dE += dy^T x
// Gradients accumulate (sgemm with beta = 1) unless overwrite_dx asks dx to be written; a null
// gradient pointer is not computed.
#include "core/ops/matmul.h"

#include <algorithm>
#include <cstddef>

#include "core/ops/sgemm.h"

namespace lora::ops {
namespace {

constexpr int kColumnBlock = 32;

// Fills y's rows with the bias (so the product can accumulate onto it); false without a bias.
bool fill_bias_rows(float* y, const float* bias, int n, int d_out) {
  if (bias == nullptr) return false;
#pragma omp parallel for schedule(static) if (static_cast<long>(n) * d_out > 65536)
  for (int i = 0; i < n; ++i) {
    float* yi = y + static_cast<size_t>(i) * d_out;
#pragma omp simd
    for (int j = 0; j < d_out; ++j) yi[j] = bias[j];
  }
  return true;
}

// dbias[j] += sum_i dy[i, j], in column blocks so that no two threads share an output.
void bias_backward(float* dbias, const float* dy, int n, int d_out) {
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

}  // namespace

void matmul_forward_cpu(float* y, const float* x, const float* w, const float* bias, int n, int d_in,
                        int d_out) {
  detail::check_matmul_forward_args(y, x, w, n, d_in, d_out);
  const float beta = fill_bias_rows(y, bias, n, d_out) ? 1.0f : 0.0f;
  sgemm(false, false, n, d_out, d_in, 1.0f, x, d_in, w, d_out, beta, y, d_out);
}

void matmul_backward_cpu(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                         const float* w, int n, int d_in, int d_out, bool overwrite_dx) {
  detail::check_matmul_backward_args(dx, dw, dy, x, w, n, d_in, d_out);
  if (dx != nullptr)
    sgemm(false, true, n, d_in, d_out, 1.0f, dy, d_out, w, d_out, overwrite_dx ? 0.0f : 1.0f, dx,
          d_in);
  if (dw != nullptr) sgemm(true, false, d_in, d_out, n, 1.0f, x, d_in, dy, d_out, 1.0f, dw, d_out);
  if (dbias != nullptr) bias_backward(dbias, dy, n, d_out);
}

void linear_forward_cpu(float* y, const float* x, const float* w, const float* bias, int n, int d_in,
                        int d_out) {
  detail::check_matmul_forward_args(y, x, w, n, d_in, d_out);
  const float beta = fill_bias_rows(y, bias, n, d_out) ? 1.0f : 0.0f;
  sgemm(false, true, n, d_out, d_in, 1.0f, x, d_in, w, d_in, beta, y, d_out);
}

void linear_backward_cpu(float* dx, float* dw, float* dbias, const float* dy, const float* x,
                         const float* w, int n, int d_in, int d_out, bool overwrite_dx) {
  detail::check_matmul_backward_args(dx, dw, dy, x, w, n, d_in, d_out);
  if (dx != nullptr)
    sgemm(false, false, n, d_in, d_out, 1.0f, dy, d_out, w, d_in, overwrite_dx ? 0.0f : 1.0f, dx,
          d_in);
  if (dw != nullptr) sgemm(true, false, d_out, d_in, n, 1.0f, dy, d_out, x, d_in, 1.0f, dw, d_in);
  if (dbias != nullptr) bias_backward(dbias, dy, n, d_out);
}

void lm_head_forward_cpu(float* y, const float* x, const float* e, int n, int c, int vocab) {
  detail::check_lm_head_forward_args(y, x, e, n, c, vocab);
  sgemm(false, true, n, vocab, c, 1.0f, x, c, e, c, 0.0f, y, vocab);
}

void lm_head_backward_cpu(float* dx, float* de, const float* dy, const float* x, const float* e,
                          int n, int c, int vocab, bool overwrite_dx) {
  detail::check_lm_head_backward_args(dx, de, dy, x, e, n, c, vocab);
  if (dx != nullptr)
    sgemm(false, false, n, c, vocab, 1.0f, dy, vocab, e, c, overwrite_dx ? 0.0f : 1.0f, dx, c);
  if (de != nullptr) sgemm(true, false, vocab, c, n, 1.0f, dy, vocab, x, c, 1.0f, de, c);
}

}  // namespace lora::ops
