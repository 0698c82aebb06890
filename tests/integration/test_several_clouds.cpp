// Several cloud nodes behind real edge processes on loopback (issue: sessions spread by rendezvous
// hashing, failover by replay, drain, overloaded nodes). Every token needs the cloud (θ 2), so a
// degraded token would show any session that lost its cloud; the tokens are checked against the
// one-process oracle.
#include <boost/test/unit_test.hpp>

#include <httplib.h>

#include <nlohmann/json.hpp>

#include "linkem/link_emulator.hpp"
#include "model/runtime.hpp"
#include "model/text/sentencepiece_tokenizer.hpp"
#include "tests/integration/processes.hpp"

using namespace ce;
using namespace ce::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

constexpr int n_clouds = 3;
constexpr int n_edges = 6;

// Three clouds on fixed ports (so that a killed one comes back on its port), each behind a link
// emulator holding every byte `delay_ms` each way: responses then last long enough to be hit
// mid-way. The edges reach the clouds through the emulators.
struct Clouds {
  const Deployment& d;
  std::vector<uint16_t> ports;
  std::vector<std::string> configs;
  std::vector<std::unique_ptr<CloudProcess>> nodes;
  std::vector<std::unique_ptr<linkem::LinkEmulator>> links;
  int restarts = 0;

  Clouds(const Deployment& deployment, double delay_ms, const std::vector<std::string>& extra = {})
      : d(deployment) {
    for (int i = 0; i < n_clouds; ++i) {
      ports.push_back(free_port());
      configs.push_back(d.write_config("cloud" + std::to_string(i) + ".ini",
                                       "role = \"cloud\"\n" + (i < static_cast<int>(extra.size()) ? extra[i] : "") +
                                           "[ce.listen]\nport = " + std::to_string(ports[i]) +
                                           "\n[ce.http]\nport = 0\n"));
      start(i);
      linkem::LinkProfile p;
      p.name = "delayed";
      p.delay_ms = delay_ms;
      links.push_back(std::make_unique<linkem::LinkEmulator>(p, "127.0.0.1", ports[i]));
    }
  }
  void start(int i) {
    const std::string tag = std::to_string(i) + "-" + std::to_string(restarts++);
    auto node = std::make_unique<CloudProcess>(configs[i], d.dir.file("ready" + tag), d.dir.file("cloud" + tag + ".log"));
    if (static_cast<int>(nodes.size()) <= i) nodes.resize(i + 1);
    nodes[i] = std::move(node);
  }
  std::string edge_nodes() const {
    std::string out;
    for (const auto& l : links) out += (out.empty() ? "" : ", ") + std::string("127.0.0.1:") + std::to_string(l->port());
    return out;
  }
  json health(int i) const {
    httplib::Client c("127.0.0.1", nodes[i]->http_port);
    auto r = c.Get("/health");
    BOOST_REQUIRE_MESSAGE(r && r->status == 200, "cloud " << i << " /health failed");
    return json::parse(r->body);
  }
  // Sessions the node has opened: live + ended.
  int opened(int i) const {
    const auto h = health(i);
    return h["contexts"]["live"].get<int>() + h["contexts"]["evicted"].get<int>();
  }
  int live(int i) const { return health(i)["contexts"]["live"].get<int>(); }
  // Hellos the node welcomed (from its Prometheus text).
  int welcomed(int i) const {
    httplib::Client c("127.0.0.1", nodes[i]->http_port);
    auto r = c.Get("/metrics");
    BOOST_REQUIRE(r && r->status == 200);
    const std::string key = "ce_cloud_hellos_total{result=\"welcomed\"} ";
    const auto at = r->body.find(key);
    return at == std::string::npos ? 0 : std::stoi(r->body.substr(at + key.size()));
  }
  // Waits until node i has welcomed `edges` edges (each edge links to every cloud).
  void await_edges(int i, int edges, std::chrono::seconds timeout = 20s) const {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (welcomed(i) < edges && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(50ms);
    BOOST_REQUIRE_MESSAGE(welcomed(i) >= edges, "cloud " << i << " welcomed " << welcomed(i) << " of " << edges << " edges");
  }
  int busiest() const {
    int best = 0;
    for (int i = 1; i < n_clouds; ++i)
      if (live(i) > live(best)) best = i;
    return best;
  }
};

std::vector<int32_t> prompt_ids(const Deployment& d, const Model& model, const std::string& prompt) {
  SentencePieceTokenizer tok(tokenizer_file);
  std::vector<int32_t> ids{static_cast<int32_t>(model.config().bos_id)};
  for (auto id : tok.encode(prompt)) ids.push_back(id);
  return ids;
}

const std::vector<std::string> prompts = {"The jury said", "It was a", "In the city", "The man who",
                                          "She had never", "They went to"};

struct Edges {
  std::vector<std::unique_ptr<EdgeProcess>> procs;
  std::vector<std::vector<OracleToken>> want;  // per prompt
  int tokens;
  Edges(const Deployment& d, const Clouds& clouds, int max_tokens, const std::string& load_interval = "1s",
        const std::string& extra = "")
      : tokens(max_tokens) {
    const std::string config = d.write_config(
        "edge.ini", "role = \"edge\"\nexit.threshold = 2\n" + extra + "[ce.cloud]\nnodes = \"" + clouds.edge_nodes() +
                        "\"\nload-interval = " + load_interval + "\n[ce.request]\ndeadline = 3s\n");
    for (int e = 0; e < n_edges; ++e)
      procs.push_back(std::make_unique<EdgeProcess>(
          config, std::vector<std::string>{"--max-tokens", std::to_string(max_tokens), "--wait-cloud", "10s"},
          d.dir.file("edge" + std::to_string(e) + ".log")));
    auto model = Model::load(d.model_path);
    for (const auto& p : prompts) want.push_back(oracle(*model, prompt_ids(d, *model, p), 2.0, max_tokens));
  }
  void send_all() {
    for (int e = 0; e < n_edges; ++e) procs[e]->send_prompt(prompts[e]);
  }
  // Reads each edge's response and checks it: complete, every token the cloud's, the oracle's.
  void expect_all_from_cloud(const std::string& when) {
    for (int e = 0; e < n_edges; ++e) {
      std::string out;
      BOOST_REQUIRE_MESSAGE(procs[e]->read_response(out, 60s), when << ": edge " << e << " gave no response");
      const auto j = json::parse(out);
      BOOST_TEST(j["error"] == "", when << ": edge " << e << ": " << j["error"]);
      BOOST_TEST(j["stats"]["degraded_tokens"].get<int>() == 0, when << ": edge " << e << " degraded tokens");
      BOOST_TEST(j["stats"]["cloud_tokens"].get<int>() == tokens, when << ": edge " << e);
      expect_matches_oracle(j["tokens"].get<std::vector<int32_t>>(), want[static_cast<size_t>(e)], 2.0);
    }
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(several_clouds)

BOOST_AUTO_TEST_CASE(kill_9_of_one_cloud_mid_response_moves_its_sessions_with_no_degraded_token) {
  Deployment d;
  Clouds clouds(d, 8);  // ~20 ms a token: 40 tokens last ~1 s
  // Every third guess is made wrong: rollbacks are under way when the cloud dies, so requests of
  // dropped paths are outstanding and must not follow the session to its next node.
  Edges edges(d, clouds, 40, "1s", "speculation.test-miss-every = 3\n");
  for (int i = 0; i < n_clouds; ++i) clouds.await_edges(i, n_edges);

  edges.send_all();
  for (auto& e : edges.procs) BOOST_REQUIRE_EQUAL(e->read_tokens(5, 20s), 5);
  const int victim = clouds.busiest();
  const int victim_sessions = clouds.live(victim);
  BOOST_TEST_MESSAGE("kill -9 of cloud " << victim << " holding " << victim_sessions << " of 6 sessions");
  BOOST_TEST(victim_sessions >= 1);
  clouds.nodes[victim]->stop(SIGKILL);
  edges.expect_all_from_cloud("after kill -9");

  // New sessions go to the living nodes only.
  std::vector<int> before(n_clouds, 0);
  for (int i = 0; i < n_clouds; ++i)
    if (i != victim) before[i] = clouds.opened(i);
  edges.send_all();
  edges.expect_all_from_cloud("with one cloud dead");
  int placed_on_living = 0;
  for (int i = 0; i < n_clouds; ++i)
    if (i != victim) placed_on_living += clouds.opened(i) - before[i];
  BOOST_TEST(placed_on_living == n_edges);

  // The node comes back on its port: each edge links to it again and places new sessions there.
  clouds.start(victim);
  clouds.await_edges(victim, n_edges, 30s);
  for (int round = 0; round < 3; ++round) {
    edges.send_all();
    edges.expect_all_from_cloud("after the restart");
  }
  BOOST_TEST_MESSAGE("the restarted cloud opened " << clouds.opened(victim) << " of 18 new sessions");
  BOOST_TEST(clouds.opened(victim) >= 1);
  for (auto& e : edges.procs) BOOST_TEST(e->finish() == 0);
}

BOOST_AUTO_TEST_CASE(a_draining_cloud_finishes_or_hands_back_its_sessions_and_exits_0) {
  Deployment d;
  // Cloud 1 drains for 300 ms only: sessions still open then are handed back (the edges replay
  // them elsewhere); the others wait for their sessions to end.
  Clouds clouds(d, 8, {"", "session.drain-timeout = 300ms\n", ""});
  Edges edges(d, clouds, 40);
  for (int i = 0; i < n_clouds; ++i) clouds.await_edges(i, n_edges);

  for (int drained : {0, 1}) {
    edges.send_all();
    edges.send_all();  // a second response per edge: it starts while the node drains
    for (auto& e : edges.procs) BOOST_REQUIRE_EQUAL(e->read_tokens(5, 20s), 5);
    const int open = clouds.live(drained);
    const auto t0 = std::chrono::steady_clock::now();
    const int status = clouds.nodes[drained]->stop(SIGTERM);
    BOOST_TEST_MESSAGE("cloud " << drained << " drained " << open << " open sessions and exited after "
                                << std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() << " s");
    BOOST_TEST(status == 0);
    edges.expect_all_from_cloud("draining cloud " + std::to_string(drained) + ", first response");
    edges.expect_all_from_cloud("draining cloud " + std::to_string(drained) + ", second response");
    // Back on its port: every edge links to it again within a few seconds (its reconnect
    // backoff is at most 5 s). A link emulator leaking its sockets into the restarted nodes
    // once kept some edges off it for good (linkem: sockets are close-on-exec).
    clouds.start(drained);
    clouds.await_edges(drained, n_edges, 10s);
  }
  for (auto& e : edges.procs) BOOST_TEST(e->finish() == 0);
}

BOOST_AUTO_TEST_CASE(sessions_a_full_cloud_refuses_land_on_the_others) {
  Deployment d;
  // Cloud 0 holds one context at most, and the edges hear of its load only every 10 s: those that
  // place a session there learn of it from the refusal.
  Clouds clouds(d, 2, {"session.max-contexts = 1\n", "", ""});
  Edges edges(d, clouds, 12, "10s");
  for (int i = 0; i < n_clouds; ++i) clouds.await_edges(i, n_edges);
  // Another edge linked to cloud 0 alone, over a slow link, takes its one slot for the whole test.
  linkem::LinkProfile slow;
  slow.name = "slow";
  slow.delay_ms = 40;
  linkem::LinkEmulator hog_link(slow, "127.0.0.1", clouds.ports[0]);
  const std::string hog_config = d.write_config(
      "hog.ini", "role = \"edge\"\nexit.threshold = 2\n[ce.cloud]\nport = " + std::to_string(hog_link.port()) + "\n");
  EdgeProcess hog(hog_config, {"--max-tokens", "100", "--wait-cloud", "10s"}, d.dir.file("hog.log"));
  hog.send_prompt("The jury said");
  BOOST_REQUIRE_EQUAL(hog.read_tokens(3, 20s), 3);
  BOOST_REQUIRE_EQUAL(clouds.live(0), 1);
  for (int round = 0; round < 3; ++round) {
    edges.send_all();
    edges.expect_all_from_cloud("round " + std::to_string(round));
  }
  const auto refused = clouds.health(0)["contexts"]["refused"].get<int>();
  BOOST_TEST_MESSAGE("cloud 0 refused " << refused << " sessions; the others opened " << clouds.opened(1) << " and "
                                        << clouds.opened(2));
  BOOST_TEST(refused >= 1);
  BOOST_TEST(clouds.live(0) == 1);    // the hog's, still going
  BOOST_TEST(clouds.opened(0) == 1);
  BOOST_TEST(clouds.opened(1) + clouds.opened(2) == 3 * n_edges);
}

BOOST_AUTO_TEST_CASE(three_hundred_sessions_spread_over_three_equal_clouds) {
  Deployment d;
  Clouds clouds(d, 0);
  Edges edges(d, clouds, 2);
  for (int i = 0; i < n_clouds; ++i) clouds.await_edges(i, n_edges);
  constexpr int per_edge = 50;
  for (int k = 0; k < per_edge; ++k) edges.send_all();
  for (auto& e : edges.procs) {
    for (int k = 0; k < per_edge; ++k) {
      std::string out;
      BOOST_REQUIRE(e->read_response(out, 60s));
      BOOST_TEST(json::parse(out)["stats"]["degraded_tokens"].get<int>() == 0);
    }
  }
  int total = 0;
  for (int i = 0; i < n_clouds; ++i) {
    const int n = clouds.opened(i);
    total += n;
    BOOST_TEST_MESSAGE("cloud " << i << ": " << n << " of 300 sessions");
    BOOST_TEST(std::abs(n - 100) <= 20, "cloud " << i << " got " << n << " of 300 sessions");
  }
  BOOST_TEST(total == n_edges * per_edge);
  for (auto& e : edges.procs) BOOST_TEST(e->finish() == 0);
}

BOOST_AUTO_TEST_SUITE_END()
