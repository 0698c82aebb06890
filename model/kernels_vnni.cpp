// The int8 product on AVX-512 VNNI (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni
// -mfma; called only when the CPU reports VNNI): weights in the q8_grouped layout (kernels.hpp), input
// rows quantized per 32-value block as the weights are.
//
// vpdpbusd multiplies unsigned bytes by signed bytes, four products summed into each int32 lane.
// The weights are stored + 128 (unsigned) and the inputs stay signed, so a block's lane holds
// dot(q_w, q_x) + 128 * sum(q_x); the second term, one integer per input row and block, is taken
// off before the block's scales apply. Every lane is one output row, so nothing is summed across
// lanes: per output row the blocks add up in order, each as one fused multiply-add of its exact
// integer dot product and scale_w * scale_x, the arithmetic of linear_q8_grouped_loops to the bit,
// whatever the number of input rows (a row's result does not depend on the rows batched with it).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "model/kernels.hpp"
#include "model/kernels_isa.hpp"

namespace ce::kernels::avx512_vnni {
namespace {

constexpr int kMaxInputRows = 8;  // input rows per pass over a group: 8 dot + 8 sum registers

// Quantized input rows, block-major so that one pointer with constant offsets reaches every input
// row of a block (eight row pointers would not fit the general registers beside the loop's own):
// values (blocks, n, 32), block scales and block sums (blocks, n).
struct Inputs {
  const int8_t* q;
  const float* scales;
  const int32_t* sums;
  int64_t n, blocks;
};

// Output rows [16g, 16g + 16) (one 512-bit lane each) for input rows [r0, r0 + R). A block's 8
// products into one register form a chain of dependent vpdpbusd (~5 cycles each): with few input
// rows each row sums into P registers, so that enough chains run side by side.
// `ahead`: the next group's weights, fetched into L2 alongside (null: none, or already done): with
// many input rows a group's first pass is compute-bound, and the hardware prefetcher alone then
// leaves the next group's first loads waiting on memory.
template <int R>
void group_rows(const uint8_t* group, const float* group_scales, const Inputs& in, int64_t r0, float* y,
                int64_t ldy, int64_t row0, bool accumulate, const uint8_t* ahead) {
  constexpr int P = R >= 4 ? 1 : R == 1 ? 4 : 2;
  constexpr int kChunks = kQ8Block / 4;
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < in.blocks; ++b) {
    const uint8_t* block = group + b * kQ8GroupRows * kQ8Block;
    if (ahead)
      for (int64_t line = 0; line < kQ8GroupRows * kQ8Block; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(ahead + b * kQ8GroupRows * kQ8Block + line), _MM_HINT_T1);
    const float* scales = in.scales + b * in.n + r0;
    const int32_t* sums = in.sums + b * in.n + r0;
    // Each row's first register starts at -128 * sum(q_x): the weights' +128 is taken off by the
    // additions themselves (integers, exact), one vector operation less per block and row.
    __m512i dot[R][P];
    for (int r = 0; r < R; ++r)
      for (int p = 0; p < P; ++p) dot[r][p] = p == 0 ? _mm512_set1_epi32(-128 * sums[r]) : _mm512_setzero_si512();
    const int8_t* x = in.q + (b * in.n + r0) * kQ8Block;  // input row r's block at x + 32r
    for (int c = 0; c < kChunks; ++c) {
      const __m512i w = _mm512_loadu_si512(block + c * 4 * kQ8GroupRows);
      for (int r = 0; r < R; ++r) {
        int32_t four;  // input values [4c, 4c + 4) of the block, for every lane
        std::memcpy(&four, x + r * kQ8Block + 4 * c, sizeof four);
        dot[r][c % P] = _mm512_dpbusd_epi32(dot[r][c % P], w, _mm512_set1_epi32(four));
      }
    }
    const __m512 scale_w = _mm512_loadu_ps(group_scales + b * kQ8GroupRows);
    for (int r = 0; r < R; ++r) {
      __m512i exact = dot[r][0];
      for (int p = 1; p < P; ++p) exact = _mm512_add_epi32(exact, dot[r][p]);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), _mm512_mul_ps(scale_w, _mm512_set1_ps(scales[r])), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float* out = y + (r0 + r) * ldy + row0;
    _mm512_storeu_ps(out, accumulate ? _mm512_add_ps(_mm512_loadu_ps(out), acc[r]) : acc[r]);
  }
}

// Two groups at once, output rows [16g, 16g + 32), for input rows [r0, r0 + R) (many input rows:
// catch-up, batched steps): each input value, broadcast once, meets both groups' chunks, so a chunk
// step issues 2R independent vpdpbusd, enough chains to hide their latency, from R + 2 loads, where
// group_rows issues R from R + 1 and its 8 chains of 8 leave the two vector ports waiting. Each lane's
// arithmetic is group_rows' own (the same bits). `ahead`: the next pair's first group, fetched
// into L2 alongside (null: none). Ice Lake, one core, median GMAC/s group_rows -> pairs, the two
// interleaved in one process; weights in the cache (256 x 256 / 688 x 256 / 256 x 688 / 2048 x 256):
// 8 rows 62 / 79 / 71 / 77 -> 81 / 96 / 88 / 101, 16 rows 60 / 73 / 69 / 77 -> 69 / 98 / 88 / 86,
// 32 rows 82 / 88 / 78 / 68 -> 97 / 105 / 108 / 119, 64 rows 100 / 101 / 76 / 84 -> 133 / 135 / 114
// / 118; from memory (24 matrices of 1024 x 1024 / 2816 x 1024 / 1024 x 2816): 8 rows 48 / 57 / 50
// -> 53 / 67 / 57, 16 rows 74 / 86 / 71 -> 84 / 97 / 86, 32 rows 93 / 93 / 76 -> 117 / 123 / 97
// (without the prefetch 116 / 114 / 92). The vector ports could do ~2x more: each block's 8
// multiply-adds per row and group come with 3 more operations (conversion, scale, accumulation).
template <int R>
void group_pair_rows(const uint8_t* group, int64_t group_bytes, const float* group_scales, int64_t scales_stride,
                     const Inputs& in, int64_t r0, float* y, int64_t ldy, int64_t row0, bool accumulate,
                     const uint8_t* ahead) {
  constexpr int kChunks = kQ8Block / 4;
  __m512 acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < in.blocks; ++b) {
    const int64_t offset = b * kQ8GroupRows * kQ8Block;
    const uint8_t* block0 = group + offset;
    const uint8_t* block1 = block0 + group_bytes;
    if (ahead)
      for (int64_t line = 0; line < kQ8GroupRows * kQ8Block; line += 64) {
        _mm_prefetch(reinterpret_cast<const char*>(ahead + offset + line), _MM_HINT_T1);
        _mm_prefetch(reinterpret_cast<const char*>(ahead + group_bytes + offset + line), _MM_HINT_T1);
      }
    const float* scales = in.scales + b * in.n + r0;
    const int32_t* sums = in.sums + b * in.n + r0;
    __m512i dot0[R], dot1[R];  // starting at -128 * sum(q_x), as in group_rows
    for (int r = 0; r < R; ++r) dot0[r] = dot1[r] = _mm512_set1_epi32(-128 * sums[r]);
    const int8_t* x = in.q + (b * in.n + r0) * kQ8Block;  // input row r's block at x + 32r
    for (int c = 0; c < kChunks; ++c) {
      const __m512i w0 = _mm512_loadu_si512(block0 + c * 4 * kQ8GroupRows);
      const __m512i w1 = _mm512_loadu_si512(block1 + c * 4 * kQ8GroupRows);
      for (int r = 0; r < R; ++r) {
        int32_t four;  // input values [4c, 4c + 4) of the block, for every lane
        std::memcpy(&four, x + r * kQ8Block + 4 * c, sizeof four);
        const __m512i xv = _mm512_set1_epi32(four);
        dot0[r] = _mm512_dpbusd_epi32(dot0[r], w0, xv);
        dot1[r] = _mm512_dpbusd_epi32(dot1[r], w1, xv);
      }
    }
    const __m512 scale_w0 = _mm512_loadu_ps(group_scales + b * kQ8GroupRows);
    const __m512 scale_w1 = _mm512_loadu_ps(group_scales + scales_stride + b * kQ8GroupRows);
    for (int r = 0; r < R; ++r) {
      const __m512 scale_x = _mm512_set1_ps(scales[r]);
      acc0[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot0[r]), _mm512_mul_ps(scale_w0, scale_x), acc0[r]);
      acc1[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot1[r]), _mm512_mul_ps(scale_w1, scale_x), acc1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float* out = y + (r0 + r) * ldy + row0;
    _mm512_storeu_ps(out, accumulate ? _mm512_add_ps(_mm512_loadu_ps(out), acc0[r]) : acc0[r]);
    _mm512_storeu_ps(out + 16, accumulate ? _mm512_add_ps(_mm512_loadu_ps(out + 16), acc1[r]) : acc1[r]);
  }
}

// Horizontal maximum and sum of 16 lanes by halving shuffles (maximum and integer addition give the
// same result in any order). A scalar loop over the lanes stored to memory took half the time of
// quantize_block_major; GCC 12's _mm512_reduce_* warn of uninitialized values.
float lane_max(__m512 v) {
  __m256 half = _mm256_max_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  __m128 quarter = _mm_max_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
  quarter = _mm_max_ps(quarter, _mm_shuffle_ps(quarter, quarter, 0x4E));
  quarter = _mm_max_ps(quarter, _mm_shuffle_ps(quarter, quarter, 0xB1));
  return _mm_cvtss_f32(quarter);
}

int32_t lane_sum(__m512i v) {
  __m256i half = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
  __m128i quarter = _mm_add_epi32(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1));
  quarter = _mm_add_epi32(quarter, _mm_shuffle_epi32(quarter, 0x4E));
  quarter = _mm_add_epi32(quarter, _mm_shuffle_epi32(quarter, 0xB1));
  return _mm_cvtsi128_si32(quarter);
}

// Quantizes n input rows as kernels::quantize_q8 does, bit for bit (the same block maximum, scale
// = maximum / 127, clamp and round to nearest even by adding and subtracting 1.5 * 2^23, each an
// exact or correctly rounded operation whatever the vector width), straight into the block-major
// layout the groups read, each block's integer sum beside it and a short last block padded with
// zeros. The scalar quantize_q8 and a transposition after it took ~70% of the time of the products
// themselves in a 64-position catch-up of the shipped model.
void quantize_block_major(const float* x, int64_t n, int64_t cols, int8_t* q, float* scales, int32_t* sums) {
  const int64_t blocks = q8_blocks(cols);
  const __m512 round = _mm512_set1_ps(12582912.0f), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t b = 0; b < blocks; ++b) {
      const float* v = x + r * cols + b * kQ8Block;
      const int64_t len = std::min(kQ8Block, cols - b * kQ8Block);
      const auto mask = [&](int64_t half) {  // the lanes of half 0 or 1 (16 values each) within the row
        const int64_t in = std::clamp<int64_t>(len - 16 * half, 0, 16);
        return static_cast<__mmask16>((1u << in) - 1u);
      };
      const __m512 v0 = _mm512_maskz_loadu_ps(mask(0), v), v1 = _mm512_maskz_loadu_ps(mask(1), v + 16);
      const float top = lane_max(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
      const float scale = top / 127.0f;
      const __m512 inv = _mm512_set1_ps(scale > 0 ? 1.0f / scale : 0.0f);
      const auto quantize = [&](__m512 values) {
        const __m512 scaled = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(values, inv), lo), hi);
        return _mm512_cvtps_epi32(_mm512_sub_ps(_mm512_add_ps(scaled, round), round));  // integral: exact
      };
      const __m512i q0 = quantize(v0), q1 = quantize(v1);  // the padding lanes quantize to 0
      int8_t* to = q + (b * n + r) * kQ8Block;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(to), _mm512_cvtepi32_epi8(q0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(to + 16), _mm512_cvtepi32_epi8(q1));
      scales[b * n + r] = scale;
      sums[b * n + r] = lane_sum(_mm512_add_epi32(q0, q1));
    }
}

using GroupRows = void (*)(const uint8_t*, const float*, const Inputs&, int64_t, float*, int64_t, int64_t, bool,
                          const uint8_t*);
constexpr GroupRows kGroupRows[kMaxInputRows + 1] = {nullptr,         group_rows<1>, group_rows<2>,
                                                     group_rows<3>,   group_rows<4>, group_rows<5>,
                                                     group_rows<6>,   group_rows<7>, group_rows<8>};

// Pairs of groups take input rows from kPairMinRows on (kernels_isa.hpp), in blocks of at most
// kPairInputRows (2 x 6 dot and 2 x 6 sum registers), as even as they come.
constexpr int kPairInputRows = 6;
using PairRows = void (*)(const uint8_t*, int64_t, const float*, int64_t, const Inputs&, int64_t, float*, int64_t,
                          int64_t, bool, const uint8_t*);
constexpr PairRows kPairRows[kPairInputRows + 1] = {nullptr,            group_pair_rows<1>, group_pair_rows<2>,
                                                    group_pair_rows<3>, group_pair_rows<4>, group_pair_rows<5>,
                                                    group_pair_rows<6>};

}  // namespace

void linear_q8_grouped(const float* x, int64_t n, const Matrix& w, float* y, bool accumulate, int64_t begin, int64_t end) {
  // This thread's quantized copy of the input rows: grown, never shrunk, so no allocation per call.
  thread_local std::vector<int8_t> q;
  thread_local std::vector<float> scales;
  thread_local std::vector<int32_t> sums;
  thread_local PreparedInput prepared;
  const int64_t cols = w.cols, blocks = q8_blocks(cols);
  if (!prepared.holds(x, n, cols)) {  // else this phase's earlier chunk left them here
    grow(q, n * blocks * kQ8Block);
    grow(scales, n * blocks);
    grow(sums, n * blocks);
    quantize_block_major(x, n, cols, q.data(), scales.data(), sums.data());
  }
  const Inputs in{q.data(), scales.data(), sums.data(), n, blocks};
  const auto* data = static_cast<const uint8_t*>(w.data);
  // Pair by pair of groups (group by group for fewer rows, and the odd group left), every input row
  // through them before the next, so that with many input rows (catch-up) a group's weights (16 *
  // cols bytes) come from the cache after their first pass.
  const int64_t group_bytes = blocks * kQ8GroupRows * kQ8Block, last = end / kQ8GroupRows - 1;
  const int64_t group_scales_stride = blocks * kQ8GroupRows;
  int64_t g = begin / kQ8GroupRows;
  if (n >= kPairMinRows) {
    const int64_t row_blocks = (n + kPairInputRows - 1) / kPairInputRows;
    for (; g + 1 <= last; g += 2) {
      const uint8_t* group = data + g * group_bytes;
      const float* group_scales = w.scales + g * group_scales_stride;
      for (int64_t b = 0, r = 0; b < row_blocks; ++b) {
        const int64_t size = (n - r) / (row_blocks - b);  // the later blocks take the remainder's extra rows
        const uint8_t* ahead = row_blocks > 1 && r == 0 && g + 3 <= last ? group + 2 * group_bytes : nullptr;
        kPairRows[size](group, group_bytes, group_scales, group_scales_stride, in, r, y, w.rows, g * kQ8GroupRows,
                        accumulate, ahead);
        r += size;
      }
    }
  }
  for (; g <= last; ++g) {  // every group for fewer rows, else the odd one left
    const uint8_t* group = data + g * group_bytes;
    const float* group_scales = w.scales + g * group_scales_stride;
    for (int64_t r = 0; r < n; r += kMaxInputRows) {
      const auto rows = static_cast<int>(std::min<int64_t>(kMaxInputRows, n - r));
      const uint8_t* ahead = n > kMaxInputRows && r == 0 && g < last ? group + group_bytes : nullptr;
      kGroupRows[rows](group, group_scales, in, r, y, w.rows, g * kQ8GroupRows, accumulate, ahead);
    }
  }
}

}  // namespace ce::kernels::avx512_vnni
