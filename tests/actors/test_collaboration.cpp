// An edge and a cloud node (two actor systems, linked over loopback TCP) against the oracle.
#include <boost/test/unit_test.hpp>

#include <thread>

#include "actors/node.hpp"
#include "model/early_exit_runner.hpp"
#include "tests/actors/fixtures.hpp"

using namespace ce;
using namespace ce::test;

namespace {

struct Cluster {
  TempDir dir;
  std::string model_path;
  std::unique_ptr<Node> cloud;
  std::unique_ptr<Node> edge;

  explicit Cluster(std::function<void(NodeConfig&)> tweak_edge = {}, std::function<void(NodeConfig&)> tweak_cloud = {}) {
    model_path = write_model(dir, collab_config(), 7);
    auto cc = node_config(Role::cloud, model_path);
    if (tweak_cloud) tweak_cloud(cc);
    cloud = std::make_unique<Node>(cc);
    edge = make_edge(tweak_edge);
  }
  std::unique_ptr<Node> make_edge(const std::function<void(NodeConfig&)>& tweak = {}) {
    auto ec = node_config(Role::edge, model_path);
    ec.cloud_port = cloud->cloud_port();
    if (tweak) tweak(ec);
    auto node = std::make_unique<Node>(ec);
    BOOST_REQUIRE(node->wait_for_cloud(std::chrono::seconds(10)));
    return node;
  }
};

std::vector<int32_t> prompt_a() { return {1, 17, 33, 5, 61, 8, 22, 90}; }
std::vector<int32_t> prompt_b() { return {1, 44, 3, 71, 12}; }

GenerateResult run(Node& node, std::vector<int32_t> prompt, double theta, int n,
                   InferenceMode mode = InferenceMode::collaborative) {
  GenerateRequest req;
  req.prompt = std::move(prompt);
  req.max_tokens = n;
  req.threshold = theta;
  req.mode = static_cast<int>(mode);
  req.stop_at_eos = false;
  auto r = node.generate(req);
  BOOST_TEST(r.error == "");
  return r;
}

std::vector<int32_t> tokens_of(const std::vector<OracleToken>& v) {
  std::vector<int32_t> out;
  for (auto& t : v) out.push_back(t.token);
  return out;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(collaboration)

BOOST_AUTO_TEST_CASE(mixed_threshold_matches_the_oracle) {
  Cluster c;
  const int n = 24;
  const double theta = mixing_threshold(c.edge->model(), prompt_a(), n);
  BOOST_TEST_MESSAGE("mixing threshold " << theta);
  BOOST_REQUIRE(theta > 0);
  auto want = oracle(c.edge->model(), prompt_a(), theta, n);
  auto got = run(*c.edge, prompt_a(), theta, n);
  const size_t same = expect_matches_oracle(got.tokens, want, theta);
  int cloud_tokens = 0, edge_tokens = 0;
  for (size_t i = 0; i < same; ++i) {
    BOOST_TEST(got.layers[i] == want[i].layer);  // same source for every token
    (got.sources[i] == TokenSource::cloud ? cloud_tokens : edge_tokens)++;
  }
  BOOST_TEST(cloud_tokens >= 1);
  BOOST_TEST(edge_tokens >= 1);
  BOOST_TEST(got.stats.degraded_tokens == 0);
}

BOOST_AUTO_TEST_CASE(every_token_early_equals_local_early_exit) {
  Cluster c;
  auto got = run(*c.edge, prompt_a(), 0.0, 16);
  // The same rule in one process: ce-generate's early-exit path.
  EarlyExitRunner local(c.edge->model_ptr(), c.edge->model().config().n_layers);
  ExitRule rule;
  rule.threshold = 0.0;
  std::vector<int32_t> want;
  auto out = local.advance(prompt_a(), rule);
  for (int i = 0; i < 16; ++i) {
    want.push_back(out.token);
    BOOST_TEST(out.exit_layer == 1);
    out = local.advance({out.token}, rule);
  }
  BOOST_TEST(got.tokens == want, boost::test_tools::per_element());
  BOOST_TEST(got.stats.cloud_tokens == 0);
}

BOOST_AUTO_TEST_CASE(every_token_to_the_cloud_equals_full_model_greedy) {
  Cluster c;
  auto got = run(*c.edge, prompt_a(), 2.0, 16);
  auto want = oracle(c.edge->model(), prompt_a(), 2.0, 16);
  expect_matches_oracle(got.tokens, want, 2.0);
  BOOST_TEST(got.stats.cloud_tokens == 16);
  // The full model without any split or rounding agrees too (fp16 upload costs nothing here).
  EarlyExitRunner full(c.edge->model_ptr(), c.edge->model().config().n_layers);
  ExitRule rule;
  rule.threshold = 2.0;
  auto out = full.advance(prompt_a(), rule);
  std::vector<int32_t> plain;
  for (int i = 0; i < 16; ++i) {
    plain.push_back(out.token);
    out = full.advance({out.token}, rule);
  }
  expect_matches_oracle(plain, want, 2.0);
}

BOOST_AUTO_TEST_CASE(each_position_is_uploaded_exactly_once) {
  Cluster c;
  for (double theta : {0.0, 0.6, 2.0}) {
    auto r = run(*c.edge, prompt_a(), theta, 12);
    const uint64_t dim = static_cast<uint64_t>(c.edge->model().config().dim);
    BOOST_TEST(r.stats.bytes_uploaded == (prompt_a().size() + 12) * dim * 2);
  }
}

BOOST_AUTO_TEST_CASE(baselines_match_the_full_model) {
  Cluster c;
  auto want = tokens_of(oracle(c.edge->model(), prompt_a(), 2.0, 10));
  auto cloud_only = run(*c.edge, prompt_a(), 0.5, 10, InferenceMode::cloud_only);
  auto naive = run(*c.edge, prompt_a(), 0.5, 10, InferenceMode::naive_split);
  BOOST_TEST(cloud_only.tokens == want, boost::test_tools::per_element());
  BOOST_TEST(naive.tokens == want, boost::test_tools::per_element());
  BOOST_TEST(cloud_only.stats.bytes_uploaded == (prompt_a().size() + 10) * 4);
  // naïve split resends every position's fp32 state at each step: sum over steps of (p + 1) rows.
  uint64_t rows = 0;
  for (size_t p = prompt_a().size() - 1; p < prompt_a().size() - 1 + 10; ++p) rows += p + 1;
  BOOST_TEST(naive.stats.bytes_inline == rows * static_cast<uint64_t>(c.edge->model().config().dim) * 4);
}

BOOST_AUTO_TEST_CASE(both_roles_in_one_process_match_the_oracle) {
  TempDir dir;
  auto path = write_model(dir, collab_config(), 7);
  Node both(node_config(Role::both, path));
  BOOST_REQUIRE(both.wait_for_cloud(std::chrono::seconds(10)));
  auto want = oracle(both.model(), prompt_b(), 0.6, 12);
  auto got = run(both, prompt_b(), 0.6, 12);
  expect_matches_oracle(got.tokens, want, 0.6);
}

BOOST_AUTO_TEST_CASE(standalone_needs_no_cloud) {
  TempDir dir;
  auto path = write_model(dir, collab_config(), 7);
  auto ec = node_config(Role::edge, path);
  ec.cloud_port = 1;  // nothing listens there
  ec.mode = InferenceMode::standalone;
  Node edge(ec);
  auto r = run(edge, prompt_a(), 0.9, 12, InferenceMode::standalone);
  BOOST_TEST(r.tokens.size() == 12u);
  for (auto l : r.layers) BOOST_TEST(l <= 2);  // edge exits only
  BOOST_TEST(r.stats.bytes_uploaded == 0u);
}

BOOST_AUTO_TEST_CASE(upload_delay_does_not_slow_edge_resolved_tokens) {
  Cluster c([](NodeConfig& e) { e.upload_inject_delay = std::chrono::milliseconds(300); });
  auto r = run(*c.edge, prompt_a(), 0.0, 10);  // every token leaves at the first exit
  BOOST_TEST(r.stats.cloud_tokens == 0);
  double slowest = 0;
  for (double t : r.stats.token_ms) slowest = std::max(slowest, t);
  BOOST_TEST_MESSAGE("slowest edge token " << slowest << " ms with a 300 ms upload delay");
  BOOST_TEST(slowest < 150.0);
  // The uploads still all arrive, once each.
  BOOST_TEST(r.stats.bytes_uploaded == (prompt_a().size() + 10) * static_cast<uint64_t>(c.edge->model().config().dim) * 2);
}

BOOST_AUTO_TEST_CASE(a_slow_upload_link_pauses_the_edge_instead_of_queueing_without_bound) {
  const int n = 40;
  Cluster fast;
  auto reference = run(*fast.edge, prompt_a(), 0.0, n);
  // One position per 20 ms upload, at most 4 unacknowledged: the edge must wait for the link.
  Cluster slow([](NodeConfig& e) {
    e.upload_inject_delay = std::chrono::milliseconds(20);
    e.upload_batch = 1;
    e.upload_queue_limit = 4;
  });
  auto r = run(*slow.edge, prompt_a(), 0.0, n);
  BOOST_TEST(r.tokens == reference.tokens, boost::test_tools::per_element());
  BOOST_TEST(r.stats.bytes_uploaded == reference.stats.bytes_uploaded);
  // The prompt alone (8 positions) is over the limit: some token waits until the backlog halves
  // (at least two 20 ms uploads); without the limit no token waits on the link at all.
  auto slowest = [](const GenerateResult& g) { return *std::max_element(g.stats.token_ms.begin(), g.stats.token_ms.end()); };
  BOOST_TEST_MESSAGE("slowest token: throttled " << slowest(r) << " ms, unthrottled " << slowest(reference) << " ms");
  BOOST_TEST(slowest(r) > 35.0);
  BOOST_TEST(slowest(reference) < 35.0);
}

BOOST_AUTO_TEST_CASE(two_edges_share_one_cloud_without_seeing_each_other) {
  Cluster c;
  auto edge2 = c.make_edge();
  const double theta = 0.6;
  auto solo_a = run(*c.edge, prompt_a(), theta, 16);
  auto solo_b = run(*edge2, prompt_b(), theta, 16);
  GenerateResult both_a, both_b;
  std::thread ta([&] { both_a = run(*c.edge, prompt_a(), theta, 16); });
  std::thread tb([&] { both_b = run(*edge2, prompt_b(), theta, 16); });
  ta.join();
  tb.join();
  BOOST_TEST(both_a.tokens == solo_a.tokens, boost::test_tools::per_element());
  BOOST_TEST(both_b.tokens == solo_b.tokens, boost::test_tools::per_element());
  BOOST_TEST(solo_a.stats.cloud_tokens + solo_b.stats.cloud_tokens > 0);
}

BOOST_AUTO_TEST_CASE(bye_frees_the_context_at_once) {
  Cluster c;
  run(*c.edge, prompt_a(), 2.0, 6);
  // The Bye travels after the edge's result; it frees the context well before any idle timeout.
  std::tuple<uint64_t, uint64_t, uint64_t> stats;
  for (int i = 0; i < 100; ++i) {
    stats = c.cloud->cloud_stats();
    if (std::get<1>(stats) == 1u) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  BOOST_TEST(std::get<0>(stats) == 0u);  // live contexts
  BOOST_TEST(std::get<1>(stats) == 1u);  // ended
  BOOST_TEST(std::get<2>(stats) == 0u);  // bytes held
}

BOOST_AUTO_TEST_SUITE_END()
