#pragma once
// Shared by the actor and integration tests: a tiny trained-looking model written to disk, node
// configs for it, and the oracle: a one-process run that computes every layer for every position
// (split-layer state rounded to fp16 before the cloud layers) and picks each token by the rule
// "first edge exit with confidence >= θ, else the final layer".
#include <torch/torch.h>

#include <filesystem>

#include "config/node_config.hpp"
#include "model/decoder.hpp"
#include "model/sampler.hpp"
#include "model/runtime.hpp"
#include "model/split_plan.hpp"
#include "tests/model/tiny_model.hpp"

namespace ce::test {

// Exits after layers 1, 2 (edge) and 3 (cloud side, unused by the edge); split 2 of 4 layers.
inline ModelConfig collab_config(int64_t vocab = 96) {
  auto c = tiny_config();
  c.vocab_size = vocab;
  c.max_seq = 128;
  return c;
}

inline std::string write_model(const TempDir& dir, const ModelConfig& c, uint64_t seed,
                               const std::string& tokenizer = "") {
  const std::string path = dir.file("model");
  save_weights(*scaled_weights(c, seed, 0.1, true, 1.0), path);
  if (!tokenizer.empty())
    std::filesystem::copy_file(tokenizer, path + "/tokenizer.model", std::filesystem::copy_options::overwrite_existing);
  return path;
}

inline NodeConfig node_config(Role role, const std::string& model_path) {
  NodeConfig c;
  c.role = role;
  c.model_path = model_path;
  c.listen_port = 0;
  c.compute_threads = 1;
  c.actor_threads = 2;
  c.request_deadline = std::chrono::seconds(5);
  c.log_level = LogLevel::warning;
  // The oracles read the nodes' own models over every layer; the role's parts alone are tested
  // by collaboration/nodes_holding_only_their_parts_equal_the_full_model.
  c.model_parts = "all";
  return c;
}

struct OracleToken {
  int32_t token;
  int32_t layer;        // exit layer, or L for the final layer
  float confidence;
  float top2_margin;    // logit margin between the best two candidates of the deciding head
};

inline float top2_margin(const at::Tensor& logits) {
  auto top = logits.topk(2);
  auto v = std::get<0>(top);
  return (v[0] - v[1]).item<float>();
}

// standalone: a token no edge exit is confident of comes from the last edge exit, not the cloud.
// `sampling` (default greedy) chooses each token as the runtime does (model/sampler.hpp), from the
// deciding head's logits and the sequence so far; the confidence stays the head's greedy one.
inline std::vector<OracleToken> oracle(const Model& model, std::vector<int32_t> prompt, double theta, int n_tokens,
                                       int64_t split = 0, bool standalone = false, const SamplingParams& sampling = {}) {
  torch::InferenceMode guard;
  const auto& c = model.config();
  const auto plan = SplitPlan::from_config(c, split);
  const auto& d = model.decoder();
  KvCache edge(c, 0, plan.split), cloud(c, plan.split, c.n_layers);
  std::vector<OracleToken> out;
  std::vector<int32_t> feed = prompt, sequence = prompt;
  int64_t pos = 0;
  // The runtime's choice after the sequence so far, with the greedy confidence and margin.
  auto choose = [&](const at::Tensor& logits, int32_t layer) {
    const auto history = TokenHistory::of(sequence.data(), sequence.size(), prompt.size());
    const auto choice = choose_token(logits, sampling, ChoiceInput{sequence.size() - 1, history, -1});
    return OracleToken{choice.token, layer, choice.confidence, top2_margin(logits)};
  };
  for (int i = 0; i < n_tokens; ++i) {
    std::vector<int64_t> ids(feed.begin(), feed.end());
    auto h = d.embed(torch::tensor(ids, torch::kLong));
    int64_t depth = 0;
    bool decided = false;
    OracleToken t{}, last_exit{};
    for (auto e : plan.edge_exits) {
      h = d.forward(h, pos, depth, e, edge);
      depth = e;
      last_exit = choose(d.exit_logits(e, h[-1]), static_cast<int32_t>(e));
      if (!decided && last_exit.confidence >= theta) {
        t = last_exit;
        decided = true;
      }
    }
    if (!decided && standalone) {
      t = last_exit;
      decided = true;
    }
    if (depth < plan.split) h = d.forward(h, pos, depth, plan.split, edge);
    auto top = d.forward(h.to(torch::kHalf).to(torch::kFloat), pos, plan.split, c.n_layers, cloud);
    if (!decided) {
      t = choose(d.final_logits(top[-1]), static_cast<int32_t>(c.n_layers));
    }
    out.push_back(t);
    pos += static_cast<int64_t>(feed.size());
    feed = {t.token};
    sequence.push_back(t.token);
  }
  return out;
}

// Compares a distributed run with the oracle: equal up to the end, or up to a first difference
// that sits at a near-tie (top-2 logit margin < 1e-3 or confidence within 1e-4 of θ), which is
// reported. A near-tie may excuse a difference only after `min_compared` equal tokens (default:
// half of them), so a run that goes wrong early cannot pass as a tie. Returns the number of
// positions compared.
inline size_t expect_matches_oracle(const std::vector<int32_t>& got, const std::vector<OracleToken>& want,
                                    double theta, size_t min_compared = SIZE_MAX) {
  const size_t n = std::min(got.size(), want.size());
  if (min_compared == SIZE_MAX) min_compared = want.size() / 2;
  for (size_t i = 0; i < n; ++i) {
    if (got[i] == want[i].token) continue;
    const bool near_tie = want[i].top2_margin < 1e-3f || std::abs(want[i].confidence - theta) < 1e-4;
    BOOST_TEST_MESSAGE("first difference at generated token " << i << ": got " << got[i] << ", oracle "
                                                              << want[i].token << " (margin " << want[i].top2_margin
                                                              << ", confidence " << want[i].confidence << ")");
    BOOST_TEST(near_tie);
    BOOST_TEST(i >= min_compared, "only " << i << " tokens equal the oracle before a tie; want " << min_compared);
    return i;
  }
  BOOST_TEST(got.size() == want.size());
  return n;
}

// The smallest θ on a grid at which the oracle's tokens come from an edge exit and from the
// cloud's final layer both, with no confidence close to θ.
inline double mixing_threshold(const Model& model, const std::vector<int32_t>& prompt, int n_tokens) {
  const auto all = oracle(model, prompt, 2.0, 1, 0);
  for (double theta = 0.3; theta < 0.99; theta += 0.025) {
    auto run = oracle(model, prompt, theta, n_tokens);
    int edge = 0, cloud = 0;
    bool close = false;
    for (auto& t : run) {
      (t.layer == model.config().n_layers ? cloud : edge)++;
      close = close || std::abs(t.confidence - theta) < 1e-3;
    }
    if (edge >= 3 && cloud >= 3 && !close) return theta;
  }
  return -1;
}

}  // namespace ce::test
