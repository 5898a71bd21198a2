// Row-major single-precision GEMM, the one entry to the BLAS for the CPU ops:
//   C[m, n] = alpha op(A) op(B) + beta C,  op(X) = X or X^T
// with OpenBLAS underneath. When a recorder is installed (bench/roofline), every call's shape
// and its wall time are reported to it after the call, so a benchmark can time the BLAS alone on
// exactly the products a step runs and compare, shape by shape, with the time they took in it.
#pragma once

#include <functional>

namespace lora::ops {

struct SgemmShape {
  bool trans_a = false, trans_b = false;
  int m = 0, n = 0, k = 0;
  int lda = 0, ldb = 0, ldc = 0;
  bool beta_zero = false;   // beta == 0: C is written, not read
  bool own_kernel = false;  // computed by small_sgemm (core/ops/small_gemm.h), not the BLAS
};

void sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda,
           const float* b, int ldb, float beta, float* c, int ldc);

// True when sgemm may be called from inside an OpenMP parallel region, each call then running on
// its calling thread: the OpenMP (or sequential) OpenBLAS. With the pthreads build each call would
// start its own threads on top of OpenMP's, so the ops that slice work over OpenMP threads fall
// back to one threaded sgemm per product.
bool sgemm_nests_in_openmp();

// Installs (or, with an empty function, removes) the recorder: shape and seconds of each call.
// Calls may come from several OpenMP threads at once; the recorder is called under a lock.
void set_sgemm_recorder(std::function<void(const SgemmShape&, double seconds)> recorder);

namespace detail {
// For the other GEMM entries (small_sgemm): whether a recorder is installed, and reporting a call.
bool sgemm_recording();
void record_sgemm(const SgemmShape& shape, double seconds);
}  // namespace detail

}  // namespace lora::ops
