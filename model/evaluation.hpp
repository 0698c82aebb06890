#pragma once
// Offline evaluation of an early-exit model on a token stream: cross-entropy of every head (each
// exit and the final layer) and a sweep of the exit threshold θ, comparing the three ways of
// producing a token:
//   collaborative: the first edge exit whose confidence (max softmax) >= θ, else the final layer
//                  (the cloud); exits beyond the split are never read, as in the deployed system;
//   standalone:    the first edge exit whose confidence >= θ, else the LAST edge exit (the edge
//                  alone, never the final layer);
//   full:          the final layer's greedy token.
// Edge exits are the exits at layers <= split (SplitPlan). Torch-free header.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/runtime.hpp"

namespace ce {

struct EvalOptions {
  // Tokens per window. The stream is cut into non-overlapping windows of inputs; window k feeds
  // tokens [kW, kW + W) with a fresh KV cache and predicts tokens [kW + 1, kW + W + 1), so every
  // token but the first is predicted exactly once. Must be in [1, max_seq].
  int64_t window = 256;
  int64_t split = 0;               // 0: the model's default_split
  std::vector<double> thresholds;  // θ sweep; empty: default_thresholds(config)
  // Characters of the text the predicted tokens spell, for bits per character; 0: bits per
  // character is NaN (not reported).
  int64_t characters = 0;
  // Called after every window with (predicted positions done, total).
  std::function<void(int64_t done, int64_t total)> progress;
};

// One head: an exit (layer = exit layer) or the final layer (layer = n_layers, final = true).
struct HeadReport {
  int64_t layer = 0;
  bool final = false;
  bool edge = false;           // an exit at a layer <= split
  double total_nats = 0;       // summed cross-entropy over the predicted positions
  double nats_per_token = 0;
  double perplexity = 0;       // exp(nats_per_token)
  double bits_per_char = 0;    // total_nats / ln 2 / characters; NaN without a character count
  double accuracy = 0;         // greedy token == next token
  double mean_confidence = 0;  // mean max softmax probability
};

// The rule at one θ. Shares are fractions of the predicted positions.
struct SweepRow {
  double threshold = 0;
  std::vector<double> exit_share;  // resolved at each edge exit (aligned with EvalReport::edge_exits)
  double edge_share = 0;           // sum of exit_share
  double cloud_share = 0;          // resolved at the final layer; edge_share + cloud_share = 1
  int64_t edge_tokens = 0;         // positions resolved at the edge
  // Resolved token == final layer's greedy token, over edge-resolved positions (1 when none:
  // vacuously true) and over all positions (cloud-resolved ones agree by definition).
  double edge_agreement = 1;
  double overall_agreement = 1;
  // Next-token accuracy (resolved token == actual next token).
  double accuracy_standalone = 0;
  double accuracy_collaborative = 0;
  double accuracy_full = 0;
};

// Per predicted position, per head (exits in config order, then the final layer).
struct TokenRecords {
  std::vector<int32_t> targets;               // the actual next token
  std::vector<std::vector<int32_t>> greedy;   // [head][position] argmax of the head's softmax
  std::vector<std::vector<float>> confidence; // [head][position] its max softmax probability
  std::vector<std::vector<float>> nats;       // [head][position] cross-entropy of the target
  std::vector<std::vector<float>> runner_up;  // [head][position] the second-largest softmax probability
};

struct EvalReport {
  std::string model_name;
  std::string weights_hash;
  int64_t n_layers = 0;
  int64_t split = 0;
  std::vector<int64_t> exit_layers;  // all exits, ascending
  std::vector<int64_t> edge_exits;   // exits <= split: the first edge_exits.size() heads
  double default_threshold = 0;      // the model's, as loaded
  int64_t tokens = 0;                // tokens in the evaluated stream
  int64_t predicted = 0;             // predicted positions (tokens - 1)
  int64_t characters = 0;
  int64_t window = 0;
  int64_t windows = 0;
  double seconds = 0;                // wall time of the forward passes and scoring
  std::vector<HeadReport> heads;     // exits in order, then the final layer
  std::vector<SweepRow> sweep;       // ascending θ
  TokenRecords records;
};

// 0.1, 0.2, ..., 0.9 with 0.85, 0.95, 0.975, 0.99 (exits tuned to agree with the final layer are
// confident near 1, so the high end is sampled finer), the model's default_threshold and 0.8; ascending, without duplicates.
std::vector<double> default_thresholds(const ModelConfig& config);

// Runs the model over `tokens` (ids in the vocabulary, at least 2) and scores every head and θ.
// Throws ModelError on a bad window, split or token.
EvalReport evaluate(const Model& model, const std::vector<int32_t>& tokens, const EvalOptions& options);

// Two runs of the same text (e.g. int8 against fp32 weights): per head, the share of positions
// whose greedy token agrees, and the bits/char of each. Heads and positions must match.
struct HeadAgreement {
  std::string head;        // "exit 2", ..., "final"
  double agreement = 0;    // greedy tokens equal
  int64_t disagreements = 0;
  // Disagreements where the reference's top two probabilities are within kNearTie: a rounding
  // of either run may flip such a choice. widest_margin: the largest top-two gap among them all.
  static constexpr double kNearTie = 0.05;
  int64_t near_ties = 0;
  double widest_margin = 0;
  double bits_per_char = 0, reference_bits_per_char = 0;
};
std::vector<HeadAgreement> compare_runs(const EvalReport& run, const EvalReport& reference);
std::string comparison_markdown(const std::string& run_name, const std::string& reference_name,
                                const std::vector<HeadAgreement>& heads);

// The three rules at θ over recorded heads: heads [0, edge_heads) are the edge exits in order, the
// last head is the final layer.
SweepRow sweep_row(const TokenRecords& records, size_t edge_heads, double threshold);

// Picking the default θ on a validation report. A sweep row is eligible when
//   full accuracy - collaborative accuracy <= max_accuracy_drop   (absolute), and
//   edge agreement >= min_edge_agreement with `agreement_confidence` (the one-sided Wilson lower
//   bound of the agreement over the row's edge_tokens; confidence 0 compares the measured ratio);
// among eligible rows the one with the largest edge share wins, ties going to the smaller θ. The
// edge share never grows with θ, so this is the smallest eligible θ of the sweep. When no row is
// eligible, θ = 1 (tokens leave the edge only at certainty) and satisfied = false.
// Why a bound: θ is picked on ~40 k validation tokens and must hold on text it has not seen; a θ
// whose measured agreement clears the bound by a handful of tokens is a coin toss elsewhere.
struct ThresholdPick {
  double threshold = 1.0;
  bool satisfied = false;
  int64_t row = -1;  // index into report.sweep, -1 when none was eligible
};
ThresholdPick pick_threshold_detail(const EvalReport& report, double max_accuracy_drop = 0.01,
                                    double min_edge_agreement = 0.97, double agreement_confidence = 0.95);
double pick_threshold(const EvalReport& report, double max_accuracy_drop = 0.01, double min_edge_agreement = 0.97,
                      double agreement_confidence = 0.95);

// One-sided lower confidence bound (Wilson score) of a row's edge agreement; 1 when no token left
// at the edge. Throws std::invalid_argument unless 0 <= confidence < 1.
double edge_agreement_lower_bound(const SweepRow& row, double confidence);

// Unicode code points in UTF-8 text (bytes that do not continue a sequence).
int64_t count_characters(const std::string& utf8);

// Markdown: a summary, the per-head table and the θ sweep table (the model's default θ marked).
std::string report_markdown(const EvalReport& report);
// The sweep as CSV, one row per θ: threshold, share_exit_<layer>..., edge_share, cloud_share,
// edge_tokens, edge_agreement, overall_agreement, accuracy_standalone, accuracy_collaborative,
// accuracy_full.
std::string sweep_csv(const EvalReport& report);

}  // namespace ce
