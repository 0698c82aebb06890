#pragma once
// The cloud under load, alone: N simulated edges replay edge traffic over real connections to a
// running cloud node (its public port, as ce-node edges reach it), without running edge compute,
// so that the machine's cores measure the cloud. The traffic is precomputed once from the model
// (make_trace): the split-layer states an edge would upload for a text, and which positions an
// edge at θ would send to the cloud (its exits not confident). Each session then uploads the rows
// it owes and asks for each offloaded position in turn, waiting for the answer as an edge does.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config/node_config.hpp"
#include "messages/codec.hpp"

namespace ce {

class Model;

namespace bench {

struct LoadTrace {
  wire::Hello hello;               // the model's identity, as an edge of this model says it
  uint32_t dim = 0;
  uint32_t prompt = 0;             // positions uploaded before the first request
  std::vector<uint16_t> states;    // (positions, dim) fp16 split-layer states
  std::vector<uint8_t> offloaded;  // per position p: the token after p goes to the cloud
  uint32_t positions() const { return dim ? static_cast<uint32_t>(states.size() / dim) : 0; }
  uint32_t offloaded_count(uint32_t first_positions) const;  // offloaded among positions [0, first_positions)
};

// Runs the edge's early-exit runner over `tokens` (teacher-forced: the text's own tokens) at
// `threshold` with the model's default split; every position from prompt - 1 on whose exits are
// not confident is offloaded (all of them with threshold > 1).
LoadTrace make_trace(const std::shared_ptr<const Model>& model, const std::vector<int32_t>& tokens, uint32_t prompt,
                     double threshold);

struct LoadOptions {
  // The cloud nodes; with several, each session goes to the first of its rendezvous ranking over
  // equal weights (actors/edge/placement.hpp), as edges of equally loaded clouds place it.
  std::vector<CloudAddress> clouds;
  int sessions = 1;
  uint64_t session_base = 1;   // session ids session_base + i
  uint32_t positions = 0;      // each session replays the trace's positions [0, positions); 0 = all
  uint32_t catch_up = 0;       // > 0: one more session uploads this many positions and asks once
  std::chrono::milliseconds deadline{60000};
};

struct LoadResult {
  int sessions = 0;
  uint64_t requests = 0;       // infer requests answered with a token
  uint64_t errors = 0;         // refused or failed requests (the run goes on)
  double seconds = 0;          // first request sent to the last session done
  double tokens_per_s = 0;     // answered requests / seconds
  double p50_ms = 0, p99_ms = 0, max_ms = 0;  // infer round trip (sent -> reply), all sessions
  // The same split as serving benchmarks split time to first token from inter-token latency: a
  // session's first request carries its prompt's catch-up (all sessions start together, so the
  // cloud prefills sessions x prompt positions at once), the later ones one or a few positions each.
  double first_p50_ms = 0, first_max_ms = 0;  // each session's first request
  double next_p50_ms = 0, next_p99_ms = 0;    // every later request
  double catch_up_ms = 0;      // the catch-up session's one request, when there was one
  std::vector<int> sessions_per_cloud;  // in LoadOptions::clouds order
  std::string first_error;
};

// Throws std::runtime_error when the cloud cannot be reached or refuses the Hello.
LoadResult run_load(const LoadTrace& trace, const LoadOptions& options);

}  // namespace bench
}  // namespace ce
