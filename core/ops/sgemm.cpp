#include "core/ops/sgemm.h"

#include <cblas.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <utility>

namespace lora::ops {
namespace {

std::atomic<bool> g_recording{false};
std::mutex g_mutex;
std::function<void(const SgemmShape&, double)> g_recorder;

}  // namespace

void sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a, int lda,
           const float* b, int ldb, float beta, float* c, int ldc) {
  auto call = [&] {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  };
  if (!detail::sgemm_recording()) {
    call();
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  call();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  detail::record_sgemm({trans_a, trans_b, m, n, k, lda, ldb, ldc, beta == 0.0f, false}, seconds);
}

namespace detail {

bool sgemm_recording() { return g_recording.load(std::memory_order_relaxed); }

void record_sgemm(const SgemmShape& shape, double seconds) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_recorder) g_recorder(shape, seconds);
}

}  // namespace detail

bool sgemm_nests_in_openmp() {
  static const bool nests = openblas_get_parallel() != 1;  // 0 sequential, 1 pthreads, 2 OpenMP
  return nests;
}

void set_sgemm_recorder(std::function<void(const SgemmShape&, double)> recorder) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_recording.store(static_cast<bool>(recorder), std::memory_order_relaxed);
  g_recorder = std::move(recorder);
}

}  // namespace lora::ops
