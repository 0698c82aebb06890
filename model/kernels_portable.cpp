// Portable build of the vector kernels: one float per "register", for CPUs without AVX2 (and as a
// reference the tests compare the vector builds against).

#include <cstring>

#include "model/kernels.hpp"
#include "model/kernels_isa.hpp"

namespace {

struct V {
  using reg = float;
  static constexpr int64_t N = 1;
  static constexpr int kOutRows1 = 4;
  static constexpr int kOutRows4 = 2;
  static reg zero() { return 0.0f; }
  static reg load(const float* p) { return *p; }
  static float half_to_float(uint16_t h) {
    // IEEE binary16 -> binary32, subnormals included.
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
  static reg load_f16(const uint16_t* p) { return half_to_float(*p); }
  static reg load_bf16(const uint16_t* p) {
    const uint32_t bits = static_cast<uint32_t>(*p) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
  static reg load_q8(const int8_t* p) { return static_cast<float>(*p); }
  static reg set1(float v) { return v; }
  static reg fma(reg a, reg b, reg c) { return a * b + c; }
  static reg mul(reg a, reg b) { return a * b; }
  static float reduce(reg a) { return a; }
};

}  // namespace

#define KERNELS_ISA portable
#include "model/kernels_simd.inc"
