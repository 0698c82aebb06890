#include "actors/exit_decider.hpp"

#include "actors/atoms.hpp"
#include "actors/log.hpp"

namespace ce {
namespace {

struct DeciderState {
  Policy configured;
  bool cloud_up = false;
  static inline const char* name = "exit_decider";
};

caf::behavior exit_decider(caf::stateful_actor<DeciderState>* self, Policy configured) {
  self->state.configured = configured;
  return {
      [=](policy_atom) {
        const auto& s = self->state;
        return caf::make_message(static_cast<int>(effective_mode(s.configured.mode, s.cloud_up)),
                                 s.configured.threshold);
      },
      [=](policy_atom, int mode, double threshold) {
        self->state.configured = {static_cast<InferenceMode>(mode), threshold};
      },
      [=](cloud_state_atom, bool up) {
        if (up != self->state.cloud_up)
          CE_LOG(info, "decider", "cloud link " << (up ? "up: collaborative responses" : "down: standalone responses"));
        self->state.cloud_up = up;
      },
  };
}

}  // namespace

caf::actor spawn_exit_decider(caf::actor_system& system, const Policy& configured) {
  return system.spawn(exit_decider, configured);
}

}  // namespace ce
