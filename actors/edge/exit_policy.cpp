#include "actors/edge/exit_policy.hpp"

namespace ce {

Decision fallback(const StepOutcome& o) {
  return {Action::emit_local, o.fallback_token, o.fallback_layer, o.fallback_confidence};
}

Decision decide(const Policy& policy, const StepOutcome& o) {
  switch (policy.mode) {
    case InferenceMode::standalone:
      return o.resolved ? Decision{Action::emit_local, o.token, o.exit_layer, o.confidence} : fallback(o);
    case InferenceMode::collaborative:
      if (o.resolved) return {Action::emit_local, o.token, o.exit_layer, o.confidence};
      return {Action::ask_cloud, -1, -1, 0};
    case InferenceMode::cloud_only:
    case InferenceMode::naive_split:
      return {Action::ask_cloud, -1, -1, 0};
  }
  return {Action::ask_cloud, -1, -1, 0};
}

InferenceMode effective_mode(InferenceMode configured, bool cloud_up) {
  // The baselines stay what they are: cloud-only fails clearly without its cloud, naïve split
  // flags the tokens its edge stood in for. Neither silently turns into standalone.
  if (!cloud_up && configured == InferenceMode::collaborative) return InferenceMode::standalone;
  return configured;
}

}  // namespace ce
