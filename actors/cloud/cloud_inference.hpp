#pragma once
// cloud_inference (cloud, detached: torch blocks its own thread). Takes one job at a time from
// the context manager: appends the context's newly uploaded states, fills the missing KV of the
// cloud layers in one batch, and answers the requested position with one token. A job that fails
// part-way answers (false, ErrorReply frame): the context's compute state is then unknown and the
// context must not be reused. Its message: cloud_inference_actor in actors/cloud/protocol.hpp.
#include <caf/fwd.hpp>

#include <memory>

#include "actors/cloud/protocol.hpp"

namespace ce {

class Model;

cloud_inference_actor spawn_cloud_inference(caf::actor_system& system, std::shared_ptr<const Model> model,
                                            int64_t split);

}  // namespace ce
