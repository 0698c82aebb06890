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

using GroupRows = void (*)(const uint8_t*, const float*, const Inputs&, int64_t, float*, int64_t, int64_t, bool,
                          const uint8_t*);
constexpr GroupRows kGroupRows[kMaxInputRows + 1] = {nullptr,         group_rows<1>, group_rows<2>,
                                                     group_rows<3>,   group_rows<4>, group_rows<5>,
                                                     group_rows<6>,   group_rows<7>, group_rows<8>};

}  // namespace

void linear_q8_grouped(const float* x, int64_t n, const Matrix& w, float* y, bool accumulate, int64_t begin, int64_t end) {
  // This thread's quantized copies of the input rows: grown, never shrunk, so no allocation per call.
  thread_local std::vector<int8_t> rows_q, q;
  thread_local std::vector<float> rows_scales, scales;
  thread_local std::vector<int32_t> sums;
  thread_local PreparedInput prepared;
  const int64_t cols = w.cols, blocks = q8_blocks(cols);
  if (!prepared.holds(x, n, cols)) {  // else this phase's earlier chunk left them here
    grow(rows_q, n * cols);
    grow(q, n * cols);
    grow(rows_scales, n * blocks);
    grow(scales, n * blocks);
    grow(sums, n * blocks);
    quantize_q8(x, n, cols, rows_q.data(), rows_scales.data());
    for (int64_t r = 0; r < n; ++r)  // (n, blocks, 32) -> (blocks, n, 32), with each block's sum
      for (int64_t b = 0; b < blocks; ++b) {
        const int8_t* from = rows_q.data() + (r * blocks + b) * kQ8Block;
        std::memcpy(q.data() + (b * n + r) * kQ8Block, from, kQ8Block);
        int32_t s = 0;
        for (int64_t k = 0; k < kQ8Block; ++k) s += from[k];
        sums[static_cast<size_t>(b * n + r)] = s;
        scales[static_cast<size_t>(b * n + r)] = rows_scales[static_cast<size_t>(r * blocks + b)];
      }
  }
  const Inputs in{q.data(), scales.data(), sums.data(), n, blocks};
  const auto* data = static_cast<const uint8_t*>(w.data);
  // Group by group, every input row through a group before the next, so that with many input rows
  // (catch-up) a group's weights (16 * cols bytes) come from the cache after their first pass.
  const int64_t group_bytes = blocks * kQ8GroupRows * kQ8Block, last = end / kQ8GroupRows - 1;
  for (int64_t g = begin / kQ8GroupRows; g <= last; ++g) {
    const uint8_t* group = data + g * group_bytes;
    const float* group_scales = w.scales + g * blocks * kQ8GroupRows;
    for (int64_t r = 0; r < n; r += kMaxInputRows) {
      const auto rows = static_cast<int>(std::min<int64_t>(kMaxInputRows, n - r));
      const uint8_t* ahead = n > kMaxInputRows && r == 0 && g < last ? group + group_bytes : nullptr;
      kGroupRows[rows](group, group_scales, in, r, y, w.rows, g * kQ8GroupRows, accumulate, ahead);
    }
  }
}

}  // namespace ce::kernels::avx512_vnni
