// The decode kernels against plain double loops, for every weight type and every instruction-set
// build this CPU can run; the int8 quantizer's error bound; thread shares that add up to the
// whole; the decoder in fp16 / bf16 / int8 against the loop reference on the same rounded weights.
#include <boost/test/unit_test.hpp>

#include <ATen/ATen.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <random>
#include <thread>

#include "model/decoder.hpp"
#include "model/kernels.hpp"
#include "model/kernels_isa.hpp"
#include "model/runtime.hpp"
#include "tests/model/reference_llama.hpp"
#include "tests/model/tiny_model.hpp"

using namespace ce;
using namespace ce::test;
using kernels::Matrix;
using kernels::WeightType;

namespace {

using LinearFn = void (*)(const float*, int64_t, const Matrix&, float*, bool, int64_t, int64_t);
// A build's linear(), which takes the blocking of many input rows as an argument.
using IsaLinearFn = void (*)(const float*, int64_t, const Matrix&, float*, bool, int64_t, int64_t, kernels::RowBlocks);
constexpr kernels::RowBlocks kBothRowBlocks[] = {kernels::RowBlocks::broadcast, kernels::RowBlocks::dot};

using SiluFn = void (*)(float*, const float*, int64_t);
using SumExpFn = float (*)(const float*, int64_t, float);
using AttentionFn = void (*)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, const float*, const float*,
                             float*, int64_t, int64_t);

struct Isa {
  const char* name;
  IsaLinearFn linear;
  SiluFn silu_mul;
  AttentionFn attention;
  SumExpFn sum_exp;
};

// The builds this CPU can execute (portable always).
std::vector<Isa> runnable_isas() {
  std::vector<Isa> out{{"portable", kernels::portable::linear, kernels::portable::silu_mul, kernels::portable::attention,
                  kernels::portable::sum_exp}};
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    out.push_back({"avx2", kernels::avx2::linear, kernels::avx2::silu_mul, kernels::avx2::attention,
                  kernels::avx2::sum_exp});
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    out.push_back({"avx512", kernels::avx512::linear, kernels::avx512::silu_mul, kernels::avx512::attention,
                  kernels::avx512::sum_exp});
#endif
  return out;
}

// A (rows, cols) matrix of one type, with the exact values the kernels must see (`dense`).
struct TestMatrix {
  std::vector<float> dense;      // the values as fp32 (after rounding to the type)
  std::vector<uint16_t> halves;  // f16 / bf16 bits
  std::vector<int8_t> q;
  std::vector<float> scales, f32;
  Matrix view;
};

// What an int8 product sees of its input rows (n, cols): per 32-value block, scale = max|x| / 127
// and q = x * (1 / scale) rounded to nearest, ties to even; written out here independently of
// the kernels' quantizer.
std::vector<float> as_q8_activations(const std::vector<float>& x, int64_t n, int64_t cols) {
  std::vector<float> out(x.size());
  for (int64_t r = 0; r < n; ++r)
    for (int64_t b = 0; b < cols; b += 32) {
      const int64_t end = std::min(cols, b + 32);
      float top = 0;
      for (int64_t k = b; k < end; ++k) top = std::max(top, std::abs(x[static_cast<size_t>(r * cols + k)]));
      const float scale = top / 127.0f, inv = scale > 0 ? 1.0f / scale : 0.0f;
      for (int64_t k = b; k < end; ++k) {
        const size_t i = static_cast<size_t>(r * cols + k);
        out[i] = std::nearbyint(x[i] * inv) * scale;
      }
    }
  return out;
}

// value = q * the scale of its 32-value block, written out here independently of the kernels.
std::vector<float> dequantized(const std::vector<int8_t>& q, const std::vector<float>& scales, int64_t rows,
                               int64_t cols) {
  const int64_t blocks = (cols + 31) / 32;
  std::vector<float> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k)
      out[static_cast<size_t>(r * cols + k)] =
          static_cast<float>(q[static_cast<size_t>(r * cols + k)]) * scales[static_cast<size_t>(r * blocks + k / 32)];
  return out;
}

TestMatrix make_matrix(WeightType type, int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937 gen(static_cast<uint32_t>(seed));
  std::normal_distribution<float> normal(0, 1);
  TestMatrix m;
  m.f32.resize(static_cast<size_t>(rows * cols));
  for (auto& v : m.f32) v = normal(gen);
  auto t = at::from_blob(m.f32.data(), {rows, cols}, at::kFloat);
  m.view = {type, nullptr, nullptr, rows, cols};
  if (type == WeightType::f32) {
    m.dense = m.f32;
    m.view.data = m.f32.data();
  } else if (type == WeightType::f16 || type == WeightType::bf16) {
    auto h = t.to(type == WeightType::f16 ? at::kHalf : at::kBFloat16).contiguous();
    m.halves.assign(static_cast<const uint16_t*>(h.data_ptr()), static_cast<const uint16_t*>(h.data_ptr()) + h.numel());
    auto back = h.to(at::kFloat).contiguous();
    m.dense.assign(back.data_ptr<float>(), back.data_ptr<float>() + back.numel());
    m.view.data = m.halves.data();
  } else {
    m.q.resize(static_cast<size_t>(rows * cols));
    m.scales.resize(static_cast<size_t>(rows * kernels::q8_blocks(cols)));
    kernels::quantize_q8(m.f32.data(), rows, cols, m.q.data(), m.scales.data());
    m.dense = dequantized(m.q, m.scales, rows, cols);
    m.view.data = m.q.data();
    m.view.scales = m.scales.data();
  }
  return m;
}

std::vector<float> random_rows(int64_t n, int64_t cols, uint64_t seed) {
  std::mt19937 gen(static_cast<uint32_t>(seed));
  std::normal_distribution<float> normal(0, 1);
  std::vector<float> x(static_cast<size_t>(n * cols));
  for (auto& v : x) v = normal(gen);
  return x;
}

// The product the kernels must give, in double: want (n, rows) = seen · denseᵀ, and scale = the
// same sum of |products| (the error bound is relative to it).
std::pair<std::vector<double>, std::vector<double>> double_loop(const TestMatrix& m, const std::vector<float>& seen,
                                                                int64_t n, int64_t rows, int64_t cols) {
  std::vector<double> want(static_cast<size_t>(n * rows)), scale(want.size());
  for (int64_t r = 0; r < n; ++r)
    for (int64_t o = 0; o < rows; ++o)
      for (int64_t k = 0; k < cols; ++k) {
        const double a = m.dense[static_cast<size_t>(o * cols + k)], b = seen[static_cast<size_t>(r * cols + k)];
        want[static_cast<size_t>(r * rows + o)] += a * b;
        scale[static_cast<size_t>(r * rows + o)] += std::abs(a * b);
      }
  return {want, scale};
}

// Four products in one team phase, x1 through w[0], x2 through w[1], x2 through w[2], x1 through
// w[3] (all of w[i].rows outputs), on teams of 1 and 2 threads, twice: the second time with new
// values in x1's buffer. Each must equal its one-call result: a kernel that prepares its input
// rows once a phase (quantized, transposed) must notice a new input, and a new phase.
void check_phases_of_two_inputs(int64_t n, int64_t cols, const std::array<const Matrix*, 4>& w) {
  auto x1 = random_rows(n, cols, 23);
  const auto x2 = random_rows(n, cols, 24);
  for (int threads : {1, 2}) {
    kernels::set_threads(threads);
    for (int phase = 0; phase < 2; ++phase) {
      if (phase == 1)
        for (auto& v : x1) v = -0.5f * v + 0.25f;  // new values in the same buffer
      const std::array<const float*, 4> inputs = {x1.data(), x2.data(), x2.data(), x1.data()};
      std::vector<std::vector<float>> want(4), got(4);
      for (size_t i = 0; i < 4; ++i) {
        want[i].resize(static_cast<size_t>(n * w[i]->rows));
        got[i].assign(want[i].size(), -1);
        kernels::linear_rows(inputs[i], n, *w[i], want[i].data(), false, 0, w[i]->rows);
      }
      const kernels::TeamClaim claim(true);
      claim.run([&](const kernels::Member& m) {
        kernels::linear(m, {{inputs[0], n, w[0], got[0].data()},
                            {inputs[1], n, w[1], got[1].data()},
                            {inputs[2], n, w[2], got[2].data()},
                            {inputs[3], n, w[3], got[3].data()}});
      });
      for (size_t i = 0; i < 4; ++i) BOOST_TEST(got[i] == want[i], threads << " threads, phase " << phase << ", product " << i);
    }
  }
  kernels::set_threads(1);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(kernels_suite)

// Every (type, shape, row count, accumulate) through every runnable build agrees with a double
// loop over the same values to fp32 rounding: |error| <= 1e-5 * sum |w||x| per output. For int8
// weights the same values are the quantized weights times the quantized input rows.
BOOST_AUTO_TEST_CASE(linear_matches_a_double_loop_for_every_type_shape_and_build) {
  const WeightType types[] = {WeightType::f32, WeightType::f16, WeightType::bf16, WeightType::q8};
  const std::pair<int64_t, int64_t> shapes[] = {{37, 50}, {64, 256}, {9, 33}, {130, 688}, {1, 16}, {45, 96}, {20, 1100}};
  for (auto type : types)
    for (auto [rows, cols] : shapes) {
      const auto m = make_matrix(type, rows, cols, static_cast<uint64_t>(rows * 7 + cols));
      // blocks of 4 and 6 rows, and what is left; from 8 (AVX-512) or 16 (AVX2) rows on fp32 takes
      // the broadcast blocks, fp16 and bf16 from 64 or 32 (widened), in groups of 1, 2 and 3
      // registers of rows, partly filled, in one or more chunks of 4 groups; 1,100 columns: two
      // slices of columns
      for (int64_t n : {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 16, 17, 24, 31, 32, 33, 47, 48, 50, 64, 70, 100}) {
        const auto x = random_rows(n, cols, static_cast<uint64_t>(n));
        const auto seen = type == WeightType::q8 ? as_q8_activations(x, n, cols) : x;
        const auto [want, scale] = double_loop(m, seen, n, rows, cols);
        for (const auto& isa : runnable_isas())
          for (auto blocks : kBothRowBlocks)
            for (bool accumulate : {false, true}) {
              std::vector<float> y(want.size(), accumulate ? 1.5f : -99.0f);
              isa.linear(x.data(), n, m.view, y.data(), accumulate, 0, rows, blocks);
              double worst = 0;
              for (size_t i = 0; i < y.size(); ++i)
                worst = std::max(worst, std::abs(y[i] - (want[i] + (accumulate ? 1.5 : 0))) / (scale[i] + 1e-30));
              BOOST_TEST(worst < 1e-5, kernels::to_string(type) << " " << rows << "x" << cols << " n " << n << " "
                                                                << isa.name << " " << kernels::to_string(blocks)
                                                                << (accumulate ? " accumulate" : ""));
            }
      }
    }
}

// int8 weights rearranged for the VNNI kernel: the layout kernels.hpp documents, written out here
// value by value, and the weight scales beside it; a short last block padded with (stored) zeros.
BOOST_AUTO_TEST_CASE(interleave_q8_writes_the_documented_layout) {
  BOOST_TEST_REQUIRE(kernels::kQ8GroupRows == 16);  // the layout written out below
  for (const int64_t cols : {96, 100}) {
    const int64_t rows = 48, blocks = (cols + 31) / 32;
    const auto m = make_matrix(WeightType::q8, rows, cols, 3);
    BOOST_TEST_REQUIRE(kernels::q8_grouped_bytes(rows, cols) == rows * blocks * 32);
    std::vector<uint8_t> data(static_cast<size_t>(kernels::q8_grouped_bytes(rows, cols)), 7);
    std::vector<float> scales(static_cast<size_t>(rows * blocks));
    kernels::interleave_q8(m.q.data(), m.scales.data(), rows, cols, data.data(), scales.data());
    int wrong = 0;
    for (int64_t g = 0; g < rows / 16; ++g)
      for (int64_t b = 0; b < blocks; ++b) {
        for (int64_t c = 0; c < 8; ++c)
          for (int64_t i = 0; i < 16; ++i)
            for (int64_t j = 0; j < 4; ++j) {
              const int64_t col = 32 * b + 4 * c + j;
              const int want = col < cols ? m.q[static_cast<size_t>((16 * g + i) * cols + col)] + 128 : 128;
              wrong += data[static_cast<size_t>(((g * blocks + b) * 8 + c) * 64 + 4 * i + j)] != want;
            }
        for (int64_t i = 0; i < 16; ++i)
          wrong += scales[static_cast<size_t>((g * blocks + b) * 16 + i)] != m.scales[static_cast<size_t>((16 * g + i) * blocks + b)];
      }
    BOOST_TEST(wrong == 0, cols << " columns");
  }
  BOOST_TEST(kernels::q8_grouped_fits(48, 96));
  BOOST_TEST(kernels::q8_grouped_fits(48, 100));
  BOOST_TEST(!kernels::q8_grouped_fits(40, 96));
}

// The VNNI kernel (where this CPU has it) and its plain-loop twin against a double loop over the
// quantized weights and inputs (the bound of the test above), equal to each other bit for bit, and
// each input row's outputs the same bits whether it is computed alone or among n rows.
BOOST_AUTO_TEST_CASE(int8_grouped_kernels_match_a_double_loop_and_each_other) {
  struct Kernel {
    const char* name;
    LinearFn linear;
  };
  std::vector<Kernel> kernels_to_test{{"loops", kernels::linear_q8_grouped_loops}};
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512vnni"))
    kernels_to_test.push_back({"vnni", kernels::avx512_vnni::linear_q8_grouped});
  else
    BOOST_TEST_MESSAGE("no AVX-512 VNNI on this CPU: only the loops are tested");
  // 688 and 100 columns: a short last block (the shipped model's FFN down projection has 688).
  const std::pair<int64_t, int64_t> shapes[] = {{16, 32}, {64, 256}, {48, 704}, {144, 96}, {32, 688}, {16, 100}};
  for (auto [rows, cols] : shapes) {
    const auto m = make_matrix(WeightType::q8, rows, cols, static_cast<uint64_t>(rows + cols));
    std::vector<uint8_t> data(static_cast<size_t>(kernels::q8_grouped_bytes(rows, cols)));
    std::vector<float> scales(m.scales.size());
    kernels::interleave_q8(m.q.data(), m.scales.data(), rows, cols, data.data(), scales.data());
    const Matrix view{WeightType::q8_grouped, data.data(), scales.data(), rows, cols};
    for (int64_t n : {1, 2, 3, 4, 8, 11, 13}) {  // 4 on: pairs of groups (rows 32 on), in 1 to 3 row blocks
      const auto x = random_rows(n, cols, static_cast<uint64_t>(n + 17));
      const auto seen = as_q8_activations(x, n, cols);
      const auto [want, scale] = double_loop(m, seen, n, rows, cols);
      std::vector<std::vector<float>> results;
      for (const auto& kernel : kernels_to_test)
        for (bool accumulate : {false, true}) {
          std::vector<float> y(want.size(), accumulate ? 1.5f : -99.0f);
          kernel.linear(x.data(), n, view, y.data(), accumulate, 0, rows);
          double worst = 0;
          for (size_t i = 0; i < y.size(); ++i)
            worst = std::max(worst, std::abs(y[i] - (want[i] + (accumulate ? 1.5 : 0))) / (scale[i] + 1e-30));
          BOOST_TEST(worst < 1e-5, kernel.name << " " << rows << "x" << cols << " n " << n << (accumulate ? " accumulate" : ""));
          if (!accumulate) results.push_back(y);
          if (accumulate || n == 1) continue;
          for (int64_t r = 0; r < n; ++r) {  // the same row alone
            std::vector<float> alone(static_cast<size_t>(rows));
            kernel.linear(x.data() + r * cols, 1, view, alone.data(), false, 0, rows);
            BOOST_TEST(std::equal(alone.begin(), alone.end(), y.begin() + r * rows),
                       kernel.name << " row " << r << " of " << n << " differs from the row alone");
          }
        }
      for (size_t i = 1; i < results.size(); ++i)
        BOOST_TEST(results[i] == results[0], kernels_to_test[i].name << " != loops, " << rows << "x" << cols << " n " << n);
      // Through the dispatcher, in chunks of one and of two groups of rows: the whole product.
      for (int64_t chunk : {kernels::kQ8GroupRows, 2 * kernels::kQ8GroupRows}) {
        std::vector<float> chunked(want.size(), -1.0f);
        for (int64_t begin = 0; begin < rows; begin += chunk)
          kernels::linear_rows(x.data(), n, view, chunked.data(), false, begin, std::min(rows, begin + chunk));
        BOOST_TEST(chunked == results[0], "chunks of " << chunk << " rows, " << rows << "x" << cols << " n " << n);
      }
    }
  }
}

// SiLU·up (with the builds' own vector exp) against the formula in double, from -100 to 100: relative
// error within a few float ulps, the saturated ends exact (silu(-100) is -0 to float precision).
BOOST_AUTO_TEST_CASE(silu_mul_matches_the_formula_over_the_float_range) {
  std::vector<float> gate0, up;
  for (int i = 0; i <= 4000; ++i) {
    gate0.push_back(-100.0f + 0.05f * static_cast<float>(i));
    up.push_back(0.5f + 0.001f * static_cast<float>(i % 7));
  }
  for (const auto& isa : runnable_isas()) {
    auto gate = gate0;
    isa.silu_mul(gate.data(), up.data(), static_cast<int64_t>(gate.size()));
    double worst = 0;
    for (size_t i = 0; i < gate.size(); ++i) {
      const double g = gate0[i], want = g / (1.0 + std::exp(-g)) * up[i];
      worst = std::max(worst, std::abs(gate[i] - want) / std::max(std::abs(want), 1e-30));
    }
    BOOST_TEST(worst < 2e-6, isa.name << ": worst relative error " << worst);
  }
}

// A softmax's denominator Σ e^(x - shift) against double: a head's logits over a vocabulary (2,048:
// whole registers; 2,051: a remainder), the shift its largest logit (terms in (0, 1]) or not
// (terms up to e^10), and over the float range's ends (e^-100 underflows toward 0 in both).
BOOST_AUTO_TEST_CASE(sum_exp_matches_the_formula_for_every_build) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  for (const int64_t n : {1, 15, 2048, 2051}) {
    std::vector<float> x(static_cast<size_t>(n));
    for (auto& v : x) v = normal(rng);
    x.back() = -100.0f;
    const float top = *std::max_element(x.begin(), x.end());
    for (const float shift : {top, top - 10.0f}) {
      double want = 0;
      for (const float v : x) want += std::exp(double(v) - shift);
      for (const auto& isa : runnable_isas()) {
        const double got = isa.sum_exp(x.data(), n, shift);
        BOOST_TEST(std::abs(got - want) / want < 1e-5, isa.name << " n " << n << " shift " << shift << ": " << got
                                                                << " against " << want);
      }
    }
  }
}

// A team's phase computed as tickets equals the one-call result bit for bit (the same arithmetic
// per row, only split): several products in one phase, SwiGLU, and several sequences' attention,
// by teams of 1, 2 and 3, with one member late so that the others take its tickets. The heads (64:
// four AVX-512 registers, eight AVX2) take the builds' register paths, where queries of a kv head
// go through together as far as a ticket's pairs allow: a query's result must not depend on which.
BOOST_AUTO_TEST_CASE(a_team_phase_equals_the_whole_product) {
  const auto a = make_matrix(WeightType::f16, 203, 64, 5), b = make_matrix(WeightType::f32, 48, 64, 7);
  const auto gate_w = make_matrix(WeightType::f32, 176, 64, 8), up_w = make_matrix(WeightType::f16, 176, 64, 9);
  const int64_t n = 5, heads = 4, kv_heads = 2, hd = 64;
  const auto x = random_rows(n, 64, 6);
  std::vector<float> ya(n * 203), yb(n * 203), want_gate(n * 176), want_up(n * 176);
  kernels::linear_rows(x.data(), n, a.view, ya.data(), false, 0, 203);
  kernels::linear_rows(x.data(), n, b.view, yb.data(), false, 0, 48);
  kernels::linear_rows(x.data(), n, gate_w.view, want_gate.data(), false, 0, 176);
  kernels::linear_rows(x.data(), n, up_w.view, want_up.data(), false, 0, 176);
  for (int64_t r = 0; r < n; ++r) kernels::silu_mul(want_gate.data() + r * 176, want_up.data() + r * 176, 176);
  // Four sequences of 1, 3, 2 and 5 queries at positions 7, 0, 30 and 92 over caches of their own
  // (the last one long enough that a ticket holds 3 pairs, its lengths crossing a multiple of 16).
  struct Sequence {
    int64_t n, start;
    std::vector<float> q, keys, values, want, out;
  };
  std::vector<Sequence> seqs;
  for (auto [rows, start] : {std::pair<int64_t, int64_t>{1, 7}, {3, 0}, {2, 30}, {5, 92}}) {
    Sequence s{rows, start, random_rows(rows, heads * hd, 11 + start), random_rows(start + rows, kv_heads * hd, 12 + start),
               random_rows(start + rows, kv_heads * hd, 13 + start), std::vector<float>(rows * heads * hd), {}};
    kernels::attention(s.q.data(), rows, heads, kv_heads, hd, start, s.keys.data(), s.values.data(), s.want.data());
    seqs.push_back(std::move(s));
  }
  for (int threads : {1, 2, 3}) {
    kernels::set_threads(threads);
    for (int late = 0; late < threads; ++late) {
      std::vector<float> got_a(ya.size(), -1), got_b(ya.size(), -1), gate(want_gate.size(), -1), up(want_up.size(), -1);
      std::vector<kernels::Attention> jobs;
      for (auto& s : seqs) {
        s.out.assign(s.want.size(), -1);
        jobs.push_back({s.q.data(), s.n, s.start, s.keys.data(), s.values.data(), s.out.data()});
      }
      const kernels::TeamClaim claim(true);
      BOOST_TEST_REQUIRE(claim.size() == threads);
      claim.run([&](const kernels::Member& m) {
        if (m.share.index == late) std::this_thread::sleep_for(std::chrono::milliseconds(3));
        kernels::linear(m, {{x.data(), n, &a.view, got_a.data()}, {x.data(), n, &b.view, got_b.data()}});
        m.sync();
        if (m.share.index == late) std::this_thread::sleep_for(std::chrono::milliseconds(3));
        kernels::swiglu(m, x.data(), n, gate_w.view, up_w.view, gate.data(), up.data());
        m.sync();
        kernels::attention(m, heads, kv_heads, hd, jobs.data(), jobs.size());
      });
      BOOST_TEST(std::equal(ya.begin(), ya.end(), got_a.begin()), threads << " threads, member " << late << " late");
      BOOST_TEST(std::equal(yb.begin(), yb.begin() + n * 48, got_b.begin()));
      BOOST_TEST(gate == want_gate, threads << " threads, member " << late << " late");
      for (const auto& s : seqs) BOOST_TEST(s.out == s.want, threads << " threads, sequence at " << s.start);
    }
  }
  kernels::set_threads(1);
}

// int8 products quantize a phase's input rows once per thread (kernels_isa.hpp's input epoch), not
// once per chunk: still the one-call result when products of a phase read different rows of the
// same shape (in the grouped and the plain int8 layout), and when the next phase reads new values
// from the same buffer.
BOOST_AUTO_TEST_CASE(int8_phases_quantize_their_own_inputs) {
  const int64_t rows = 256, cols = 96, n = 7;
  const auto a = make_matrix(WeightType::q8, rows, cols, 21), b = make_matrix(WeightType::q8, rows, cols, 22);
  std::vector<std::vector<uint8_t>> data(2, std::vector<uint8_t>(static_cast<size_t>(rows * cols)));
  std::vector<std::vector<float>> scales(2, std::vector<float>(a.scales.size()));
  kernels::interleave_q8(a.q.data(), a.scales.data(), rows, cols, data[0].data(), scales[0].data());
  kernels::interleave_q8(b.q.data(), b.scales.data(), rows, cols, data[1].data(), scales[1].data());
  const Matrix grouped_a{WeightType::q8_grouped, data[0].data(), scales[0].data(), rows, cols};
  const Matrix grouped_b{WeightType::q8_grouped, data[1].data(), scales[1].data(), rows, cols};
  // x1 through grouped a, x2 through grouped b, x2 through plain a, x1 through plain b
  check_phases_of_two_inputs(n, cols, {&grouped_a, &grouped_b, &a.view, &b.view});
}

// A row's outputs are the same bits whatever the batch holds besides it, through every runnable
// build: in batches that take the broadcast blocks (fp32 from 16 rows, fp16 and bf16 from 64; each
// lane of a block sums its own row) and, with the dot-product blocks, in every batch of 2 rows or
// more (each row's sums in the same order whatever block it falls in); so a cloud's answer does
// not change with the sessions stepped beside it. Columns past a slice (1,024) included.
BOOST_AUTO_TEST_CASE(rows_in_batches_do_not_depend_on_their_batch) {
  const int64_t rows = 40, cols = 1100, total = 100;
  const auto x = random_rows(total, cols, 42);
  for (auto type : {WeightType::f32, WeightType::f16, WeightType::bf16}) {
    const auto m = make_matrix(type, rows, cols, 41);
    for (auto blocks : kBothRowBlocks) {
      const auto batches = blocks == kernels::RowBlocks::dot ? std::vector<int64_t>{2, 3, 5, 7, 13, 16, 33, 64}
                           : type == WeightType::f32        ? std::vector<int64_t>{16, 32, 48, 64}
                                                            : std::vector<int64_t>{64, 80};
      for (const auto& isa : runnable_isas()) {
        std::vector<float> whole(total * rows);
        isa.linear(x.data(), total, m.view, whole.data(), false, 0, rows, blocks);
        for (int64_t n : batches) {
          std::vector<float> part(static_cast<size_t>(n * rows));
          isa.linear(x.data(), n, m.view, part.data(), false, 0, rows, blocks);
          BOOST_TEST(std::equal(part.begin(), part.end(), whole.begin()),
                     kernels::to_string(type) << " " << isa.name << " " << kernels::to_string(blocks) << ": the first "
                                              << n << " of " << total << " rows");
        }
      }
    }
  }
}

// Products that take the broadcast blocks (fp32 at 20 rows, fp16 at 70: in every build that has
// them) pack a phase's input rows once per thread, as int8 ones quantize them: the same checks as
// above.
BOOST_AUTO_TEST_CASE(broadcast_phases_pack_their_own_inputs) {
  const int64_t rows = 256, cols = 96;
  const auto a = make_matrix(WeightType::f32, rows, cols, 31), b = make_matrix(WeightType::f32, rows, cols, 32);
  check_phases_of_two_inputs(20, cols, {&a.view, &b.view, &a.view, &b.view});
  const auto c = make_matrix(WeightType::f16, rows, cols, 33), d = make_matrix(WeightType::f16, rows, cols, 34);
  check_phases_of_two_inputs(70, cols, {&c.view, &d.view, &c.view, &d.view});
}

// Tickets: each runs once in each phase, and the others take what a late member has not started
// (the late one here sleeps on the first ticket it takes; it may find its share taken before it
// starts at all, and then take its first from another share that is not).
BOOST_AUTO_TEST_CASE(tickets_run_once_and_a_late_members_tickets_go_to_the_others) {
  constexpr int kSize = 3;
  constexpr int64_t kTickets = 90;
  kernels::set_threads(kSize);
  for (int round = 0; round < 20; ++round) {
    std::array<std::atomic<int>, kTickets> runs{}, phase_one_member{};
    std::array<std::atomic<int>, kSize> ran_by{};
    std::atomic<bool> late_slept{false};
    std::atomic<int> first_of_late{-1};
    const kernels::TeamClaim claim(true);
    BOOST_TEST_REQUIRE(claim.size() == kSize);
    claim.run([&](const kernels::Member& m) {
      for (int phase = 0; phase < 2; ++phase) {  // the counters start again after a sync
        m.for_each_ticket(kTickets, [&](int64_t t) {
          runs[static_cast<size_t>(t)].fetch_add(1);
          if (phase == 1) ran_by[static_cast<size_t>(m.share.index)].fetch_add(1);
          if (phase == 1) phase_one_member[static_cast<size_t>(t)].store(m.share.index);
          if (phase == 1 && m.share.index == 1 && !late_slept.exchange(true)) {
            first_of_late.store(static_cast<int>(t));
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
          }
        });
        m.sync();
      }
    });
    for (int64_t t = 0; t < kTickets; ++t) BOOST_TEST(runs[static_cast<size_t>(t)].load() == 2, "ticket " << t);
    // The late member's first ticket: from its own share [30, 60) unless the others had taken all
    // of that share (a member takes its own share first).
    const int late_first = first_of_late.load();
    const bool own_share_first = late_first >= kTickets / kSize && late_first < 2 * kTickets / kSize;
    bool own_share_taken_by_others = true;
    for (int64_t t = kTickets / kSize; t < 2 * kTickets / kSize; ++t)
      own_share_taken_by_others = own_share_taken_by_others && phase_one_member[static_cast<size_t>(t)].load() != 1;
    BOOST_TEST((late_first == -1 || own_share_first || own_share_taken_by_others), late_first);
    BOOST_TEST(ran_by[1].load() <= 1, "round " << round << ": the late member ran " << ran_by[1].load());
    BOOST_TEST(ran_by[0].load() + ran_by[1].load() + ran_by[2].load() == kTickets);
  }
  kernels::set_threads(1);
}

// A team only for a section alone: one that starts while another runs (on a team or alone) gets
// one thread; small work never gets more; released claims free the team for the next section.
BOOST_AUTO_TEST_CASE(team_claims_give_threads_to_a_section_alone) {
  kernels::set_threads(2);
  {
    kernels::TeamClaim small(false);
    BOOST_TEST(small.size() == 1);
    std::optional<kernels::TeamClaim> first(std::in_place, true);
    BOOST_TEST(first->size() == 2);
    kernels::TeamClaim second(true);
    BOOST_TEST(second.size() == 1);
    first.reset();
    BOOST_TEST(kernels::TeamClaim(true).size() == 1);  // `second` still runs, alone
  }
  kernels::TeamClaim again(true);
  BOOST_TEST(again.size() == 2);
  kernels::set_threads(1);
  BOOST_TEST(kernels::TeamClaim(true).size() == 1);
}

// A team runs its body once per member, with the member's share, and sync() is a barrier: what
// every member wrote before it, every member reads after it. Rounds where one member is late by
// milliseconds make the others sleep at the barrier and the workers between sections, so the
// wake-ups are exercised as well as the spinning.
BOOST_AUTO_TEST_CASE(a_team_runs_each_member_once_and_sync_is_a_barrier) {
  constexpr int kSize = 3;
  kernels::set_threads(kSize);
  std::array<int, kSize> slot{};
  for (int round = 0; round < 60; ++round) {
    const kernels::TeamClaim claim(true);
    BOOST_TEST_REQUIRE(claim.size() == kSize);
    std::array<std::atomic<int>, kSize> calls{};
    std::array<int, kSize> stale{}, count{};
    std::atomic<int> misplaced{0};
    claim.run([&](const kernels::Member& m) {  // no Boost.Test assertion here: it is not thread-safe
      const int me = m.share.index;
      if (me < 0 || me >= kSize) return void(misplaced.fetch_add(1));
      count[static_cast<size_t>(me)] = m.share.count;
      calls[static_cast<size_t>(me)].fetch_add(1);
      for (int phase = 0; phase < 4; ++phase) {
        if (round % 10 == 9 && me == phase % kSize) std::this_thread::sleep_for(std::chrono::milliseconds(2));
        slot[static_cast<size_t>(me)] = round * 10 + phase;
        m.sync();
        for (int v : slot) stale[static_cast<size_t>(me)] += v != round * 10 + phase;
        m.sync();  // nobody writes the next phase before everyone has read this one
      }
    });
    BOOST_TEST_REQUIRE(misplaced.load() == 0);
    for (int i = 0; i < kSize; ++i) {
      BOOST_TEST(calls[static_cast<size_t>(i)].load() == 1, "round " << round << " member " << i);
      BOOST_TEST(count[static_cast<size_t>(i)] == kSize);
      BOOST_TEST(stale[static_cast<size_t>(i)] == 0, "round " << round << " member " << i);
    }
    if (round % 20 == 19) std::this_thread::sleep_for(std::chrono::milliseconds(5));  // workers go to sleep
  }
  kernels::set_threads(1);
}

BOOST_AUTO_TEST_CASE(q8_round_trip_is_within_half_a_step_per_block) {
  const int64_t rows = 5, cols = 70;  // 3 blocks per row, the last one 6 values long
  auto w = random_rows(rows, cols, 3);
  for (int64_t k = 32; k < 64; ++k) w[static_cast<size_t>(2 * cols + k)] = 0;  // an all-zero block
  std::vector<int8_t> q(static_cast<size_t>(rows * cols));
  std::vector<float> scales(static_cast<size_t>(rows * 3));
  kernels::quantize_q8(w.data(), rows, cols, q.data(), scales.data());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < 3; ++b) {
      const float s = scales[static_cast<size_t>(r * 3 + b)];
      float top = 0;
      bool hit_127 = false;
      for (int64_t k = b * 32; k < std::min(cols, b * 32 + 32); ++k) {
        const size_t i = static_cast<size_t>(r * cols + k);
        top = std::max(top, std::abs(w[i]));
        BOOST_TEST(std::abs(w[i] - q[i] * s) <= s / 2 + 1e-7f);
        BOOST_TEST(std::abs(int{q[i]}) <= 127);
        hit_127 = hit_127 || std::abs(int{q[i]}) == 127;
      }
      BOOST_TEST(s == top / 127.0f);
      BOOST_TEST((hit_127 || top == 0));  // the largest value of a block uses the full range
    }
  BOOST_TEST(scales[2 * 3 + 1] == 0.0f);
}

// RoPE (rotate_half pairs) and causal attention with grouped KV heads against direct formulas.
BOOST_AUTO_TEST_CASE(rope_and_attention_match_their_formulas) {
  const int64_t n = 3, heads = 4, kv_heads = 2, hd = 8, start = 5, span = start + n, half = hd / 2;
  std::vector<float> cos(static_cast<size_t>(span * half)), sin(cos.size());
  for (int64_t p = 0; p < span; ++p)
    for (int64_t j = 0; j < half; ++j) {
      const double angle = p / std::pow(10000.0, 2.0 * j / hd);
      cos[static_cast<size_t>(p * half + j)] = static_cast<float>(std::cos(angle));
      sin[static_cast<size_t>(p * half + j)] = static_cast<float>(std::sin(angle));
    }
  auto q = random_rows(n, heads * hd, 1);
  const auto q0 = q;
  kernels::rope(q.data(), n, heads, hd, start, cos.data(), sin.data());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t j = 0; j < half; ++j) {
        const size_t a = static_cast<size_t>((i * heads + h) * hd + j), b = a + static_cast<size_t>(half);
        const double angle = (start + i) / std::pow(10000.0, 2.0 * j / hd);
        BOOST_TEST(std::abs(q[a] - (q0[a] * std::cos(angle) - q0[b] * std::sin(angle))) < 1e-5);
        BOOST_TEST(std::abs(q[b] - (q0[b] * std::cos(angle) + q0[a] * std::sin(angle))) < 1e-5);
      }

  const auto keys = random_rows(span, kv_heads * hd, 2), values = random_rows(span, kv_heads * hd, 3);
  std::vector<float> out(static_cast<size_t>(n * heads * hd));
  kernels::attention(q.data(), n, heads, kv_heads, hd, start, keys.data(), values.data(), out.data());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t g = h / (heads / kv_heads), len = start + i + 1;  // causal: positions [0, start + i]
      std::vector<double> p(static_cast<size_t>(len));
      double top = -1e300, total = 0;
      for (int64_t s = 0; s < len; ++s) {
        double d = 0;
        for (int64_t j = 0; j < hd; ++j)
          d += q[static_cast<size_t>((i * heads + h) * hd + j)] * keys[static_cast<size_t>((s * kv_heads + g) * hd + j)];
        p[static_cast<size_t>(s)] = d / std::sqrt(double(hd));
        top = std::max(top, p[static_cast<size_t>(s)]);
      }
      for (auto& v : p) total += v = std::exp(v - top);
      for (int64_t j = 0; j < hd; ++j) {
        double want = 0;
        for (int64_t s = 0; s < len; ++s)
          want += p[static_cast<size_t>(s)] / total * values[static_cast<size_t>((s * kv_heads + g) * hd + j)];
        BOOST_TEST(std::abs(out[static_cast<size_t>((i * heads + h) * hd + j)] - want) < 1e-5);
      }
    }
}

// Causal attention against the formula in double for head sizes that take every path of every
// build (a head of 1 to 16 registers, and sizes that are not a whole number of registers): GQA with
// several queries of different lengths per kv head (the builds take up to 4 at once, across kv
// heads too), 37 to 39 cached positions (whole blocks of a register's lanes of positions and a
// remainder), then 46 to 48 (the last ending on a block of 16, AVX-512's); and a decode step of a
// model with as many kv heads as heads (one query each, taken together). Each (query, head) pair
// computed alone gives the same bits as in company: speculation's exactness rests on a position's
// result not depending on how a call groups it.
BOOST_AUTO_TEST_CASE(attention_matches_its_formula_for_every_head_size_and_build) {
  struct Case {
    int64_t n, heads, kv_heads, start, hd;
  };
  std::vector<Case> cases;
  for (const auto& [start, hd] : std::vector<std::pair<int64_t, int64_t>>{
           {36, 8}, {36, 12}, {36, 16}, {36, 32}, {36, 64}, {36, 128}, {45, 8}, {45, 16}, {45, 32}, {45, 64}, {45, 128}})
    cases.push_back({3, 4, 2, start, hd});
  for (const int64_t hd : {32, 64, 128}) cases.push_back({1, 4, 4, 40, hd});
  for (const auto& [n, heads, kv_heads, start, hd] : cases) {
    const int64_t span = start + n;
    const auto q = random_rows(n, heads * hd, 5 + static_cast<uint64_t>(hd));
    const auto keys = random_rows(span, kv_heads * hd, 6), values = random_rows(span, kv_heads * hd, 7);
    std::vector<double> want(static_cast<size_t>(n * heads * hd));
    for (int64_t i = 0; i < n; ++i)
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t g = h / (heads / kv_heads), len = start + i + 1;
        std::vector<double> p(static_cast<size_t>(len));
        double top = -1e300, total = 0;
        for (int64_t s = 0; s < len; ++s) {
          double d = 0;
          for (int64_t j = 0; j < hd; ++j)
            d += double(q[static_cast<size_t>((i * heads + h) * hd + j)]) * keys[static_cast<size_t>((s * kv_heads + g) * hd + j)];
          p[static_cast<size_t>(s)] = d / std::sqrt(double(hd));
          top = std::max(top, p[static_cast<size_t>(s)]);
        }
        for (auto& v : p) total += v = std::exp(v - top);
        for (int64_t j = 0; j < hd; ++j)
          for (int64_t s = 0; s < len; ++s)
            want[static_cast<size_t>((i * heads + h) * hd + j)] +=
                p[static_cast<size_t>(s)] / total * values[static_cast<size_t>((s * kv_heads + g) * hd + j)];
      }
    for (const auto& isa : runnable_isas()) {
      BOOST_TEST_CONTEXT(isa.name << " " << heads << "/" << kv_heads << " heads of " << hd << ", " << n
                                  << " queries, " << span << " positions") {
        std::vector<float> out(want.size(), -9.0f), alone(want.size(), -9.0f);
        isa.attention(q.data(), n, heads, kv_heads, hd, start, keys.data(), values.data(), out.data(), 0, n * heads);
        for (int64_t pair = 0; pair < n * heads; ++pair)
          isa.attention(q.data(), n, heads, kv_heads, hd, start, keys.data(), values.data(), alone.data(), pair, pair + 1);
        double worst = 0;
        for (size_t k = 0; k < out.size(); ++k) worst = std::max(worst, std::abs(out[k] - want[k]));
        BOOST_TEST(worst < 1e-5, "worst " << worst);
        BOOST_TEST(std::memcmp(out.data(), alone.data(), out.size() * sizeof(float)) == 0);
      }
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(decoder_precisions)

namespace {

// Weights whose matrices hold exactly what `precision` keeps of them, as fp32: the reference run
// on these isolates the kernels' arithmetic from the rounding the precision chose.
std::shared_ptr<Weights> rounded_like(const Weights& w, WeightPrecision precision) {
  TensorMap rounded;
  for (auto& [name, t] : w.named_tensors()) {
    if (t.dim() != 2 || name == "model.embed_tokens.weight") {
      rounded[name] = t.clone();
      continue;
    }
    if (precision == WeightPrecision::fp16) {
      rounded[name] = t.to(at::kHalf).to(at::kFloat);
    } else {  // int8
      auto f = t.contiguous();
      const int64_t rows = f.size(0), cols = f.size(1);
      std::vector<int8_t> q(static_cast<size_t>(rows * cols));
      std::vector<float> s(static_cast<size_t>(rows * kernels::q8_blocks(cols)));
      kernels::quantize_q8(f.data_ptr<float>(), rows, cols, q.data(), s.data());
      auto back = dequantized(q, s, rows, cols);
      rounded[name] = at::from_blob(back.data(), {rows, cols}).clone();
    }
  }
  return weights_from_tensors(w.config, rounded, "rounded");
}

double max_logit_diff(const at::Tensor& logits, const Rows& ref) {
  double m = 0;
  auto a = logits.to(at::kDouble).contiguous();
  for (size_t i = 0; i < ref.size(); ++i)
    for (size_t j = 0; j < ref[i].size(); ++j)
      m = std::max(m, std::abs(a[static_cast<int64_t>(i)][static_cast<int64_t>(j)].item<double>() - ref[i][j]));
  return m;
}

}  // namespace

// fp16 and int8 decoders agree with the loop reference run on the weights they hold, to the fp32
// tolerance of the fp32 decoder; and differ from the unrounded model by more than that, so the
// comparison would notice a decoder that ignored the precision. An FFN of 80 (not a multiple of
// 32) gives the down projection a short last block: zero-padded in the VNNI kernel's layout.
BOOST_AUTO_TEST_CASE(each_precision_matches_the_reference_on_its_rounded_weights) {
  for (const int64_t ffn_dim : {64, 80}) BOOST_TEST_CONTEXT("ffn " << ffn_dim) {
    auto c = tiny_config(2);
    c.ffn_dim = ffn_dim;
    auto w = scaled_weights(c, 31, 0.15, true);
    const auto tokens = some_tokens(20, c.vocab_size, 3, 0);
    ReferenceLlama exact(*w);
    const Rows exact_logits = [&] {
      Rows out;
      for (auto& h : exact.layers(exact.embed(tokens), 0, c.n_layers)) out.push_back(exact.final_logits(h));
      return out;
    }();
    for (auto precision : {WeightPrecision::fp16, WeightPrecision::int8}) {
      Decoder d(w, precision);
      BOOST_TEST(d.precision() == (precision == WeightPrecision::fp16 ? "fp16" : "int8"));
      KvCache kv(c, 0, c.n_layers);
      auto logits = d.final_logits(d.forward(d.embed(token_tensor(tokens)), 0, 0, c.n_layers, kv));
      // int8: the reference also quantizes every product's input rows, as the decoder does.
      RefVariant arithmetic;
      arithmetic.q8_activations = precision == WeightPrecision::int8;
      const auto rounded = rounded_like(*w, precision);
      const auto reference_logits = [&](RefVariant variant) {
        ReferenceLlama ref(*rounded, variant);
        Rows want;
        for (auto& h : ref.layers(ref.embed(tokens), 0, c.n_layers)) want.push_back(ref.final_logits(h));
        return want;
      };
      BOOST_TEST_CONTEXT(to_string(precision)) {
        BOOST_TEST(max_logit_diff(logits, reference_logits(arithmetic)) < 1e-4);
        BOOST_TEST(max_logit_diff(logits, exact_logits) > 1e-4);
        // int8: the activations' rounding is visible, so the comparison above checks it too.
        if (arithmetic.q8_activations) BOOST_TEST(max_logit_diff(logits, reference_logits(RefVariant{})) > 1e-4);
      }
    }
    // fp16 keeps half the bytes of fp32, int8 a quarter plus one fp32 scale per 32 values.
    const auto bytes32 = Decoder(w, WeightPrecision::fp32).matrix_bytes();
    BOOST_TEST(Decoder(w, WeightPrecision::fp16).matrix_bytes() * 2 == bytes32);
    BOOST_TEST(Decoder(w, WeightPrecision::int8).matrix_bytes() < bytes32 / 3);
  }
}

// A converted decoder does not keep the loaded matrices beside its own copies (the memory of an
// int8 model is its int8 bytes, not those plus the file's), and refuses training on them; a
// decoder that uses the weights as they are keeps them.
BOOST_AUTO_TEST_CASE(converted_decoders_hold_one_copy_of_each_matrix) {
  auto c = tiny_config(2);
  auto w = scaled_weights(c, 4, 0.1);
  Decoder int8(w, WeightPrecision::int8);
  BOOST_TEST(!int8.weights().layers[0].wq.defined());
  BOOST_TEST(!int8.weights().lm_head.defined());
  BOOST_TEST(int8.weights().embed.defined());  // the lookup reads it as stored
  BOOST_TEST(w->layers[0].wq.defined());        // the caller's weights are untouched
  KvCache kv(c, 0, c.n_layers);
  auto h = int8.forward(int8.embed(token_tensor({3, 4, 5})), 0, 0, c.n_layers, kv);
  BOOST_TEST(int8.final_logits(h).size(1) == c.vocab_size);
  BOOST_CHECK_THROW(int8.forward_no_cache(int8.embed(token_tensor({3, 4})).unsqueeze(0), 0, 1), ModelError);
  // Tied to the embedding, the final head follows the decoder's own copy of it.
  auto tc = tiny_config(2);
  tc.tie_word_embeddings = true;
  Decoder tied(scaled_weights(tc, 5, 0.1), WeightPrecision::int8);
  BOOST_TEST(tied.weights().lm_head.is_same(tied.weights().embed));
  Decoder same(w, WeightPrecision::as_stored);
  BOOST_TEST(same.weights().layers[0].wq.is_same(w->layers[0].wq));
  BOOST_TEST(same.forward_no_cache(same.embed(token_tensor({3, 4})).unsqueeze(0), 0, 1).size(1) == 2);
}

// A model wide enough for the decoder to split its products over threads gives, on two and three
// threads, the states of one thread bit for bit (each row's arithmetic is the same, only who does
// it differs): one session's prefill and step, and a batched step of three sessions of ragged
// lengths (their attentions shared out as tickets).
BOOST_AUTO_TEST_CASE(two_threads_give_the_states_of_one) {
  auto c = tiny_config(2);
  c.dim = 256;
  c.n_heads = 4;
  c.ffn_dim = 512;
  c.n_layers = 2;
  c.exit_layers = {1};
  c.default_split = 1;
  auto w = scaled_weights(c, 8, 0.05, true);
  Decoder d(w);
  const auto x = d.embed(token_tensor(some_tokens(6, c.vocab_size, 2, 0)));
  auto run = [&](int threads) {
    kernels::set_threads(threads);
    KvCache kv(c, 0, c.n_layers);
    auto prefill = d.forward(x.narrow(0, 0, 5), 0, 0, c.n_layers, kv);
    auto step = d.forward(x.narrow(0, 5, 1), 5, 0, c.n_layers, kv);
    std::vector<std::unique_ptr<KvCache>> caches;
    std::vector<Decoder::DecodeStep> steps;
    for (int64_t i = 0; i < 3; ++i) {
      caches.push_back(std::make_unique<KvCache>(c, 0, c.n_layers));
      d.forward(x.narrow(0, 0, 2 * i + 1), 0, 0, c.n_layers, *caches.back());  // 1, 3, 5 positions before
      steps.push_back({x.narrow(0, 2 * i + 1, 1 + i % 2), 2 * i + 1, caches.back().get()});
    }
    std::vector<float> scratch;
    auto batched = d.forward(steps, 0, c.n_layers, scratch);
    batched.insert(batched.begin(), {prefill, step});
    return at::cat(batched);
  };
  const auto one = run(1), two = run(2), three = run(3);
  kernels::set_threads(1);
  BOOST_TEST(at::equal(one, two));
  BOOST_TEST(at::equal(one, three));
}

BOOST_AUTO_TEST_SUITE_END()
