#pragma once
// exit_decider: holds the policy (θ, mode) of an edge node and the cloud link state the uploader
// reports, and hands each new response the policy it should run with (exit_decider_actor in
// actors/edge/protocol.hpp).
#include <caf/fwd.hpp>

#include "actors/edge/protocol.hpp"

namespace ce {

exit_decider_actor spawn_exit_decider(caf::actor_system& system, const Policy& configured);

}  // namespace ce
