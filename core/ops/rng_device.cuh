// Device-callable copies of the counter-based hash in core/rng.h (mix64, hash_u64, uniform01),
// bit-for-bit the same functions, so a CUDA kernel draws exactly the values the CPU code draws
// (the dropout masks of both backends are equal). Also compiles as plain host C++ so a test can
// check the copies against core/rng.h on any machine.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define LORA_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LORA_HOST_DEVICE inline
#endif

namespace lora::rng_device {

LORA_HOST_DEVICE uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

LORA_HOST_DEVICE uint64_t hash_u64(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  uint64_t h = mix64(seed ^ 0x5851F42D4C957F2Dull);
  h = mix64(h ^ a);
  h = mix64(h ^ (b + 0x632BE59BD9B4E019ull));
  h = mix64(h ^ (c + 0x8CB92BA72F3D8DD7ull));
  return h;
}

LORA_HOST_DEVICE float uniform01(uint64_t h) {
  return static_cast<float>(h >> 40) * (1.0f / 16777216.0f);
}

}  // namespace lora::rng_device

#undef LORA_HOST_DEVICE
