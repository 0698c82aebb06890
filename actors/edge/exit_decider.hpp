#pragma once
// exit_decider: holds the policy (θ, mode) of an edge node and the cloud link state the uploader
// reports, and hands each new response the policy it should run with (exit_decider_actor in
// actors/edge/protocol.hpp). With ce.exit.policy = latency-budget it also holds the model's
// offload curve and the link timing edge_inference measures, and picks θ per response
// (budget_threshold; the configured θ is the ceiling, ce.exit.threshold-floor the floor).
#include <caf/fwd.hpp>

#include "actors/edge/protocol.hpp"
#include "config/node_config.hpp"

namespace ce {

// Throws ConfigError when the latency-budget policy's calibration cannot be read.
exit_decider_actor spawn_exit_decider(caf::actor_system& system, const NodeConfig& config);

}  // namespace ce
