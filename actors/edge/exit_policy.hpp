#pragma once
// The exit rule and mode policy, as pure logic: what to do with a token once the edge has run
// its exits. The exit_decider actor holds one of these; unit-tested without a model.
#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "config/node_config.hpp"
#include "messages/codec.hpp"
#include "model/early_exit_runner.hpp"

namespace ce {

// What each inference mode does, in one place: the edge actor reads these instead of testing
// the mode at every turn.
struct ModeStrategy {
  bool edge_layers;        // runs [0, split) and its exits (all but cloud-only, which uploads token ids)
  bool exits_resolve;      // a confident exit ends a token on the edge (standalone, collaborative)
  bool asks_cloud;         // unresolved tokens go to the cloud (all but standalone)
  bool uploads;            // the session goes through the uploader, each position once
  bool inlines_states;     // naïve split: every request carries the whole sequence in fp32
  bool may_speculate;      // may go on with the last exit's guess while the cloud answers (the
                           // baselines wait, as the paper's do)
  wire::InferKind kind;    // how the cloud serves its requests
};
const ModeStrategy& strategy_for(InferenceMode mode);

struct Policy {
  InferenceMode mode = InferenceMode::collaborative;
  double threshold = 0.8;
};

enum class Action { emit_local, ask_cloud };

struct Decision {
  Action action = Action::emit_local;
  int32_t token = -1;   // for emit_local
  int32_t layer = -1;
  float confidence = 0;
  Logprobs logprobs;    // of `token`, when the response asked for logprobs
};

// Collaborative: a token resolved at an edge exit (confidence >= θ) stays local; else the cloud.
// Standalone: the first confident exit, else the last edge exit. Baselines always ask the cloud.
Decision decide(const Policy& policy, const StepOutcome& outcome);

// The local token that stands in when the cloud cannot answer (standalone fallback).
Decision fallback(const StepOutcome& outcome);

// The share of tokens a threshold sends to the cloud, measured on held-out text (ce-eval's θ
// sweep, the model's eval/valid.csv): what the latency-budget policy expects of each θ.
class OffloadCurve {
 public:
  // Reads the columns `threshold` and `cloud_share` of a CSV with a header. Throws ConfigError
  // naming the file (and line) when it cannot be read, lacks a column, holds a bad number or a
  // share outside [0, 1], or no row.
  static OffloadCurve load(const std::string& path);
  explicit OffloadCurve(std::vector<std::pair<double, double>> points);  // (θ, share), any order
  const std::vector<std::pair<double, double>>& points() const { return points_; }  // θ ascending

 private:
  std::vector<std::pair<double, double>> points_;
};

// What the edge measured of its link, as moving averages (0: not measured yet).
struct LinkTiming {
  double round_trip_ms = 0;  // an infer request to its answer, cloud compute included
  double edge_token_ms = 0;  // one edge step
};

// The latency-budget exit policy: the highest θ of the curve, in [floor, ceiling], whose expected
// time per token, edge_token_ms + share(θ) x round_trip_ms, fits budget_ms; `floor` when none does
// (a slow link lowers accuracy only so far). A higher θ keeps more tokens on the cloud: more
// accurate, slower.
double budget_threshold(const OffloadCurve& curve, const LinkTiming& link, double budget_ms, double floor,
                        double ceiling);

// How often the cloud's token equals the edge's guess (its last exit's choice), by the exit's
// confidence in it: what decides how far a speculative path is worth asking the cloud about. An
// exit's confidence under θ underrates its guess (the shipped model's guesses at confidence ~0.5
// hold ~70% of the time) and differs by model and θ, so the edge counts: per tenth of confidence,
// the hits seen, starting from the confidence itself as if seen kPriorWeight times.
class GuessOdds {
 public:
  static constexpr int kBuckets = 10;
  static constexpr double kPriorWeight = 4;
  static constexpr double kMemory = 2000;  // answers per bucket before older ones are halved
  double chance(float confidence) const;  // in [0, 1]
  void record(float confidence, bool hit);

 private:
  static int bucket(float confidence);
  std::array<double, kBuckets> hits_{}, seen_{};
};

// The link's own delay: the least of (round trip - the cloud's reported compute) over the last
// kWindow answers, as BBR estimates a path's propagation delay by its windowed minimum RTT. Waits
// beside the link only ever add to a sample: behind the session's earlier requests at the cloud,
// or in the edge's mailbox while it computes a step. The mean counted them as wire, and speculation
// that the longer "wire" allowed lengthened it further (loopback: round trips of 3-10 ms measured
// while the link took under 1).
class WireDelay {
 public:
  static constexpr int kWindow = 32;
  void record(double round_trip_ms, double cloud_ms);
  double ms() const;  // 0 until an answer was recorded
  bool measured() const { return count_ > 0; }

 private:
  std::array<double, kWindow> samples_{};
  uint64_t count_ = 0;  // answers recorded, the newest at samples_[(count_ - 1) % kWindow]
};

// How many tokens a speculative path may hold before the edge waits for the cloud's answers:
// ce.speculation.max-ahead, but no more than the edge steps (link.edge_token_ms each, at least 1)
// that fit the time a request is out. RunAhead::round_trip: its measured round trip (link's
// moving average; at least the wire's time and the cloud's reported compute, cloud_ms), the time the
// edge would otherwise stand. RunAhead::wire: the wire's time alone, and none while it is shorter
// than the cloud's compute, whose cores the edge's steps would take. max_ahead until the wire and a
// step are measured. `run_ahead` is resolved (NodeConfig::run_ahead).
int speculation_depth(RunAhead run_ahead, int max_ahead, const WireDelay& wire, double cloud_ms, const LinkTiming& link);

// The mode a new response runs in: a collaborative policy whose cloud link is down degrades to
// standalone up front rather than timing out token by token; the baselines keep their mode.
InferenceMode effective_mode(InferenceMode configured, bool cloud_up);

}  // namespace ce
