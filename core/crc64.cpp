// CRC-64/XZ, slicing-by-8 (see crc64.h).
#include "core/crc64.h"

#include <array>
#include <bit>
#include <cstring>

namespace lora {
namespace {

static_assert(std::endian::native == std::endian::little,
              "slicing-by-8 loads 8 bytes as a little-endian word");

constexpr uint64_t kReflectedPoly = 0xC96C5795D7870F42ull;  // 0x42F0E1EBA9EA3693 bit-reversed

using Tables = std::array<std::array<uint64_t, 256>, 8>;

// tables[0][b]: the CRC register after shifting byte b through it; tables[k][b]: the same byte
// followed by k zero bytes, so eight bytes fold in with eight independent lookups.
constexpr Tables make_tables() {
  Tables t{};
  for (uint64_t b = 0; b < 256; ++b) {
    uint64_t r = b;
    for (int bit = 0; bit < 8; ++bit) r = (r & 1) ? (r >> 1) ^ kReflectedPoly : r >> 1;
    t[0][b] = r;
  }
  for (int k = 1; k < 8; ++k) {
    for (int b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xFF];
  }
  return t;
}

constexpr Tables kTables = make_tables();

}  // namespace

uint64_t crc64(const void* data, size_t n_bytes, uint64_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t r = ~crc;
  for (; n_bytes >= 8; n_bytes -= 8, p += 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    r ^= w;
    r = kTables[7][r & 0xFF] ^ kTables[6][(r >> 8) & 0xFF] ^ kTables[5][(r >> 16) & 0xFF] ^
        kTables[4][(r >> 24) & 0xFF] ^ kTables[3][(r >> 32) & 0xFF] ^ kTables[2][(r >> 40) & 0xFF] ^
        kTables[1][(r >> 48) & 0xFF] ^ kTables[0][r >> 56];
  }
  for (; n_bytes > 0; --n_bytes, ++p) r = kTables[0][(r ^ *p) & 0xFF] ^ (r >> 8);
  return ~r;
}

}  // namespace lora
