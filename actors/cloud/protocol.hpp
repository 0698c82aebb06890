#pragma once
// The cloud node's actors as typed interfaces, one line per handler. Torch-free.
//   edge uploader -> (network) -> context_manager -> cloud_inference
// The context manager is the cloud_front_actor (actors/atoms.hpp) that edges reach.
#include <caf/node_id.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include <caf/allowed_unsafe_message_type.hpp>

#include <cstdint>
#include <memory>
#include <vector>

#include "actors/atoms.hpp"
#include "messages/codec.hpp"
#include "model/position_rows.hpp"

namespace ce {

class CloudCompute;

// One request for cloud_inference: the context's newly uploaded rows and the position to answer.
struct InferJob {
  std::shared_ptr<CloudCompute> compute;      // null for the stateless naïve-split baseline
  PositionRows new_rows;                      // uploaded since the last job (may be empty)
  wire::InferRequest request;
};

using context_manager_actor = cloud_front_actor::extend<
    caf::replies_to<stats_atom>::with<CloudStats>,        // context counts and memory
    caf::replies_to<clients_atom>::with<ClientRequests>,  // infer requests per client name
    caf::reacts_to<drain_atom>,                           // take no new sessions (the node is stopping)
    caf::reacts_to<idle_atom, caf::node_id, uint64_t>,    // own: idle check of (edge node, session)
    caf::reacts_to<unknown_atom, caf::node_id, uint64_t>>;  // own: an early request's wait is over

using cloud_inference_actor = caf::typed_actor<
    caf::replies_to<compute_atom, InferJob>::with<bool, std::vector<char>>,  // -> (computed, reply
                     // frame), once a batched step reached the position: false with an ErrorReply when it failed
    caf::reacts_to<step_atom, uint64_t>,   // own: run one batched step over the waiting jobs
    caf::replies_to<stats_atom>::with<CloudStats::Batching>>;  // steps, batch sizes, queue depth

}  // namespace ce

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ce::InferJob)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ce::CloudStats::Batching)
