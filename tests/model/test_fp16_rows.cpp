// The fp16 rows the edge uploads: the tests' plain-integer IEEE half reference checked against
// known values and the compiler's _Float16, then the runner's torch-made rows checked against it.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <random>

#include "model/early_exit_runner.hpp"
#include "tests/fp16_reference.hpp"
#include "tests/model/tiny_model.hpp"

using namespace ce;
using namespace ce::test;

BOOST_AUTO_TEST_SUITE(fp16_rows)


BOOST_AUTO_TEST_CASE(fp16_known_values) {
  BOOST_TEST(float_to_half(0.0f) == 0x0000u);
  BOOST_TEST(float_to_half(-0.0f) == 0x8000u);
  BOOST_TEST(float_to_half(1.0f) == 0x3c00u);
  BOOST_TEST(float_to_half(-2.0f) == 0xc000u);
  BOOST_TEST(float_to_half(0.5f) == 0x3800u);
  BOOST_TEST(float_to_half(65504.0f) == 0x7bffu);
  BOOST_TEST(float_to_half(std::ldexp(1.0f, -14)) == 0x0400u);  // smallest normal
  BOOST_TEST(float_to_half(std::ldexp(1.0f, -24)) == 0x0001u);  // smallest subnormal
  BOOST_TEST(float_to_half(std::ldexp(1023.0f, -24)) == 0x03ffu);
  BOOST_TEST(half_to_float(0x3c00) == 1.0f);
  BOOST_TEST(half_to_float(0x0001) == std::ldexp(1.0f, -24));
  BOOST_TEST(half_to_float(0x83ff) == -std::ldexp(1023.0f, -24));
  BOOST_TEST(half_to_float(0x7bff) == 65504.0f);
  BOOST_TEST(std::signbit(half_to_float(0x8000)));
}

BOOST_AUTO_TEST_CASE(fp16_every_half_round_trips_exactly) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float f = half_to_float(static_cast<uint16_t>(h));
    const uint16_t back = float_to_half(f);
    if (half_is_nan(static_cast<uint16_t>(h))) {
      BOOST_TEST_REQUIRE(std::isnan(f));
      BOOST_TEST_REQUIRE(half_is_nan(back));
      BOOST_TEST_REQUIRE((back & 0x8000u) == (h & 0x8000u));
    } else {
      BOOST_TEST_REQUIRE(back == h, "half " << h);
    }
  }
}

BOOST_AUTO_TEST_CASE(fp16_rounds_to_nearest_even) {
  // Exactly halfway: to the even neighbour.
  BOOST_TEST(float_to_half(1.0f + std::ldexp(1.0f, -11)) == 0x3c00u);
  BOOST_TEST(float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02u);
  BOOST_TEST(float_to_half(std::ldexp(1.0f, -25)) == 0x0000u);      // half of 2^-24
  BOOST_TEST(float_to_half(3 * std::ldexp(1.0f, -25)) == 0x0002u);  // 1.5 * 2^-24
  BOOST_TEST(float_to_half(std::ldexp(1023.5f, -24)) == 0x0400u);   // into the normals
  BOOST_TEST(float_to_half(65519.0f) == 0x7bffu);
  BOOST_TEST(float_to_half(65520.0f) == 0x7c00u);  // halfway to 65536: overflows
  // Just off halfway: to the nearer one.
  BOOST_TEST(float_to_half(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f)) == 0x3c01u);
  BOOST_TEST(float_to_half(std::nextafter(std::ldexp(1.0f, -25), 1.0f)) == 0x0001u);
  BOOST_TEST(float_to_half(std::nextafter(65520.0f, 0.0f)) == 0x7bffu);
  BOOST_TEST(float_to_half(1e-40f) == 0x0000u);  // float subnormal
  BOOST_TEST(float_to_half(-1e-40f) == 0x8000u);

  // Every midpoint between neighbouring finite halves, of both signs.
  for (uint32_t h = 0; h < 0x7bff; ++h) {
    for (uint32_t sign : {0u, 0x8000u}) {
      const uint16_t lo = static_cast<uint16_t>(h | sign), hi = static_cast<uint16_t>((h + 1) | sign);
      const float mid = static_cast<float>(
          (static_cast<double>(half_to_float(lo)) + static_cast<double>(half_to_float(hi))) / 2);
      const float toward_zero = std::nextafter(mid, 0.0f);
      const float away = std::nextafter(mid, sign ? -1e9f : 1e9f);
      BOOST_TEST_REQUIRE(float_to_half(mid) == ((h & 1u) ? hi : lo), "midpoint after " << h);
      BOOST_TEST_REQUIRE(float_to_half(toward_zero) == lo);
      BOOST_TEST_REQUIRE(float_to_half(away) == hi);
    }
  }
}

BOOST_AUTO_TEST_CASE(fp16_inf_and_nan) {
  const float inf = std::numeric_limits<float>::infinity();
  BOOST_TEST(float_to_half(inf) == 0x7c00u);
  BOOST_TEST(float_to_half(-inf) == 0xfc00u);
  BOOST_TEST(float_to_half(1e10f) == 0x7c00u);
  BOOST_TEST(float_to_half(-70000.0f) == 0xfc00u);
  BOOST_TEST(half_to_float(0x7c00) == inf);
  BOOST_TEST(half_to_float(0xfc00) == -inf);

  BOOST_TEST(half_is_nan(float_to_half(std::numeric_limits<float>::quiet_NaN())));
  BOOST_TEST(half_is_nan(float_to_half(-std::numeric_limits<float>::quiet_NaN())));
  BOOST_TEST((float_to_half(-std::numeric_limits<float>::quiet_NaN()) & 0x8000u) != 0u);
  BOOST_TEST(half_is_nan(float_to_half(std::numeric_limits<float>::signaling_NaN())));
  BOOST_TEST(half_is_nan(float_to_half(bits_to_float(0x7f800001u))));  // payload in low bits only
  BOOST_TEST(std::isnan(half_to_float(0x7e00)));
  BOOST_TEST(std::isnan(half_to_float(0x7c01)));
  BOOST_TEST(std::isnan(half_to_float(0xffff)));
}

BOOST_AUTO_TEST_CASE(fp16_relative_error_of_random_floats) {
  std::mt19937 rng(12345);
  std::uniform_real_distribution<float> value(-60000.0f, 60000.0f);
  const double bound = std::ldexp(1.0, -11);
  for (int i = 0; i < 1'000'000; ++i) {
    const float f = value(rng);
    const float back = half_to_float(float_to_half(f));
    const double err = std::fabs(static_cast<double>(back) - f);
    if (std::fabs(f) >= std::ldexp(1.0f, -14)) {
      BOOST_TEST_REQUIRE(err <= bound * std::fabs(f), "f = " << f << " back = " << back);
    } else {
      BOOST_TEST_REQUIRE(err <= std::ldexp(1.0, -25));  // subnormal spacing / 2
    }
  }
}

#if defined(__FLT16_MANT_DIG__)
BOOST_AUTO_TEST_CASE(fp16_matches_compiler_float16) {
  std::mt19937 rng(777);
  for (int i = 0; i < 1'000'000; ++i) {
    const float f = bits_to_float(static_cast<uint32_t>(rng()));
    if (std::isnan(f)) continue;
    const _Float16 reference = static_cast<_Float16>(f);
    uint16_t bits;
    std::memcpy(&bits, &reference, sizeof bits);
    BOOST_TEST_REQUIRE(float_to_half(f) == bits, "f = " << f);
    BOOST_TEST_REQUIRE(half_to_float(bits) == static_cast<float>(reference));
  }
}
#endif


BOOST_AUTO_TEST_CASE(uploaded_rows_are_the_fp32_states_rounded_to_nearest_even) {
  auto c = tiny_config(2);
  auto m = tiny_model(c, 31);
  EarlyExitRunner runner(m, c.default_split);
  ExitRule rule;
  rule.threshold = 2.0;  // every token runs to the split: every row completes at once
  runner.advance({1, 5, 9, 2, 7}, rule);
  for (int32_t t : {3, 8, 4}) runner.advance({t}, rule);
  std::vector<float> fp32;
  const auto rows = runner.take_completed(&fp32);
  BOOST_REQUIRE(rows.count() == 8u);
  BOOST_REQUIRE(rows.bytes().size() == fp32.size() * 2);
  BOOST_REQUIRE(fp32.size() == 8u * static_cast<size_t>(c.dim));
  size_t inexact = 0;
  for (size_t i = 0; i < fp32.size(); ++i) {
    BOOST_TEST_REQUIRE(rows.f16()[i] == float_to_half(fp32[i]), "element " << i << " = " << fp32[i]);
    inexact += half_to_float(rows.f16()[i]) != fp32[i];
  }
  BOOST_TEST(inexact > fp32.size() / 2);  // real rounding happened, not exact small values
}

BOOST_AUTO_TEST_SUITE_END()
