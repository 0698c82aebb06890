#pragma once
// uploader (edge): owns the links to the cloud nodes (ce.cloud.nodes, or ce.cloud.host:port).
// Queues every position's split-layer state (fp16) or token id, sends it in the background in
// chunks of at most ce.upload.batch positions while the edge computes, keeps a log of each open
// session to re-send after a cloud lost it, and forwards infer requests after the rows they
// depend on (uploader_actor in actors/edge/protocol.hpp).
//
// Several clouds: each new session is placed by weighted rendezvous hashing over the linked nodes
// (actors/edge/placement.hpp), weighted by the load each reports (in its Welcome and in answers
// to LoadQuery every ce.cloud.load-interval) and stays there while that node lives. When the node
// is lost (link down, no load report for three intervals), refuses the session as overloaded or
// misses a request's deadline, the session moves to the next node of its ranking: its log is
// replayed there from position 0 and its requests in flight are sent again, so the response goes
// on with cloud tokens; only when no node is left do its requests fail (the edge then answers
// from its own exits, flagged degraded).
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
