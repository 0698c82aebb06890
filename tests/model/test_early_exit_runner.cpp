// EarlyExitRunner against an eager reference that runs every layer for every position and reads
// the exits in order: same tokens, exit layers, confidences and fallbacks; after flush() the
// completed split-layer states equal the eager ones (KV recomputation of early-exited rows).
#include <boost/test/unit_test.hpp>

#include <ATen/ATen.h>

#include <cmath>
#include <map>
#include <set>

#include "model/decoder.hpp"
#include "model/early_exit_runner.hpp"
#include "model/sampler.hpp"
#include "tests/model/tiny_model.hpp"

using namespace ce;
using namespace ce::test;

namespace {

// What the eager reference decides for one position.
struct Expected {
  int64_t position = -1;
  bool resolved = false;
  int64_t token = -1;
  double confidence = 0;
  int64_t exit_layer = -1;
  int64_t fallback_token = -1;
  double fallback_confidence = 0;
  int64_t fallback_layer = -1;
};

// Runs all L layers for each new position, one position and one layer at a time over its own
// KvCache, keeping the state after every layer and every exit's greedy choice.
class EagerReference {
 public:
  explicit EagerReference(const Model& m) : d_(m.decoder()), c_(m.config()), kv_(c_, 0, c_.n_layers) {}

  struct Step {
    std::map<int64_t, TokenChoice> exits;  // exit layer -> choice
    std::map<int64_t, at::Tensor> exit_logits;
    TokenChoice final;
    at::Tensor final_logits;
    std::vector<at::Tensor> states;  // states[l]: (dim) after layers [0, l), l = 0..L
  };

  Step feed(int64_t token) {
    Step s;
    auto x = d_.embed(token_tensor({token}));  // (1, dim)
    s.states.push_back(x[0]);
    for (int64_t l = 0; l < c_.n_layers; ++l) {
      x = d_.forward(x, pos_, l, l + 1, kv_);
      s.states.push_back(x[0]);
      if (d_.weights().exits.count(l + 1)) {
        s.exit_logits[l + 1] = d_.exit_logits(l + 1, x[0]);
        s.exits[l + 1] = greedy_choice(s.exit_logits[l + 1]);
      }
    }
    s.final_logits = d_.final_logits(x[0]);
    s.final = greedy_choice(s.final_logits);
    ++pos_;
    return s;
  }

 private:
  const Decoder& d_;
  const ModelConfig& c_;
  KvCache kv_;
  int64_t pos_ = 0;
};

// The rule: the first exit inside [1, layer_end] whose confidence >= theta, else the final layer
// when layer_end = L, else unresolved. The fallback is the deepest exit read: every edge exit is
// read when theta <= 1, only the last one when theta > 1 (no exit can fire), and none when theta > 1
// and layer_end = L (the final layer decides; nothing needs a fallback).
Expected decide(const EagerReference::Step& s, int64_t position, double theta, int64_t layer_end, int64_t n_layers) {
  Expected e;
  e.position = position;
  std::vector<int64_t> exits;
  for (auto& [layer, choice] : s.exits)
    if (layer <= layer_end) exits.push_back(layer);
  for (auto layer : exits) {
    if (theta > 1 && (layer != exits.back() || layer_end == n_layers)) continue;
    const auto& ch = s.exits.at(layer);
    e.fallback_token = ch.token;
    e.fallback_confidence = ch.confidence;
    e.fallback_layer = layer;
    if (ch.confidence >= theta) {
      e.resolved = true;
      e.token = ch.token;
      e.confidence = ch.confidence;
      e.exit_layer = layer;
      return e;
    }
  }
  if (layer_end == n_layers) {
    e.resolved = true;
    e.token = s.final.token;
    e.confidence = s.final.confidence;
    e.exit_layer = n_layers;
  }
  return e;
}

// A whole greedy generation by the eager reference: a 3-token prompt, then `steps` tokens fed
// back (an unresolved token is answered by the final layer, as the cloud would).
struct EagerRun {
  std::vector<int64_t> tokens;         // every token fed, by position
  std::vector<Expected> decisions;     // positions 2 .. 2 + steps
  std::vector<at::Tensor> end_states;  // state after [0, layer_end), by position
  double min_margin = 1e9;             // closest evaluated confidence to theta
};

const std::vector<int64_t> prompt{1, 17, 42};

EagerRun run_eager(const Model& m, double theta, int64_t layer_end, int steps) {
  EagerReference ref(m);
  EagerRun r;
  const auto L = m.config().n_layers;
  auto record = [&](int64_t token) {
    const auto s = ref.feed(token);
    r.tokens.push_back(token);
    r.end_states.push_back(s.states[static_cast<size_t>(layer_end)]);
    return s;
  };
  for (size_t i = 0; i + 1 < prompt.size(); ++i) record(prompt[i]);
  int64_t next = prompt.back();
  for (int i = 0; i <= steps; ++i) {
    const auto s = record(next);
    const auto e = decide(s, static_cast<int64_t>(r.tokens.size()) - 1, theta, layer_end, L);
    for (auto& [layer, ch] : s.exits) r.min_margin = std::min(r.min_margin, std::abs(ch.confidence - theta));
    r.decisions.push_back(e);
    next = e.resolved ? e.token : s.final.token;
  }
  return r;
}

at::Tensor rows_to_float(const PositionRows& rows, int64_t dim) {
  BOOST_REQUIRE(rows.kind() == RowKind::states_f16);
  BOOST_REQUIRE_EQUAL(rows.bytes().size(), static_cast<size_t>(rows.count()) * static_cast<size_t>(dim) * 2);
  return at::from_blob(const_cast<uint16_t*>(rows.f16()), {static_cast<int64_t>(rows.count()), dim}, at::kHalf)
      .to(at::kFloat);
}

// Drives the runner with the eager run's tokens and checks every outcome, then the completed
// states. Returns the runner's completed states (fp32 from fp16), by position.
at::Tensor check_runner(std::shared_ptr<const Model> m, const EagerRun& eager, double theta, int64_t layer_end,
                        SamplingParams sampling = {}) {
  const auto dim = m->config().dim;
  EarlyExitRunner runner(m, layer_end);
  BOOST_TEST(runner.layer_end() == layer_end);
  ExitRule rule;
  rule.threshold = theta;
  rule.sampling = sampling;
  std::vector<at::Tensor> chunks;
  uint32_t next_first = 0;
  auto take = [&] {
    auto rows = runner.take_completed();
    if (rows.empty()) return;
    BOOST_TEST(rows.first_position() == next_first);  // contiguous, from 0
    next_first = rows.end();
    chunks.push_back(rows_to_float(rows, dim));
  };
  for (size_t i = 0; i < eager.decisions.size(); ++i) {
    const auto& want = eager.decisions[i];
    std::vector<int32_t> feed;
    if (i == 0)
      feed.assign(prompt.begin(), prompt.end());
    else
      feed.push_back(static_cast<int32_t>(eager.tokens[static_cast<size_t>(want.position)]));
    const auto got = runner.advance(feed, rule);
    BOOST_TEST_CONTEXT("theta " << theta << " layer_end " << layer_end << " position " << want.position) {
      BOOST_TEST(got.position == want.position);
      BOOST_TEST(got.resolved == want.resolved);
      BOOST_TEST(got.token == want.token);
      BOOST_TEST(got.exit_layer == want.exit_layer);
      BOOST_TEST(std::abs(got.confidence - want.confidence) < 1e-4);  // fp32, batched vs single row
      BOOST_TEST(got.fallback_token == want.fallback_token);
      BOOST_TEST(got.fallback_layer == want.fallback_layer);
      BOOST_TEST(std::abs(got.fallback_confidence - want.fallback_confidence) < 1e-4);
    }
    BOOST_TEST(runner.positions() == want.position + 1);
    BOOST_TEST(runner.completed_positions() <= runner.positions());
    if (i % 3 == 0) take();  // taking in between must not break contiguity
  }
  runner.flush();
  BOOST_TEST(runner.completed_positions() == runner.positions());
  take();
  BOOST_TEST(runner.take_completed().count() == 0u);  // nothing left after taking everything
  BOOST_REQUIRE(!chunks.empty());
  auto got = at::cat(chunks, 0);
  BOOST_REQUIRE_EQUAL(got.size(0), static_cast<int64_t>(eager.end_states.size()));
  auto want = at::stack(eager.end_states);
  // fp16 rounding is at most 2^-11 relative; tolerance 2e-3 relative plus 1e-5 absolute for
  // values near zero (and fp32 differences between batched and single-row runs, ~1e-6).
  auto excess = (got - want).abs() - (2e-3 * want.abs() + 1e-5);
  BOOST_TEST_MESSAGE("layer_end " << layer_end << " theta " << theta << ": max |state| "
                                   << want.abs().max().item<double>() << ", max |runner - eager| "
                                   << (got - want).abs().max().item<double>());
  BOOST_TEST(excess.max().item<double>() <= 0.0, "layer_end " << layer_end << " theta " << theta);
  return got;
}

struct Fixture {
  ModelConfig c = tiny_config(2);  // 4 layers, exits {1, 2, 3}, split 2
  std::shared_ptr<const Model> m = tiny_model(c, 31);
  int64_t split = c.default_split;
  static constexpr int steps = 20;

  // The first threshold at which tokens leave at two or more different exits and at the final
  // layer, with no confidence within 1e-3 of it (so fp32 noise cannot flip a decision).
  double mixing_threshold() const {
    for (double theta = 0.05; theta < 1.0; theta += 0.025) {
      const auto r = run_eager(*m, theta, c.n_layers, steps);
      std::set<int64_t> layers;
      for (auto& d : r.decisions) layers.insert(d.exit_layer);
      if (layers.size() >= 3 && layers.count(c.n_layers) && r.min_margin > 1e-3) return theta;
    }
    BOOST_FAIL("no threshold mixes exits and the final layer for this model");
    return 0;
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(early_exit_runner)

BOOST_FIXTURE_TEST_CASE(mixed_exits_match_eager_reference_full_model, Fixture) {
  const double theta = mixing_threshold();
  const auto eager = run_eager(*m, theta, c.n_layers, steps);
  std::map<int64_t, int> histogram;
  for (auto& d : eager.decisions) ++histogram[d.exit_layer];
  for (auto& [layer, n] : histogram) BOOST_TEST_MESSAGE("theta " << theta << ": exit " << layer << " x" << n);
  check_runner(m, eager, theta, c.n_layers);
}

BOOST_FIXTURE_TEST_CASE(mixed_exits_match_eager_reference_edge, Fixture) {
  const double theta = mixing_threshold();
  const auto eager = run_eager(*m, theta, split, steps);
  int resolved = 0;
  for (auto& d : eager.decisions) resolved += d.resolved;
  // The edge resolves some tokens and leaves the others to the cloud.
  BOOST_TEST(resolved > 0);
  BOOST_TEST(resolved < static_cast<int>(eager.decisions.size()));
  check_runner(m, eager, theta, split);
}

BOOST_FIXTURE_TEST_CASE(threshold_zero_takes_every_token_from_the_first_exit, Fixture) {
  for (int64_t layer_end : {c.n_layers, split}) {
    const auto eager = run_eager(*m, 0.0, layer_end, steps);
    for (auto& d : eager.decisions) {
      BOOST_TEST(d.resolved);
      BOOST_TEST(d.exit_layer == c.exit_layers.front());
    }
    check_runner(m, eager, 0.0, layer_end);
  }
}

BOOST_FIXTURE_TEST_CASE(threshold_above_one_never_exits_early, Fixture) {
  const double theta = 1.5;
  const auto full = run_eager(*m, theta, c.n_layers, steps);
  for (auto& d : full.decisions) {
    BOOST_TEST(d.exit_layer == c.n_layers);
    BOOST_TEST(d.fallback_layer == -1);  // the final layer decides: no exit head is run for a fallback
  }
  check_runner(m, full, theta, c.n_layers);
  const auto edge = run_eager(*m, theta, split, steps);
  for (auto& d : edge.decisions) {
    BOOST_TEST(!d.resolved);
    BOOST_TEST(d.fallback_layer == split);  // the last edge exit (exit 2 = split here)
  }
  check_runner(m, edge, theta, split);
}

// The last edge exit below the split: the fallback comes from exit 1, and the split state of an
// exited token is still computed (layers [1, 2) are owed).
BOOST_AUTO_TEST_CASE(edge_with_exit_below_split) {
  auto c = tiny_config(2);
  c.exit_layers = {1, 3};
  c.default_split = 2;
  auto m = tiny_model(c, 32);
  for (double theta : {0.0, 1.5}) {
    const auto eager = run_eager(*m, theta, 2, Fixture::steps);
    for (auto& d : eager.decisions) BOOST_TEST(d.fallback_layer == 1);
    check_runner(m, eager, theta, 2);
  }
}

// With sampling, the token is drawn for the position being decided.
BOOST_FIXTURE_TEST_CASE(sampled_tokens_use_the_decided_position, Fixture) {
  SamplingParams sampling;
  sampling.temperature = 1.0f;
  sampling.seed = 1234;
  EagerReference ref(*m);
  EarlyExitRunner runner(m, c.n_layers);
  ExitRule rule;
  rule.threshold = 0.0;  // always the first exit
  rule.sampling = sampling;
  int64_t token = 7;
  std::set<int64_t> seen;
  for (int64_t p = 0; p < 20; ++p) {
    const auto s = ref.feed(token);
    const auto got = runner.advance({static_cast<int32_t>(token)}, rule);
    const auto want = pick_token(s.exit_logits.at(1), sampling, static_cast<uint64_t>(p));
    BOOST_TEST(got.token == want, "position " << p);
    BOOST_TEST(got.exit_layer == 1);
    seen.insert(want);
    token = want;
  }
  BOOST_TEST(seen.size() > 3u);  // really sampled, not stuck on one token
}

BOOST_FIXTURE_TEST_CASE(run_only_fills_states_without_deciding, Fixture) {
  EarlyExitRunner runner(m, split);
  ExitRule rule;
  rule.evaluate_exits = false;
  const auto out = runner.advance({1, 2, 3, 4}, rule);
  BOOST_TEST(out.position == 3);
  BOOST_TEST(!out.resolved);
  BOOST_TEST(out.fallback_layer == -1);
  BOOST_TEST(runner.completed_positions() == 4);  // nothing pending: every row ran to layer_end
  const auto rows = runner.take_completed();
  BOOST_TEST(rows.first_position() == 0u);
  BOOST_TEST(rows.count() == 4u);
  EarlyExitRunner full(m, c.n_layers);
  BOOST_TEST(!full.advance({1, 2}, rule).resolved);  // no final-layer decision either
}

// Runners advanced together (an edge scheduler's step) decide and complete exactly what each
// decides alone: several thresholds (exits taken at different depths, so pending rows at
// different depths meet in one batch), prompts of different lengths, runners joining late and
// sitting out steps, the edge range and the full model.
BOOST_FIXTURE_TEST_CASE(batched_advances_equal_each_runner_alone, Fixture) {
  const double theta = mixing_threshold();
  const std::vector<double> thresholds = {theta, 0.0, theta, ExitRule::never_exit, 0.5, theta};
  for (int64_t layer_end : {split, c.n_layers}) {
    const size_t n = thresholds.size();
    std::vector<std::unique_ptr<EarlyExitRunner>> together, alone;
    std::vector<std::vector<int64_t>> tokens;
    std::vector<ExitRule> rules(n);
    for (size_t i = 0; i < n; ++i) {
      together.push_back(std::make_unique<EarlyExitRunner>(m, layer_end));
      alone.push_back(std::make_unique<EarlyExitRunner>(m, layer_end));
      tokens.push_back(some_tokens(steps + 8, c.vocab_size, 50 + i));
      rules[i].threshold = thresholds[i];
    }
    std::vector<size_t> fed(n, 0);
    std::vector<float> scratch;
    for (int step = 0; step < steps; ++step) {
      std::vector<EarlyExitRunner::Advance> batch;
      std::vector<size_t> who;
      for (size_t i = 0; i < n; ++i) {
        if (i == 4 && step < 5) continue;            // joins late
        if (i == 1 && step % 3 == 2) continue;       // sits out every third step
        const size_t count = fed[i] == 0 ? 1 + i % 4 : 1;  // first a prompt of 1..4 tokens
        std::vector<int32_t> t(tokens[i].begin() + static_cast<int64_t>(fed[i]),
                               tokens[i].begin() + static_cast<int64_t>(fed[i] + count));
        batch.push_back({together[i].get(), t, rules[i]});
        who.push_back(i);
        fed[i] += count;
      }
      const auto outs = EarlyExitRunner::advance(batch, scratch);
      BOOST_REQUIRE_EQUAL(outs.size(), batch.size());
      for (size_t j = 0; j < who.size(); ++j) {
        const auto i = who[j];
        const auto want = alone[i]->advance(batch[j].tokens, rules[i]);
        const auto& got = outs[j];
        BOOST_TEST_CONTEXT("layer_end " << layer_end << " step " << step << " runner " << i) {
          BOOST_TEST(got.position == want.position);
          BOOST_TEST(got.resolved == want.resolved);
          BOOST_TEST(got.token == want.token);
          BOOST_TEST(got.exit_layer == want.exit_layer);
          BOOST_TEST(std::abs(got.confidence - want.confidence) < 1e-4);
          BOOST_TEST(got.fallback_token == want.fallback_token);
          BOOST_TEST(got.fallback_layer == want.fallback_layer);
          BOOST_TEST(together[i]->completed_positions() == alone[i]->completed_positions());
        }
      }
    }
    for (size_t i = 0; i < n; ++i) {
      together[i]->flush();
      alone[i]->flush();
      std::vector<float> a, b;
      together[i]->take_completed(&a);
      alone[i]->take_completed(&b);
      BOOST_REQUIRE_EQUAL(a.size(), b.size());
      double worst = 0;
      for (size_t k = 0; k < a.size(); ++k) worst = std::max(worst, std::abs(double(a[k]) - b[k]));
      BOOST_TEST(worst < 1e-4, "layer_end " << layer_end << " runner " << i << " completed states differ by " << worst);
    }
  }
}

BOOST_FIXTURE_TEST_CASE(batched_advance_refuses_bad_items_before_any_runner_moves, Fixture) {
  EarlyExitRunner a(m, split), b(m, split), full(m, c.n_layers);
  std::vector<float> scratch;
  const ExitRule rule;
  const auto error = [&](std::vector<EarlyExitRunner::Advance> batch) {
    return model_error_text([&] { EarlyExitRunner::advance(batch, scratch); });
  };
  BOOST_TEST(contains(error({{&a, {3}, rule}, {&a, {4}, rule}}), "one runner twice"));
  BOOST_TEST(contains(error({{&a, {3}, rule}, {&full, {4}, rule}}), "mixes models or layer ranges"));
  BOOST_TEST(contains(error({{&a, {3}, rule}, {&b, {}, rule}}), "no tokens"));
  BOOST_TEST(contains(error({{&a, {3}, rule}, {nullptr, {4}, rule}}), "has no runner"));
  BOOST_TEST(contains(error({{&a, {3}, rule}, {&b, std::vector<int32_t>(static_cast<size_t>(c.max_seq) + 1, 3), rule}}),
                      "exceed max_seq"));
  BOOST_TEST(a.positions() == 0);
  BOOST_TEST(EarlyExitRunner::advance({}, scratch).empty());
}

// Speculation: a runner that feeds wrong guesses and rewinds must end in exactly the state of one
// that only ever saw the right tokens: same outcomes bit for bit, same split states bit for bit
// (the uploads after a rewind restart at completed_positions()). Wrong paths run deep enough to
// consume rows that waited at an exit, which the rewind must put back.
BOOST_FIXTURE_TEST_CASE(rewind_restores_the_state_of_a_runner_that_never_speculated, Fixture) {
  const double theta = mixing_threshold();
  ExitRule rule;
  rule.threshold = theta;
  const auto path = some_tokens(steps + 4, c.vocab_size, 7);
  for (int64_t layer_end : {split, c.n_layers}) {
    EarlyExitRunner straight(m, layer_end), spec(m, layer_end);
    std::vector<int32_t> prompt_ids(path.begin(), path.begin() + 3);
    std::vector<uint16_t> want_rows, got_rows;  // split states (fp16 bits), by position
    auto take = [](EarlyExitRunner& r, std::vector<uint16_t>& into) {
      auto rows = r.take_completed();
      const size_t row = rows.row_bytes() / 2;
      into.resize(static_cast<size_t>(rows.first_position()) * row);  // a rewind drops the tail
      into.insert(into.end(), rows.f16(), rows.f16() + static_cast<size_t>(rows.count()) * row);
    };
    auto same = [](const StepOutcome& a, const StepOutcome& b) {
      return a.position == b.position && a.resolved == b.resolved && a.token == b.token &&
             a.confidence == b.confidence && a.exit_layer == b.exit_layer && a.fallback_token == b.fallback_token &&
             a.fallback_confidence == b.fallback_confidence && a.fallback_layer == b.fallback_layer;
    };
    BOOST_TEST(same(straight.advance(prompt_ids, rule), spec.advance(prompt_ids, rule)));
    take(straight, want_rows);
    take(spec, got_rows);
    int rewinds = 0;
    for (size_t i = 3; i < path.size(); ++i) {
      const auto token = static_cast<int32_t>(path[i]);
      const auto want = straight.advance({token}, rule);
      take(straight, want_rows);
      if (i % 4 == 1) {
        // A wrong guess, then 1..3 tokens on that path (one more checkpoint inside it), rewound.
        const int64_t at = spec.positions();
        spec.checkpoint();
        spec.advance({static_cast<int32_t>((token + 1) % c.vocab_size)}, rule);
        take(spec, got_rows);
        for (size_t k = 0; k < 1 + i % 3; ++k) {
          spec.checkpoint();
          spec.advance({static_cast<int32_t>(path[(i + k * 5) % path.size()])}, rule);
          take(spec, got_rows);
        }
        spec.rewind(at);
        ++rewinds;
        BOOST_TEST(spec.positions() == at);
        BOOST_CHECK_THROW(spec.rewind(at + 1), ModelError);  // the later checkpoints went with it
      } else if (i % 4 == 2) {
        spec.checkpoint();  // a right guess: confirmed later
      }
      const auto got = spec.advance({token}, rule);
      take(spec, got_rows);
      BOOST_TEST_CONTEXT("layer_end " << layer_end << " position " << i) {
        BOOST_TEST(same(got, want));
        BOOST_TEST(spec.completed_positions() == straight.completed_positions());
      }
      spec.confirm(spec.positions() - 1);
    }
    BOOST_TEST(rewinds >= 4);
    straight.flush();
    spec.flush();
    take(straight, want_rows);
    take(spec, got_rows);
    BOOST_TEST(got_rows == want_rows, "layer_end " << layer_end << ": split states differ after rewinds");
    BOOST_CHECK_THROW(spec.rewind(3), ModelError);  // confirmed: no checkpoint left
  }
}

// Echo: score() decides each prompt position as the eager reference would (first confident exit,
// else the final layer; fallback the deepest exit) and reports the next prompt token's log-softmax
// under that head, with the most likely alternatives.
BOOST_FIXTURE_TEST_CASE(score_reports_each_prompt_token_under_its_deciding_head, Fixture) {
  const double theta = mixing_threshold();
  const std::vector<int32_t> tokens{1, 17, 42, 5, 9, 30, 2, 17, 17, 8, 40, 3};
  for (int64_t layer_end : {split, c.n_layers}) {
    ExitRule rule;
    rule.threshold = theta;
    rule.sampling.logprobs = 3;
    const auto got = EarlyExitRunner::score(m, layer_end, tokens, rule);
    BOOST_REQUIRE_EQUAL(got.size(), tokens.size() - 1);
    EagerReference ref(*m);
    std::set<int32_t> deciding_layers;
    for (size_t p = 0; p + 1 < tokens.size(); ++p) {
      const auto step = ref.feed(tokens[p]);
      // score() reads every exit of the range: the fallback is the deepest exit before layer_end.
      const auto want = decide(step, static_cast<int64_t>(p), theta, layer_end, c.n_layers);
      const auto& o = got[p];
      BOOST_TEST_CONTEXT("layer_end " << layer_end << " position " << p) {
        BOOST_TEST(o.position == static_cast<int32_t>(p));
        BOOST_TEST(o.resolved == want.resolved);
        BOOST_TEST(o.exit_layer == want.exit_layer);
        const int32_t next = tokens[p + 1];
        auto check_head = [&](const Logprobs& lp, const at::Tensor& logits) {
          const auto log_softmax = at::log_softmax(logits.to(at::kDouble), -1);
          BOOST_TEST(std::abs(lp.logprob - log_softmax[next].item<double>()) < 1e-4);
          BOOST_REQUIRE_EQUAL(lp.top.size(), 3u);
          BOOST_TEST(lp.top[0].token == log_softmax.argmax().item<int64_t>());
          BOOST_TEST(lp.top[0].logprob >= lp.top[1].logprob);
        };
        if (o.resolved) {
          BOOST_TEST(o.token == next);  // the scored token, not a choice
          deciding_layers.insert(o.exit_layer);
          check_head(o.logprobs, o.exit_layer == c.n_layers ? step.final_logits : step.exit_logits.at(o.exit_layer));
        }
        BOOST_REQUIRE(o.fallback_layer >= 1);
        check_head(o.fallback_logprobs, step.exit_logits.at(o.fallback_layer));
      }
    }
    if (layer_end == c.n_layers) BOOST_TEST(deciding_layers.size() >= 2u);  // exits and the final layer both scored
  }
  BOOST_TEST(EarlyExitRunner::score(m, split, {5}, ExitRule{}).empty());  // one token: nothing to score
}

// Penalties read the runner's own sequence: the first feed is the prompt, later feeds the output,
// and a rewind forgets the fed tokens it drops.
BOOST_FIXTURE_TEST_CASE(penalties_read_the_fed_sequence, Fixture) {
  ExitRule rule;
  rule.threshold = 0.0;  // always the first exit
  rule.sampling.presence_penalty = 1.5f;
  rule.sampling.repetition_penalty = 1.3f;
  EagerReference ref(*m);
  EarlyExitRunner runner(m, split);
  const std::vector<int32_t> prompt{1, 17, 42};
  std::vector<int32_t> fed(prompt);
  for (size_t i = 0; i + 1 < prompt.size(); ++i) ref.feed(prompt[i]);
  auto step = ref.feed(prompt.back());
  auto got = runner.advance(prompt, rule);
  std::set<int32_t> distinct;
  for (int p = 0; p < 16; ++p) {
    const auto history = TokenHistory::of(fed.data(), fed.size(), prompt.size());
    const auto want = choose_token(step.exit_logits.at(1), rule.sampling, ChoiceInput{fed.size() - 1, history, -1});
    BOOST_TEST(got.token == want.token, "position " << fed.size() - 1);
    distinct.insert(got.token);
    if (p == 8) {  // a wrong guess fed and rolled back: its token must leave the history
      runner.checkpoint();
      runner.advance({(got.token + 1) % static_cast<int32_t>(c.vocab_size)}, rule);
      runner.rewind(static_cast<int64_t>(fed.size()));
    }
    fed.push_back(got.token);
    step = ref.feed(got.token);
    got = runner.advance({got.token}, rule);
  }
  BOOST_TEST(distinct.size() > 4u);  // the presence penalty moves the choice on
}

BOOST_FIXTURE_TEST_CASE(misuse_throws, Fixture) {
  BOOST_CHECK_THROW(EarlyExitRunner(m, 0), ModelError);
  BOOST_CHECK_THROW(EarlyExitRunner(m, c.n_layers + 1), ModelError);
  EarlyExitRunner runner(m, split);
  ExitRule rule;
  BOOST_CHECK_THROW(runner.advance({}, rule), ModelError);
  BOOST_CHECK_THROW(runner.advance({static_cast<int32_t>(c.vocab_size)}, rule), ModelError);
  std::vector<int32_t> long_prompt(static_cast<size_t>(c.max_seq), 5);
  BOOST_CHECK_THROW(runner.advance(std::vector<int32_t>(static_cast<size_t>(c.max_seq) + 1, 5), rule), ModelError);
  BOOST_TEST(runner.positions() == 0);
  runner.advance(long_prompt, rule);  // exactly max_seq positions: fine
  BOOST_CHECK_THROW(runner.advance({5}, rule), ModelError);
  BOOST_TEST(runner.positions() == c.max_seq);
}

BOOST_AUTO_TEST_SUITE_END()
