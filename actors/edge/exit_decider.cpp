#include "actors/edge/exit_decider.hpp"

#include <caf/all.hpp>

#include <optional>

#include "actors/log.hpp"

namespace ce {
namespace {

struct DeciderState {
  Policy configured;
  bool cloud_up = false;
  NodeConfig config;
  std::optional<OffloadCurve> curve;  // with the latency-budget policy
  LinkTiming link;
  double last_threshold = -1;  // for the log: θ as last picked
  static inline const char* name = "exit_decider";
};

exit_decider_actor::behavior_type exit_decider(exit_decider_actor::stateful_pointer<DeciderState> self,
                                               NodeConfig config, std::optional<OffloadCurve> curve) {
  self->state.configured = {config.mode, config.exit_threshold};
  self->state.config = std::move(config);
  self->state.curve = std::move(curve);
  return {
      [=](policy_atom) -> Policy {
        auto& s = self->state;
        Policy p{effective_mode(s.configured.mode, s.cloud_up), s.configured.threshold};
        if (s.curve && s.link.round_trip_ms > 0) {
          p.threshold = budget_threshold(*s.curve, s.link, static_cast<double>(s.config.latency_budget.count()),
                                         s.config.threshold_floor, s.configured.threshold);
          if (p.threshold != s.last_threshold)
            CE_LOG(info, "decider", "latency budget " << s.config.latency_budget.count() << " ms/token, round trip "
                                                      << s.link.round_trip_ms << " ms, edge step "
                                                      << s.link.edge_token_ms << " ms: θ " << p.threshold);
          s.last_threshold = p.threshold;
        }
        return p;
      },
      [=](policy_atom, const Policy& policy) { self->state.configured = policy; },
      [=](cloud_state_atom, bool up) {
        if (up != self->state.cloud_up)
          CE_LOG(info, "decider", "cloud link " << (up ? "up: collaborative responses" : "down: standalone responses"));
        self->state.cloud_up = up;
      },
      [=](timing_atom, const LinkTiming& link) { self->state.link = link; },
  };
}

}  // namespace

exit_decider_actor spawn_exit_decider(caf::actor_system& system, const NodeConfig& config) {
  std::optional<OffloadCurve> curve;
  if (config.exit_policy == ExitPolicy::latency_budget) curve = OffloadCurve::load(config.calibration_path());
  return system.spawn(exit_decider, config, std::move(curve));
}

}  // namespace ce
