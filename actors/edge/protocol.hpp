#pragma once
// The edge node's actors as typed interfaces: every message each one takes, one line per handler,
// so that the compiler checks every send. Torch-free.
//   client -> edge_inference -> exit_decider (policy) and uploader (rows, infer) -> cloud
//   uploader -> edge_inference (released positions), uploader -> exit_decider (link state)
//   edge_inference -> response listener (tokens, result)
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include <caf/allowed_unsafe_message_type.hpp>

#include <cstdint>
#include <optional>
#include <vector>

#include "actors/atoms.hpp"
#include "actors/edge/exit_policy.hpp"
#include "model/position_rows.hpp"
#include "model/sampling.hpp"

namespace ce {

// Whoever asked for a response: it gets each token as it is chosen, then the result.
using response_listener_actor = caf::typed_actor<
    caf::reacts_to<token_atom, TokenEvent>,       // one token of the response
    caf::reacts_to<done_atom, GenerateResult>>;   // the response ended (always sent, last)

// One response asked of the edge.
struct GenerateRequest {
  std::vector<int32_t> prompt;            // token ids, BOS included
  int max_tokens = 64;                    // 0: none (echo only: a prompt's logprobs)
  std::optional<double> threshold;        // θ; unset: the exit decider's
  std::optional<InferenceMode> mode;      // unset: the exit decider's
  std::optional<bool> speculate;          // unset: ce.speculation.enabled (collaborative mode only)
  SamplingParams sampling;               // logprobs >= 0: each token's logprobs
  bool echo = false;                      // the prompt tokens' logprobs too (needs sampling.logprobs >= 0)
  response_listener_actor listener;       // gets the tokens and the result; may be unset
  bool stop_at_eos = true;
};

// The producer of a session's rows, told how many no longer count against the upload limit.
using backlog_listener_actor = caf::typed_actor<
    caf::reacts_to<backlog_atom, uint64_t, uint32_t>>;  // (session, positions released)

using edge_inference_actor = backlog_listener_actor::extend<
    caf::reacts_to<generate_atom, GenerateRequest>,  // start a response (events go to its listener)
    caf::reacts_to<cancel_atom, uint64_t>,           // end response `generation` at its next token
    caf::reacts_to<step_atom, uint64_t>,             // own: a response's next token is due
    caf::reacts_to<step_atom>>;                      // own: one batched step of every due response

using exit_decider_actor = caf::typed_actor<
    caf::replies_to<policy_atom>::with<Policy>,  // the policy a new response runs with (link-aware)
    caf::reacts_to<policy_atom, Policy>,         // replace the configured policy
    caf::reacts_to<cloud_state_atom, bool>,      // the uploader's cloud link went up (true) or down
    caf::reacts_to<timing_atom, LinkTiming>>;    // edge_inference's round-trip and step averages

using uploader_actor = caf::typed_actor<
    caf::reacts_to<upload_atom, uint64_t, PositionRows>,  // rows of a session, in position order
    caf::replies_to<infer_atom, uint64_t, uint32_t, std::vector<char>>::with<std::vector<char>>,
                                                        // (session, position, InferRequest frame) ->
                                                        // InferReply or ErrorReply frame
    caf::reacts_to<resync_atom, uint64_t>,              // the cloud lost the session: re-send its log
    caf::reacts_to<truncate_atom, uint64_t, uint32_t>,  // drop a session's rows from this position on
                                                        // (a wrong speculation), here and on the cloud
    caf::replies_to<bye_atom, uint64_t>::with<uint64_t, uint64_t>,  // end a session -> payload bytes
                                                        // uploaded, of them bytes of truncated positions
    caf::replies_to<stats_atom>::with<LinkStats>,       // link states and upload backlog
    caf::reacts_to<link_atom, int>,                     // own: (re)connect to cloud node i
    caf::reacts_to<load_atom>>;                         // own: ask the linked clouds for their load

}  // namespace ce

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ce::GenerateRequest)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ce::Policy)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ce::LinkTiming)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(ce::PositionRows)
