// The LoRA path of an adapted linear layer on the CPU (DESIGN.md section 2), on OpenBLAS sgemm:
//   forward:  h[n, r] = x[n, d_in] A[d_in, r];   y[n, d_out] += s h B[r, d_out]
//   backward: dB += s h^T g;  dh = s g B^T (written);  dA += x^T dh;  dx += dh A^T
// with g = dy [n, d_out] (y and dy with row stride ldy). Null dx, dA or dB is not computed; dh is
// the caller's [n, r] scratch. With B = 0 the product g B^T is exactly zero, so dA stays exactly
// unchanged.
//
// The products are skinny (one side is r wide), which OpenBLAS threads poorly. With more than one
// thread each product is split into independent slices instead, one per OpenMP thread, each slice
// a single-threaded sgemm: rows of n for h, y, dh and dx; columns of dB; rows of dA (d_in). No
// slice reduces over another's output, so the result does not depend on the thread count. With the
// pthreads OpenBLAS (sgemm_nests_in_openmp false) each product is one threaded sgemm instead.
#include "core/ops/lora.h"

#include <omp.h>

#include <algorithm>
#include <cstddef>

#include "core/ops/sgemm.h"

namespace lora::ops {
namespace {

// Slice `part` of `parts` of [0, n), boundaries on multiples of `align` (cache lines).
inline void slice(int n, int parts, int part, int align, int& begin, int& end) {
  const int units = (n + align - 1) / align;
  begin = std::min(n, static_cast<int>(static_cast<long>(units) * part / parts) * align);
  end = std::min(n, static_cast<int>(static_cast<long>(units) * (part + 1) / parts) * align);
}

inline bool split_threads() {
  return omp_get_max_threads() > 1 && !omp_in_parallel() && sgemm_nests_in_openmp();
}

}  // namespace

void lora_forward_cpu(float* y, float* h, const float* x, const float* a, const float* b,
                      float scaling, int n, int d_in, int rank, int d_out, int ldy) {
  detail::check_lora_forward_args(y, h, x, a, b, scaling, n, d_in, rank, d_out, ldy);
#pragma omp parallel if (split_threads())
  {
    int r0 = 0, r1 = n;
    slice(n, omp_get_num_threads(), omp_get_thread_num(), 1, r0, r1);
    if (r1 > r0) {
      const size_t off = static_cast<size_t>(r0);
      sgemm(false, false, r1 - r0, rank, d_in, 1.0f, x + off * d_in, d_in, a, rank, 0.0f,
            h + off * rank, rank);
      sgemm(false, false, r1 - r0, d_out, rank, scaling, h + off * rank, rank, b, d_out, 1.0f,
            y + off * ldy, ldy);
    }
  }
}

void lora_backward_cpu(float* dx, float* da, float* db, float* dh, const float* dy, const float* x,
                       const float* h, const float* a, const float* b, float scaling, int n,
                       int d_in, int rank, int d_out, int ldy) {
  detail::check_lora_backward_args(da, db, dh, dy, x, h, a, b, scaling, n, d_in, rank, d_out, ldy);
#pragma omp parallel if (split_threads())
  {
    const int parts = omp_get_num_threads(), part = omp_get_thread_num();
    int r0 = 0, r1 = n, c0 = 0, c1 = d_out, i0 = 0, i1 = d_in;
    slice(n, parts, part, 1, r0, r1);
    slice(d_out, parts, part, 16, c0, c1);
    slice(d_in, parts, part, 16, i0, i1);
    const size_t off = static_cast<size_t>(r0);
    if (db != nullptr && c1 > c0)  // dB[:, c0:c1] += s h^T g[:, c0:c1]
      sgemm(true, false, rank, c1 - c0, n, scaling, h, rank, dy + c0, ldy, 1.0f, db + c0, d_out);
    if (r1 > r0)  // dh[r0:r1] = s g[r0:r1] B^T
      sgemm(false, true, r1 - r0, rank, d_out, scaling, dy + off * ldy, ldy, b, d_out, 0.0f,
            dh + off * rank, rank);
#pragma omp barrier
    if (da != nullptr && i1 > i0)  // dA[i0:i1] += x[:, i0:i1]^T dh
      sgemm(true, false, i1 - i0, rank, n, 1.0f, x + i0, d_in, dh, rank, 1.0f,
            da + static_cast<size_t>(i0) * rank, rank);
    if (dx != nullptr && r1 > r0)  // dx[r0:r1] += dh[r0:r1] A^T
      sgemm(false, true, r1 - r0, d_in, rank, 1.0f, dh + off * rank, rank, a, rank, 1.0f,
            dx + off * d_in, d_in);
  }
}

}  // namespace lora::ops
