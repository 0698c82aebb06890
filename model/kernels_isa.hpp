#pragma once
// The kernels of kernels.hpp, once per instruction set (kernels_simd.inc compiled three times);
// kernels.cpp picks one set per process. Internal to ce_model. attention() computes pairs
// [pair_begin, pair_end) of the n * heads (query, head) pairs, head-major: pair p is head p / n,
// query p % n (consecutive pairs share a kv head's keys and values).
#include <cstdint>
#include <vector>

#include "model/kernels.hpp"

#define CE_KERNELS_DECLARE(isa)                                                                            \
  namespace ce::kernels::isa {                                                                             \
  void linear(const float* x, int64_t n, const Matrix& w, float* y, bool accumulate, int64_t begin,       \
              int64_t end, RowBlocks blocks);                                                              \
  void rms_norm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out);       \
  void rope(float* x, int64_t n, int64_t heads, int64_t head_dim, int64_t start, const float* cos,         \
            const float* sin);                                                                             \
  void attention(const float* q, int64_t n, int64_t heads, int64_t kv_heads, int64_t head_dim,             \
                 int64_t start, const float* keys, const float* values, float* out, int64_t pair_begin,    \
                 int64_t pair_end);                                                                        \
  void silu_mul(float* gate, const float* up, int64_t n);                                                  \
  float sum_exp(const float* x, int64_t n, float shift);                                                   \
  }

CE_KERNELS_DECLARE(avx512)
CE_KERNELS_DECLARE(avx2)
CE_KERNELS_DECLARE(portable)
#undef CE_KERNELS_DECLARE

namespace ce::kernels {
// The calling thread's input epoch: nonzero while a team phase (linear(Member, ...), swiglu()) runs
// its chunks, whose input rows do not change meanwhile, so that a kernel called for several chunks
// of the same input rows prepares them (int8: quantizes; fp32 broadcast blocks: transposes) once
// per phase, not once per chunk (int8 per chunk made a 64-row catch-up of the shipped model 2.6x
// slower on two threads). 0: no such promise, the kernel prepares them at every call.
uint64_t& input_epoch();
// Starts a new input epoch on this thread for its lifetime.
class InputEpoch {
 public:
  InputEpoch();
  ~InputEpoch() { input_epoch() = 0; }
  InputEpoch(const InputEpoch&) = delete;
  InputEpoch& operator=(const InputEpoch&) = delete;
};
// Whether the rows a kernel prepared last on this thread (x, n, cols, in epoch) are this call's.
struct PreparedInput {
  const float* x = nullptr;
  int64_t n = 0, cols = 0;
  uint64_t epoch = 0;
  bool holds(const float* x_, int64_t n_, int64_t cols_) {
    const uint64_t now = input_epoch();
    if (now != 0 && now == epoch && x_ == x && n_ == n && cols_ == cols) return true;
    x = x_, n = n_, cols = cols_, epoch = now;
    return false;
  }
};
// A thread's scratch for prepared rows: at least `size` elements, grown, never shrunk, so that no
// call allocates once the largest has run.
template <class T>
void grow(std::vector<T>& v, int64_t size) {
  if (v.size() < static_cast<size_t>(size)) v.resize(static_cast<size_t>(size));
}

// linear() of q8_grouped weights: with AVX-512 VNNI (kernels_vnni.cpp, only where the CPU has it),
// and in plain loops (kernels.cpp) for every other build.
namespace avx512_vnni {
// From this many input rows on the kernel takes the groups in pairs (32 output rows a pass), so the
// team's tickets of such products are whole pairs.
constexpr int64_t kPairMinRows = 4;
void linear_q8_grouped(const float* x, int64_t n, const Matrix& w, float* y, bool accumulate, int64_t begin, int64_t end);
}  // namespace avx512_vnni
void linear_q8_grouped_loops(const float* x, int64_t n, const Matrix& w, float* y, bool accumulate, int64_t begin,
                             int64_t end);
}  // namespace ce::kernels
