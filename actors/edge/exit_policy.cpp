#include "actors/edge/exit_policy.hpp"

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
  return {Action::emit_local, o.fallback_token, o.fallback_layer, o.fallback_confidence};
}

Decision decide(const Policy& policy, const StepOutcome& o) {
  const auto& mode = strategy_for(policy.mode);
  if (mode.exits_resolve && o.resolved) return {Action::emit_local, o.token, o.exit_layer, o.confidence};
  if (mode.asks_cloud) return {Action::ask_cloud, -1, -1, 0};
  return fallback(o);
}

InferenceMode effective_mode(InferenceMode configured, bool cloud_up) {
  // The baselines stay what they are: cloud-only fails clearly without its cloud, naïve split
  // flags the tokens its edge stood in for. Neither silently turns into standalone.
  if (!cloud_up && configured == InferenceMode::collaborative) return InferenceMode::standalone;
  return configured;
}

}  // namespace ce
