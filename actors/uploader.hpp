#pragma once
// uploader (edge): owns the link to the cloud. Queues every position's split-layer state (fp16)
// or token id, sends it in the background in chunks of at most ce.upload.batch positions while
// the edge computes, keeps a log of each open session to re-send after the cloud lost it, and
// forwards infer requests after the rows they depend on.
//   (upload_atom, session, UploadRows)      rows of a session, in position order
//   (infer_atom, session, frame bytes)      -> reply frame bytes (InferReply or ErrorReply)
//   (resync_atom, session)                  the cloud lost the context: re-send it from the log
//   (bye_atom, session)                     -> uint64 payload bytes uploaded; ends the session
//   (stats_atom)                            -> (bool connected, uint64 queued positions)
// It tells a session's producer (backlog_atom, session, uint32 released): how many of the
// session's positions no longer count against ce.upload.queue-limit (acknowledged by the cloud,
// or all of them while none can be sent); the producer pauses itself on what it handed over.
#include <caf/fwd.hpp>

#include "config/node_config.hpp"
#include "messages/codec.hpp"

namespace ce {

caf::actor spawn_uploader(caf::actor_system& system, const NodeConfig& config, const wire::Hello& hello,
                          const caf::actor& exit_decider);

}  // namespace ce
