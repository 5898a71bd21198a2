// Counter-based random numbers: every value is a pure function of (seed, stream ids, index),
// so results do not depend on thread count, world size or the order work is done in.
//
// mix64        SplitMix64 finaliser: a strong 64-bit bijective hash.
// hash_u64     hash of a seed and up to three ids (step, sequence, module, ...).
// uniform01    float in [0, 1) from a 64-bit hash (24 mantissa bits).
// normal01     standard normal from two hashes (Box-Muller), index-addressable.
// Rng          small sequential generator (state = one uint64), for code that wants a stream.
#pragma once

#include <cmath>
#include <cstdint>

namespace lora {

inline uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

inline uint64_t hash_u64(uint64_t seed, uint64_t a, uint64_t b = 0, uint64_t c = 0) {
  uint64_t h = mix64(seed ^ 0x5851F42D4C957F2Dull);
  h = mix64(h ^ a);
  h = mix64(h ^ (b + 0x632BE59BD9B4E019ull));
  h = mix64(h ^ (c + 0x8CB92BA72F3D8DD7ull));
  return h;
}

inline float uniform01(uint64_t h) { return static_cast<float>(h >> 40) * (1.0f / 16777216.0f); }

// Standard normal for element `index` of the stream (seed, stream).
inline float normal01(uint64_t seed, uint64_t stream, uint64_t index) {
  uint64_t h1 = hash_u64(seed, stream, index, 1);
  uint64_t h2 = hash_u64(seed, stream, index, 2);
  double u1 = (static_cast<double>(h1 >> 11) + 1.0) * (1.0 / 9007199254740993.0);  // (0, 1]
  double u2 = static_cast<double>(h2 >> 11) * (1.0 / 9007199254740992.0);          // [0, 1)
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

class Rng {
 public:
  explicit Rng(uint64_t seed = 0) : state_(seed) {}
  uint64_t next_u64() { return mix64(state_++); }
  float next_uniform() { return uniform01(next_u64()); }
  uint64_t state() const { return state_; }
  void set_state(uint64_t s) { state_ = s; }

 private:
  uint64_t state_;
};

}  // namespace lora
