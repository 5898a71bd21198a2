// Vectorisable exp and tanh for the CPU ops (internal to core/ops/*.cpp).
// libm's expf/tanhf stay scalar calls unless the whole build uses -ffast-math; these are plain
// arithmetic and bit casts, so a `#pragma omp simd` loop that calls them becomes SIMD code.
//   exp_approx(x):  e^x, relative error ~2 ulp; 0 for x < -87.3, clamped at x = 88.3 (e^88.3).
//   tanh_approx(x): tanh(x), absolute error below ~2e-7 (odd polynomial near 0, exp form beyond).
#pragma once

#include <cstdint>
#include <cstring>

namespace lora::ops::detail {

inline float exp_approx(float x) {
  const float lo = -87.3f, hi = 88.3f;
  float xc = x < lo ? lo : (x > hi ? hi : x);
  // n = round(x / ln2) by the 1.5 * 2^23 trick; r = x - n ln2 in two parts (Cody-Waite).
  const float shifter = 12582912.0f;
  float t = xc * 1.44269504088896341f + shifter;
  float n = t - shifter;
  int32_t t_bits;
  std::memcpy(&t_bits, &t, sizeof(t_bits));
  int32_t n_int = t_bits - 0x4B400000;
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  // e^r on |r| <= ln2/2 (Cephes expf coefficients).
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t scale_bits = (n_int + 127) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof(scale));
  float y = p * scale;
  return x < lo ? 0.0f : y;
}

inline float tanh_approx(float x) {
  float a = x < 0.0f ? -x : x;
  // Small |x|: Taylor series (the exp form would cancel); error below 1e-9 for |x| < 0.125.
  float a2 = a * a;
  float small = a * (1.0f + a2 * (-0.333333333f + a2 * (0.133333333f + a2 * -0.0539682540f)));
  float ac = a > 9.0f ? 9.0f : a;
  float e = exp_approx(2.0f * ac);
  float big = 1.0f - 2.0f / (e + 1.0f);
  float t = a < 0.125f ? small : big;
  return x < 0.0f ? -t : t;
}

}  // namespace lora::ops::detail
