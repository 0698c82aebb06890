// Portable build of the vector kernels for CPUs without AVX2: SSE2 registers (every x86-64 has
// them), or one float per "register" elsewhere; also a reference the tests compare the other
// builds against. Half-precision matrices are widened at load for this build (Decoder), since
// converting them here, value by value, would cost more than the product.
#include <algorithm>
#include <cmath>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "model/kernels.hpp"
#include "model/kernels_isa.hpp"

namespace {

float half_bits_to_float(uint16_t h);

#if defined(__SSE2__)
struct V {
  using reg = __m128;
  static constexpr int64_t N = 4;
  static constexpr int kRegisters = 16;
  static constexpr int64_t kBroadcastMinRows = 0;  // never: the dot-product blocks
  using Narrow = V;
  static constexpr int64_t kNarrowBroadcastMinRows = 0;
  static constexpr int kOutRows4 = 2;
  static constexpr int kDotInputRows = 4;
  static reg zero() { return _mm_setzero_ps(); }
  static reg load(const float* p) { return _mm_loadu_ps(p); }
  static float half_to_float(uint16_t h) { return half_bits_to_float(h); }
  static reg load_f16(const uint16_t* p) {
    return _mm_set_ps(half_to_float(p[3]), half_to_float(p[2]), half_to_float(p[1]), half_to_float(p[0]));
  }
  static reg load_bf16(const uint16_t* p) {
    const __m128i bits = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), bits));  // each value in a float's top half
  }
  static reg set1(float v) { return _mm_set1_ps(v); }
  static void store(float* p, reg a) { _mm_storeu_ps(p, a); }
  static reg add(reg a, reg b) { return _mm_add_ps(a, b); }
  static reg div(reg a, reg b) { return _mm_div_ps(a, b); }
  static reg min(reg a, reg b) { return _mm_min_ps(a, b); }
  static reg max(reg a, reg b) { return _mm_max_ps(a, b); }
  static reg round(reg a) { return _mm_cvtepi32_ps(_mm_cvtps_epi32(a)); }  // to nearest (default rounding mode)
  static reg scale2n(reg p, reg n) {  // as the AVX2 build
    const __m128i bits = _mm_cvtps_epi32(_mm_max_ps(n, _mm_set1_ps(-126.0f)));
    return _mm_mul_ps(p, _mm_castsi128_ps(_mm_slli_epi32(_mm_add_epi32(bits, _mm_set1_epi32(127)), 23)));
  }
  static reg fma(reg a, reg b, reg c) { return _mm_add_ps(_mm_mul_ps(a, b), c); }
  static reg mul(reg a, reg b) { return _mm_mul_ps(a, b); }
  static float reduce(reg a) {
    const __m128 pairs = _mm_add_ps(a, _mm_movehl_ps(a, a));
    return _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)));
  }
  static reg sums(const reg* d) {  // lane i = the sum of d[i]'s lanes: lanes 0 + 2 and 1 + 3, then those
    const __m128 ab = _mm_add_ps(_mm_unpacklo_ps(d[0], d[1]), _mm_unpackhi_ps(d[0], d[1]));
    const __m128 cd = _mm_add_ps(_mm_unpacklo_ps(d[2], d[3]), _mm_unpackhi_ps(d[2], d[3]));
    return _mm_add_ps(_mm_movelh_ps(ab, cd), _mm_movehl_ps(cd, ab));
  }

  // int8: a 32-value block as two 16-byte halves, each widened to int16 (SSE2 has no byte
  // multiply) and multiplied pairwise into int32 lanes.
  using qreg = __m128;
  static constexpr int kQ8Rows4 = 1;
  static qreg qzero() { return _mm_setzero_ps(); }
  static qreg q8_dot(const int8_t* w, const int8_t* x) {
    __m128i sum = _mm_setzero_si128();
    for (int half = 0; half < 2; ++half) {
      const __m128i wv = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16 * half));
      const __m128i xv = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + 16 * half));
      const __m128i wsign = _mm_cmplt_epi8(wv, _mm_setzero_si128()), xsign = _mm_cmplt_epi8(xv, _mm_setzero_si128());
      sum = _mm_add_epi32(sum, _mm_madd_epi16(_mm_unpacklo_epi8(wv, wsign), _mm_unpacklo_epi8(xv, xsign)));
      sum = _mm_add_epi32(sum, _mm_madd_epi16(_mm_unpackhi_epi8(wv, wsign), _mm_unpackhi_epi8(xv, xsign)));
    }
    return _mm_cvtepi32_ps(sum);
  }
  static qreg qfma(qreg d, float scale, qreg acc) { return _mm_add_ps(_mm_mul_ps(d, _mm_set1_ps(scale)), acc); }
  static float qreduce(qreg a) { return reduce(a); }
};
#else
struct V {
  using reg = float;
  static constexpr int64_t N = 1;
  static constexpr int kRegisters = 16;
  static constexpr int64_t kBroadcastMinRows = 0;  // never: the dot-product blocks
  using Narrow = V;
  static constexpr int64_t kNarrowBroadcastMinRows = 0;
  static constexpr int kOutRows4 = 2;
  static constexpr int kDotInputRows = 4;
  static reg zero() { return 0.0f; }
  static reg load(const float* p) { return *p; }
  static float half_to_float(uint16_t h) { return half_bits_to_float(h); }
  static reg load_f16(const uint16_t* p) { return half_to_float(*p); }
  static reg load_bf16(const uint16_t* p) {
    const uint32_t bits = static_cast<uint32_t>(*p) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  static reg set1(float v) { return v; }
  static void store(float* p, reg a) { *p = a; }
  static reg add(reg a, reg b) { return a + b; }
  static reg div(reg a, reg b) { return a / b; }
  static reg min(reg a, reg b) { return std::min(a, b); }
  static reg max(reg a, reg b) { return std::max(a, b); }
  static reg round(reg a) { return std::nearbyint(a); }
  static reg scale2n(reg p, reg n) { return std::ldexp(p, static_cast<int>(n)); }
  static reg fma(reg a, reg b, reg c) { return a * b + c; }
  static reg mul(reg a, reg b) { return a * b; }
  static float reduce(reg a) { return a; }
  static reg sums(const reg* d) { return d[0]; }

  using qreg = float;
  static constexpr int kQ8Rows4 = 1;
  static qreg qzero() { return 0.0f; }
  static qreg q8_dot(const int8_t* w, const int8_t* x) {
    int32_t sum = 0;
    for (int k = 0; k < 32; ++k) sum += int32_t{w[k]} * x[k];
    return static_cast<float>(sum);
  }
  static qreg qfma(qreg d, float scale, qreg acc) { return d * scale + acc; }
  static float qreduce(qreg a) { return a; }
};
#endif

// IEEE binary16 -> binary32, subnormals included.
float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff, bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa) {
    exponent = 113;
    while (!(mantissa & 0x400)) {
      mantissa <<= 1;
      --exponent;
    }
    bits = sign | (exponent << 23) | ((mantissa & 0x3ff) << 13);
  } else {
    bits = sign;
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

}  // namespace

#define KERNELS_ISA portable
#include "model/kernels_simd.inc"
