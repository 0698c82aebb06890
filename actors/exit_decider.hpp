#pragma once
// exit_decider: holds the policy (θ, mode) of an edge node and the cloud link state the uploader
// reports, and hands each new response the policy it should run with.
//   (policy_atom)                      -> (int mode, double threshold)
//   (policy_atom, int mode, double θ)  -> set the configured policy
//   (cloud_state_atom, bool up)        -> link state from the uploader
#include <caf/fwd.hpp>

#include "actors/exit_policy.hpp"

namespace ce {

caf::actor spawn_exit_decider(caf::actor_system& system, const Policy& configured);

}  // namespace ce
