// CloudCompute: the cloud half over uploaded fp16 split states (or tokens) gives the final-layer
// choice of a reference over the same states; lazy filling; misuse refused; naive baseline.
#include <boost/test/unit_test.hpp>

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "model/cloud_compute.hpp"
#include "model/decoder.hpp"
#include "model/early_exit_runner.hpp"
#include "model/sampler.hpp"
#include "tests/model/tiny_model.hpp"

using namespace ce;
using namespace ce::test;

namespace {

struct Fixture {
  ModelConfig c = tiny_config(2);  // 4 layers, exits {1, 2, 3}, split 2
  std::shared_ptr<const Model> m = tiny_model(c, 41);
  int64_t split = c.default_split;
  std::vector<int64_t> tokens = some_tokens(16, c.vocab_size, 12);
  std::vector<uint16_t> fp16;  // split states of `tokens`, from the edge runner
  at::Tensor states;           // the same as fp32, (16, dim)
  std::vector<TokenChoice> want;     // reference: final greedy choice after each position
  std::vector<at::Tensor> want_logits;

  Fixture() {
    // The edge: an early-exit runner over [0, split) (threshold 0.8: some rows wait as pending).
    EarlyExitRunner edge(m, split);
    ExitRule rule;
    rule.threshold = 0.8;
    for (auto t : tokens) edge.advance({static_cast<int32_t>(t)}, rule);
    edge.flush();
    auto rows = edge.take_completed();
    BOOST_REQUIRE_EQUAL(rows.count(), tokens.size());
    fp16.assign(rows.f16(), rows.f16() + rows.count() * c.dim);
    states = at::from_blob(fp16.data(), {static_cast<int64_t>(rows.count()), c.dim}, at::kHalf).to(at::kFloat);
    // Reference: layers [split, L) over the same fp16-rounded states in one batch.
    const auto& d = m->decoder();
    KvCache kv(c, split, c.n_layers);
    auto h = d.forward(states, 0, split, c.n_layers, kv);
    for (int64_t p = 0; p < h.size(0); ++p) {
      want_logits.push_back(d.final_logits(h[p]));
      want.push_back(greedy_choice(want_logits.back()));
    }
  }
  const uint16_t* row(int64_t p) const { return fp16.data() + p * c.dim; }
  PositionRows hidden(uint32_t first, uint32_t count, const uint16_t* bits) const {
    return PositionRows::states_f16(first, count, static_cast<uint32_t>(c.dim), bits);
  }
  static PositionRows token_rows(uint32_t first, uint32_t count, const int32_t* tokens) {
    return PositionRows::token_ids(first, std::vector<int32_t>(tokens, tokens + count));
  }

  void check(const TokenChoice& got, int64_t p) const {
    BOOST_TEST(got.token == want[static_cast<size_t>(p)].token, "position " << p);
    // fp32, different batch shapes: confidences agree to ~1e-6; tolerance 1e-4.
    BOOST_TEST(std::abs(got.confidence - want[static_cast<size_t>(p)].confidence) < 1e-4, "position " << p);
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(cloud_compute)

BOOST_FIXTURE_TEST_CASE(one_position_at_a_time_matches_reference, Fixture) {
  CloudCompute cloud(m, split);
  std::set<int64_t> distinct;
  for (int64_t p = 0; p < static_cast<int64_t>(tokens.size()); ++p) {
    cloud.append(hidden(static_cast<uint32_t>(p), 1, row(p)));
    BOOST_TEST(cloud.held() == p + 1);
    check(cloud.infer(static_cast<uint32_t>(p), {}), p);
    BOOST_TEST(cloud.computed() == p + 1);
    distinct.insert(want[static_cast<size_t>(p)].token);
  }
  BOOST_TEST(distinct.size() > 1u);  // the comparison is not trivially one token
  BOOST_TEST(cloud.bytes() > 0);
}

// Uploads arrive as the edge runner completes rows (late for early-exited tokens); the cloud
// answers the newest held position each time, filling the gap in one batch.
BOOST_FIXTURE_TEST_CASE(uploads_as_the_runner_completes_them, Fixture) {
  EarlyExitRunner edge(m, split);
  ExitRule rule;
  rule.threshold = 0.8;
  CloudCompute cloud(m, split);
  int answered = 0;
  uint32_t largest_upload = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    edge.advance({static_cast<int32_t>(tokens[i])}, rule);
    if (i + 1 == tokens.size()) edge.flush();
    auto rows = edge.take_completed();
    if (rows.empty()) continue;
    cloud.append(rows);
    largest_upload = std::max(largest_upload, rows.count());
    const auto p = cloud.held() - 1;
    check(cloud.infer(static_cast<uint32_t>(p), {}), p);
    ++answered;
  }
  BOOST_TEST(cloud.computed() == static_cast<int64_t>(tokens.size()));
  BOOST_TEST(answered > 1);
  BOOST_TEST(largest_upload > 1u);  // some rows arrived late, in a batch with a later one
}

BOOST_FIXTURE_TEST_CASE(lazy_fill_answers_later_positions, Fixture) {
  CloudCompute cloud(m, split);
  cloud.append(hidden(0, 5, row(0)));
  BOOST_TEST(cloud.held() == 5);
  BOOST_TEST(cloud.computed() == 0);
  check(cloud.infer(4, {}), 4);
  BOOST_TEST(cloud.computed() == 5);
  cloud.append(hidden(5, 3, row(5)));
  check(cloud.infer(7, {}), 7);
  BOOST_TEST(cloud.computed() == 8);
  // Part of a batch: answer 9 with 10 and 11 still waiting, then 11.
  cloud.append(hidden(8, 4, row(8)));
  check(cloud.infer(9, {}), 9);
  BOOST_TEST(cloud.computed() == 10);
  BOOST_TEST(cloud.held() == 12);
  check(cloud.infer(11, {}), 11);
}

// A wrong speculation of the edge: states of the wrong path uploaded and even computed, then
// truncated; the right rows that follow answer as if the wrong ones had never come.
BOOST_FIXTURE_TEST_CASE(truncate_forgets_a_wrong_path, Fixture) {
  CloudCompute cloud(m, split);
  cloud.append(hidden(0, 5, row(0)));
  check(cloud.infer(4, {}), 4);
  cloud.append(hidden(5, 3, row(9)));  // positions 5..7 hold the states of 9..11: a wrong path
  cloud.infer(7, {});
  cloud.append(hidden(8, 2, row(8)));  // uploaded, not computed
  BOOST_TEST(cloud.truncate(12) == 0);  // past held(): nothing dropped
  BOOST_TEST(cloud.held() == 10);
  BOOST_TEST(cloud.truncate(5) == 3);   // computed 5..7 dropped, 8..9 forgotten
  BOOST_TEST(cloud.held() == 5);
  BOOST_TEST(cloud.computed() == 5);
  BOOST_CHECK_THROW(cloud.append(hidden(6, 1, row(6))), ModelError);  // the next rows start at 5
  cloud.append(hidden(5, 4, row(5)));
  check(cloud.infer(6, {}), 6);
  // Truncating inside the uploaded, not computed rows keeps those before it.
  BOOST_TEST(cloud.truncate(8) == 0);
  BOOST_TEST(cloud.held() == 8);
  cloud.append(hidden(8, 4, row(8)));
  check(cloud.infer(11, {}), 11);
}

BOOST_FIXTURE_TEST_CASE(gaps_overlaps_and_bad_infers_throw, Fixture) {
  CloudCompute cloud(m, split);
  BOOST_CHECK_THROW(cloud.append(hidden(1, 1, row(1))), ModelError);  // gap at the start
  cloud.append(hidden(0, 5, row(0)));
  BOOST_CHECK_THROW(cloud.append(hidden(6, 1, row(6))), ModelError);  // gap
  BOOST_CHECK_THROW(cloud.append(hidden(4, 2, row(4))), ModelError);  // overlap
  BOOST_CHECK_THROW(cloud.append(hidden(0, 1, row(0))), ModelError);  // repeat
  BOOST_CHECK_THROW(cloud.append(hidden(5, 0, row(5))), ModelError);  // empty
  BOOST_TEST(cloud.held() == 5);
  BOOST_CHECK_THROW(cloud.infer(5, {}), ModelError);  // beyond what is held
  check(cloud.infer(3, {}), 3);
  BOOST_CHECK_THROW(cloud.infer(3, {}), ModelError);  // twice at the same position
  BOOST_CHECK_THROW(cloud.infer(1, {}), ModelError);  // already answered
  check(cloud.infer(4, {}), 4);  // still usable after the refusals
  BOOST_CHECK_THROW(cloud.append(token_rows(5, 1, std::vector<int32_t>{3}.data())), ModelError);  // split context
  // Non-finite uploads are refused.
  std::vector<uint16_t> nan_row(static_cast<size_t>(c.dim), 0x7e00);  // fp16 NaN
  BOOST_CHECK_THROW(cloud.append(hidden(5, 1, nan_row.data())), ModelError);
  BOOST_TEST(cloud.held() == 5);
  // Beyond max_seq.
  std::vector<uint16_t> many(static_cast<size_t>(c.max_seq * c.dim), 0);
  BOOST_CHECK_THROW(cloud.append(hidden(5, static_cast<uint32_t>(c.max_seq), many.data())), ModelError);
  BOOST_CHECK_THROW(CloudCompute(m, c.n_layers), ModelError);
  BOOST_CHECK_THROW(CloudCompute(m, -1), ModelError);
}

// layer_begin 0: the cloud runs the whole model from tokens.
BOOST_FIXTURE_TEST_CASE(cloud_only_context_equals_full_model, Fixture) {
  const auto& d = m->decoder();
  KvCache kv(c, 0, c.n_layers);
  auto h = d.forward(d.embed(token_tensor(tokens)), 0, 0, c.n_layers, kv);
  CloudCompute cloud(m, 0);
  std::vector<int32_t> ids(tokens.begin(), tokens.end());
  BOOST_CHECK_THROW(cloud.append(hidden(0, 1, row(0))), ModelError);  // takes tokens only
  cloud.append(token_rows(0, 6, ids.data()));  // a prompt, answered at its end
  auto full = [&](int64_t p) { return greedy_choice(d.final_logits(h[p])); };
  auto got = cloud.infer(5, {});
  BOOST_TEST(got.token == full(5).token);
  BOOST_TEST(std::abs(got.confidence - full(5).confidence) < 1e-4);
  for (int64_t p = 6; p < static_cast<int64_t>(ids.size()); ++p) {
    cloud.append(token_rows(static_cast<uint32_t>(p), 1, ids.data() + p));
    got = cloud.infer(static_cast<uint32_t>(p), {});
    BOOST_TEST(got.token == full(p).token, "position " << p);
    BOOST_TEST(std::abs(got.confidence - full(p).confidence) < 1e-4);
  }
  std::vector<int32_t> bad{static_cast<int32_t>(c.vocab_size)};
  BOOST_CHECK_THROW(cloud.append(token_rows(static_cast<uint32_t>(ids.size()), 1, bad.data())), ModelError);
}

BOOST_FIXTURE_TEST_CASE(naive_split_equals_cloud_compute, Fixture) {
  CloudCompute cloud(m, split);
  auto contiguous = states.contiguous();
  for (uint32_t count : {1u, 5u, 9u, 16u}) {
    const auto naive = naive_split_infer(*m, split, contiguous.data_ptr<float>(), count, {});
    check(naive, count - 1);
  }
  for (int64_t p = 0; p < 16; ++p) {
    cloud.append(hidden(static_cast<uint32_t>(p), 1, row(p)));
    const auto a = cloud.infer(static_cast<uint32_t>(p), {});
    const auto b = naive_split_infer(*m, split, contiguous.data_ptr<float>(), static_cast<uint32_t>(p + 1), {});
    BOOST_TEST(a.token == b.token, "position " << p);
    BOOST_TEST(std::abs(a.confidence - b.confidence) < 1e-4);
  }
  BOOST_CHECK_THROW(naive_split_infer(*m, split, contiguous.data_ptr<float>(), 0, {}), ModelError);
}

// With sampling, the cloud draws for the position asked, as a local run would.
BOOST_FIXTURE_TEST_CASE(sampling_uses_the_position, Fixture) {
  SamplingParams s;
  s.temperature = 1.0f;
  s.seed = 99;
  CloudCompute cloud(m, split);
  cloud.append(hidden(0, 16, row(0)));
  for (uint32_t p = 0; p < 16; ++p)
    BOOST_TEST(cloud.infer(p, s).token == pick_token(want_logits[p], s, p), "position " << p);
  BOOST_TEST(naive_split_infer(*m, split, states.contiguous().data_ptr<float>(), 16, s).token ==
             pick_token(want_logits[15], s, 15));
}

// A long catch-up beside short requests takes at most as many rows per step as the others together
// (kCatchUpFloor at least), and full chunks once alone: two contexts asking one new position per
// step while a third catches up 16 positions with chunks of 64.
BOOST_FIXTURE_TEST_CASE(a_long_catch_up_takes_no_more_rows_than_the_others_together, Fixture) {
  CloudCompute a(m, split), b(m, split), long_one(m, split);
  long_one.append(hidden(0, 16, row(0)));
  std::vector<float> scratch;
  std::vector<int64_t> long_computed;
  uint32_t next = 0;
  for (; next < 3; ++next) {  // three steps beside a and b
    for (auto* short_one : {&a, &b}) short_one->append(hidden(next, 1, row(next)));
    const auto got = CloudCompute::step({{&a, next, {}}, {&b, next, {}}, {&long_one, 15, {}}}, 64, scratch);
    BOOST_REQUIRE((got[0] && got[1]));
    check(*got[0], next);
    check(*got[1], next);
    BOOST_TEST(!got[2].has_value());
    long_computed.push_back(long_one.computed());
  }
  const auto four = CloudCompute::kCatchUpFloor;
  BOOST_TEST(long_computed == (std::vector<int64_t>{four, 2 * four, 3 * four}), boost::test_tools::per_element());
  const auto alone = CloudCompute::step({{&long_one, 15, {}}}, 64, scratch);  // the rest in one step
  BOOST_REQUIRE(alone[0].has_value());
  check(*alone[0], 15);
  // Two long catch-ups side by side: each may take as many as the other, so both run full chunks.
  CloudCompute c1(m, split), c2(m, split);
  c1.append(hidden(0, 16, row(0)));
  c2.append(hidden(0, 16, row(0)));
  const auto both = CloudCompute::step({{&c1, 15, {}}, {&c2, 15, {}}}, 64, scratch);
  BOOST_REQUIRE((both[0] && both[1]));
  check(*both[0], 15);
  check(*both[1], 15);
}

// The scheduler's row budget: full chunks until steps are shared; then, for a context alone in a
// step, what the last shared step gave the contexts it answered (4 at least) for kSharedSteps
// steps, full chunks again after; steps of several contexts keep the full chunk (the per-step rule
// above bounds them).
BOOST_AUTO_TEST_CASE(the_row_budget_keeps_a_lone_catch_up_short_while_others_are_active) {
  CloudCompute::RowBudget budget(64);
  BOOST_TEST(budget.max_rows(1) == 64);  // a context that never shared a step
  budget.record(1, 64);
  BOOST_TEST(budget.max_rows(1) == 64);
  budget.record(9, 10);  // eight one-row answers and a two-row one beside a catch-up
  BOOST_TEST(budget.max_rows(1) == 10);
  BOOST_TEST(budget.max_rows(2) == 64);
  budget.record(3, 1);
  BOOST_TEST(budget.max_rows(1) == CloudCompute::kCatchUpFloor);
  for (int i = 0; i < CloudCompute::RowBudget::kSharedSteps; ++i) {
    budget.record(1, 0);
    BOOST_TEST(budget.max_rows(1) == CloudCompute::kCatchUpFloor, "alone step " << i);
  }
  budget.record(1, 0);  // the others have gone quiet
  BOOST_TEST(budget.max_rows(1) == 64);
  BOOST_TEST(CloudCompute::RowBudget(3).max_rows(1) == 3);
  CloudCompute::RowBudget small(3);
  small.record(2, 50);
  BOOST_TEST(small.max_rows(1) == 3);  // never above the chunk
}

// The scheduler's batched step: several contexts at different depths, one of them catching up a
// long gap in chunks of 3 positions; every context's answer equals the reference at its position,
// the chunked one answers only in the step that reaches it, and each context's KV holds exactly
// its own positions afterwards.
BOOST_FIXTURE_TEST_CASE(batched_steps_answer_every_context_as_alone, Fixture) {
  constexpr int kContexts = 5;
  std::vector<std::unique_ptr<CloudCompute>> ctx;
  for (int i = 0; i < kContexts; ++i) ctx.push_back(std::make_unique<CloudCompute>(m, split));
  // Context i holds positions [0, 2 + 2i) uploaded; context 4 uploads all 16 (the long catch-up).
  std::vector<uint32_t> held;
  for (int i = 0; i < kContexts; ++i) {
    held.push_back(i == 4 ? 16u : static_cast<uint32_t>(2 + 2 * i));
    ctx[static_cast<size_t>(i)]->append(hidden(0, held.back(), row(0)));
  }
  std::vector<float> scratch;
  std::vector<CloudCompute::Request> requests;
  for (int i = 0; i < kContexts; ++i) requests.push_back({ctx[static_cast<size_t>(i)].get(), held[static_cast<size_t>(i)] - 1, {}});
  // Chunks of 3: contexts 0 (2 positions) and 1 (4 -> needs 2 steps) ... context 4 needs 6 steps.
  int steps = 0;
  std::vector<int> answered_in(kContexts, -1);
  while (!requests.empty()) {
    const auto got = CloudCompute::step(requests, 3, scratch);
    ++steps;
    std::vector<CloudCompute::Request> next;
    for (size_t j = 0; j < requests.size(); ++j) {
      const auto i = static_cast<int>(std::find_if(ctx.begin(), ctx.end(), [&](const auto& p) { return p.get() == requests[j].context; }) - ctx.begin());
      if (got[j]) {
        check(*got[j], requests[j].position);
        answered_in[static_cast<size_t>(i)] = steps;
        BOOST_TEST(ctx[static_cast<size_t>(i)]->computed() == held[static_cast<size_t>(i)]);
      } else {
        BOOST_TEST(ctx[static_cast<size_t>(i)]->computed() == 3 * steps, "context " << i << " after step " << steps);
        next.push_back(requests[j]);
      }
    }
    requests = next;
    BOOST_REQUIRE(steps <= 6);
  }
  BOOST_TEST(answered_in == (std::vector<int>{1, 2, 2, 3, 6}), boost::test_tools::per_element());
  // Later single positions, all contexts in one step again.
  for (int i = 0; i < 4; ++i) {
    const auto p = held[static_cast<size_t>(i)];
    ctx[static_cast<size_t>(i)]->append(hidden(p, 1, row(p)));
    requests.push_back({ctx[static_cast<size_t>(i)].get(), p, {}});
  }
  const auto got = CloudCompute::step(requests, 3, scratch);
  for (size_t j = 0; j < requests.size(); ++j) {
    BOOST_REQUIRE(got[j].has_value());
    check(*got[j], requests[j].position);
  }
}

BOOST_FIXTURE_TEST_CASE(batched_step_refuses_what_it_cannot_answer, Fixture) {
  CloudCompute a(m, split), b(m, split), tokens_only(m, 0);
  a.append(hidden(0, 2, row(0)));
  b.append(hidden(0, 2, row(0)));
  std::vector<int32_t> ids{3, 4};
  tokens_only.append(token_rows(0, 2, ids.data()));
  std::vector<float> scratch;
  const auto error = [&](std::vector<CloudCompute::Request> r, int64_t max_rows = 8) {
    return model_error_text([&] { CloudCompute::step(r, max_rows, scratch); });
  };
  BOOST_TEST(contains(error({{&a, 1, {}}, {&b, 5, {}}}), "position 5 not uploaded (2 held)"));
  BOOST_TEST(contains(error({{&a, 1, {}}, {&tokens_only, 1, {}}}), "different models or layer ranges"));
  BOOST_TEST(contains(error({{&a, 1, {}}, {&a, 1, {}}}), "one cache twice"));
  BOOST_TEST(contains(error({{&a, 1, {}}}, 0), "max_rows"));
  BOOST_TEST(contains(error({{nullptr, 1, {}}}), "without a context"));
  BOOST_TEST(a.computed() == 0);  // refused before anything ran
  BOOST_TEST(CloudCompute::step({{&a, 1, {}}, {&b, 0, {}}}, 8, scratch)[1].has_value());
  BOOST_TEST(contains(error({{&b, 0, {}}}), "already answered"));
}

BOOST_AUTO_TEST_SUITE_END()
