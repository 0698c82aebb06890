#pragma once
// Where an edge with several clouds puts a session: weighted rendezvous hashing (highest random
// weight). Each node gets the score -w / ln(u), u a hash of (session, node name) in (0, 1); the
// session goes to the highest score. Every edge ranks the same session the same way without
// talking to the others, a node's loss moves only the sessions it held (each to its next node in
// the ranking), and a node's share of new sessions is w / sum(w). The weight falls with the
// node's load (load_weight), so a busy node gets fewer new sessions. Pure logic, no actors.
#include <cstdint>
#include <string>
#include <vector>

#include "messages/codec.hpp"

namespace ce {

struct PlacementCandidate {
  std::string name;     // host:port: the hash input, the same on every edge
  double weight = 1;    // > 0
  bool available = true;  // linked and not excluded for this session
  bool full = false;      // takes no new session now (at its cap, draining): ranked after the rest
};

// 1 / (1 + live contexts + queued requests + sessions placed there since that report): the
// report lags, so an edge counts what it sent since.
double load_weight(const wire::Load& reported, uint32_t placed_since_report);

// Candidate indices, best first: the available non-full ones by score, then the available full
// ones (a full node may have freed a slot since it reported; it refuses if not); unavailable ones
// are left out.
std::vector<int> rank_nodes(uint64_t session, const std::vector<PlacementCandidate>& nodes);

// The rendezvous score of (session, node) for weight w.
double rendezvous_score(uint64_t session, const std::string& node, double weight);

}  // namespace ce
