// Placement of sessions on several clouds (actors/edge/placement.hpp): the rendezvous ranking
// checked against its definition and its properties: a session's node is the same on every
// call, losing a node moves only its sessions, shares follow the weights, full nodes come last.
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

#include "actors/edge/placement.hpp"

using namespace ce;

namespace {

std::vector<PlacementCandidate> equal_nodes(int n) {
  std::vector<PlacementCandidate> nodes;
  for (int i = 0; i < n; ++i) nodes.push_back({"10.0.0." + std::to_string(i + 1) + ":7700", 1.0, true, false});
  return nodes;
}

std::vector<uint64_t> session_ids(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint64_t> ids(n);
  for (auto& id : ids) id = rng();
  return ids;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(placement)

BOOST_AUTO_TEST_CASE(ranking_is_the_order_of_the_scores) {
  auto nodes = equal_nodes(5);
  nodes[1].weight = 0.25;
  nodes[3].weight = 3;
  for (uint64_t session : session_ids(50, 1)) {
    const auto order = rank_nodes(session, nodes);
    BOOST_TEST_REQUIRE(order.size() == 5u);
    for (size_t k = 1; k < order.size(); ++k)
      BOOST_TEST(rendezvous_score(session, nodes[order[k - 1]].name, nodes[order[k - 1]].weight) >=
                 rendezvous_score(session, nodes[order[k]].name, nodes[order[k]].weight));
    BOOST_TEST((rank_nodes(session, nodes) == order));  // the same on every call (and every edge)
  }
}

BOOST_AUTO_TEST_CASE(losing_a_node_moves_only_its_sessions_each_to_its_next_node) {
  auto nodes = equal_nodes(3);
  auto without = nodes;
  without[1].available = false;
  int moved = 0;
  for (uint64_t session : session_ids(1000, 2)) {
    const auto before = rank_nodes(session, nodes);
    const auto after = rank_nodes(session, without);
    BOOST_TEST_REQUIRE(after.size() == 2u);
    if (before.front() == 1) {
      ++moved;
      BOOST_TEST(after.front() == before[1]);  // the next node of its own ranking
    } else {
      BOOST_TEST(after.front() == before.front());  // untouched
    }
  }
  BOOST_TEST(moved > 250);  // about a third
  BOOST_TEST(moved < 420);
}

BOOST_AUTO_TEST_CASE(three_equal_nodes_share_300_sessions_within_a_fifth_of_a_third) {
  const auto nodes = equal_nodes(3);
  std::map<int, int> count;
  for (uint64_t session : session_ids(300, 3)) count[rank_nodes(session, nodes).front()]++;
  for (int i = 0; i < 3; ++i) {
    BOOST_TEST_MESSAGE("node " << i << ": " << count[i] << " sessions");
    BOOST_TEST(std::abs(count[i] - 100) <= 20);
  }
}

BOOST_AUTO_TEST_CASE(shares_follow_the_weights) {
  auto nodes = equal_nodes(3);
  nodes[0].weight = 1;
  nodes[1].weight = 2;
  nodes[2].weight = 5;  // shares 1/8, 2/8, 5/8
  std::map<int, int> count;
  const int n = 40000;
  for (uint64_t session : session_ids(n, 4)) count[rank_nodes(session, nodes).front()]++;
  const double want[] = {1.0 / 8, 2.0 / 8, 5.0 / 8};
  for (int i = 0; i < 3; ++i) BOOST_TEST(std::abs(count[i] / double(n) - want[i]) < 0.01, "node " << i << ": " << count[i]);
}

BOOST_AUTO_TEST_CASE(full_nodes_come_after_the_others_and_unavailable_ones_not_at_all) {
  auto nodes = equal_nodes(4);
  nodes[0].full = true;
  nodes[2].available = false;
  for (uint64_t session : session_ids(200, 5)) {
    const auto order = rank_nodes(session, nodes);
    BOOST_TEST_REQUIRE(order.size() == 3u);
    BOOST_TEST(order.back() == 0);
    BOOST_TEST((std::find(order.begin(), order.end(), 2) == order.end()));
  }
  for (auto& n : nodes) n.available = false;
  BOOST_TEST(rank_nodes(7, nodes).empty());
}

BOOST_AUTO_TEST_CASE(load_weight_falls_with_what_the_node_holds_and_what_was_sent_since) {
  wire::Load idle, busy;
  busy.live_contexts = 3;
  busy.queued_requests = 1;
  BOOST_TEST(load_weight(idle, 0) == 1.0);
  BOOST_TEST(load_weight(busy, 0) == 1.0 / 5);
  BOOST_TEST(load_weight(busy, 2) == 1.0 / 7);
  wire::Load full;
  full.max_contexts = 4;
  full.live_contexts = 4;
  BOOST_TEST(full.full());
  full.live_contexts = 3;
  BOOST_TEST(!full.full());
  full.draining = true;
  BOOST_TEST(full.full());
  wire::Load memory;
  memory.memory_cap_bytes = 100;
  memory.context_bytes = 100;
  BOOST_TEST(memory.full());
  BOOST_TEST(!wire::Load{}.full());  // an older cloud reports nothing: not full
}

BOOST_AUTO_TEST_SUITE_END()
