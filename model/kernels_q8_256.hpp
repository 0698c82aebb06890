#pragma once
// int8 block products on 256-bit registers, one 32-value block per register: shared by the AVX2
// and the AVX-512 builds of the kernels (their V derives from this), included only by them, each
// compiled with its own -m flags (both include AVX2).
#include <immintrin.h>

#include <cstdint>

namespace ce::kernels {

struct Q8Registers256 {
  using qreg = __m256;
  static qreg qzero() { return _mm256_setzero_ps(); }
  // Lanes that add up to dot(w, x) of two 32-value int8 blocks, as floats.
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

}  // namespace ce::kernels
