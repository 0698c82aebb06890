#include "model/evaluation.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>

#include "model/decoder.hpp"
#include "model/early_exit_runner.hpp"
#include "model/kv_cache.hpp"
#include "model/sampler.hpp"
#include "model/split_plan.hpp"

namespace ce {
namespace {

constexpr double kSameThreshold = 1e-9;

std::string fixed(double v, int digits) {
  if (std::isnan(v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string percent(double v) { return std::isnan(v) ? "n/a" : fixed(100.0 * v, 1) + "%"; }

std::string theta(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

std::vector<double> sorted_unique(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  std::vector<double> out;
  for (double x : v)
    if (out.empty() || x - out.back() > kSameThreshold) out.push_back(x);
  return out;
}

// Scores one head's logits (T, vocab) against targets (T) and appends to the records.
void score_head(const at::Tensor& logits, const at::Tensor& targets, TokenRecords& records, size_t head) {
  auto nll = -torch::log_softmax(logits, -1).gather(1, targets.unsqueeze(1)).squeeze(1).contiguous();  // (T)
  const float* pn = nll.data_ptr<float>();
  records.nats[head].insert(records.nats[head].end(), pn, pn + nll.numel());
  const auto rows = logits.contiguous();
  const int64_t vocab = rows.size(1);
  int64_t row = 0;
  for (const auto& choice : greedy_choices(rows)) {  // the runtime's choice, so θ comparisons match
    records.greedy[head].push_back(choice.token);
    records.confidence[head].push_back(choice.confidence);
    // The runner-up's probability: p(top) * exp(l2 - l1), l2 the largest logit of another token.
    const float* l = rows.data_ptr<float>() + row++ * vocab;
    float second = -INFINITY;
    for (int64_t v = 0; v < vocab; ++v)
      if (v != choice.token) second = std::max(second, l[v]);
    records.runner_up[head].push_back(choice.confidence * std::exp(second - l[choice.token]));
  }
}

}  // namespace

std::vector<double> default_thresholds(const ModelConfig& config) {
  // Steps of 0.01 from 0.8 to 0.9: exits trained on the final layer's choice are confident near 1,
  // and there the edge share falls by ~1.5 points per 0.01 of θ.
  std::vector<double> v{0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75};
  for (int hundredths = 80; hundredths <= 90; ++hundredths) v.push_back(hundredths / 100.0);
  for (double th : {0.925, 0.95, 0.975, 0.99, config.default_threshold}) v.push_back(th);
  return sorted_unique(v);
}

int64_t count_characters(const std::string& utf8) {
  int64_t n = 0;
  for (unsigned char c : utf8)
    if ((c & 0xC0) != 0x80) ++n;
  return n;
}

SweepRow sweep_row(const TokenRecords& r, size_t edge_heads, double threshold) {
  const size_t heads = r.greedy.size();
  if (heads < 2 || edge_heads < 1 || edge_heads >= heads)
    throw ModelError("evaluation: need at least one edge exit and the final layer (" + std::to_string(edge_heads) +
                     " edge heads of " + std::to_string(heads) + ")");
  const size_t n = r.targets.size();
  const auto& final_greedy = r.greedy[heads - 1];
  SweepRow row;
  row.threshold = threshold;
  ExitRule rule;  // the runtime's exit rule, over the recorded confidences
  rule.threshold = threshold;
  std::vector<int64_t> at_exit(edge_heads, 0);
  int64_t edge_agree = 0, standalone_ok = 0, collab_ok = 0, full_ok = 0;
  for (size_t t = 0; t < n; ++t) {
    size_t resolved = edge_heads;  // edge_heads: not resolved on the edge
    for (size_t h = 0; h < edge_heads; ++h)
      if (rule.leaves_at(r.confidence[h][t])) {
        resolved = h;
        break;
      }
    const int32_t target = r.targets[t];
    const int32_t full = final_greedy[t];
    full_ok += full == target;
    if (resolved < edge_heads) {
      ++at_exit[resolved];
      const int32_t tok = r.greedy[resolved][t];
      edge_agree += tok == full;
      standalone_ok += tok == target;
      collab_ok += tok == target;
    } else {
      standalone_ok += r.greedy[edge_heads - 1][t] == target;
      collab_ok += full == target;
    }
  }
  const double total = n ? static_cast<double>(n) : std::numeric_limits<double>::quiet_NaN();
  for (auto c : at_exit) {
    row.exit_share.push_back(c / total);
    row.edge_tokens += c;
  }
  row.edge_share = row.edge_tokens / total;
  row.cloud_share = static_cast<double>(static_cast<int64_t>(n) - row.edge_tokens) / total;
  row.edge_agreement = row.edge_tokens ? static_cast<double>(edge_agree) / row.edge_tokens : 1.0;
  row.overall_agreement = (edge_agree + (static_cast<int64_t>(n) - row.edge_tokens)) / total;
  row.accuracy_standalone = standalone_ok / total;
  row.accuracy_collaborative = collab_ok / total;
  row.accuracy_full = full_ok / total;
  return row;
}

EvalReport evaluate(const Model& model, const std::vector<int32_t>& tokens, const EvalOptions& options) {
  const auto& cfg = model.config();
  const Decoder& decoder = model.decoder();
  const SplitPlan plan = SplitPlan::from_config(cfg, options.split);
  if (options.window < 1 || options.window > cfg.max_seq)
    throw ModelError("evaluation: window " + std::to_string(options.window) + " outside [1, " +
                     std::to_string(cfg.max_seq) + "] (max_seq)");
  if (tokens.size() < 2) throw ModelError("evaluation: need at least 2 tokens, got " + std::to_string(tokens.size()));
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= cfg.vocab_size)
      throw ModelError("evaluation: token " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                       " outside the vocabulary of " + std::to_string(cfg.vocab_size));

  EvalReport rep;
  rep.model_name = cfg.name;
  rep.weights_hash = model.weights_hash();
  rep.n_layers = cfg.n_layers;
  rep.split = plan.split;
  rep.exit_layers = cfg.exit_layers;
  rep.edge_exits = plan.edge_exits;
  rep.default_threshold = cfg.default_threshold;
  rep.tokens = static_cast<int64_t>(tokens.size());
  rep.predicted = rep.tokens - 1;
  rep.characters = options.characters;
  rep.window = options.window;

  const size_t n_heads = cfg.exit_layers.size() + 1;
  auto& rec = rep.records;
  rec.targets.assign(tokens.begin() + 1, tokens.end());
  rec.greedy.assign(n_heads, {});
  rec.confidence.assign(n_heads, {});
  rec.nats.assign(n_heads, {});
  rec.runner_up.assign(n_heads, {});
  for (size_t h = 0; h < n_heads; ++h) {
    rec.greedy[h].reserve(static_cast<size_t>(rep.predicted));
    rec.confidence[h].reserve(static_cast<size_t>(rep.predicted));
    rec.nats[h].reserve(static_cast<size_t>(rep.predicted));
  }

  const auto t0 = std::chrono::steady_clock::now();
  {
    torch::InferenceMode guard;
    // int32 -> int64 once; windows are narrowed views.
    auto all = torch::from_blob(const_cast<int32_t*>(tokens.data()), {rep.tokens}, torch::kInt).to(torch::kLong);
    for (int64_t start = 0; start < rep.predicted; start += options.window) {
      const int64_t len = std::min(options.window, rep.predicted - start);
      auto input = all.narrow(0, start, len);
      auto target = all.narrow(0, start + 1, len);
      KvCache kv(cfg, 0, cfg.n_layers);
      auto h = decoder.embed(input);  // (len, dim)
      int64_t depth = 0;
      for (size_t e = 0; e < cfg.exit_layers.size(); ++e) {
        const int64_t layer = cfg.exit_layers[e];
        h = decoder.forward(h, 0, depth, layer, kv);
        depth = layer;
        score_head(decoder.exit_logits(layer, h), target, rec, e);
      }
      h = decoder.forward(h, 0, depth, cfg.n_layers, kv);
      score_head(decoder.final_logits(h), target, rec, n_heads - 1);
      ++rep.windows;
      if (options.progress) options.progress(start + len, rep.predicted);
    }
  }
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  const double n = static_cast<double>(rep.predicted);
  for (size_t h = 0; h < n_heads; ++h) {
    HeadReport hr;
    hr.final = h + 1 == n_heads;
    hr.layer = hr.final ? cfg.n_layers : cfg.exit_layers[h];
    hr.edge = !hr.final && hr.layer <= plan.split;
    int64_t correct = 0;
    double conf = 0;
    for (int64_t t = 0; t < rep.predicted; ++t) {
      hr.total_nats += rec.nats[h][static_cast<size_t>(t)];
      conf += rec.confidence[h][static_cast<size_t>(t)];
      correct += rec.greedy[h][static_cast<size_t>(t)] == rec.targets[static_cast<size_t>(t)];
    }
    hr.nats_per_token = hr.total_nats / n;
    hr.perplexity = std::exp(hr.nats_per_token);
    hr.bits_per_char = options.characters > 0 ? hr.total_nats / std::log(2.0) / static_cast<double>(options.characters)
                                              : std::numeric_limits<double>::quiet_NaN();
    hr.accuracy = correct / n;
    hr.mean_confidence = conf / n;
    rep.heads.push_back(hr);
  }

  const auto thresholds = options.thresholds.empty() ? default_thresholds(cfg) : sorted_unique(options.thresholds);
  for (double th : thresholds) rep.sweep.push_back(sweep_row(rec, plan.edge_exits.size(), th));
  return rep;
}

double edge_agreement_lower_bound(const SweepRow& row, double confidence) {
  if (!(confidence >= 0 && confidence < 1))
    throw std::invalid_argument("agreement confidence must be in [0, 1), got " + std::to_string(confidence));
  if (row.edge_tokens <= 0) return 1.0;
  // z = Φ⁻¹(confidence) by bisection on Φ(z) = erfc(-z / √2) / 2, monotone on [-10, 10].
  double lo = -10, hi = 10;
  for (int i = 0; i < 200; ++i) {
    const double mid = (lo + hi) / 2;
    (0.5 * std::erfc(-mid / std::sqrt(2.0)) < confidence ? lo : hi) = mid;
  }
  const double z = confidence == 0 ? 0 : std::max(0.0, (lo + hi) / 2);
  const double n = static_cast<double>(row.edge_tokens), p = row.edge_agreement, z2 = z * z;
  return (p + z2 / (2 * n) - z * std::sqrt(p * (1 - p) / n + z2 / (4 * n * n))) / (1 + z2 / n);
}

ThresholdPick pick_threshold_detail(const EvalReport& report, double max_accuracy_drop, double min_edge_agreement,
                                    double agreement_confidence) {
  constexpr double eps = 1e-12;  // shares and accuracies are ratios of counts
  ThresholdPick pick;
  for (size_t i = 0; i < report.sweep.size(); ++i) {
    const auto& r = report.sweep[i];
    const bool accurate = r.accuracy_full - r.accuracy_collaborative <= max_accuracy_drop + eps;
    const bool agrees = edge_agreement_lower_bound(r, agreement_confidence) + eps >= min_edge_agreement;
    if (!accurate || !agrees) continue;
    if (pick.row >= 0) {
      const auto& best = report.sweep[static_cast<size_t>(pick.row)];
      const bool more_edge = r.edge_share > best.edge_share + eps;
      const bool same_edge_smaller = std::abs(r.edge_share - best.edge_share) <= eps && r.threshold < best.threshold;
      if (!more_edge && !same_edge_smaller) continue;
    }
    pick.row = static_cast<int64_t>(i);
    pick.threshold = r.threshold;
    pick.satisfied = true;
  }
  return pick;
}

double pick_threshold(const EvalReport& report, double max_accuracy_drop, double min_edge_agreement,
                      double agreement_confidence) {
  return pick_threshold_detail(report, max_accuracy_drop, min_edge_agreement, agreement_confidence).threshold;
}

std::string report_markdown(const EvalReport& r) {
  std::string md;
  md += "# ce-eval: " + r.model_name + "\n\n";
  md += "- weights: `" + r.weights_hash + "`\n";
  std::string exits, edge;
  for (auto e : r.exit_layers) exits += (exits.empty() ? "" : ", ") + std::to_string(e);
  for (auto e : r.edge_exits) edge += (edge.empty() ? "" : ", ") + std::to_string(e);
  md += "- layers: " + std::to_string(r.n_layers) + ", exits after layers {" + exits + "}, split " +
        std::to_string(r.split) + " (edge exits {" + edge + "}, cloud layers [" + std::to_string(r.split) + ", " +
        std::to_string(r.n_layers) + "))\n";
  md += "- tokens: " + std::to_string(r.tokens) + " (" + std::to_string(r.predicted) + " predicted), " +
        std::to_string(r.windows) + " windows of " + std::to_string(r.window) + ", characters: " +
        (r.characters > 0 ? std::to_string(r.characters) : std::string("n/a")) + "\n";
  md += "- time: " + fixed(r.seconds, 2) + " s (" + fixed(r.seconds > 0 ? r.predicted / r.seconds : 0.0, 0) +
        " tokens/s)\n\n";

  md += "## Heads\n\n";
  md += "| head | layer | nats/token | bits/char | perplexity | top-1 accuracy | mean confidence |\n";
  md += "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n";
  for (const auto& h : r.heads) {
    const std::string name = h.final ? "final" : (std::string("exit ") + (h.edge ? "(edge)" : "(cloud side)"));
    md += "| " + name + " | " + std::to_string(h.layer) + " | " + fixed(h.nats_per_token, 4) + " | " +
          fixed(h.bits_per_char, 4) + " | " + fixed(h.perplexity, 2) + " | " + percent(h.accuracy) + " | " +
          fixed(h.mean_confidence, 3) + " |\n";
  }

  md += "\n## Threshold sweep\n\n";
  md += "Collaborative: first edge exit with confidence >= θ, else the final layer (cloud). Standalone: first edge "
        "exit >= θ, else the last edge exit. Full: final layer. Agreement: resolved token == final layer's greedy "
        "token.\n\n";
  md += "| θ |";
  for (auto e : r.edge_exits) md += " exit " + std::to_string(e) + " |";
  md += " edge | cloud | edge agreement | overall agreement | acc standalone | acc collaborative | acc full |\n";
  md += "| ---: |";
  for (size_t i = 0; i < r.edge_exits.size(); ++i) md += " ---: |";
  md += " ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
  for (const auto& s : r.sweep) {
    const bool is_default = std::abs(s.threshold - r.default_threshold) <= kSameThreshold;
    md += "| " + theta(s.threshold) + (is_default ? " (default)" : "") + " |";
    for (double share : s.exit_share) md += " " + percent(share) + " |";
    md += " " + percent(s.edge_share) + " | " + percent(s.cloud_share) + " | " +
          (s.edge_tokens ? percent(s.edge_agreement) : std::string("n/a")) + " | " + percent(s.overall_agreement) +
          " | " + percent(s.accuracy_standalone) + " | " + percent(s.accuracy_collaborative) + " | " +
          percent(s.accuracy_full) + " |\n";
  }
  return md;
}

std::string sweep_csv(const EvalReport& r) {
  std::string csv = "threshold";
  for (auto e : r.edge_exits) csv += ",share_exit_" + std::to_string(e);
  csv += ",edge_share,cloud_share,edge_tokens,edge_agreement,overall_agreement,accuracy_standalone,"
         "accuracy_collaborative,accuracy_full\n";
  for (const auto& s : r.sweep) {
    csv += theta(s.threshold);
    for (double share : s.exit_share) csv += "," + fixed(share, 6);
    csv += "," + fixed(s.edge_share, 6) + "," + fixed(s.cloud_share, 6) + "," + std::to_string(s.edge_tokens) + "," +
           fixed(s.edge_agreement, 6) + "," + fixed(s.overall_agreement, 6) + "," + fixed(s.accuracy_standalone, 6) +
           "," + fixed(s.accuracy_collaborative, 6) + "," + fixed(s.accuracy_full, 6) + "\n";
  }
  return csv;
}

std::vector<HeadAgreement> compare_runs(const EvalReport& run, const EvalReport& reference) {
  const auto& a = run.records.greedy;
  const auto& b = reference.records.greedy;
  if (a.size() != b.size() || run.heads.size() != a.size() || reference.heads.size() != b.size())
    throw ModelError("compare runs: the runs have different heads");
  std::vector<HeadAgreement> out;
  for (size_t h = 0; h < a.size(); ++h) {
    if (a[h].size() != b[h].size()) throw ModelError("compare runs: the runs scored different positions");
    HeadAgreement row;
    row.head = h + 1 < a.size() ? "exit " + std::to_string(run.exit_layers[h]) : "final";
    const auto& top = reference.records.confidence[h];
    const auto& second = reference.records.runner_up[h];
    for (size_t i = 0; i < a[h].size(); ++i) {
      if (a[h][i] == b[h][i]) continue;
      ++row.disagreements;
      const double margin = top[i] - second[i];
      row.near_ties += margin < HeadAgreement::kNearTie;
      row.widest_margin = std::max(row.widest_margin, margin);
    }
    row.agreement = a[h].empty() ? 1.0 : 1.0 - double(row.disagreements) / double(a[h].size());
    row.bits_per_char = run.heads[h].bits_per_char;
    row.reference_bits_per_char = reference.heads[h].bits_per_char;
    out.push_back(row);
  }
  return out;
}

std::string comparison_markdown(const std::string& run_name, const std::string& reference_name,
                                const std::vector<HeadAgreement>& heads) {
  char line[512];
  std::snprintf(line, sizeof line,
                "\n## %s against %s weights\n\nNear-tie: at a disagreeing position, %s's top two probabilities lie "
                "within %.2f of each other. Widest: the largest such gap among the disagreeing positions.\n\n"
                "| head | greedy agreement | disagreeing positions | of them near-ties | widest gap | bits/char %s | "
                "bits/char %s | change |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
                run_name.c_str(), reference_name.c_str(), reference_name.c_str(), HeadAgreement::kNearTie,
                run_name.c_str(), reference_name.c_str());
  std::string md = line;
  for (const auto& h : heads) {
    std::snprintf(line, sizeof line, "| %s | %.2f%% | %lld | %lld | %.3f | %.4f | %.4f | %+.2f%% |\n", h.head.c_str(),
                  100 * h.agreement, static_cast<long long>(h.disagreements), static_cast<long long>(h.near_ties),
                  h.widest_margin, h.bits_per_char, h.reference_bits_per_char,
                  100 * (h.bits_per_char / h.reference_bits_per_char - 1));
    md += line;
  }
  return md;
}

}  // namespace ce
