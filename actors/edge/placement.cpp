#include "actors/edge/placement.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace ce {
namespace {

// FNV-1a then a splitmix64 finaliser: fixed here (not std::hash), so that every edge build
// ranks a session alike.
uint64_t hash_pair(uint64_t session, const std::string& node) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : node) h = (h ^ ch) * 1099511628211ull;
  uint64_t z = h ^ (session + 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

double rendezvous_score(uint64_t session, const std::string& node, double weight) {
  // u in (0, 1) from the top 53 bits; -w / ln(u) > 0, largest wins.
  const double u = (static_cast<double>(hash_pair(session, node) >> 11) + 0.5) / 9007199254740992.0;
  return -weight / std::log(u);
}

double load_weight(const wire::Load& reported, uint32_t placed_since_report) {
  return 1.0 / (1.0 + reported.live_contexts + reported.queued_requests + placed_since_report);
}

std::vector<int> rank_nodes(uint64_t session, const std::vector<PlacementCandidate>& nodes) {
  std::vector<int> order;
  std::vector<double> score(nodes.size());
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (!nodes[i].available) continue;
    order.push_back(static_cast<int>(i));
    score[i] = rendezvous_score(session, nodes[i].name, nodes[i].weight);
  }
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    if (nodes[a].full != nodes[b].full) return !nodes[a].full;
    return score[a] > score[b];
  });
  return order;
}

}  // namespace ce
