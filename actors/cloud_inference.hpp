#pragma once
// cloud_inference (cloud, detached: torch blocks its own thread). Takes one job at a time from
// the context manager: appends the context's newly uploaded states, fills the missing KV of the
// cloud layers in one batch, and answers the requested position with one token.
//   (compute_atom, InferJob) -> (bool computed, reply frame bytes): true with an InferReply, false
//                               with an ErrorReply when the job failed part-way (the context's
//                               compute state is then unknown and the context must not be reused)
#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/fwd.hpp>

#include <memory>
#include <vector>

#include "messages/codec.hpp"

namespace ce {

class Model;
class CloudCompute;

struct InferJob {
  std::shared_ptr<CloudCompute> compute;  // null for the stateless naïve-split baseline
  std::vector<wire::UploadChunk> new_chunks;  // uploaded since the last job, position order
  wire::InferRequest request;
};

caf::actor spawn_cloud_inference(caf::actor_system& system, std::shared_ptr<const Model> model, int64_t split);

}  // namespace ce

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ce::InferJob)
