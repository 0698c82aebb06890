#pragma once
// The kernels of kernels.hpp, once per instruction set (kernels_simd.inc compiled three times);
// kernels.cpp picks one set per process. Internal to ce_model.
#include "model/kernels.hpp"

#define CE_KERNELS_DECLARE(isa)                                                                            \
  namespace ce::kernels::isa {                                                                             \
  void linear(const float* x, int64_t n, const Matrix& w, float* y, bool accumulate, int64_t begin,       \
              int64_t end);                                                                                \
  void rms_norm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* out);       \
  void rope(float* x, int64_t n, int64_t heads, int64_t head_dim, int64_t start, const float* cos,         \
            const float* sin);                                                                             \
  void attention(const float* q, int64_t n, int64_t heads, int64_t kv_heads, int64_t head_dim,             \
                 int64_t start, const float* keys, const float* values, float* scratch, float* out,        \
                 int64_t pair_begin, int64_t pair_end);                                                    \
  void silu_mul(float* gate, const float* up, int64_t n);                                                  \
  }

CE_KERNELS_DECLARE(avx512)
CE_KERNELS_DECLARE(avx2)
CE_KERNELS_DECLARE(portable)
#undef CE_KERNELS_DECLARE

namespace ce::kernels {
// linear() of q8_grouped weights: with AVX-512 VNNI (kernels_vnni.cpp, only where the CPU has it),
// and in plain loops (kernels.cpp) for every other build.
namespace avx512_vnni {
void linear_q8_grouped(const float* x, int64_t n, const Matrix& w, float* y, bool accumulate, int64_t begin, int64_t end);
}  // namespace avx512_vnni
void linear_q8_grouped_loops(const float* x, int64_t n, const Matrix& w, float* y, bool accumulate, int64_t begin,
                             int64_t end);
}  // namespace ce::kernels
