// Sampler: greedy at temperature 0, draws that depend only on (seed, position), top-p; the rest of
// the rule (logit_bias, penalties, top_k, min_p) and logprobs against a plain-loop reference.
#include <boost/test/unit_test.hpp>

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <set>

#include "model/model_config.hpp"
#include "model/sampler.hpp"

using namespace ce;

namespace {

at::Tensor logits_of(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return at::tensor(l);
}

// The rule of model/sampling.hpp written out by its definitions, in double, from the sequence itself
// (not TokenHistory): the probability of each token being drawn (one-hot at temperature 0).
std::vector<double> reference_distribution(const std::vector<float>& logits, const SamplingParams& p,
                                           const std::vector<int32_t>& sequence, size_t prompt_length) {
  const size_t v = logits.size();
  std::vector<double> adj(logits.begin(), logits.end());
  for (const auto& b : p.logit_bias) adj[static_cast<size_t>(b.token)] += b.bias;
  std::map<int32_t, int> in_output;
  std::set<int32_t> seen;
  for (size_t i = 0; i < sequence.size(); ++i) {
    seen.insert(sequence[i]);
    if (i >= prompt_length) ++in_output[sequence[i]];
  }
  for (int32_t t : seen) {
    double& l = adj[static_cast<size_t>(t)];
    if (l > 0) l /= p.repetition_penalty; else l *= p.repetition_penalty;
    if (in_output.count(t)) l -= p.presence_penalty + p.frequency_penalty * in_output[t];
  }
  std::vector<double> out(v, 0);
  const size_t best = static_cast<size_t>(std::max_element(adj.begin(), adj.end()) - adj.begin());
  if (p.temperature <= 0) {
    out[best] = 1;
    return out;
  }
  std::vector<double> w(v);
  for (size_t i = 0; i < v; ++i) w[i] = std::exp((adj[i] - adj[best]) / p.temperature);
  std::vector<size_t> rank(v);
  std::iota(rank.begin(), rank.end(), 0);
  std::stable_sort(rank.begin(), rank.end(), [&](size_t a, size_t b) { return w[a] > w[b]; });
  std::vector<size_t> kept;
  for (size_t i = 0; i < v; ++i) {
    if (p.top_k > 0 && i >= static_cast<size_t>(p.top_k)) break;
    if (i > 0 && w[rank[i]] < p.min_p) break;  // relative to the most likely, whose w is 1
    kept.push_back(rank[i]);
  }
  double mass = 0;
  for (auto i : kept) mass += w[i];
  double prefix = 0, total = 0;
  std::vector<size_t> nucleus;
  for (auto i : kept) {
    if (p.top_p < 1 && prefix >= p.top_p * mass) break;
    nucleus.push_back(i);
    prefix += w[i];
  }
  for (auto i : nucleus) total += w[i];
  for (auto i : nucleus) out[i] = w[i] / total;
  return out;
}

std::vector<float> random_logits(int64_t v, uint64_t seed) {
  at::manual_seed(seed);
  auto t = at::randn({v}) * 2;
  return std::vector<float>(t.data_ptr<float>(), t.data_ptr<float>() + v);
}

// Draw frequencies over `n` positions against the reference: every drawn token has a reference
// probability > 0, and each frequency is within 5 binomial sigmas (+ 0.002) of it.
void check_draws(const std::vector<float>& logits, const SamplingParams& p, const std::vector<int32_t>& sequence,
                 size_t prompt_length, int n) {
  const auto want = reference_distribution(logits, p, sequence, prompt_length);
  const auto history = TokenHistory::of(sequence.data(), sequence.size(), prompt_length);
  const auto t = at::tensor(logits);
  std::vector<int> count(logits.size(), 0);
  for (int pos = 0; pos < n; ++pos)
    ++count[static_cast<size_t>(choose_token(t, p, ChoiceInput{static_cast<uint64_t>(pos), history, -1}).token)];
  for (size_t i = 0; i < logits.size(); ++i) {
    if (want[i] == 0) {
      BOOST_TEST(count[i] == 0, "token " << i << " drawn " << count[i] << " times, the rule drops it");
      continue;
    }
    const double f = count[i] / double(n), sigma = std::sqrt(want[i] * (1 - want[i]) / n);
    BOOST_TEST(std::abs(f - want[i]) <= 5 * sigma + 0.002, "token " << i << ": " << f << " vs " << want[i]);
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(sampler)

BOOST_AUTO_TEST_CASE(history_counts_prompt_and_output_apart) {
  const std::vector<int32_t> seq{5, 3, 5, 9, 3, 3, 7};  // prompt: 5 3 5; output: 9 3 3 7
  const auto h = TokenHistory::of(seq.data(), seq.size(), 3);
  BOOST_REQUIRE_EQUAL(h.uses.size(), 4u);
  const std::vector<std::tuple<int32_t, uint32_t, bool>> want{{3, 2, true}, {5, 0, true}, {7, 1, false}, {9, 1, false}};
  for (size_t i = 0; i < want.size(); ++i) {
    BOOST_TEST(h.uses[i].token == std::get<0>(want[i]));
    BOOST_TEST(h.uses[i].output_count == std::get<1>(want[i]));
    BOOST_TEST(h.uses[i].in_prompt == std::get<2>(want[i]));
  }
}

BOOST_AUTO_TEST_CASE(greedy_with_bias_and_penalties_is_the_reference_argmax) {
  for (uint64_t seed = 0; seed < 40; ++seed) {
    const auto logits = random_logits(40, seed);
    std::vector<int32_t> seq;
    for (int i = 0; i < 12; ++i) seq.push_back(static_cast<int32_t>((seed * 7 + i * 13) % 40));
    SamplingParams p;
    p.repetition_penalty = 1.0f + 0.1f * static_cast<float>(seed % 5);
    p.presence_penalty = 0.3f * static_cast<float>(seed % 3);
    p.frequency_penalty = -0.2f + 0.25f * static_cast<float>(seed % 4);
    p.logit_bias = {{static_cast<int32_t>(seed % 40), 1.5f}, {static_cast<int32_t>((seed + 11) % 40), -3.f}};
    const auto want = reference_distribution(logits, p, seq, 5);
    const auto got = choose_token(at::tensor(logits), p, ChoiceInput{0, TokenHistory::of(seq.data(), seq.size(), 5), -1});
    BOOST_TEST(want[static_cast<size_t>(got.token)] == 1.0, "seed " << seed << ": token " << got.token);
    // The confidence stays the head's own (unadjusted) greedy maximum.
    BOOST_TEST(got.confidence == greedy_choice(logits.data(), 40).confidence);
  }
}

BOOST_AUTO_TEST_CASE(a_large_bias_forces_or_bans_a_token) {
  const auto logits = random_logits(30, 3);
  const int32_t best = greedy_choice(logits.data(), 30).token, other = (best + 7) % 30;
  SamplingParams p;
  p.logit_bias = {{other, 100}};
  BOOST_TEST(pick_token(at::tensor(logits), p, 0) == other);
  p.logit_bias = {{best, -100}};
  BOOST_TEST(pick_token(at::tensor(logits), p, 0) != best);
  p.temperature = 1;
  for (uint64_t pos = 0; pos < 300; ++pos) BOOST_TEST(pick_token(at::tensor(logits), p, pos) != best);
}

BOOST_AUTO_TEST_CASE(penalties_read_the_output_and_the_prompt_as_documented) {
  // Two tokens tied at logit 1: a penalty on one decides the argmax.
  std::vector<float> logits(6, -1.0f);
  logits[2] = logits[4] = 1.0f;
  SamplingParams p;
  p.presence_penalty = 0.5f;  // token 2 only in the prompt: not penalized; 4 in the output
  const std::vector<int32_t> seq{2, 2, 4};
  auto pick = [&](size_t prompt_length) {
    return choose_token(at::tensor(logits), p, ChoiceInput{0, TokenHistory::of(seq.data(), seq.size(), prompt_length), -1}).token;
  };
  BOOST_TEST(pick(2) == 2);
  BOOST_TEST(pick(3) == 2);  // ties go to the lower id: nothing penalized
  p.presence_penalty = 0;
  p.repetition_penalty = 2;  // both seen: 1 / 2 each -> tie again; token 2 seen, 0 never
  logits[0] = 0.8f;          // 0.8 beats 0.5
  BOOST_TEST(pick(2) == 0);
  p.repetition_penalty = 1;
  p.frequency_penalty = 0.1f;  // output 2, 2, 4 (prompt_length 0): 2 loses 0.2, 4 loses 0.1
  BOOST_TEST(pick(0) == 4);
}

BOOST_AUTO_TEST_CASE(draws_follow_the_reference_under_every_knob) {
  const std::vector<int32_t> seq{1, 4, 4, 9, 2, 9, 9};
  for (uint64_t seed = 0; seed < 6; ++seed) {
    const auto logits = random_logits(24, 100 + seed);
    SamplingParams p;
    p.temperature = 0.7f + 0.2f * static_cast<float>(seed);
    p.seed = seed;
    p.top_k = seed % 3 == 0 ? 0 : static_cast<int32_t>(3 + seed);
    p.min_p = seed % 2 == 0 ? 0.05f : 0;
    p.top_p = seed % 3 == 1 ? 0.8f : 1;
    p.repetition_penalty = 1.3f;
    p.presence_penalty = 0.4f;
    p.frequency_penalty = 0.2f;
    p.logit_bias = {{static_cast<int32_t>(seed), 2.0f}};
    BOOST_TEST_CONTEXT("seed " << seed) check_draws(logits, p, seq, 3, 6000);
  }
}

BOOST_AUTO_TEST_CASE(top_k_one_and_min_p_one_are_greedy) {
  const auto logits = random_logits(50, 8);
  const auto best = greedy_choice(logits.data(), 50).token;
  SamplingParams p;
  p.temperature = 1.5f;
  p.top_k = 1;
  for (uint64_t pos = 0; pos < 50; ++pos) BOOST_TEST(pick_token(at::tensor(logits), p, pos) == best);
  p.top_k = 0;
  p.min_p = 1;
  for (uint64_t pos = 0; pos < 50; ++pos) BOOST_TEST(pick_token(at::tensor(logits), p, pos) == best);
}

BOOST_AUTO_TEST_CASE(logprobs_are_the_unadjusted_log_softmax) {
  const auto logits = random_logits(64, 21);
  double max = logits[0], sum = 0;
  for (float l : logits) max = std::max<double>(max, l);
  for (float l : logits) sum += std::exp(l - max);
  auto logprob = [&](int32_t t) { return logits[static_cast<size_t>(t)] - max - std::log(sum); };
  SamplingParams p;
  p.logprobs = 5;
  p.temperature = 1;
  p.seed = 3;
  p.logit_bias = {{17, 4.0f}};  // changes the draw, not the reported distribution
  const auto c = choose_token(at::tensor(logits), p, ChoiceInput{2, {}, -1});
  BOOST_TEST(std::abs(c.logprobs.logprob - logprob(c.token)) < 1e-5);
  BOOST_REQUIRE_EQUAL(c.logprobs.top.size(), 5u);
  std::vector<int32_t> order(64);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
  for (size_t i = 0; i < 5; ++i) {
    BOOST_TEST(c.logprobs.top[i].token == order[i]);
    BOOST_TEST(std::abs(c.logprobs.top[i].logprob - logprob(order[i])) < 1e-5);
  }
  p.logprobs = 0;  // the token's own, no alternatives
  BOOST_TEST(choose_token(at::tensor(logits), p, ChoiceInput{2, {}, -1}).logprobs.top.empty());
  p.logprobs = -1;
  const auto none = choose_token(at::tensor(logits), p, ChoiceInput{2, {}, -1});
  BOOST_TEST(none.logprobs.top.empty());
  BOOST_TEST(none.logprobs.logprob == 0.0f);
  p.logprobs = 2;  // echo: a given token is scored, not chosen
  const auto scored = choose_token(at::tensor(logits), p, ChoiceInput{2, {}, 40});
  BOOST_TEST(scored.token == 40);
  BOOST_TEST(std::abs(scored.logprobs.logprob - logprob(40)) < 1e-5);
  BOOST_TEST(scored.logprobs.top.size() == 2u);
}

BOOST_AUTO_TEST_CASE(tokens_outside_the_vocabulary_are_refused_by_name) {
  const auto logits = at::zeros({10});
  SamplingParams p;
  p.logit_bias = {{10, 1}};
  BOOST_CHECK_EXCEPTION(check_choice(p, {}, -1, 10), ModelError,
                        [](const ModelError& e) { return std::string(e.what()).find("logit_bias token 10") != std::string::npos; });
  BOOST_CHECK_THROW(pick_token(logits, p, 0), ModelError);
  p.logit_bias.clear();
  p.presence_penalty = 1;
  TokenHistory h;
  h.uses.push_back({-2, 1, false});
  BOOST_CHECK_EXCEPTION(check_choice(p, h, -1, 10), ModelError,
                        [](const ModelError& e) { return std::string(e.what()).find("history token -2") != std::string::npos; });
  BOOST_CHECK_EXCEPTION(check_choice({}, {}, 12, 10), ModelError,
                        [](const ModelError& e) { return std::string(e.what()).find("scored token 12") != std::string::npos; });
  BOOST_CHECK_NO_THROW(check_choice({}, {}, 9, 10));
}

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
