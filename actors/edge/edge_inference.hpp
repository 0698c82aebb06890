#pragma once
// edge_inference (edge, detached: torch blocks its own thread). Runs each response token by
// token over the edge layers [0, split) with their exits, asks the exit decider's policy what to
// do with each token, hands every split-layer state to the uploader, and asks the cloud (through
// the uploader) only for the tokens that need it. A cloud that fails or misses the deadline is
// replaced by the edge's last exit for that token (flagged degraded); the response goes on.
// Its messages: edge_inference_actor in actors/edge/protocol.hpp.
#include <caf/fwd.hpp>

#include <memory>

#include "actors/edge/protocol.hpp"
#include "config/node_config.hpp"
#include "model/split_plan.hpp"

namespace ce {

class Model;

edge_inference_actor spawn_edge_inference(caf::actor_system& system, std::shared_ptr<const Model> model,
                                          const SplitPlan& plan, const NodeConfig& config, const uploader_actor& uploader,
                                          const exit_decider_actor& exit_decider);

}  // namespace ce
