#pragma once
// cloud_inference (cloud, detached: torch blocks its own thread): the cloud's scheduler. Jobs from
// the context manager (one per context at a time: the context's newly uploaded states and the
// position to answer) wait in a queue; each step takes up to `max_sessions` of them, oldest first,
// and runs one batched forward over the cloud layers (CloudCompute::step): every context fills at
// most `catch_up_chunk` of its waiting positions, projections and FFN for all rows at once,
// attention per context. A job whose position was reached is answered with one token; the others
// go to the back of the queue (round robin), so a long catch-up advances chunk by chunk beside the
// short requests, taking no more rows than they do while they are active (also in the gaps
// between their requests). A step may wait a little for the sessions the last one answered
// (ce.batch.gather, Gathering in gathering.hpp). A job that fails answers (false, ErrorReply frame): the context's compute state
// is then unknown and the context must not be reused. Its messages: cloud_inference_actor in
// actors/cloud/protocol.hpp.
#include <caf/fwd.hpp>

#include <memory>

#include "actors/cloud/protocol.hpp"

namespace ce {

class Model;

struct CloudBatching {
  int max_sessions = 32;     // ce.batch.max-sessions
  int catch_up_chunk = 64;   // ce.batch.catch-up-chunk
  double gather = 0.25;      // ce.batch.gather (defaults.hpp): most wait for returning sessions, x the last step's time
};

cloud_inference_actor spawn_cloud_inference(caf::actor_system& system, std::shared_ptr<const Model> model,
                                            int64_t split, CloudBatching batching);

}  // namespace ce
