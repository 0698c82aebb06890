// AVX2 build of the vector kernels (compiled with -mavx2 -mfma -mf16c; called only when the CPU
// reports those features and not AVX-512).
#include <immintrin.h>

#include "model/kernels.hpp"
#include "model/kernels_isa.hpp"
#include "model/kernels_q8_256.hpp"

namespace {

struct V : ce::kernels::Q8Registers256 {
  using reg = __m256;
  static constexpr int64_t N = 8;
  static constexpr int kRegisters = 16;
  // fp32 weights take linear_broadcast from this many input rows on (no narrower registers), fp16
  // and bf16 from twice as many.
  static constexpr int64_t kBroadcastMinRows = 16;
  using Narrow = V;
  static constexpr int64_t kNarrowBroadcastMinRows = 0;
  static constexpr int kOutRows4 = 2;
  static constexpr int kDotInputRows = 4;  // 16 registers: no room for more accumulators
  static reg zero() { return _mm256_setzero_ps(); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg load_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static reg load_bf16(const uint16_t* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static reg set1(float v) { return _mm256_set1_ps(v); }
  static void store(float* p, reg a) { _mm256_storeu_ps(p, a); }
  static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
  static reg min(reg a, reg b) { return _mm256_min_ps(a, b); }
  static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  static reg round(reg a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // p * 2^n for integral n in [-126, 128), 2^n made in the exponent bits (below -126 the product
  // would underflow anyway)
  static reg scale2n(reg p, reg n) {
    const __m256i bits = _mm256_cvtps_epi32(_mm256_max_ps(n, _mm256_set1_ps(-126.0f)));
    return _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(127)), 23)));
  }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  static float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
  static float reduce(reg a) { return qreduce(a); }  // reg and qreg are both __m256
  // Lane i = the sum of d[i]'s lanes, i < 8: pairwise additions within 128-bit halves, then the halves.
  static reg sums(const reg* d) {
    const __m256 low = _mm256_hadd_ps(_mm256_hadd_ps(d[0], d[1]), _mm256_hadd_ps(d[2], d[3]));
    const __m256 high = _mm256_hadd_ps(_mm256_hadd_ps(d[4], d[5]), _mm256_hadd_ps(d[6], d[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(low, high, 0x20), _mm256_permute2f128_ps(low, high, 0x31));
  }
  static constexpr int kQ8Rows4 = 2;  // int8: block_q8<2, 4>
};

}  // namespace

#define KERNELS_ISA avx2
#include "model/kernels_simd.inc"
