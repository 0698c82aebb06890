#include "actors/edge/exit_policy.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace ce {

const ModeStrategy& strategy_for(InferenceMode mode) {
  //                                    edge   exits  cloud  upload inline speculate kind
  static const ModeStrategy standalone{true, true, false, false, false, false, wire::InferKind::collaborative};
  static const ModeStrategy collaborative{true, true, true, true, false, true, wire::InferKind::collaborative};
  static const ModeStrategy cloud_only{false, false, true, true, false, false, wire::InferKind::cloud_only};
  static const ModeStrategy naive_split{true, false, true, false, true, false, wire::InferKind::naive_split};
  switch (mode) {
    case InferenceMode::standalone: return standalone;
    case InferenceMode::collaborative: return collaborative;
    case InferenceMode::cloud_only: return cloud_only;
    case InferenceMode::naive_split: return naive_split;
  }
  return collaborative;
}

Decision fallback(const StepOutcome& o) {
  return {Action::emit_local, o.fallback_token, o.fallback_layer, o.fallback_confidence, o.fallback_logprobs};
}

Decision decide(const Policy& policy, const StepOutcome& o) {
  const auto& mode = strategy_for(policy.mode);
  if (mode.exits_resolve && o.resolved) return {Action::emit_local, o.token, o.exit_layer, o.confidence, o.logprobs};
  if (mode.asks_cloud) return {Action::ask_cloud, -1, -1, 0, {}};
  return fallback(o);
}

OffloadCurve::OffloadCurve(std::vector<std::pair<double, double>> points) : points_(std::move(points)) {
  std::sort(points_.begin(), points_.end());
}

OffloadCurve OffloadCurve::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError("calibration " + path + ": cannot read");
  std::string line;
  std::getline(in, line);
  std::vector<std::string> header;
  {
    std::stringstream s(line);
    for (std::string cell; std::getline(s, cell, ',');) header.push_back(cell);
  }
  const auto column = [&](const char* name) {
    const auto it = std::find(header.begin(), header.end(), name);
    if (it == header.end()) throw ConfigError("calibration " + path + ": no column '" + name + "' in its header");
    return static_cast<size_t>(it - header.begin());
  };
  const size_t theta_at = column("threshold"), share_at = column("cloud_share");
  std::vector<std::pair<double, double>> points;
  for (int number = 2; std::getline(in, line); ++number) {
    if (line.empty()) continue;
    std::vector<std::string> cells;
    std::stringstream s(line);
    for (std::string cell; std::getline(s, cell, ',');) cells.push_back(cell);
    const auto bad = [&](const std::string& why) {
      return ConfigError("calibration " + path + ":" + std::to_string(number) + ": " + why);
    };
    if (cells.size() <= std::max(theta_at, share_at)) throw bad("too few columns");
    double theta = 0, share = 0;
    try {
      size_t used_theta = 0, used_share = 0;
      theta = std::stod(cells[theta_at], &used_theta);
      share = std::stod(cells[share_at], &used_share);
      if (used_theta != cells[theta_at].size() || used_share != cells[share_at].size()) throw std::invalid_argument("");
    } catch (const std::exception&) {
      throw bad("threshold and cloud_share must be numbers");
    }
    if (!std::isfinite(theta) || !(share >= 0 && share <= 1)) throw bad("cloud_share must be in [0, 1]");
    points.emplace_back(theta, share);
  }
  if (points.empty()) throw ConfigError("calibration " + path + ": no rows");
  return OffloadCurve(std::move(points));
}

double budget_threshold(const OffloadCurve& curve, const LinkTiming& link, double budget_ms, double floor,
                        double ceiling) {
  double best = floor;
  for (const auto& [theta, share] : curve.points())
    if (theta >= floor && theta <= ceiling && link.edge_token_ms + share * link.round_trip_ms <= budget_ms)
      best = std::max(best, theta);
  return best;
}

InferenceMode effective_mode(InferenceMode configured, bool cloud_up) {
  // The baselines stay what they are: cloud-only fails clearly without its cloud, naïve split
  // flags the tokens its edge stood in for. Neither silently turns into standalone.
  if (!cloud_up && configured == InferenceMode::collaborative) return InferenceMode::standalone;
  return configured;
}

void WireDelay::record(double round_trip_ms, double cloud_ms) {
  samples_[count_ % kWindow] = std::max(0.0, round_trip_ms - cloud_ms);
  ++count_;
}

double WireDelay::ms() const {
  if (count_ == 0) return 0;
  const auto last = samples_.begin() + static_cast<std::ptrdiff_t>(std::min<uint64_t>(count_, kWindow));
  return *std::min_element(samples_.begin(), last);
}

int speculation_depth(RunAhead run_ahead, int max_ahead, const WireDelay& wire, double cloud_ms, const LinkTiming& link) {
  if (max_ahead == 0 || !wire.measured() || link.edge_token_ms <= 0) return max_ahead;
  double out_ms = wire.ms();
  if (run_ahead == RunAhead::round_trip) {
    out_ms = std::max(link.round_trip_ms, out_ms + cloud_ms);
  } else if (out_ms < cloud_ms) {
    return 0;
  }
  return static_cast<int>(std::clamp(std::ceil(out_ms / link.edge_token_ms), 1.0, static_cast<double>(max_ahead)));
}

int GuessOdds::bucket(float confidence) {
  if (!(confidence > 0)) return 0;  // NaN too
  return std::min(kBuckets - 1, static_cast<int>(static_cast<double>(confidence) * kBuckets));
}

double GuessOdds::chance(float confidence) const {
  const int b = bucket(confidence);
  const double prior = (b + 0.5) / kBuckets;
  return (hits_[static_cast<size_t>(b)] + kPriorWeight * prior) / (seen_[static_cast<size_t>(b)] + kPriorWeight);
}

void GuessOdds::record(float confidence, bool hit) {
  const auto b = static_cast<size_t>(bucket(confidence));
  seen_[b] += 1;
  hits_[b] += hit ? 1 : 0;
  if (seen_[b] > kMemory) {  // older answers count for less: the mix of prompts and θ drifts
    seen_[b] /= 2;
    hits_[b] /= 2;
  }
}

}  // namespace ce
