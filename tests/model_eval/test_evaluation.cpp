// Tests of model/evaluation: per-head cross-entropy against a direct computation (no KV cache,
// log-softmax in double), the θ rules against an independent implementation, and pick_threshold
// on hand-made reports.

#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "model/decoder.hpp"
#include "model/evaluation.hpp"
#include "model/weights.hpp"

namespace {

ce::ModelConfig tiny_config() {
  ce::ModelConfig c;
  c.name = "tiny-eval";
  c.dim = 32;
  c.n_layers = 4;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_dim = 64;
  c.vocab_size = 64;
  c.max_seq = 64;
  c.exit_layers = {1, 2};
  c.default_split = 2;
  c.default_threshold = 0.75;
  c.validate();
  return c;
}

// Random weights with the heads scaled up, so that confidences spread over (0, 1) instead of all
// sitting near 1/vocab.
std::shared_ptr<const ce::Model> tiny_model(double head_scale = 30.0, uint64_t seed = 7) {
  auto w = ce::random_weights(tiny_config(), seed);
  w->lm_head.mul_(head_scale);
  for (auto& [layer, e] : w->exits) e.head.mul_(head_scale);
  return ce::Model::from_weights(w);
}

std::vector<int32_t> random_tokens(size_t n, uint32_t seed, int32_t vocab = 64) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, vocab - 1);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = pick(rng);
  return t;
}

// Direct per-position scores of one head over windowed inputs, computed without the KV cache
// and with a double-precision log-softmax.
struct Direct {
  std::vector<double> nats;
  std::vector<int32_t> greedy;
  std::vector<double> confidence;
  std::vector<double> top2_gap;  // probability gap between the best and second-best token
};

Direct direct_scores(const ce::Model& model, const std::vector<int32_t>& tokens, int64_t window, int64_t head_layer) {
  torch::InferenceMode guard;
  const auto& c = model.config();
  const auto& dec = model.decoder();
  const bool final = head_layer == c.n_layers;
  Direct d;
  const int64_t predicted = static_cast<int64_t>(tokens.size()) - 1;
  for (int64_t start = 0; start < predicted; start += window) {
    const int64_t len = std::min(window, predicted - start);
    std::vector<int64_t> ids(tokens.begin() + start, tokens.begin() + start + len);
    auto h = dec.embed(torch::tensor(ids, torch::kLong)).unsqueeze(0);  // (1, len, dim)
    h = dec.forward_no_cache(h, 0, head_layer).squeeze(0);
    auto logits = (final ? dec.final_logits(h) : dec.exit_logits(head_layer, h)).to(torch::kDouble).contiguous();
    auto acc = logits.accessor<double, 2>();
    for (int64_t i = 0; i < len; ++i) {
      double mx = -1e300;
      int32_t arg = 0;
      for (int64_t v = 0; v < c.vocab_size; ++v)
        if (acc[i][v] > mx) {
          mx = acc[i][v];
          arg = static_cast<int32_t>(v);
        }
      double z = 0, second = -1e300;
      for (int64_t v = 0; v < c.vocab_size; ++v) {
        z += std::exp(acc[i][v] - mx);
        if (v != arg) second = std::max(second, acc[i][v]);
      }
      const int32_t target = tokens[static_cast<size_t>(start + i + 1)];
      d.nats.push_back(-(acc[i][target] - mx - std::log(z)));
      d.greedy.push_back(arg);
      d.confidence.push_back(1.0 / z);
      d.top2_gap.push_back((1.0 - std::exp(second - mx)) / z);
    }
  }
  return d;
}

// The three rules written out again, independently of sweep_row.
struct Expected {
  std::vector<int64_t> at_exit;
  int64_t cloud = 0, edge_agree = 0, standalone_ok = 0, collab_ok = 0, full_ok = 0;
};

Expected expected_row(const ce::TokenRecords& r, size_t edge_heads, double threshold) {
  Expected e;
  e.at_exit.assign(edge_heads, 0);
  const size_t fin = r.greedy.size() - 1;
  for (size_t t = 0; t < r.targets.size(); ++t) {
    int64_t exit = -1;
    for (size_t h = 0; h < edge_heads && exit < 0; ++h)
      if (static_cast<double>(r.confidence[h][t]) >= threshold) exit = static_cast<int64_t>(h);
    const int32_t full = r.greedy[fin][t];
    const int32_t collab = exit >= 0 ? r.greedy[static_cast<size_t>(exit)][t] : full;
    const int32_t standalone = exit >= 0 ? r.greedy[static_cast<size_t>(exit)][t] : r.greedy[edge_heads - 1][t];
    if (exit >= 0) {
      ++e.at_exit[static_cast<size_t>(exit)];
      e.edge_agree += collab == full;
    } else {
      ++e.cloud;
    }
    e.standalone_ok += standalone == r.targets[t];
    e.collab_ok += collab == r.targets[t];
    e.full_ok += full == r.targets[t];
  }
  return e;
}

void check_row_against_expected(const ce::SweepRow& row, const ce::TokenRecords& r, size_t edge_heads) {
  const auto e = expected_row(r, edge_heads, row.threshold);
  const double n = static_cast<double>(r.targets.size());
  BOOST_REQUIRE_EQUAL(row.exit_share.size(), edge_heads);
  int64_t edge = 0;
  for (size_t h = 0; h < edge_heads; ++h) {
    BOOST_CHECK_CLOSE(row.exit_share[h] + 1, e.at_exit[h] / n + 1, 1e-9);
    edge += e.at_exit[h];
  }
  BOOST_CHECK_EQUAL(row.edge_tokens, edge);
  BOOST_CHECK_CLOSE(row.cloud_share + 1, e.cloud / n + 1, 1e-9);
  BOOST_CHECK_CLOSE(row.edge_agreement, edge ? static_cast<double>(e.edge_agree) / edge : 1.0, 1e-9);
  BOOST_CHECK_CLOSE(row.overall_agreement, (e.edge_agree + e.cloud) / n, 1e-9);
  BOOST_CHECK_CLOSE(row.accuracy_standalone + 1, e.standalone_ok / n + 1, 1e-9);
  BOOST_CHECK_CLOSE(row.accuracy_collaborative + 1, e.collab_ok / n + 1, 1e-9);
  BOOST_CHECK_CLOSE(row.accuracy_full + 1, e.full_ok / n + 1, 1e-9);
}

double head_accuracy(const ce::TokenRecords& r, size_t head) {
  int64_t ok = 0;
  for (size_t t = 0; t < r.targets.size(); ++t) ok += r.greedy[head][t] == r.targets[t];
  return static_cast<double>(ok) / static_cast<double>(r.targets.size());
}

ce::SweepRow make_row(double theta, double edge, double agreement, double collab, double full) {
  ce::SweepRow r;
  r.threshold = theta;
  r.exit_share = {edge};
  r.edge_share = edge;
  r.cloud_share = 1 - edge;
  r.edge_tokens = static_cast<int64_t>(edge * 1e8);  // so many that the agreement's bound is its ratio
  r.edge_agreement = agreement;
  r.accuracy_collaborative = collab;
  r.accuracy_full = full;
  return r;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(model_evaluation)

BOOST_AUTO_TEST_CASE(cross_entropy_matches_direct_computation) {
  auto model = tiny_model();
  const auto tokens = random_tokens(50, 1);
  ce::EvalOptions o;
  o.window = 16;  // 49 predicted positions: windows of 16, 16, 16, 1
  o.characters = 123;
  const auto rep = ce::evaluate(*model, tokens, o);
  BOOST_CHECK_EQUAL(rep.tokens, 50);
  BOOST_CHECK_EQUAL(rep.predicted, 49);
  BOOST_CHECK_EQUAL(rep.windows, 4);
  BOOST_REQUIRE_EQUAL(rep.heads.size(), 3u);
  BOOST_CHECK(rep.heads.back().final);
  BOOST_CHECK_EQUAL(rep.heads.back().layer, 4);
  BOOST_CHECK_EQUAL(rep.records.targets.size(), 49u);

  const std::vector<int64_t> layers{1, 2, 4};
  for (size_t h = 0; h < layers.size(); ++h) {
    const auto d = direct_scores(*model, tokens, 16, layers[h]);
    double total = 0;
    int64_t correct = 0;
    for (size_t t = 0; t < d.nats.size(); ++t) {
      total += d.nats[t];
      correct += d.greedy[t] == tokens[t + 1];
      BOOST_CHECK_SMALL(rep.records.nats[h][t] - d.nats[t], 1e-4);
      BOOST_CHECK_SMALL(rep.records.confidence[h][t] - d.confidence[t], 1e-5);
      if (d.top2_gap[t] > 1e-4) BOOST_CHECK_EQUAL(rep.records.greedy[h][t], d.greedy[t]);
      BOOST_CHECK_SMALL(rep.records.confidence[h][t] - rep.records.runner_up[h][t] - d.top2_gap[t], 1e-5);
    }
    const auto& hr = rep.heads[h];
    BOOST_TEST_CONTEXT("head at layer " << layers[h]) {
      BOOST_CHECK_EQUAL(hr.layer, layers[h]);
      BOOST_CHECK_CLOSE(hr.total_nats, total, 1e-4);
      BOOST_CHECK_CLOSE(hr.nats_per_token, total / 49, 1e-4);
      BOOST_CHECK_CLOSE(hr.perplexity, std::exp(total / 49), 1e-4);
      BOOST_CHECK_CLOSE(hr.bits_per_char, total / std::log(2.0) / 123, 1e-4);
      BOOST_CHECK_CLOSE(hr.accuracy + 1, static_cast<double>(correct) / 49 + 1, 1e-9);
    }
  }
  // The heads are sharp enough that the sweep is not trivial.
  BOOST_CHECK_LT(rep.heads.back().nats_per_token, 20.0);
}

BOOST_AUTO_TEST_CASE(every_window_starts_with_a_fresh_cache) {
  auto model = tiny_model();
  const auto tokens = random_tokens(50, 2);
  ce::EvalOptions o;
  o.window = 16;
  const auto whole = ce::evaluate(*model, tokens, o);
  // The second window on its own: inputs [16, 32), targets [17, 33).
  const std::vector<int32_t> second(tokens.begin() + 16, tokens.begin() + 33);
  const auto alone = ce::evaluate(*model, second, o);
  BOOST_REQUIRE_EQUAL(alone.predicted, 16);
  for (size_t h = 0; h < 3; ++h)
    for (size_t t = 0; t < 16; ++t) {
      BOOST_CHECK_SMALL(alone.records.nats[h][t] - whole.records.nats[h][16 + t], 1e-5f);
      BOOST_CHECK_EQUAL(alone.records.greedy[h][t], whole.records.greedy[h][16 + t]);
    }
  // One window over everything sees more context and so scores differently.
  o.window = 64;
  const auto single = ce::evaluate(*model, tokens, o);
  BOOST_CHECK_EQUAL(single.windows, 1);
  BOOST_CHECK_NE(single.heads.back().total_nats, whole.heads.back().total_nats);
}

BOOST_AUTO_TEST_CASE(theta_zero_resolves_everything_at_the_first_exit) {
  auto model = tiny_model();
  const auto tokens = random_tokens(60, 3);
  ce::EvalOptions o;
  o.window = 32;
  o.thresholds = {0.0};
  const auto rep = ce::evaluate(*model, tokens, o);
  BOOST_REQUIRE_EQUAL(rep.sweep.size(), 1u);
  const auto& r = rep.sweep[0];
  BOOST_REQUIRE_EQUAL(r.exit_share.size(), 2u);
  BOOST_CHECK_EQUAL(r.exit_share[0], 1.0);
  BOOST_CHECK_EQUAL(r.exit_share[1], 0.0);
  BOOST_CHECK_EQUAL(r.edge_share, 1.0);
  BOOST_CHECK_EQUAL(r.cloud_share, 0.0);
  BOOST_CHECK_EQUAL(r.edge_tokens, rep.predicted);
  const double first_exit = head_accuracy(rep.records, 0);
  BOOST_CHECK_CLOSE(r.accuracy_collaborative + 1, first_exit + 1, 1e-9);
  BOOST_CHECK_CLOSE(r.accuracy_standalone + 1, first_exit + 1, 1e-9);
  BOOST_CHECK_CLOSE(r.accuracy_full + 1, head_accuracy(rep.records, 2) + 1, 1e-9);
  check_row_against_expected(r, rep.records, 2);
}

BOOST_AUTO_TEST_CASE(theta_above_one_resolves_everything_at_the_final_layer) {
  auto model = tiny_model();
  const auto tokens = random_tokens(60, 4);
  ce::EvalOptions o;
  o.window = 32;
  o.thresholds = {1.5};
  const auto rep = ce::evaluate(*model, tokens, o);
  const auto& r = rep.sweep.at(0);
  BOOST_CHECK_EQUAL(r.cloud_share, 1.0);
  BOOST_CHECK_EQUAL(r.edge_share, 0.0);
  BOOST_CHECK_EQUAL(r.edge_tokens, 0);
  BOOST_CHECK_EQUAL(r.overall_agreement, 1.0);
  BOOST_CHECK_EQUAL(r.accuracy_collaborative, r.accuracy_full);
  BOOST_CHECK_CLOSE(r.accuracy_full + 1, rep.heads.back().accuracy + 1, 1e-9);
  // Standalone falls back to the last edge exit (layer 2), never to the final layer.
  BOOST_CHECK_CLOSE(r.accuracy_standalone + 1, head_accuracy(rep.records, 1) + 1, 1e-9);
}

BOOST_AUTO_TEST_CASE(shares_sum_to_one_and_rows_follow_the_rule) {
  auto model = tiny_model();
  const auto tokens = random_tokens(120, 5);
  ce::EvalOptions o;
  o.window = 40;
  const auto rep = ce::evaluate(*model, tokens, o);

  // Default sweep: 0.1 ... 0.7, 0.75, steps of 0.01 from 0.8 to 0.9, 0.925, 0.95, 0.975, 0.99; the
  // model's own θ (0.75) only once.
  const std::vector<double> want{0.1,  0.2,  0.3,  0.4,  0.5,  0.6,   0.7,  0.75,  0.8,  0.81, 0.82, 0.83,
                                 0.84, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.925, 0.95, 0.975, 0.99};
  BOOST_REQUIRE_EQUAL(rep.sweep.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) BOOST_CHECK_CLOSE(rep.sweep[i].threshold, want[i], 1e-9);

  // Thresholds at the confidences actually seen, so rows split tokens between exits and cloud.
  std::vector<double> thetas;
  for (size_t t = 0; t < rep.records.targets.size(); t += 7) {
    thetas.push_back(rep.records.confidence[0][t]);
    thetas.push_back(rep.records.confidence[1][t]);
  }
  bool mixed = false;
  std::vector<ce::SweepRow> rows = rep.sweep;
  for (double th : thetas) rows.push_back(ce::sweep_row(rep.records, 2, th));
  for (const auto& r : rows) {
    BOOST_TEST_CONTEXT("theta " << r.threshold) {
      double sum = r.cloud_share;
      for (double s : r.exit_share) sum += s;
      BOOST_CHECK_CLOSE(sum, 1.0, 1e-9);
      BOOST_CHECK_CLOSE(r.edge_share + 1, r.exit_share[0] + r.exit_share[1] + 1, 1e-9);
      check_row_against_expected(r, rep.records, 2);
      mixed = mixed || (r.exit_share[0] > 0 && r.exit_share[1] > 0 && r.cloud_share > 0);
    }
  }
  BOOST_CHECK(mixed);
  // Edge share never grows with θ.
  for (size_t i = 1; i < rep.sweep.size(); ++i) BOOST_CHECK_LE(rep.sweep[i].edge_share, rep.sweep[i - 1].edge_share);
}

BOOST_AUTO_TEST_CASE(standalone_never_uses_the_final_layer) {
  // Hand-made records: the exits are always wrong, the final layer always right.
  ce::TokenRecords r;
  r.targets = {5, 6, 7, 8};
  r.greedy = {{1, 1, 1, 1}, {2, 2, 2, 2}, {5, 6, 7, 8}};
  r.confidence = {{0.2f, 0.9f, 0.4f, 0.1f}, {0.3f, 0.3f, 0.95f, 0.2f}, {0.5f, 0.5f, 0.5f, 0.5f}};
  r.nats.assign(3, std::vector<float>(4, 1.0f));
  for (double th : {0.0, 0.25, 0.5, 0.92, 0.99, 1.5}) {
    const auto row = ce::sweep_row(r, 2, th);
    BOOST_TEST_CONTEXT("theta " << th) {
      BOOST_CHECK_EQUAL(row.accuracy_standalone, 0.0);
      BOOST_CHECK_EQUAL(row.accuracy_full, 1.0);
      BOOST_CHECK_CLOSE(row.accuracy_collaborative + 1, row.cloud_share + 1, 1e-9);
      check_row_against_expected(row, r, 2);
    }
  }
  const auto row = ce::sweep_row(r, 2, 0.5);  // token 1 at exit 0, token 2 at exit 1, the rest to the cloud
  BOOST_CHECK_EQUAL(row.exit_share[0], 0.25);
  BOOST_CHECK_EQUAL(row.exit_share[1], 0.25);
  BOOST_CHECK_EQUAL(row.cloud_share, 0.5);
  BOOST_CHECK_EQUAL(row.edge_agreement, 0.0);
  BOOST_CHECK_EQUAL(row.overall_agreement, 0.5);

  // On a model: with split 1 only the exit after layer 1 is an edge exit; the exit after layer 2
  // sits on the cloud side and is never read by either rule.
  auto model = tiny_model();
  const auto tokens = random_tokens(60, 6);
  ce::EvalOptions o;
  o.window = 30;
  o.split = 1;
  o.thresholds = {0.0, 0.5, 1.5};
  const auto rep = ce::evaluate(*model, tokens, o);
  BOOST_CHECK_EQUAL(rep.split, 1);
  BOOST_REQUIRE_EQUAL(rep.edge_exits.size(), 1u);
  BOOST_CHECK(rep.heads[0].edge);
  BOOST_CHECK(!rep.heads[1].edge);
  for (const auto& s : rep.sweep) {
    BOOST_CHECK_EQUAL(s.exit_share.size(), 1u);
    check_row_against_expected(s, rep.records, 1);
  }
  BOOST_CHECK_CLOSE(rep.sweep.back().accuracy_standalone + 1, head_accuracy(rep.records, 0) + 1, 1e-9);
}

BOOST_AUTO_TEST_CASE(pick_threshold_follows_its_rule) {
  ce::EvalReport rep;
  //                        θ    edge  agree  collab full
  rep.sweep = {make_row(0.1, 0.9, 0.90, 0.300, 0.40),   // drop 0.10, agreement too low
               make_row(0.3, 0.7, 0.98, 0.370, 0.40),   // drop 0.03
               make_row(0.5, 0.5, 0.96, 0.395, 0.40),   // agreement too low
               make_row(0.7, 0.4, 0.975, 0.392, 0.40),  // eligible: drop 0.008
               make_row(0.8, 0.3, 0.99, 0.400, 0.40),   // eligible
               make_row(0.9, 0.3, 1.00, 0.400, 0.40)};  // eligible, same edge share as 0.8
  auto pick = ce::pick_threshold_detail(rep);
  BOOST_CHECK(pick.satisfied);
  BOOST_CHECK_EQUAL(pick.row, 3);
  BOOST_CHECK_EQUAL(ce::pick_threshold(rep), 0.7);
  // A tighter accuracy bound: 0.8 and 0.9 tie on edge share, the smaller θ wins.
  BOOST_CHECK_EQUAL(ce::pick_threshold(rep, 0.001), 0.8);
  // A tighter agreement bound leaves only 0.9.
  BOOST_CHECK_EQUAL(ce::pick_threshold(rep, 0.01, 0.999), 0.9);
  // A drop exactly at the bound is allowed.
  BOOST_CHECK_EQUAL(ce::pick_threshold(rep, 0.03, 0.97), 0.3);
  // The order of the rows does not matter.
  std::reverse(rep.sweep.begin(), rep.sweep.end());
  BOOST_CHECK_EQUAL(ce::pick_threshold(rep), 0.7);
  BOOST_CHECK_EQUAL(ce::pick_threshold(rep, 0.001), 0.8);
  // Nothing eligible: θ = 1, reported as not satisfied.
  pick = ce::pick_threshold_detail(rep, 0.001, 1.01);
  BOOST_CHECK(!pick.satisfied);
  BOOST_CHECK_EQUAL(pick.row, -1);
  BOOST_CHECK_EQUAL(pick.threshold, 1.0);
  // Collaborative above the full model counts as no drop.
  ce::EvalReport better;
  better.sweep = {make_row(0.2, 0.6, 0.98, 0.45, 0.40), make_row(0.6, 0.2, 0.99, 0.40, 0.40)};
  BOOST_CHECK_EQUAL(ce::pick_threshold(better), 0.2);
}

BOOST_AUTO_TEST_CASE(pick_threshold_wants_the_agreement_with_confidence) {
  // Wilson's one-sided bound, checked against values computed independently (z = 1.6449).
  auto row = make_row(0.8, 0.4, 0.97, 0.40, 0.40);
  row.edge_tokens = 40000;
  BOOST_CHECK_CLOSE(ce::edge_agreement_lower_bound(row, 0.95), 0.968565, 1e-3);
  BOOST_CHECK_EQUAL(ce::edge_agreement_lower_bound(row, 0.0), 0.97);
  row.edge_tokens = 0;
  BOOST_CHECK_EQUAL(ce::edge_agreement_lower_bound(row, 0.95), 1.0);  // nothing left at the edge
  BOOST_CHECK_THROW(ce::edge_agreement_lower_bound(row, 1.0), std::invalid_argument);
  BOOST_CHECK_THROW(ce::edge_agreement_lower_bound(row, -0.1), std::invalid_argument);

  // 97.2% measured on 1,000 edge tokens: bound 96.2%, not enough at 95% confidence; the same ratio
  // on 1,000,000 tokens is.
  ce::EvalReport rep;
  rep.sweep = {make_row(0.8, 0.45, 0.972, 0.40, 0.40), make_row(0.9, 0.30, 0.995, 0.40, 0.40)};
  rep.sweep[0].edge_tokens = 1000;
  rep.sweep[1].edge_tokens = 1000;
  BOOST_CHECK_CLOSE(ce::edge_agreement_lower_bound(rep.sweep[0], 0.95), 0.962063, 1e-3);
  BOOST_CHECK_EQUAL(ce::pick_threshold(rep), 0.9);
  BOOST_CHECK_EQUAL(ce::pick_threshold(rep, 0.01, 0.97, 0.0), 0.8);
  rep.sweep[0].edge_tokens = 1000000;
  BOOST_CHECK_EQUAL(ce::pick_threshold(rep), 0.8);
}

BOOST_AUTO_TEST_CASE(bad_input_is_rejected) {
  auto model = tiny_model();
  const auto tokens = random_tokens(20, 7);
  ce::EvalOptions o;
  o.window = 0;
  BOOST_CHECK_THROW(ce::evaluate(*model, tokens, o), ce::ModelError);
  o.window = 65;  // > max_seq
  BOOST_CHECK_THROW(ce::evaluate(*model, tokens, o), ce::ModelError);
  o.window = 8;
  o.split = 4;  // not inside [1, n_layers - 1]
  BOOST_CHECK_THROW(ce::evaluate(*model, tokens, o), ce::ModelError);
  o.split = 0;
  BOOST_CHECK_THROW(ce::evaluate(*model, std::vector<int32_t>{3}, o), ce::ModelError);
  auto bad = tokens;
  bad[5] = 64;
  BOOST_CHECK_THROW(ce::evaluate(*model, bad, o), ce::ModelError);
  bad[5] = -1;
  BOOST_CHECK_THROW(ce::evaluate(*model, bad, o), ce::ModelError);
  BOOST_CHECK_NO_THROW(ce::evaluate(*model, tokens, o));
}

BOOST_AUTO_TEST_CASE(markdown_and_csv_list_every_threshold) {
  auto model = tiny_model();
  const auto tokens = random_tokens(40, 8);
  ce::EvalOptions o;
  o.window = 16;
  o.characters = 100;
  o.thresholds = {0.9, 0.3, 0.75, 0.3};  // sorted, duplicates dropped
  const auto rep = ce::evaluate(*model, tokens, o);
  BOOST_REQUIRE_EQUAL(rep.sweep.size(), 3u);
  BOOST_CHECK_EQUAL(rep.sweep[0].threshold, 0.3);
  const auto csv = ce::sweep_csv(rep);
  BOOST_CHECK_EQUAL(std::count(csv.begin(), csv.end(), '\n'), 4);
  BOOST_CHECK_EQUAL(csv.rfind("threshold,share_exit_1,share_exit_2,edge_share,cloud_share,edge_tokens,", 0), 0u);
  BOOST_CHECK_NE(csv.find("\n0.75,"), std::string::npos);
  const auto md = ce::report_markdown(rep);
  BOOST_CHECK_NE(md.find("| final | 4 |"), std::string::npos);
  BOOST_CHECK_NE(md.find("| 0.75 (default) |"), std::string::npos);
  BOOST_CHECK_NE(md.find("| exit 1 | exit 2 |"), std::string::npos);
}

// Two runs of one text: disagreements counted per head, and those where the reference's top two
// were within HeadAgreement::kNearTie counted as near-ties; the widest gap among them reported.
BOOST_AUTO_TEST_CASE(compare_runs_counts_disagreements_and_near_ties) {
  auto model = tiny_model();
  const auto tokens = random_tokens(40, 9);
  ce::EvalOptions o;
  o.window = 16;
  o.characters = 100;
  auto reference = ce::evaluate(*model, tokens, o);
  auto run = reference;
  const auto same = ce::compare_runs(run, reference);
  BOOST_REQUIRE_EQUAL(same.size(), 3u);
  BOOST_CHECK_EQUAL(same.back().head, "final");
  BOOST_CHECK_EQUAL(same.back().disagreements, 0);
  BOOST_CHECK_EQUAL(same.back().agreement, 1.0);
  // Flip the final head's choice at two positions: one made a near-tie, one a clear choice.
  auto& ref_final = reference;
  ref_final.records.confidence.back()[3] = 0.40f;
  ref_final.records.runner_up.back()[3] = 0.38f;
  ref_final.records.confidence.back()[7] = 0.90f;
  ref_final.records.runner_up.back()[7] = 0.05f;
  run.records.greedy.back()[3] += 1;
  run.records.greedy.back()[7] += 1;
  const auto rows = ce::compare_runs(run, ref_final);
  BOOST_CHECK_EQUAL(rows.back().disagreements, 2);
  BOOST_CHECK_EQUAL(rows.back().near_ties, 1);
  BOOST_CHECK_CLOSE(rows.back().widest_margin, 0.85, 1e-3);
  BOOST_CHECK_CLOSE(rows.back().agreement, 1.0 - 2.0 / 39, 1e-9);
  BOOST_CHECK_EQUAL(rows.front().disagreements, 0);
  const auto md = ce::comparison_markdown("int8", "fp32", rows);
  BOOST_CHECK_NE(md.find("| final | 94.87% | 2 | 1 | 0.850 |"), std::string::npos);
  run.records.greedy.back().pop_back();
  BOOST_CHECK_THROW(ce::compare_runs(run, ref_final), ce::ModelError);
}

BOOST_AUTO_TEST_CASE(count_characters_counts_code_points) {
  BOOST_CHECK_EQUAL(ce::count_characters(""), 0);
  BOOST_CHECK_EQUAL(ce::count_characters("abc\n"), 4);
  BOOST_CHECK_EQUAL(ce::count_characters("a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80"), 4);  // a é € 😀
}

BOOST_AUTO_TEST_SUITE_END()
