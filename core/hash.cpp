#include "core/hash.h"

#include <cstdio>
#include <cstring>

#include "core/rng.h"

namespace lora {

uint64_t hash_bytes(const void* data, size_t n_bytes, uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h0 = mix64(seed), h1 = mix64(seed + 1), h2 = mix64(seed + 2), h3 = mix64(seed + 3);
  size_t i = 0;
  for (; i + 32 <= n_bytes; i += 32) {
    uint64_t w[4];
    std::memcpy(w, p + i, 32);
    h0 = mix64(h0 ^ w[0]);
    h1 = mix64(h1 ^ w[1]);
    h2 = mix64(h2 ^ w[2]);
    h3 = mix64(h3 ^ w[3]);
  }
  if (i < n_bytes) {
    uint64_t w[4] = {0, 0, 0, 0};
    std::memcpy(w, p + i, n_bytes - i);
    h0 = mix64(h0 ^ w[0]);
    h1 = mix64(h1 ^ w[1]);
    h2 = mix64(h2 ^ w[2]);
    h3 = mix64(h3 ^ w[3]);
  }
  return hash_u64(h0 ^ static_cast<uint64_t>(n_bytes), h1, h2, h3);
}

std::string hex64(uint64_t h) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string fingerprint_floats(const float* data, size_t n) {
  return hex64(hash_bytes(data, n * sizeof(float), static_cast<uint64_t>(n)));
}

}  // namespace lora
