#pragma once
// CAF atoms and the local (same-process) message types shared by the node's parts; the typed
// interfaces that use them are actors/edge/protocol.hpp and actors/cloud/protocol.hpp. Across
// nodes only one message travels: (frame_atom, std::vector<char>) holding a Cap'n Proto frame
// from messages/codec.hpp. Torch-free.
#include <caf/all.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "config/node_config.hpp"
#include "messages/codec.hpp"

namespace ce {

using frame_atom = caf::atom_constant<caf::atom("frame")>;        // wire frame between nodes
using generate_atom = caf::atom_constant<caf::atom("generate")>;  // start a response on the edge
using step_atom = caf::atom_constant<caf::atom("step")>;          // edge: the next token; cloud: the next batched step
using token_atom = caf::atom_constant<caf::atom("token")>;        // edge -> listener: a token
using done_atom = caf::atom_constant<caf::atom("done")>;          // edge -> listener: response done
using upload_atom = caf::atom_constant<caf::atom("upload")>;      // edge -> uploader: rows
using infer_atom = caf::atom_constant<caf::atom("infer")>;        // edge -> uploader -> cloud
using bye_atom = caf::atom_constant<caf::atom("bye")>;            // end of a session
using resync_atom = caf::atom_constant<caf::atom("resync")>;      // re-send a session from its log
using backlog_atom = caf::atom_constant<caf::atom("backlog")>;    // uploader -> edge: pause/resume
using link_atom = caf::atom_constant<caf::atom("link")>;          // uploader: (re)connect
using policy_atom = caf::atom_constant<caf::atom("policy")>;      // exit decider: current policy
using cloud_state_atom = caf::atom_constant<caf::atom("cloudstate")>;
using idle_atom = caf::atom_constant<caf::atom("idle")>;          // context manager: idle check
using compute_atom = caf::atom_constant<caf::atom("compute")>;    // manager -> cloud inference
using stats_atom = caf::atom_constant<caf::atom("stats")>;
using cancel_atom = caf::atom_constant<caf::atom("cancel")>;     // edge: end a response early
using clients_atom = caf::atom_constant<caf::atom("clients")>;   // cloud: requests per client
using unknown_atom = caf::atom_constant<caf::atom("unknownses")>;  // cloud: an early request's wait ends
using timing_atom = caf::atom_constant<caf::atom("timing")>;    // edge -> exit decider: link timing
using truncate_atom = caf::atom_constant<caf::atom("truncate")>;  // edge -> uploader: drop a wrong speculation
using load_atom = caf::atom_constant<caf::atom("load")>;          // uploader: ask the clouds for their load
using drain_atom = caf::atom_constant<caf::atom("drain")>;        // cloud: take no new sessions (stopping)

// What an edge reaches across the network, the one message that travels between nodes:
// a Hello, UploadChunk, InferRequest or Bye frame -> the reply frame.
using cloud_front_actor = caf::typed_actor<
    caf::replies_to<frame_atom, std::vector<char>>::with<std::vector<char>>>;

// Where a token came from.
enum class TokenSource : uint8_t {
  edge_exit,  // an edge exit was confident (or standalone mode took the last edge exit)
  cloud,      // the cloud answered
  degraded,   // the cloud was needed but unreachable or late: the edge's last exit stood in
};
const char* to_string(TokenSource s);

// Why a response ended.
enum class FinishReason : uint8_t {
  length,     // max_tokens generated
  eos,        // the model produced end-of-sequence
  context,    // the sequence reached the model's max_seq
  cancelled,  // the listener asked it to stop (cancel_atom)
  error,      // see GenerateResult::error
};
const char* to_string(FinishReason r);

struct TokenEvent {
  uint64_t generation = 0;
  int32_t position = 0;  // position of the token in the sequence
  int32_t token = 0;
  TokenSource source = TokenSource::edge_exit;
  int32_t layer = 0;     // exit layer, or L for the cloud's final layer
  float confidence = 0;
  Logprobs logprobs;     // under the head that chose it (sampling.logprobs >= 0)
};

// Echo: a prompt token's logprobs under the head that decides its position as a generated
// token would be decided (the first confident exit, else the cloud or, standalone, the last exit).
struct PromptLogprob {
  Logprobs logprobs;
  TokenSource source = TokenSource::edge_exit;
  int32_t layer = 0;
};

struct GenerationStats {
  InferenceMode mode = InferenceMode::collaborative;
  double threshold = 0;
  int prompt_tokens = 0;
  int generated = 0;
  int cloud_tokens = 0;
  int degraded_tokens = 0;
  int resyncs = 0;                // contexts rebuilt after the cloud lost them (evicted, restarted)
  int cloud_requests = 0;         // infer requests sent (cloud tokens, plus speculative ones rolled back)
  int backpressure_pauses = 0;    // steps held until the upload backlog halved
  uint64_t bytes_uploaded = 0;    // upload payload bytes of this response
  uint64_t bytes_inline = 0;      // payload bytes sent inside infer requests (naive split)
  // Speculation (collaborative mode, ce.speculation.enabled): the edge goes on with its own guess
  // while the cloud answers. confirmed = speculated - rolled_back.
  bool speculation = false;       // this response ran ahead of the cloud (up to max_ahead tokens)
  int max_ahead = 0;
  int speculated = 0;             // positions computed on a path the cloud had not confirmed yet
  int rolled_back = 0;            // of those, positions dropped because a guess was wrong
  int misses = 0;                 // guesses the cloud answered differently (each a rollback)
  int blocking_round_trips = 0;   // waits for the cloud with nothing left to compute (without
                                  // speculation: one per cloud token)
  double blocked_ms = 0;          // time spent in those waits
  int critical_round_trips = 0;   // the longest chain of round trips each asked once the one
                                  // before it was answered: a wave of the request window, the
                                  // restart after a miss (without speculation: one per cloud token)
  uint64_t bytes_wasted = 0;      // of bytes_uploaded, the rows of rolled-back positions
  double edge_ms = 0;             // edge compute
  double cloud_ms = 0;            // cloud compute, as the cloud reports it
  double wait_ms = 0;             // cloud round trips minus cloud compute: network + queueing
  double total_ms = 0;
  std::vector<double> token_ms;   // latency of each generated token
};

struct GenerateResult {
  uint64_t generation = 0;
  std::vector<int32_t> tokens;
  std::vector<TokenSource> sources;
  std::vector<int32_t> layers;
  std::vector<Logprobs> logprobs;             // per token, when the request asked for them
  std::vector<PromptLogprob> prompt_logprobs; // echo: prompt positions 1.. (the first has none)
  GenerationStats stats;
  FinishReason finish_reason = FinishReason::length;
  std::string error;  // non-empty when the response could not be produced at all
};

// A cloud node's contexts, as its context manager counts them.
struct CloudStats {
  uint64_t live = 0;                // contexts held now
  uint64_t evicted = 0;             // contexts ended: Bye, inactivity, failure
  uint64_t bytes = 0;               // memory the live contexts hold (KV + pending states)
  uint64_t positions_received = 0;  // uploaded positions taken into a context, all contexts so far
  uint64_t positions_repeated = 0;  // uploaded positions a context already held (re-sent rows)
  uint64_t sessions_refused = 0;    // new contexts refused at the context-count or memory cap
  uint64_t edges_welcomed = 0;      // Hellos answered with a Welcome
  uint64_t edges_refused = 0;       // Hellos refused (model, version, split, dim, dtype mismatch)
  uint64_t truncates = 0;           // Truncate frames served (edges' wrong speculations)
  uint64_t positions_rolled_back = 0;  // computed positions those dropped: wasted cloud work
  // The scheduler's batched steps (cloud_inference), so far.
  struct Batching {
    uint64_t steps = 0;
    uint64_t sessions = 0;        // summed over the steps: / steps = mean batch size
    uint64_t rows = 0;            // positions computed, summed over the steps
    uint64_t max_sessions = 0;    // the largest batch
    double step_seconds = 0;      // summed
    uint64_t gathers = 0;         // steps that waited for returning sessions (ce.batch.gather)
    double gather_seconds = 0;    // summed waits
    uint64_t queue_depth = 0;     // jobs waiting now
  } batching;
};

// Infer requests served per client (the name in each edge's Hello), for /metrics.
struct ClientRequests {
  std::vector<std::pair<std::string, uint64_t>> counts;
};

// One cloud node of an edge, as its uploader sees it.
struct CloudNodeStats {
  std::string name;               // host:port
  bool connected = false;
  wire::Load load;                // as last reported (Welcome or LoadReport)
  uint64_t open_sessions = 0;     // this edge's open sessions placed there
  uint64_t placed = 0;            // sessions placed there so far (first placements and moves)
};

// An edge node's cloud links, as its uploader sees them.
struct LinkStats {
  bool connected = false;         // at least one cloud node is linked
  uint64_t queued_positions = 0;  // handed to the uploader and not yet acknowledged by the cloud
  uint64_t failovers = 0;         // sessions moved to another node after theirs failed or refused them
  uint64_t replayed_positions = 0;  // positions re-sent from the sessions' logs (moves and resyncs)
  std::vector<CloudNodeStats> nodes;  // in ce.cloud.nodes order
};

}  // namespace ce

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ce::TokenEvent)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ce::GenerateResult)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ce::CloudStats)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ce::ClientRequests)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ce::LinkStats)
