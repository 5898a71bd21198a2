// Whether a CUDA test may run, and what it does when it may not. By default a test that needs a
// device skips with the reason (our build machines have the toolkit but no GPU). With
// LORA_REQUIRE_CUDA=1 in the environment the same test FAILS instead, printing the CUDA error, so
// that a run on a GPU machine cannot look green while every CUDA test was skipped (a driver too old
// for the runtime, a missing libcuda, no visible device, a build without CUDA).
//
// "Usable" is stronger than cuda_device_available(): in CUDA builds the helper also makes device 0
// current and creates its context (cudaFree(nullptr)), which is where a driver/runtime mismatch or
// an exclusive-process device is reported.
//
//   TEST(X, Y) { LORA_CUDA_DEVICE_OR_SKIP(); ... }      // or in a fixture's SetUp()
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "core/cuda_runtime.h"
#include "core/error.h"

namespace lora::testing {

// True when LORA_REQUIRE_CUDA is set to anything but "", "0" or "false".
inline bool cuda_required() {
  const char* v = std::getenv("LORA_REQUIRE_CUDA");
  return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0 && std::strcmp(v, "false") != 0;
}

// Empty when a device can be used by this process; otherwise why not, with the CUDA error name and
// string when a CUDA call failed.
inline std::string cuda_unusable_reason() {
  std::string why;
  if (!cuda_device_available(&why)) return why;
#if defined(LORA_WITH_CUDA) || defined(LORA_WITH_NCCL)
  int current = 0;
  cudaError_t err = cudaGetDevice(&current);
  if (err == cudaSuccess) err = cudaFree(nullptr);  // creates the context of the current device
  if (err != cudaSuccess) {
    return detail::concat("creating a context on CUDA device ", current, " failed: ",
                          cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
  }
#endif
  return "";
}

// Message for a test that cannot run because the build has no CUDA backend.
inline std::string cuda_not_built_reason() {
  return "this build has no CUDA backend (configured without nvcc)";
}

}  // namespace lora::testing

// Skips the current test with `reason`, or fails it when LORA_REQUIRE_CUDA=1. Returns from the
// enclosing void function either way (a test body or SetUp()).
#define LORA_CUDA_SKIP_OR_FAIL(reason)                                                        \
  do {                                                                                        \
    const std::string lora_cuda_reason_ = (reason);                                           \
    if (::lora::testing::cuda_required()) {                                                   \
      GTEST_FAIL() << "LORA_REQUIRE_CUDA=1 but no usable CUDA device: " << lora_cuda_reason_; \
    }                                                                                         \
    GTEST_SKIP() << "no usable CUDA device: " << lora_cuda_reason_;                           \
  } while (0)

// Continues only when a CUDA device is usable (see the file comment).
#define LORA_CUDA_DEVICE_OR_SKIP()                                            \
  do {                                                                        \
    const std::string lora_cuda_why_ = ::lora::testing::cuda_unusable_reason(); \
    if (!lora_cuda_why_.empty()) LORA_CUDA_SKIP_OR_FAIL(lora_cuda_why_);      \
  } while (0)
