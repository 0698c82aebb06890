#pragma once
// context_manager (cloud): the cloud node's front door and the owner of client contexts. It
// speaks the wire protocol with edge nodes (Hello/Welcome, UploadChunk/UploadAck, InferRequest,
// Bye), keeps one context per (edge node, session): uploaded states not yet computed, the
// cloud-layer KV cache, last activity. Contexts end on Bye, or after ce.session.idle-timeout of
// silence (a timer per context); new ones are refused with `overloaded` past the context count
// or memory cap. Infer requests wait until the positions they name are uploaded, then go to
// cloud_inference one at a time per context. A Bye is echoed back as its acknowledgement.
// Its messages: context_manager_actor in actors/cloud/protocol.hpp.
#include <caf/fwd.hpp>

#include <memory>

#include "actors/cloud/protocol.hpp"
#include "config/node_config.hpp"
#include "model/split_plan.hpp"

namespace ce {

class Model;

context_manager_actor spawn_context_manager(caf::actor_system& system, std::shared_ptr<const Model> model,
                                            const SplitPlan& plan, const NodeConfig& config, const cloud_inference_actor& cloud_inference);

}  // namespace ce
