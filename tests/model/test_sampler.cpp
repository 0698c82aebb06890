// Sampler: greedy at temperature 0, draws that depend only on (seed, position), top-p.
#include <boost/test/unit_test.hpp>

#include <ATen/ATen.h>

#include <cmath>
#include <set>

#include "model/sampler.hpp"

using namespace ce;

namespace {

at::Tensor logits_of(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return at::tensor(l);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(sampler)

BOOST_AUTO_TEST_CASE(temperature_zero_is_argmax) {
  at::manual_seed(4);
  for (int i = 0; i < 20; ++i) {
    auto logits = at::randn({97});
    const auto want = logits.argmax().item<int64_t>();
    SamplingParams p;  // temperature 0
    p.seed = static_cast<uint64_t>(i);
    BOOST_TEST(pick_token(logits, p, static_cast<uint64_t>(i)) == want);
    p.temperature = -1;  // not positive: greedy as well
    BOOST_TEST(pick_token(logits, p, 3) == want);
  }
}

BOOST_AUTO_TEST_CASE(same_seed_and_position_give_same_token) {
  auto logits = at::zeros({50});  // uniform: the draw is all randomness
  SamplingParams p;
  p.temperature = 1;
  p.seed = 77;
  for (uint64_t pos = 0; pos < 50; ++pos) {
    const auto a = pick_token(logits, p, pos);
    BOOST_TEST(pick_token(logits, p, pos) == a);
    BOOST_TEST(a >= 0);
    BOOST_TEST(a < 50);
  }
}

BOOST_AUTO_TEST_CASE(different_seeds_and_positions_give_different_sequences) {
  auto logits = at::zeros({50});
  SamplingParams a, b;
  a.temperature = b.temperature = 1;
  a.seed = 1;
  b.seed = 2;
  std::vector<int64_t> sa, sb;
  for (uint64_t pos = 0; pos < 200; ++pos) {
    sa.push_back(pick_token(logits, a, pos));
    sb.push_back(pick_token(logits, b, pos));
  }
  int same = 0;
  for (size_t i = 0; i < sa.size(); ++i) same += sa[i] == sb[i];
  BOOST_TEST(same < 30, same);  // chance agreement on 50 tokens: about 4 in 200
  // Within a sequence the position changes the draw too.
  std::set<int64_t> distinct(sa.begin(), sa.end());
  BOOST_TEST(distinct.size() > 20u);
}

BOOST_AUTO_TEST_CASE(draws_follow_the_distribution) {
  auto logits = logits_of({0.7, 0.2, 0.1});
  SamplingParams p;
  p.temperature = 1;
  p.seed = 5;
  std::vector<int> count(3, 0);
  const int n = 3000;
  for (int pos = 0; pos < n; ++pos) ++count[static_cast<size_t>(pick_token(logits, p, static_cast<uint64_t>(pos)))];
  // Binomial standard deviation for 0.7 at n = 3000 is 0.008; tolerance 0.04.
  BOOST_TEST(std::abs(count[0] / double(n) - 0.7) < 0.04);
  BOOST_TEST(std::abs(count[1] / double(n) - 0.2) < 0.04);
  BOOST_TEST(std::abs(count[2] / double(n) - 0.1) < 0.04);
}

BOOST_AUTO_TEST_CASE(top_p_keeps_the_smallest_prefix_reaching_p) {
  auto logits = logits_of({0.1, 0.7, 0.2});
  SamplingParams p;
  p.temperature = 1;
  p.top_p = 0.75f;  // 0.7 < 0.75, so {0.7, 0.2} are kept and 0.1 never drawn
  p.seed = 9;
  std::vector<int> count(3, 0);
  for (int pos = 0; pos < 2000; ++pos) ++count[static_cast<size_t>(pick_token(logits, p, static_cast<uint64_t>(pos)))];
  BOOST_TEST(count[0] == 0);
  BOOST_TEST(count[2] > 300);  // 0.2 / 0.9 of draws, about 444
}

BOOST_AUTO_TEST_CASE(tiny_top_p_or_temperature_is_argmax) {
  at::manual_seed(6);
  for (int i = 0; i < 20; ++i) {
    auto logits = at::randn({64});
    const auto want = logits.argmax().item<int64_t>();
    logits[want].add_(0.1);  // a margin of at least 0.1 over the runner-up
    SamplingParams p;
    p.temperature = 1;
    p.top_p = 1e-6f;
    p.seed = static_cast<uint64_t>(i);
    for (uint64_t pos = 0; pos < 10; ++pos) BOOST_TEST(pick_token(logits, p, pos) == want);
    p.top_p = 1;
    p.temperature = 1e-3f;  // margin 0.1 / 1e-3 = 100 nats: the argmax takes all the mass
    BOOST_TEST(pick_token(logits, p, 0) == want);
  }
}

BOOST_AUTO_TEST_SUITE_END()
