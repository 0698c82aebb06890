#pragma once
// uploader (edge): owns the link to the cloud. Queues every position's split-layer state (fp16)
// or token id, sends it in the background in chunks of at most ce.upload.batch positions while
// the edge computes, keeps a log of each open session to re-send after the cloud lost it, and
// forwards infer requests after the rows they depend on (uploader_actor in actors/edge/protocol.hpp).
// It tells a session's producer (backlog_atom, session, uint32 released): how many of the
// session's positions no longer count against ce.upload.queue-limit (acknowledged by the cloud,
// or all of them while none can be sent); the producer pauses itself on what it handed over.
#include <caf/fwd.hpp>

#include "actors/edge/protocol.hpp"
#include "config/node_config.hpp"
#include "messages/codec.hpp"

namespace ce {

uploader_actor spawn_uploader(caf::actor_system& system, const NodeConfig& config, const wire::Hello& hello,
                              const exit_decider_actor& exit_decider);

}  // namespace ce
