// Non-cryptographic 64-bit hashing of byte ranges: checksums of checkpoint fields and the
// fingerprint that identifies a base model's weights.
//
// hash_bytes      four independent SplitMix64 lanes over 8-byte words (so the multiplications of
//                 neighbouring words overlap), folded together with the length.
// hex64           16 lower-case hex digits.
// fingerprint_floats  hex64(hash_bytes(data, n floats, seed n)): what checkpoints record as the
//                 base fingerprint.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace lora {

uint64_t hash_bytes(const void* data, size_t n_bytes, uint64_t seed);
std::string hex64(uint64_t h);
std::string fingerprint_floats(const float* data, size_t n);

}  // namespace lora
