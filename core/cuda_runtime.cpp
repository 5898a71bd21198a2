// Device discovery and selection, the per-thread cuBLAS handles and the row-major SGEMM
// (see core/cuda_runtime.h). Compiled in every build: without CUDA only
// cuda_device_available() exists, and it says the build has no CUDA backend.
#include "core/cuda_runtime.h"

#ifdef LORA_WITH_CUDA

#include <vector>

#include "core/error.h"

namespace lora {

bool cuda_device_available(std::string* why) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the error so later calls do not report it again
    if (why != nullptr) {
      *why = detail::concat("cudaGetDeviceCount failed: ", cudaGetErrorName(err), " (",
                            cudaGetErrorString(err), ")");
    }
    return false;
  }
  if (count <= 0) {
    if (why != nullptr) *why = "the CUDA driver reports no device";
    return false;
  }
  if (why != nullptr) why->clear();
  return true;
}

namespace cuda {

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

void set_device(int device) {
  const int count = device_count();
  LORA_CHECK(device >= 0 && device < count, "CUDA device ", device, " does not exist (",
             count, " devices)");
  LORA_CUDA_CHECK(cudaSetDevice(device));
}

int current_device() {
  int device = 0;
  LORA_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

int select_device(int local_rank) {
  LORA_CHECK(local_rank >= 0, "local rank must be non-negative, got ", local_rank);
  std::string why;
  if (!cuda_device_available(&why)) throw Error(detail::concat("no usable CUDA device: ", why));
  const int device = local_rank % device_count();
  set_device(device);
  return device;
}

std::string device_name(int device) {
  cudaDeviceProp prop{};
  LORA_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

namespace {

// One handle per device for the owning thread; destroyed when the thread ends.
class CublasHandles {
 public:
  ~CublasHandles() {
    for (cublasHandle_t h : handles_) {
      if (h != nullptr) cublasDestroy(h);
    }
  }
  cublasHandle_t get(int device) {
    if (static_cast<size_t>(device) >= handles_.size()) handles_.resize(device + 1, nullptr);
    if (handles_[device] == nullptr) {
      cublasHandle_t h = nullptr;
      LORA_CUBLAS_CHECK(cublasCreate(&h));
      // fp32 products computed in fp32: pedantic math rules out TF32 tensor cores, emulated
      // single precision and reduced-precision reductions, whatever the environment asks for
      // (the CUDA model must match the CPU model to 1e-4 relative).
      const cublasStatus_t mode = cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH);
      if (mode != CUBLAS_STATUS_SUCCESS) {
        cublasDestroy(h);
        throw_cublas_error(mode, "cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH)", __FILE__, __LINE__);
      }
      handles_[device] = h;
    }
    return handles_[device];
  }

 private:
  std::vector<cublasHandle_t> handles_;
};

}  // namespace

cublasHandle_t cublas_handle(cudaStream_t stream) {
  thread_local CublasHandles handles;
  cublasHandle_t h = handles.get(current_device());
  LORA_CUBLAS_CHECK(cublasSetStream(h, stream));
  return h;
}

void sgemm_row_major(cudaStream_t stream, cublasOperation_t op_a, cublasOperation_t op_b, int m,
                     int n, int k, float alpha, const float* a, int lda, const float* b, int ldb,
                     float beta, float* c, int ldc) {
  LORA_CHECK(m > 0 && n > 0 && k > 0, "gemm sizes must be positive: m=", m, " n=", n, " k=", k);
  LORA_CHECK(a != nullptr && b != nullptr && c != nullptr, "gemm operands must not be null");
  LORA_CHECK(ldc >= n, "ldc ", ldc, " < n ", n);
  LORA_CHECK(lda >= (op_a == CUBLAS_OP_N ? k : m), "lda ", lda, " too small");
  LORA_CHECK(ldb >= (op_b == CUBLAS_OP_N ? n : k), "ldb ", ldb, " too small");
  cublasHandle_t h = cublas_handle(stream);
  // Column-major view: C^T[n, m] = op(B)^T[n, k] op(A)^T[k, m].
  LORA_CUBLAS_CHECK(cublasSgemm(h, op_b, op_a, n, m, k, &alpha, b, ldb, a, lda, &beta, c, ldc));
}

}  // namespace cuda
}  // namespace lora

#else  // !LORA_WITH_CUDA

namespace lora {

bool cuda_device_available(std::string* why) {
  if (why != nullptr) *why = "this build has no CUDA backend (configured without nvcc)";
  return false;
}

}  // namespace lora

#endif  // LORA_WITH_CUDA
