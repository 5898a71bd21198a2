// The CUDA runtime layer shared by the ops and the NCCL communicator: device discovery and
// selection, error checks that throw lora::Error with file:line, a typed device buffer that frees
// itself, and one cuBLAS handle per (thread, device) with a row-major SGEMM on top of it.
//
// cuda_device_available() exists in every build (false with a reason in a CPU-only build, or when
// the toolkit is present but no driver or device is), so callers can decide at run time without
// any #ifdef. Everything else is only declared in CUDA-enabled targets (LORA_WITH_CUDA for core
// and its users, LORA_WITH_NCCL for the communicator library).
//
// Row-major GEMM: C[m, n] = alpha op(A) op(B) + beta C with A, B, C stored row-major with leading
// dimensions lda, ldb, ldc (elements per stored row). cuBLAS is column-major, so the call computes
// C^T = op(B)^T op(A)^T by passing B first: a row-major matrix read column-major is its transpose.
#pragma once

#include <cstddef>
#include <string>

namespace lora {

// True when a CUDA driver and at least one device can be used by this process. On false, *why
// (when not null) says what is missing. Never throws, never aborts.
bool cuda_device_available(std::string* why);

}  // namespace lora

#if defined(LORA_WITH_CUDA) || defined(LORA_WITH_NCCL)

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <utility>

#include "core/error.h"

namespace lora::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file,
                                          int line) {
  throw ::lora::Error(::lora::detail::concat(file, ":", line, ": CUDA error ",
                                             cudaGetErrorName(err), " (", cudaGetErrorString(err),
                                             ") in ", expr));
}

// cuBLAS' own status names; cublasGetStatusString would add a link dependency on libcublas to
// every user of this header.
inline const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t status, const char* expr,
                                            const char* file, int line) {
  throw ::lora::Error(::lora::detail::concat(file, ":", line, ": cuBLAS error ",
                                             cublas_status_name(status), " (", static_cast<int>(status),
                                             ") in ", expr));
}

}  // namespace lora::cuda

// Throws lora::Error naming the failing call, the CUDA error and file:line.
#define LORA_CUDA_CHECK(expr)                                                   \
  do {                                                                          \
    const cudaError_t lora_cuda_err_ = (expr);                                  \
    if (lora_cuda_err_ != cudaSuccess) {                                        \
      ::lora::cuda::throw_cuda_error(lora_cuda_err_, #expr, __FILE__, __LINE__); \
    }                                                                           \
  } while (0)

// After a kernel launch: reports a bad launch configuration at the launching line.
#define LORA_CUDA_CHECK_LAUNCH() LORA_CUDA_CHECK(cudaGetLastError())

#define LORA_CUBLAS_CHECK(expr)                                                      \
  do {                                                                               \
    const cublasStatus_t lora_cublas_status_ = (expr);                               \
    if (lora_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                              \
      ::lora::cuda::throw_cublas_error(lora_cublas_status_, #expr, __FILE__, __LINE__); \
    }                                                                                \
  } while (0)

namespace lora::cuda {

// Number of usable devices (0 when there is no driver or device; never throws).
int device_count();
// Makes `device` current for the calling thread; throws lora::Error when it does not exist.
void set_device(int device);
int current_device();
// The device a process with node-local rank `local_rank` should use (local_rank mod count), made
// current. Throws lora::Error when no device is available, with the reason.
int select_device(int local_rank);
std::string device_name(int device);

// The calling thread's cuBLAS handle for the current device, created on first use (math mode
// CUBLAS_PEDANTIC_MATH: fp32 products in fp32, never TF32), bound to `stream` before it is
// returned. Handles live until the thread ends.
cublasHandle_t cublas_handle(cudaStream_t stream);

// Row-major SGEMM on `stream` (see the file comment). op_a/op_b are CUBLAS_OP_N or CUBLAS_OP_T.
void sgemm_row_major(cudaStream_t stream, cublasOperation_t op_a, cublasOperation_t op_b, int m,
                     int n, int k, float alpha, const float* a, int lda, const float* b, int ldb,
                     float beta, float* c, int ldc);

// Owns `n_elems` elements of T in device memory on the device current at construction.
// Move-only; freeing never throws (an error at destruction is reported on the next CUDA call).
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n_elems) : n_elems_(n_elems) {
    if (n_elems_ > 0) LORA_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&data_), size_bytes()));
  }
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), n_elems_(std::exchange(other.n_elems_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      reset();
      data_ = std::exchange(other.data_, nullptr);
      n_elems_ = std::exchange(other.n_elems_, 0);
    }
    return *this;
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  size_t size() const { return n_elems_; }
  size_t size_bytes() const { return n_elems_ * sizeof(T); }

  // Copies of the whole buffer (n_elems host elements), ordered on `stream` after the work already
  // queued there; they return once the copy is complete, so `host` may be pageable and reused at
  // once. Never the legacy default stream: with a non-blocking stream that one would not wait for
  // the kernels still writing or reading this buffer.
  void copy_from_host(const T* host, cudaStream_t stream) {
    if (n_elems_ == 0) return;
    LORA_CUDA_CHECK(cudaMemcpyAsync(data_, host, size_bytes(), cudaMemcpyHostToDevice, stream));
    LORA_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  void copy_to_host(T* host, cudaStream_t stream) const {
    if (n_elems_ == 0) return;
    LORA_CUDA_CHECK(cudaMemcpyAsync(host, data_, size_bytes(), cudaMemcpyDeviceToHost, stream));
    LORA_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  // Enqueues a zero fill on `stream`; does not wait for it.
  void zero(cudaStream_t stream) {
    if (n_elems_ > 0) LORA_CUDA_CHECK(cudaMemsetAsync(data_, 0, size_bytes(), stream));
  }

  void reset() noexcept {
    if (data_ != nullptr) cudaFree(data_);
    data_ = nullptr;
    n_elems_ = 0;
  }

 private:
  T* data_ = nullptr;
  size_t n_elems_ = 0;
};

}  // namespace lora::cuda

#endif  // LORA_WITH_CUDA || LORA_WITH_NCCL
