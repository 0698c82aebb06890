// AVX-512 build of the vector kernels (compiled with -mavx512f -mavx512bw -mavx512vl -mfma -mf16c;
// called only when the CPU reports those features).
#include <immintrin.h>

#include "model/kernels.hpp"
#include "model/kernels_isa.hpp"

namespace {

struct V {
  using reg = __m512;
  static constexpr int64_t N = 16;
  static constexpr int kOutRows4 = 4;  // block<4, 4>: 16 accumulators + 4 weight registers
  static reg zero() { return _mm512_setzero_ps(); }
  static reg load(const float* p) { return _mm512_loadu_ps(p); }
  static reg load_f16(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static reg load_bf16(const uint16_t* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
  }
  static reg set1(float v) { return _mm512_set1_ps(v); }
  static void store(float* p, reg a) { _mm512_storeu_ps(p, a); }
  static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
  static reg min(reg a, reg b) { return _mm512_min_ps(a, b); }
  static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  static reg round(reg a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static reg scale2n(reg p, reg n) { return _mm512_scalef_ps(p, n); }  // p * 2^n, n integral
  static reg fma(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  static float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
  static float reduce(reg a) { return _mm512_reduce_add_ps(a); }

  // int8 blocks on 256-bit registers, one 32-value block each (as the AVX2 build).
  using qreg = __m256;
  static constexpr int kQ8Rows4 = 4;
  static qreg qzero() { return _mm256_setzero_ps(); }
  static qreg q8_dot(const int8_t* w, const int8_t* x) {
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    // |x| as unsigned times w with x's sign: maddubs multiplies u8 by s8 into int16 pairs (at most
    // 2 * 127 * 127, no saturation), madd adds the pairs into int32.
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(xv, xv), _mm256_sign_epi8(wv, xv));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
  }
  static qreg qfma(qreg d, float scale, qreg acc) { return _mm256_fmadd_ps(d, _mm256_set1_ps(scale), acc); }
  static float qreduce(qreg a) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
  }
};

}  // namespace

#define KERNELS_ISA avx512
#include "model/kernels_simd.inc"
