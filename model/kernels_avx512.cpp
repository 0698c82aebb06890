// AVX-512 build of the vector kernels (compiled with -mavx512f -mavx512bw -mavx512vl -mfma -mf16c;
// called only when the CPU reports those features).
#include <immintrin.h>

#include "model/kernels.hpp"
#include "model/kernels_isa.hpp"
#include "model/kernels_q8_256.hpp"

namespace {

// Half-width registers for the broadcast blocks of 8 to 31 input rows (AVX-512VL: 32 of them).
struct Narrow {
  using reg = __m256;
  static constexpr int64_t N = 8;
  static constexpr int kRegisters = 32;
  static reg zero() { return _mm256_setzero_ps(); }
  static reg load(const float* p) { return _mm256_loadu_ps(p); }
  static reg set1(float v) { return _mm256_set1_ps(v); }
  static void store(float* p, reg a) { _mm256_storeu_ps(p, a); }
  static reg fma(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
};

struct V : ce::kernels::Q8Registers256 {
  using reg = __m512;
  static constexpr int64_t N = 16;
  static constexpr int kRegisters = 32;
  // fp32 weights take linear_broadcast from this many input rows on (fp16/bf16 from twice as
  // many), and fp32 in Narrow registers from kNarrowBroadcastMinRows. Ice Lake, one core, median GFLOP/s of 512- against 256-bit
  // registers: 16 rows 57-61 / 72-77, 24 rows 62-64 / 79-88 (two groups of 16 leave a quarter of
  // the lanes empty), 32 rows 81-82 / 67-72, 48 rows 79-89 / 59-80.
  static constexpr int64_t kBroadcastMinRows = 32;
  using Narrow = ::Narrow;
  static constexpr int64_t kNarrowBroadcastMinRows = 8;
  static constexpr int kOutRows4 = 4;  // block<4, 4>: 16 accumulators + 4 weight registers
  // block<4, 6>: 24 accumulators + 4 weight registers + 1 input. Catch-up of the 246 M shape's
  // cloud layers, fp16, 2 threads, medians of 6 interleaved runs, 4 -> 6 rows a block: 1.33 -> 1.20
  // ms a position at gap 16, 1.35 -> 1.21 at 64, 1.22 -> 1.18 at 256 (weights from memory, where
  // fp32 gained nothing; with weights in the cache it does, see linear_range); 3 outputs x 8 rows
  // and 2 x 12 were slower by 1.4-2.8x.
  static constexpr int kDotInputRows = 6;
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
  // Lane i = the sum of d[i]'s lanes, i < 16: the transposition folded into the additions (15 of
  // them, each after two shuffles) instead of 16 horizontal sums of 4 additions and 4 shuffles.
  static reg sums(const reg* d) {
    reg pairs[8], quads[4], halves[2];
    for (int i = 0; i < 8; ++i)  // in each 128-bit quarter: d[2i] and d[2i+1], lanes 0+2, 0+2, 1+3, 1+3
      pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(d[2 * i], d[2 * i + 1]), _mm512_unpackhi_ps(d[2 * i], d[2 * i + 1]));
    for (int i = 0; i < 4; ++i)  // in each quarter: its sums of d[4i], ..., d[4i + 3]
      quads[i] = _mm512_add_ps(_mm512_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], 0x44),
                               _mm512_shuffle_ps(pairs[2 * i], pairs[2 * i + 1], 0xEE));
    for (int i = 0; i < 2; ++i)  // quarters 0 + 2 and 1 + 3 of quads[2i], then of quads[2i + 1]
      halves[i] = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0x44),
                                _mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_f32x4(halves[0], halves[1], 0x88), _mm512_shuffle_f32x4(halves[0], halves[1], 0xDD));
  }

  static constexpr int kQ8Rows4 = 4;  // int8: block_q8<4, 4>
};

}  // namespace

#define KERNELS_ISA avx512
#include "model/kernels_simd.inc"
