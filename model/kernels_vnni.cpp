// The int8 product on AVX-512 VNNI (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni
// -mfma; called only when the CPU reports VNNI): weights in the q8_rows8 layout (kernels.hpp), input
// rows quantized per 32-value block as the weights are.
//
// vpdpbusd multiplies unsigned bytes by signed bytes, four products summed into each int32 lane.
// The weights are stored + 128 (unsigned) and the inputs stay signed, so a block's lane holds
// dot(q_w, q_x) + 128 * sum(q_x); the second term, one integer per input row and block, is taken
// off before the block's scales apply. Every lane is one output row, so nothing is summed across
// lanes: per output row the blocks add up in order, each as one fused multiply-add of its exact
// integer dot product and scale_w * scale_x, the arithmetic of linear_q8_rows8_loops to the bit,
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

// Quantized input rows: values (n, cols), block scales and block sums (n, blocks).
struct Inputs {
  const int8_t* q;
  const float* scales;
  const int32_t* sums;
  int64_t cols, blocks;
};

// Output rows [8g, 8g + 8) for input rows [r0, r0 + R).
template <int R>
void group_rows(const uint8_t* group, const float* group_scales, const Inputs& in, int64_t r0, float* y,
                int64_t ldy, int64_t row0, bool accumulate) {
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < in.blocks; ++b) {
    const uint8_t* block = group + b * kQ8GroupRows * kQ8Block;
    __m256i dot[R];
    for (int r = 0; r < R; ++r) dot[r] = _mm256_setzero_si256();
    for (int c = 0; c < kQ8Block / 4; ++c) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + c * 32));
      for (int r = 0; r < R; ++r) {
        int32_t four;  // input values [4c, 4c + 4) of the block, for every lane
        std::memcpy(&four, in.q + (r0 + r) * in.cols + b * kQ8Block + 4 * c, sizeof four);
        dot[r] = _mm256_dpbusd_epi32(dot[r], w, _mm256_set1_epi32(four));
      }
    }
    const __m256 scale_w = _mm256_loadu_ps(group_scales + b * kQ8GroupRows);
    for (int r = 0; r < R; ++r) {
      const int64_t at = (r0 + r) * in.blocks + b;
      const __m256i exact = _mm256_sub_epi32(dot[r], _mm256_set1_epi32(128 * in.sums[at]));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(exact), _mm256_mul_ps(scale_w, _mm256_set1_ps(in.scales[at])), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float* out = y + (r0 + r) * ldy + row0;
    _mm256_storeu_ps(out, accumulate ? _mm256_add_ps(_mm256_loadu_ps(out), acc[r]) : acc[r]);
  }
}

using GroupRows = void (*)(const uint8_t*, const float*, const Inputs&, int64_t, float*, int64_t, int64_t, bool);
constexpr GroupRows kGroupRows[kMaxInputRows + 1] = {nullptr,         group_rows<1>, group_rows<2>,
                                                     group_rows<3>,   group_rows<4>, group_rows<5>,
                                                     group_rows<6>,   group_rows<7>, group_rows<8>};

}  // namespace

void linear_q8_rows8(const float* x, int64_t n, const Matrix& w, float* y, bool accumulate, int64_t begin, int64_t end) {
  // This thread's quantized copy of the input rows: grown, never shrunk, so no allocation per call.
  thread_local std::vector<int8_t> xq;
  thread_local std::vector<float> xs;
  thread_local std::vector<int32_t> sums;
  const int64_t cols = w.cols, blocks = q8_blocks(cols);
  if (xq.size() < static_cast<size_t>(n * cols)) xq.resize(static_cast<size_t>(n * cols));
  if (xs.size() < static_cast<size_t>(n * blocks)) xs.resize(static_cast<size_t>(n * blocks));
  if (sums.size() < static_cast<size_t>(n * blocks)) sums.resize(static_cast<size_t>(n * blocks));
  quantize_q8(x, n, cols, xq.data(), xs.data());
  for (int64_t i = 0; i < n * blocks; ++i) {
    int32_t s = 0;
    for (int64_t k = 0; k < kQ8Block; ++k) s += xq[static_cast<size_t>(i * kQ8Block + k)];
    sums[static_cast<size_t>(i)] = s;
  }
  const Inputs in{xq.data(), xs.data(), sums.data(), cols, blocks};
  const auto* data = static_cast<const uint8_t*>(w.data);
  // Group by group, every input row through a group before the next, so that with many input rows
  // (catch-up) a group's weights (8 * cols bytes) come from the cache after their first pass.
  for (int64_t g = begin / kQ8GroupRows; g < end / kQ8GroupRows; ++g) {
    const uint8_t* group = data + g * blocks * kQ8GroupRows * kQ8Block;
    const float* group_scales = w.scales + g * blocks * kQ8GroupRows;
    for (int64_t r = 0; r < n; r += kMaxInputRows) {
      const auto rows = static_cast<int>(std::min<int64_t>(kMaxInputRows, n - r));
      kGroupRows[rows](group, group_scales, in, r, y, w.rows, g * kQ8GroupRows, accumulate);
    }
  }
}

}  // namespace ce::kernels::avx512_vnni
