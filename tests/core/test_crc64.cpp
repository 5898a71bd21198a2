// CRC-64/XZ: the catalogue check value, agreement with a bit-at-a-time reference over every length
// and alignment the slicing code distinguishes, incremental use, and the burst-detection guarantee
// the checkpoint integrity check relies on.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/crc64.h"
#include "core/rng.h"

using namespace lora;

namespace {

// Straight from the definition: reflected ECMA-182 polynomial, one bit at a time.
uint64_t crc64_bitwise(const unsigned char* p, size_t n) {
  uint64_t r = ~0ull;
  for (size_t i = 0; i < n; ++i) {
    r ^= p[i];
    for (int b = 0; b < 8; ++b) r = (r & 1) ? (r >> 1) ^ 0xC96C5795D7870F42ull : r >> 1;
  }
  return ~r;
}

std::vector<unsigned char> random_bytes(size_t n, uint64_t seed) {
  std::vector<unsigned char> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<unsigned char>(hash_u64(seed, i) >> 56);
  return v;
}

}  // namespace

TEST(Crc64, CatalogueCheckValue) {
  EXPECT_EQ(crc64("123456789", 9), 0x995DC9BBDF1939FAull);  // CRC-64/XZ in the CRC catalogue
  EXPECT_EQ(crc64("", 0), 0ull);
}

TEST(Crc64, MatchesBitwiseReferenceAtEveryLengthAndAlignment) {
  const std::vector<unsigned char> data = random_bytes(300, 1);
  for (size_t offset = 0; offset < 8; ++offset) {
    for (size_t n = 0; n + offset <= data.size(); n += (n < 40 ? 1 : 37)) {
      ASSERT_EQ(crc64(data.data() + offset, n), crc64_bitwise(data.data() + offset, n))
          << "offset " << offset << " length " << n;
    }
  }
}

TEST(Crc64, IncrementalEqualsWhole) {
  const std::vector<unsigned char> data = random_bytes(1000, 2);
  const uint64_t whole = crc64(data.data(), data.size());
  for (size_t cut : {0, 1, 7, 8, 9, 500, 999, 1000}) {
    EXPECT_EQ(crc64(data.data() + cut, data.size() - cut, crc64(data.data(), cut)), whole) << cut;
  }
}

// Any change confined to 64 consecutive bits changes the CRC (a degree-64 generator polynomial with
// a non-zero constant term divides no non-zero polynomial of lower degree).
TEST(Crc64, DetectsEveryBurstUpTo64Bits) {
  const std::vector<unsigned char> data = random_bytes(256, 3);
  const uint64_t good = crc64(data.data(), data.size());
  const size_t n_bits = data.size() * 8;
  int n_checked = 0;
  for (size_t start = 0; start + 64 <= n_bits; start += 13) {
    for (int len = 1; len <= 64; ++len) {
      // A burst of `len` bits: first and last flipped, the ones between random.
      const uint64_t middle = hash_u64(4, start, len);
      std::vector<unsigned char> d = data;
      for (int k = 0; k < len; ++k) {
        const bool flip = k == 0 || k == len - 1 || ((middle >> k) & 1);
        if (flip) d[(start + k) / 8] ^= static_cast<unsigned char>(1u << ((start + k) % 8));
      }
      ASSERT_NE(crc64(d.data(), d.size()), good) << "burst at bit " << start << " length " << len;
      ++n_checked;
    }
  }
  EXPECT_GT(n_checked, 9000);
}
