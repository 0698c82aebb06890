#include "actors/edge/exit_decider.hpp"

#include <caf/all.hpp>

#include "actors/log.hpp"

namespace ce {
namespace {

struct DeciderState {
  Policy configured;
  bool cloud_up = false;
  static inline const char* name = "exit_decider";
};

exit_decider_actor::behavior_type exit_decider(exit_decider_actor::stateful_pointer<DeciderState> self,
                                               Policy configured) {
  self->state.configured = configured;
  return {
      [=](policy_atom) -> Policy {
        const auto& s = self->state;
        return {effective_mode(s.configured.mode, s.cloud_up), s.configured.threshold};
      },
      [=](policy_atom, const Policy& policy) { self->state.configured = policy; },
      [=](cloud_state_atom, bool up) {
        if (up != self->state.cloud_up)
          CE_LOG(info, "decider", "cloud link " << (up ? "up: collaborative responses" : "down: standalone responses"));
        self->state.cloud_up = up;
      },
  };
}

}  // namespace

exit_decider_actor spawn_exit_decider(caf::actor_system& system, const Policy& configured) {
  return system.spawn(exit_decider, configured);
}

}  // namespace ce
