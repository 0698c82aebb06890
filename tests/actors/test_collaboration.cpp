// An edge and a cloud node (two actor systems, linked over loopback TCP) against the oracle.
#include <boost/test/unit_test.hpp>

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <atomic>
#include <fstream>
#include <thread>

#include "actors/node/node.hpp"
#include "messages/codec.hpp"
#include "model/early_exit_runner.hpp"
#include "tests/actors/fixtures.hpp"
#include "tests/loopback.hpp"
#include "linkem/link_emulator.hpp"

using namespace ce;
using namespace ce::test;
using namespace std::chrono_literals;

namespace {

struct Cluster {
  TempDir dir;
  std::string model_path;
  std::unique_ptr<Node> cloud;
  std::unique_ptr<Node> edge;

  explicit Cluster(std::function<void(NodeConfig&)> tweak_edge = {}, std::function<void(NodeConfig&)> tweak_cloud = {},
                   const ModelConfig& model_config = collab_config()) {
    model_path = write_model(dir, model_config, 7);
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
  // An edge that reaches the cloud through `link`, an emulator in front of the cloud's port.
  std::unique_ptr<Node> make_edge_behind(const linkem::LinkEmulator& link,
                                         const std::function<void(NodeConfig&)>& tweak = {}) {
    return make_edge([&](NodeConfig& e) {
      e.cloud_port = link.port();
      if (tweak) tweak(e);
    });
  }
};

// A link that holds every byte `one_way` in each direction (uploads, acks, requests, answers).
linkem::LinkProfile delayed(std::chrono::milliseconds one_way) {
  linkem::LinkProfile p;
  p.name = "delayed";
  p.delay_ms = static_cast<double>(one_way.count());
  return p;
}

std::vector<int32_t> prompt_a() { return {1, 17, 33, 5, 61, 8, 22, 90}; }
std::vector<int32_t> prompt_b() { return {1, 44, 3, 71, 12}; }

GenerateRequest request_for(std::vector<int32_t> prompt, double theta, int n) {
  GenerateRequest req;
  req.prompt = std::move(prompt);
  req.max_tokens = n;
  req.threshold = theta;
  req.stop_at_eos = false;
  return req;
}

GenerateResult run(Node& node, std::vector<int32_t> prompt, double theta, int n,
                   InferenceMode mode = InferenceMode::collaborative) {
  auto req = request_for(std::move(prompt), theta, n);
  req.mode = mode;
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

// The default on an edge (ce.model.parts auto) and `role` on the cloud: each process holds only its
// tensors, and the responses still equal the oracle of the whole model, loaded apart.
BOOST_AUTO_TEST_CASE(nodes_holding_only_their_parts_equal_the_full_model) {
  const auto role_parts = [](NodeConfig& c) { c.model_parts = c.role == Role::edge ? "auto" : "role"; };
  Cluster c(role_parts, role_parts);
  const auto full = Model::load(c.model_path);
  const auto& split = c.edge->config().split_layer;
  BOOST_TEST(!c.edge->model().decoder().weights().layers[static_cast<size_t>(split)].wq.defined());
  BOOST_TEST(!c.cloud->model().decoder().weights().layers[0].wq.defined());
  BOOST_TEST(c.edge->model().weights_hash() == c.cloud->model().weights_hash());
  const int n = 16;
  const double theta = mixing_threshold(*full, prompt_a(), n);
  BOOST_REQUIRE(theta > 0);
  for (double t : {theta, 2.0}) {
    auto got = run(*c.edge, prompt_a(), t, n);
    expect_matches_oracle(got.tokens, oracle(*full, prompt_a(), t, n), t);
    BOOST_TEST(got.stats.degraded_tokens == 0);
  }
  // The cloud-only baseline needs the layers this cloud left out: a clear failure, not a crash.
  auto req = request_for(prompt_a(), 2.0, 4);
  req.mode = InferenceMode::cloud_only;
  const auto baseline = c.edge->generate(req);
  BOOST_TEST(baseline.error.find("did not load the token embedding") != std::string::npos, baseline.error);
}

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

// Eleven responses at once on one edge (different prompts, θ from "every token at the edge" to
// "every token to the cloud", and the cloud-only and naïve-split baselines, whose contexts run other
// layers on the cloud): the edge steps them together and the cloud batches their requests by layer
// range, yet each response equals its own oracle, as when it runs alone.
BOOST_AUTO_TEST_CASE(concurrent_responses_each_match_their_oracle) {
  Cluster c;
  const int n = 16;
  const double mixing = mixing_threshold(c.edge->model(), prompt_a(), n);
  BOOST_REQUIRE(mixing > 0);
  struct Case {
    std::vector<int32_t> prompt;
    double theta;  // of the oracle: 2 for the baselines, which equal the full model's greedy tokens
    InferenceMode mode = InferenceMode::collaborative;
  };
  // 8 and then 32 responses at once (the edge's and the cloud's batched steps with that many rows),
  // each its own prompt, θ and mode: of every 11, 8 collaborative at θ 0, 2 and the mixing θ, 2
  // cloud-only, 1 naive split.
  for (int count : {8, 32}) {
    std::vector<Case> cases;
    for (int i = 0; i < count; ++i) {
      auto prompt = i % 2 ? prompt_b() : prompt_a();
      prompt.push_back(static_cast<int32_t>((3 + 7 * i) % c.edge->model().config().vocab_size));  // each its own
      const int kind = i % 11;
      const auto mode = kind == 8 || kind == 9 ? InferenceMode::cloud_only
                        : kind == 10          ? InferenceMode::naive_split
                                              : InferenceMode::collaborative;
      cases.push_back({prompt, kind >= 8 ? 2.0 : kind % 4 == 0 ? 0.0 : kind % 4 == 1 ? 2.0 : mixing, mode});
    }
    std::vector<GenerateResult> got(cases.size());
    std::vector<std::thread> clients;
    for (size_t i = 0; i < cases.size(); ++i)
      clients.emplace_back([&, i] {
        auto req = request_for(cases[i].prompt, cases[i].theta, n);
        req.mode = cases[i].mode;
        got[i] = c.edge->generate(req);
      });
    for (auto& t : clients) t.join();
    for (size_t i = 0; i < cases.size(); ++i) {
      BOOST_TEST_CONTEXT("response " << i << " of " << count << " theta " << cases[i].theta << " mode "
                                      << to_string(cases[i].mode)) {
        BOOST_TEST(got[i].error == "");
        expect_matches_oracle(got[i].tokens, oracle(c.edge->model(), cases[i].prompt, cases[i].theta, n), cases[i].theta);
        BOOST_TEST(got[i].stats.degraded_tokens == 0);
      }
    }
  }
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
  // Without speculation every uploaded byte is a position of the response, once. With it, the
  // rows of rolled-back positions are uploaded too, and counted: confirmed bytes (uploaded minus
  // wasted) are the positions once, and the cloud took in exactly the positions plus the wasted ones.
  // Behind a 3 ms link the wire outlasts the cloud's compute, so the edge runs ahead of its
  // answers and the forced misses roll back; on bare loopback it may not run ahead at all
  // (speculation_depth), and whether it did turned on the timing of the run.
  Cluster c;
  linkem::LinkEmulator link(delayed(3ms), "127.0.0.1", c.cloud->cloud_port());
  auto edge = c.make_edge_behind(link, [](NodeConfig& e) { e.speculation_test_miss_every = 3; });
  uint64_t received = 0;
  int rolled_back = 0;
  for (bool speculate : {false, true})
    for (double theta : {0.0, 0.6, 2.0}) {
      auto request = request_for(prompt_a(), theta, 12);
      request.speculate = speculate;
      auto r = edge->generate(request);
      BOOST_TEST_CONTEXT("speculate " << speculate << " theta " << theta) {
        BOOST_TEST(r.error == "");
        const uint64_t row = 2 * static_cast<uint64_t>(edge->model().config().dim);
        const uint64_t positions = prompt_a().size() + 12;
        BOOST_TEST(r.stats.bytes_uploaded - r.stats.bytes_wasted == positions * row);
        if (!speculate) BOOST_TEST(r.stats.bytes_wasted == 0u);
        const auto s = c.cloud->cloud_stats();
        BOOST_TEST(s.positions_received - received == positions + r.stats.bytes_wasted / row);
        BOOST_TEST(s.positions_repeated == 0u);
        received = s.positions_received;
        rolled_back += r.stats.rolled_back;
      }
    }
  BOOST_TEST(rolled_back > 0);  // the forced misses did roll back
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
  const double theta = mixing_threshold(edge.model(), prompt_a(), 12);
  BOOST_REQUIRE(theta > 0);
  auto r = run(edge, prompt_a(), theta, 12, InferenceMode::standalone);
  // The standalone rule: the first confident edge exit, else the last edge exit.
  auto want = oracle(edge.model(), prompt_a(), theta, 12, 0, true);
  expect_matches_oracle(r.tokens, want, theta);
  int last_exit = 0;
  for (size_t i = 0; i < r.layers.size(); ++i) {
    BOOST_TEST(r.layers[i] <= 2);  // edge exits only
    BOOST_TEST(r.layers[i] == want[i].layer);
    last_exit += r.layers[i] == 2 && want[i].confidence < theta;
  }
  BOOST_TEST(last_exit >= 1);  // some token had no confident exit and came from the last one
  BOOST_TEST(r.stats.bytes_uploaded == 0u);
}

BOOST_AUTO_TEST_CASE(a_slow_link_does_not_slow_edge_resolved_tokens) {
  // Acknowledgements take 300 ms to come back. Every token leaves at the first exit. When the last
  // token reaches the listener, uploads must still be unacknowledged: the edge produced its tokens
  // without waiting for the link.
  Cluster c;
  linkem::LinkEmulator link(delayed(150ms), "127.0.0.1", c.cloud->cloud_port());
  auto edge = c.make_edge_behind(link);
  uint64_t queued_at_last = 0;
  GenerateRequest req;
  req.prompt = prompt_a();
  req.max_tokens = 10;
  req.threshold = 0.0;
  req.stop_at_eos = false;
  int seen = 0;
  auto r = edge->generate(req, [&](const TokenEvent&) {
    if (++seen == 10) queued_at_last = edge->link_stats().queued_positions;
    return true;
  });
  BOOST_TEST(r.error == "");
  BOOST_TEST(r.stats.cloud_tokens == 0);
  BOOST_TEST(r.stats.backpressure_pauses == 0);
  BOOST_TEST_MESSAGE(queued_at_last << " positions still queued for upload at the last token");
  BOOST_TEST(queued_at_last > 0u);
  // The uploads still all arrive, once each.
  BOOST_TEST(r.stats.bytes_uploaded == (prompt_a().size() + 10) * static_cast<uint64_t>(edge->model().config().dim) * 2);
  BOOST_TEST(c.cloud->cloud_stats().positions_received == prompt_a().size() + 10);
}

BOOST_AUTO_TEST_CASE(a_slow_upload_link_pauses_the_edge_instead_of_queueing_without_bound) {
  const int n = 40;
  Cluster fast;
  auto reference = run(*fast.edge, prompt_a(), 0.0, n);
  // One position per chunk, acknowledged 20 ms later, at most 4 unacknowledged: the edge must wait
  // for the link.
  linkem::LinkEmulator link(delayed(10ms), "127.0.0.1", fast.cloud->cloud_port());
  auto slow = fast.make_edge_behind(link, [&](NodeConfig& e) {
    e.upload_batch = 1;
    e.upload_queue_limit = 4;
  });
  auto r = run(*slow, prompt_a(), 0.0, n);
  BOOST_TEST(r.tokens == reference.tokens, boost::test_tools::per_element());
  BOOST_TEST(r.stats.bytes_uploaded == reference.stats.bytes_uploaded);
  // The prompt alone (8 positions) is over the limit: the edge holds its next step until the
  // backlog halves; without the limit it never holds one.
  BOOST_TEST_MESSAGE("steps held for backpressure: throttled " << r.stats.backpressure_pauses << ", unthrottled "
                                                               << reference.stats.backpressure_pauses);
  BOOST_TEST(r.stats.backpressure_pauses >= 1);
  BOOST_TEST(reference.stats.backpressure_pauses == 0);
  // Lower bound only: a held step waits for at least one 20 ms upload.
  BOOST_TEST(*std::max_element(r.stats.token_ms.begin(), r.stats.token_ms.end()) >= 20.0);
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
  CloudStats stats;
  for (int i = 0; i < 500; ++i) {
    stats = c.cloud->cloud_stats();
    if (stats.evicted == 1u) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  BOOST_TEST(stats.live == 0u);
  BOOST_TEST(stats.evicted == 1u);
  BOOST_TEST(stats.bytes == 0u);
}

BOOST_AUTO_TEST_SUITE_END()

namespace {


uint16_t free_port() {
  uint16_t port = 0;
  const int fd = listen_loopback(&port);
  close(fd);
  return port;
}

// Polls `done` every 10 ms for at most `cap`; true once it held.
bool eventually(const std::function<bool()>& done, std::chrono::milliseconds cap = 20s) {
  const auto until = std::chrono::steady_clock::now() + cap;
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

wire::Hello hello_for(const Model& model) {
  wire::Hello h;
  h.model_id = model.config().name;
  h.weights_hash = model.weights_hash();
  h.split_layer = static_cast<uint32_t>(model.config().default_split);
  h.hidden_dim = static_cast<uint32_t>(model.config().dim);
  h.client_name = "test-peer";
  return h;
}

// A stand-in cloud for the edge to distrust: it speaks the real protocol over a real CAF link,
// acknowledges every upload and answers every InferRequest with `token` for the requested
// position + `position_shift`. A test peer, not a part a user runs.
struct LyingCloud {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  caf::actor liar;
  uint16_t port = 0;

  ~LyingCloud() {
    caf::anon_send_exit(liar, caf::exit_reason::user_shutdown);  // the system waits for its actors
    liar = nullptr;
  }
  LyingCloud(const Model& model, int32_t token, int32_t position_shift) {
    cfg.load<caf::io::middleman>();
    cfg.set("logger.console", caf::atom("none"));
    sys = std::make_unique<caf::actor_system>(cfg);
    wire::Welcome welcome;
    welcome.model_id = model.config().name;
    welcome.weights_hash = model.weights_hash();
    welcome.split_layer = static_cast<uint32_t>(model.config().default_split);
    welcome.hidden_dim = static_cast<uint32_t>(model.config().dim);
    welcome.max_positions = static_cast<uint32_t>(model.config().max_seq);
    liar = sys->spawn([=](caf::event_based_actor*) -> caf::behavior {
      return {[=](frame_atom, const std::vector<char>& bytes) -> std::vector<char> {
        auto d = wire::decode(bytes, {});
        if (std::holds_alternative<wire::Hello>(d.message)) return wire::encode(welcome);
        if (auto* u = std::get_if<wire::UploadChunk>(&d.message))
          return wire::encode(wire::UploadAck{u->session_id, u->chunk_id, u->first_position + u->count});
        if (auto* r = std::get_if<wire::InferRequest>(&d.message))
          return wire::encode(wire::InferReply{r->session_id, r->request_id,
                                               r->position + static_cast<uint32_t>(position_shift), token, 0.5f, 10,
                                               false, {}});
        if (auto* b = std::get_if<wire::Bye>(&d.message)) return wire::encode(wire::Bye{b->session_id});
        return wire::encode(wire::ErrorReply{error::bad_request, "not a request"});
      }};
    });
    auto published = sys->middleman().publish(liar, 0, "127.0.0.1");
    BOOST_REQUIRE(published);
    port = *published;
  }
};

// Holds a context on `cloud` from another actor system, as another edge would.
struct Occupant {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;

  explicit Occupant(Node& cloud) {
    cfg.load<caf::io::middleman>();
    cfg.set("logger.console", caf::atom("none"));
    sys = std::make_unique<caf::actor_system>(cfg);
    auto server = sys->middleman().remote_actor<cloud_front_actor>("127.0.0.1", cloud.cloud_port());
    BOOST_REQUIRE(server);
    caf::scoped_actor self{*sys};
    wire::UploadChunk rows;
    rows.session_id = 1;
    rows.count = 2;
    rows.payload.assign(2 * static_cast<size_t>(cloud.model().config().dim) * 2, 0);
    for (const wire::Message& m : std::vector<wire::Message>{hello_for(cloud.model()), rows})
      self->request(*server, 10s, frame_atom::value, wire::encode(m))
          .receive([](const std::vector<char>&) {}, [](caf::error& e) { BOOST_FAIL("occupant: " << to_string(e)); });
  }
};


}  // namespace

BOOST_AUTO_TEST_SUITE(edge_recovery)

BOOST_AUTO_TEST_CASE(a_cloud_answer_outside_the_vocabulary_or_for_another_position_degrades) {
  TempDir dir;
  const auto path = write_model(dir, collab_config(), 7);
  for (auto [token, shift] : std::vector<std::pair<int32_t, int32_t>>{{5000, 0}, {-3, 0}, {7, 1}}) {
    auto model = Model::load(path);
    LyingCloud liar(*model, token, shift);
    auto ec = node_config(Role::edge, path);
    ec.cloud_port = liar.port;
    Node edge(ec);
    BOOST_REQUIRE(edge.wait_for_cloud(10s));
    auto r = run(edge, prompt_a(), 2.0, 6);
    BOOST_TEST(r.stats.cloud_tokens == 0, "token " << token << " shift " << shift);
    BOOST_TEST(r.stats.degraded_tokens == 6);
    // What stands in is the edge's last exit, token for token.
    expect_matches_oracle(r.tokens, oracle(edge.model(), prompt_a(), 2.0, 6, 0, true), 2.0);
  }
}

BOOST_AUTO_TEST_CASE(an_overloaded_cloud_sends_the_edge_standalone_without_waiting_out_a_deadline) {
  // Deadlines far beyond the response's own cap (20 s): a request left to wait one fails the test.
  Cluster c([](NodeConfig& e) { e.request_deadline = 60s; },
            [](NodeConfig& cc) {
              cc.max_contexts = 1;
              cc.request_deadline = 60s;
            });
  Occupant occupant(*c.cloud);
  auto r = c.edge->generate(request_for(prompt_a(), 2.0, 8), {}, 20s);
  BOOST_TEST(r.error == "");
  BOOST_TEST(r.stats.cloud_tokens == 0);
  BOOST_TEST(r.stats.degraded_tokens == 8);
  BOOST_TEST(c.cloud->cloud_stats().sessions_refused == 1u);
  expect_matches_oracle(r.tokens, oracle(c.edge->model(), prompt_a(), 2.0, 8, 0, true), 2.0);
}

BOOST_AUTO_TEST_CASE(a_context_evicted_mid_response_is_rebuilt_from_the_log_and_the_response_stays_exact) {
  // The cloud evicts after 1 s of silence. At the 10th token the link starts to delay everything
  // by 2.5 s, so the context falls idle and is evicted while the edge's next request is on its
  // way; once the eviction is seen the delay is lifted. The edge must rebuild the context from
  // its log and finish with cloud tokens only, equal to the oracle.
  // Speculating edges (the default) with and without forced misses: the eviction lands while
  // guesses and their requests are out.
  for (int miss_every : {0, 2}) {
  BOOST_TEST_CONTEXT("forced miss every " << miss_every) {
  Cluster c({}, [](NodeConfig& cc) { cc.idle_timeout = 1s; });
  linkem::LinkEmulator link(linkem::LinkProfile{}, "127.0.0.1", c.cloud->cloud_port());
  auto edge = c.make_edge_behind(link, [&](NodeConfig& e) {
    e.request_deadline = 30s;
    e.speculation_test_miss_every = miss_every;
  });
  const int n = 30;
  std::atomic<bool> evicted{false};
  std::thread watcher([&] {
    evicted = eventually([&] { return c.cloud->cloud_stats().evicted >= 1; }, 60s);
    link.set_profile(linkem::LinkProfile{});
  });
  int seen = 0;
  auto r = edge->generate(request_for(prompt_a(), 2.0, n), [&](const TokenEvent&) {
    if (++seen == 10) {
      linkem::LinkProfile slow;
      slow.delay_ms = 2500;
      link.set_profile(slow);
    }
    return true;
  });
  watcher.join();
  BOOST_TEST(evicted.load());
  BOOST_TEST(r.error == "");
  BOOST_TEST(r.stats.resyncs == 1);
  BOOST_TEST(r.stats.degraded_tokens == 0);
  BOOST_TEST(r.stats.cloud_tokens == n);
  BOOST_TEST(r.stats.speculation);
  expect_matches_oracle(r.tokens, oracle(edge->model(), prompt_a(), 2.0, n), 2.0);
  }
  }
}

BOOST_AUTO_TEST_CASE(after_a_cloud_restart_every_open_session_is_sent_again_from_its_log) {
  TempDir dir;
  const auto path = write_model(dir, collab_config(), 7);
  auto cc = node_config(Role::cloud, path);
  cc.listen_port = free_port();
  auto cloud = std::make_unique<Node>(cc);
  auto ec = node_config(Role::edge, path);
  ec.cloud_port = cc.listen_port;
  Node edge(ec);
  BOOST_REQUIRE(edge.wait_for_cloud(10s));
  const auto dim = static_cast<uint32_t>(edge.model().config().dim);
  auto rows = [&](uint32_t first, uint32_t count) {
    return PositionRows::states_f16(first, count, dim, std::vector<uint16_t>(count * dim, 0).data());
  };
  // Two open sessions, fed straight to the edge's uploader as edge_inference would.
  caf::scoped_actor producer{edge.system()};
  producer->send(edge.uploader(), upload_atom::value, uint64_t{11}, rows(0, 6));
  producer->send(edge.uploader(), upload_atom::value, uint64_t{12}, rows(0, 4));
  BOOST_REQUIRE(eventually([&] { return cloud->cloud_stats().positions_received == 10u; }));
  cloud.reset();  // the cloud goes away with both contexts
  BOOST_REQUIRE(eventually([&] { return !edge.link_stats().connected; }));
  cloud = std::make_unique<Node>(cc);  // back on the same port, holding nothing
  BOOST_REQUIRE(eventually([&] { return cloud->cloud_stats().positions_received == 10u; }));
  auto s = cloud->cloud_stats();
  BOOST_TEST(s.live == 2u);
  BOOST_TEST(s.positions_repeated == 0u);
  // The sessions go on where they were.
  producer->send(edge.uploader(), upload_atom::value, uint64_t{11}, rows(6, 2));
  BOOST_TEST(eventually([&] { return cloud->cloud_stats().positions_received == 12u; }));
  for (uint64_t session : {11, 12})
    producer->request(edge.uploader(), 10s, bye_atom::value, session)
        .receive([](uint64_t, uint64_t) {}, [](caf::error& e) { BOOST_FAIL("bye: " << to_string(e)); });
  BOOST_TEST(eventually([&] { return cloud->cloud_stats().live == 0u; }));
}

BOOST_AUTO_TEST_CASE(baselines_without_a_cloud_link) {
  TempDir dir;
  auto ec = node_config(Role::edge, write_model(dir, collab_config(), 7));
  ec.cloud_port = 1;  // nothing listens there
  Node edge(ec);
  auto cloud_only = request_for(prompt_a(), 0.5, 8);
  cloud_only.mode = InferenceMode::cloud_only;
  auto r = edge.generate(cloud_only, {}, 20s);
  BOOST_TEST(r.error.find("cloud-only response failed") != std::string::npos, r.error);
  BOOST_TEST(to_string(r.finish_reason) == std::string("error"));
  BOOST_TEST(r.tokens.empty());
  // Naïve split has the edge layers: it answers from the last edge exit.
  auto naive = request_for(prompt_a(), 0.5, 8);
  naive.mode = InferenceMode::naive_split;
  r = edge.generate(naive, {}, 20s);
  BOOST_TEST(r.error == "");
  BOOST_TEST(r.stats.degraded_tokens == 8);
  expect_matches_oracle(r.tokens, oracle(edge.model(), prompt_a(), 2.0, 8, 0, true), 2.0);
}

BOOST_AUTO_TEST_CASE(responses_end_at_eos_and_at_a_full_context_with_their_reasons) {
  // End of sequence: make the oracle's 5th-or-later new token (one not seen before it) the eos.
  auto config = collab_config();
  TempDir probe;
  auto probe_model = Model::load(write_model(probe, config, 7));
  const auto want = oracle(*probe_model, prompt_a(), 2.0, 16);
  size_t k = 4;
  auto seen_before = [&](size_t i) {
    for (size_t j = 0; j < i; ++j)
      if (want[j].token == want[i].token) return true;
    return false;
  };
  while (k < want.size() && seen_before(k)) ++k;
  BOOST_REQUIRE(k < want.size());
  config.eos_id = want[k].token;
  Cluster c({}, {}, config);
  auto req = request_for(prompt_a(), 2.0, 16);
  req.stop_at_eos = true;
  auto r = c.edge->generate(req);
  BOOST_TEST(r.error == "");
  BOOST_TEST(to_string(r.finish_reason) == std::string("eos"));
  BOOST_TEST(r.tokens.size() == k + 1);
  BOOST_TEST(r.tokens.back() == want[k].token);
  // A full context: a prompt 5 short of max_seq leaves room for 5 tokens, whatever max_tokens says.
  const int max_seq = static_cast<int>(config.max_seq);
  std::vector<int32_t> long_prompt;
  for (int i = 0; i < max_seq - 5; ++i) long_prompt.push_back(prompt_a()[static_cast<size_t>(i) % prompt_a().size()]);
  r = run(*c.edge, long_prompt, 0.6, 50);
  BOOST_TEST(to_string(r.finish_reason) == std::string("context"));
  BOOST_TEST(r.tokens.size() == 5u);
  BOOST_TEST(r.stats.bytes_uploaded == static_cast<uint64_t>(max_seq) * static_cast<uint64_t>(config.dim) * 2);
}

BOOST_AUTO_TEST_CASE(a_response_paused_for_upload_backpressure_can_be_cancelled) {
  // One position per chunk, acknowledged 100 ms later, at most 2 unacknowledged: the 8-token
  // prompt pauses the edge for a few hundred ms. The listener cancels once the uploader holds more
  // than the limit.
  Cluster c;
  linkem::LinkEmulator link(delayed(50ms), "127.0.0.1", c.cloud->cloud_port());
  auto edge = c.make_edge_behind(link, [&](NodeConfig& e) {
    e.upload_batch = 1;
    e.upload_queue_limit = 2;
  });
  // The edge counts what it handed over, so the prompt's 8 rows pause it before its first token
  // is out: the cancel lands on a held step.
  bool over_limit_at_cancel = false;
  auto r = edge->generate(request_for(prompt_a(), 0.0, 40), [&](const TokenEvent&) {
    over_limit_at_cancel = eventually([&] { return edge->link_stats().queued_positions > 2; }, 5s);
    return false;
  }, 20s);
  BOOST_TEST(r.error == "");
  BOOST_TEST(over_limit_at_cancel);
  BOOST_TEST(r.stats.backpressure_pauses >= 1);
  BOOST_TEST(to_string(r.finish_reason) == std::string("cancelled"));
  BOOST_TEST(r.tokens.size() < 40u);
}

BOOST_AUTO_TEST_CASE(seeded_sampling_is_reproducible_and_differs_from_greedy) {
  Cluster c;
  const double theta = 0.6;
  auto sampled = [&](uint64_t seed) {
    auto req = request_for(prompt_a(), theta, 24);
    req.sampling = SamplingParams::sampled(1.0f, 1.0f, seed);
    auto r = c.edge->generate(req);
    BOOST_TEST(r.error == "");
    return r;
  };
  const auto greedy = run(*c.edge, prompt_a(), theta, 24);
  const auto a = sampled(5), again = sampled(5), b = sampled(6);
  BOOST_TEST(a.tokens == again.tokens, boost::test_tools::per_element());
  BOOST_TEST((a.sources == again.sources));
  BOOST_TEST(a.tokens != greedy.tokens);
  BOOST_TEST(a.tokens != b.tokens);
  BOOST_TEST(a.stats.cloud_tokens + b.stats.cloud_tokens > 0);  // the cloud sampled too
}

// The samplers act identically wherever a token is chosen: greedy with penalties and a bias equals
// the one-process oracle under the same rule (edge exits and the cloud's final layer both decide),
// and seeded sampling with every knob is the same with and without speculation, in every mode.
BOOST_AUTO_TEST_CASE(samplers_apply_identically_on_the_edge_and_the_cloud) {
  Cluster c;
  const int n = 20;
  const double theta = mixing_threshold(c.edge->model(), prompt_a(), n);
  BOOST_REQUIRE(theta > 0);
  SamplingParams greedy_rule;
  greedy_rule.repetition_penalty = 1.3f;
  greedy_rule.presence_penalty = 0.6f;
  greedy_rule.frequency_penalty = 0.3f;
  greedy_rule.logit_bias = {{40, 1.5f}, {17, -2.0f}};
  auto req = request_for(prompt_a(), theta, n);
  req.sampling = greedy_rule;
  req.speculate = false;
  const auto got = c.edge->generate(req);
  BOOST_TEST_REQUIRE(got.error == "");
  const auto want = oracle(c.edge->model(), prompt_a(), theta, n, 0, false, greedy_rule);
  expect_matches_oracle(got.tokens, want, theta);
  BOOST_TEST(got.stats.cloud_tokens > 0);
  BOOST_TEST(got.stats.cloud_tokens < n);
  const auto plain = oracle(c.edge->model(), prompt_a(), theta, n);
  BOOST_TEST(tokens_of(want) != tokens_of(plain));  // the knobs changed the text

  SamplingParams sampled = greedy_rule;
  sampled.temperature = 0.9f;
  sampled.top_k = 12;
  sampled.min_p = 0.02f;
  sampled.top_p = 0.95f;
  sampled.seed = 31;
  for (auto mode : {InferenceMode::collaborative, InferenceMode::cloud_only, InferenceMode::naive_split}) {
    auto r = request_for(prompt_a(), mode == InferenceMode::collaborative ? theta : 2.0, n);
    r.mode = mode;
    r.sampling = sampled;
    r.speculate = false;
    const auto a = c.edge->generate(r);
    r.speculate = true;
    const auto b = c.edge->generate(r);
    BOOST_TEST_CONTEXT("mode " << to_string(mode)) {
      BOOST_TEST(a.error == "");
      BOOST_TEST(a.tokens == b.tokens, boost::test_tools::per_element());
      if (mode != InferenceMode::collaborative)  // every token from the final layer: the oracle at θ 2
        expect_matches_oracle(a.tokens, oracle(c.edge->model(), prompt_a(), 2.0, n, 0, false, sampled), 2.0);
    }
  }
}

// Each token's logprobs come from the head that chose it: the top entry's probability is that
// head's greedy confidence (edge exit or the cloud's final layer), the token's own logprob is
// in the alternatives when it is among the most likely, and a speculative run reports the same.
BOOST_AUTO_TEST_CASE(each_token_reports_the_logprobs_of_the_head_that_chose_it) {
  Cluster c;
  const int n = 16;
  const double theta = mixing_threshold(c.edge->model(), prompt_a(), n);
  for (bool speculate : {false, true}) {
    auto req = request_for(prompt_a(), theta, n);
    req.sampling.logprobs = 4;
    req.speculate = speculate;
    std::vector<TokenEvent> events;
    const auto r = c.edge->generate(req, [&](const TokenEvent& e) {
      events.push_back(e);
      return true;
    });
    BOOST_TEST_REQUIRE(r.error == "");
    BOOST_REQUIRE_EQUAL(r.logprobs.size(), r.tokens.size());
    BOOST_REQUIRE_EQUAL(events.size(), r.tokens.size());
    int cloud = 0;
    for (size_t i = 0; i < r.tokens.size(); ++i) {
      const auto& lp = r.logprobs[i];
      BOOST_TEST_CONTEXT("token " << i << " from " << to_string(r.sources[i]) << " layer " << r.layers[i]) {
        BOOST_REQUIRE_EQUAL(lp.top.size(), 4u);
        BOOST_TEST(std::abs(std::exp(lp.top[0].logprob) - events[i].confidence) < 1e-4);
        BOOST_TEST(lp.top[0].token == r.tokens[i]);  // greedy: the chosen token is the most likely
        BOOST_TEST(std::abs(lp.logprob - lp.top[0].logprob) < 1e-6);
        for (size_t k = 1; k < lp.top.size(); ++k) BOOST_TEST(lp.top[k].logprob <= lp.top[k - 1].logprob);
        BOOST_TEST(events[i].logprobs.logprob == lp.logprob);
      }
      cloud += r.sources[i] == TokenSource::cloud;
    }
    BOOST_TEST(cloud > 0);
    BOOST_TEST(cloud < n);
  }
  auto none = request_for(prompt_a(), theta, 4);
  BOOST_TEST(c.edge->generate(none).logprobs.empty());  // not asked: none
}

// Echo: the prompt's own tokens scored as generated ones would be decided. An exit-scored entry
// equals that exit's log-softmax; a cloud-scored one the full model's (through the fp16 split
// state); standalone never asks the cloud; max_tokens 0 generates nothing and closes the session.
BOOST_AUTO_TEST_CASE(echo_scores_the_prompt_under_the_deciding_heads) {
  Cluster c;
  const auto& model = c.edge->model();
  const auto& cfg = model.config();
  const auto prompt = prompt_a();
  // The reference: every head's log-softmax at every prompt position, one pass of the whole prompt.
  torch::InferenceMode guard;
  const auto plan = SplitPlan::from_config(cfg, 0);
  const auto& d = model.decoder();
  KvCache edge_kv(cfg, 0, plan.split), cloud_kv(cfg, plan.split, cfg.n_layers);
  auto h = d.embed(torch::tensor(std::vector<int64_t>(prompt.begin(), prompt.end()), torch::kLong));
  std::map<int64_t, at::Tensor> exit_log_softmax;
  int64_t depth = 0;
  for (auto e : plan.edge_exits) {
    h = d.forward(h, 0, depth, e, edge_kv);
    depth = e;
    exit_log_softmax[e] = at::log_softmax(d.exit_logits(e, h).to(at::kDouble), -1);
  }
  if (depth < plan.split) h = d.forward(h, 0, depth, plan.split, edge_kv);
  const auto final_log_softmax = at::log_softmax(
      d.final_logits(d.forward(h.to(torch::kHalf).to(torch::kFloat), 0, plan.split, cfg.n_layers, cloud_kv)).to(at::kDouble), -1);
  // θ halfway between the least and the most confident prompt positions (each at its most
  // confident exit): some positions leave at an exit, the others need the cloud.
  std::vector<double> best;
  for (size_t p = 0; p + 1 < prompt.size(); ++p) {
    double m = 0;
    for (const auto& [layer, ls] : exit_log_softmax) m = std::max(m, std::exp(ls[static_cast<int64_t>(p)].max().item<double>()));
    best.push_back(m);
  }
  const double theta = (*std::min_element(best.begin(), best.end()) + *std::max_element(best.begin(), best.end())) / 2;

  for (auto mode : {InferenceMode::collaborative, InferenceMode::standalone, InferenceMode::cloud_only}) {
    auto req = request_for(prompt, theta, 0);
    req.mode = mode;
    req.echo = true;
    req.sampling.logprobs = 2;
    const auto r = c.edge->generate(req);
    BOOST_TEST_CONTEXT("mode " << to_string(mode)) {
      BOOST_TEST_REQUIRE(r.error == "");
      BOOST_TEST(r.tokens.empty());
      BOOST_REQUIRE_EQUAL(r.prompt_logprobs.size(), prompt.size() - 1);
      std::set<TokenSource> sources;
      for (size_t p = 0; p + 1 < prompt.size(); ++p) {
        const auto& e = r.prompt_logprobs[p];
        sources.insert(e.source);
        const auto& ref = e.source == TokenSource::cloud ? final_log_softmax : exit_log_softmax.at(e.layer);
        BOOST_TEST(e.logprobs.logprob == ref[static_cast<int64_t>(p)][prompt[p + 1]].item<double>(),
                   boost::test_tools::tolerance(e.source == TokenSource::cloud ? 2e-3 : 1e-4));
        BOOST_TEST(e.logprobs.top.size() == 2u);
        BOOST_TEST((e.source != TokenSource::degraded));
      }
      if (mode == InferenceMode::collaborative) BOOST_TEST(sources.size() == 2u);  // exits and the cloud
      if (mode == InferenceMode::standalone) BOOST_TEST(!sources.count(TokenSource::cloud));
      if (mode == InferenceMode::cloud_only) BOOST_TEST((sources == std::set<TokenSource>{TokenSource::cloud}));
    }
  }
  // Echo beside generation: the same generated tokens as without it.
  auto req = request_for(prompt, theta, 8);
  req.sampling.logprobs = 0;
  const auto plain = c.edge->generate(req);
  req.echo = true;
  const auto echoed = c.edge->generate(req);
  BOOST_TEST(echoed.tokens == plain.tokens, boost::test_tools::per_element());
  BOOST_TEST(echoed.prompt_logprobs.size() == prompt.size() - 1);
  auto nothing = request_for(prompt, theta, 0);  // max_tokens 0 without echo asks for nothing
  BOOST_TEST(c.edge->generate(nothing).error != "");
  BOOST_TEST(eventually([&] { return c.cloud->cloud_stats().live == 0u; }));
}

BOOST_AUTO_TEST_SUITE_END()

// Speculative collaboration: the edge goes on with its last exit's guess while the cloud answers
// and rolls back a wrong guess. Its output must be the non-speculative output, token for token.
BOOST_AUTO_TEST_SUITE(speculation)

namespace {

// The edge's own decision for every shown token, from a local runner over the same sequence: a
// token shown as the edge's must be its confident exit's, a degraded one its last exit's.
void expect_edge_tokens_consistent(const Node& edge, const GenerateRequest& req, const GenerateResult& r) {
  EarlyExitRunner local(edge.model_ptr(), edge.model().config().default_split);
  ExitRule rule;
  rule.threshold = *req.threshold;
  rule.sampling = req.sampling;
  auto out = local.advance(req.prompt, rule);
  for (size_t i = 0; i < r.tokens.size(); ++i) {
    BOOST_TEST_CONTEXT("token " << i << " (" << to_string(r.sources[i]) << ")") {
      if (r.sources[i] == TokenSource::edge_exit) BOOST_TEST((out.resolved && out.token == r.tokens[i]));
      if (r.sources[i] == TokenSource::degraded) BOOST_TEST((!out.resolved && out.fallback_token == r.tokens[i]));
    }
    out = local.advance({r.tokens[i]}, rule);
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(speculative_output_equals_non_speculative_token_for_token) {
  // Three speculating edges on one cloud: over loopback, with every second guess made wrong and
  // running ahead over the whole round trip (as an edge whose cloud is another machine: on
  // loopback the wire alone would hold it back), and over a 3 ms link with every third guess wrong
  // (several requests in flight, rollbacks of several positions). Greedy and seeded sampling, θ from "all at the edge" to "all to the cloud".
  // (This random model's last exit rarely agrees with its final layer, so most guesses miss: the
  // time saved is measured on the trained model, by ce-bench.)
  Cluster c;
  linkem::LinkEmulator link(delayed(3ms), "127.0.0.1", c.cloud->cloud_port());
  auto missing = c.make_edge([](NodeConfig& e) {
    e.speculation_test_miss_every = 2;
    e.speculation_run_ahead = RunAhead::round_trip;
  });
  auto far = c.make_edge_behind(link, [&](NodeConfig& e) {
    e.speculation_test_miss_every = 3;
  });
  const int n = 16;
  const double mixing = mixing_threshold(c.edge->model(), prompt_a(), n);
  BOOST_REQUIRE(mixing > 0);
  int speculated = 0, rolled_back = 0, blocking_plain = 0, blocking_far = 0, cloud_tokens = 0;
  for (int p = 0; p < 4; ++p) {
    auto prompt = p % 2 ? prompt_b() : prompt_a();
    prompt.push_back(static_cast<int32_t>(11 + 13 * p));
    for (double theta : {0.0, mixing, 0.6, 2.0})
      for (bool sampled : {false, true}) {
        auto req = request_for(prompt, theta, n);
        if (sampled) req.sampling = SamplingParams::sampled(0.8f, 0.95f, 7u + static_cast<uint64_t>(p));
        req.speculate = false;
        const auto plain = c.edge->generate(req);
        BOOST_TEST_REQUIRE(plain.error == "");
        BOOST_TEST(!plain.stats.speculation);
        BOOST_TEST(plain.stats.blocking_round_trips == plain.stats.cloud_tokens);  // every cloud token waits
        BOOST_TEST(plain.stats.critical_round_trips == plain.stats.cloud_tokens);  // each asked after the last
        blocking_plain += plain.stats.blocking_round_trips;
        cloud_tokens += plain.stats.cloud_tokens;
        req.speculate = true;
        for (Node* edge : {c.edge.get(), missing.get(), far.get()}) {
          const auto spec = edge->generate(req);
          BOOST_TEST_CONTEXT("prompt " << p << " theta " << theta << " sampled " << sampled << " edge "
                                       << (edge == far.get() ? "far" : edge == missing.get() ? "missing" : "plain")) {
            BOOST_TEST(spec.error == "");
            BOOST_TEST(spec.stats.speculation);
            BOOST_TEST(spec.tokens == plain.tokens, boost::test_tools::per_element());
            BOOST_TEST((spec.sources == plain.sources));
            BOOST_TEST(spec.layers == plain.layers, boost::test_tools::per_element());
            BOOST_TEST(spec.stats.rolled_back <= spec.stats.speculated);
            // Each miss starts a new round (what it rolled back went with it); requests go out together.
            BOOST_TEST(spec.stats.critical_round_trips <= spec.stats.cloud_requests);
            BOOST_TEST(spec.stats.critical_round_trips >= std::min(1, spec.stats.cloud_requests));
            BOOST_TEST(spec.stats.critical_round_trips >= spec.stats.misses);
            BOOST_TEST(spec.stats.degraded_tokens == 0);
          }
          speculated += spec.stats.speculated;
          rolled_back += spec.stats.rolled_back;
          if (edge == far.get()) blocking_far += spec.stats.blocking_round_trips;
        }
      }
  }
  BOOST_TEST_MESSAGE("speculated " << speculated << " positions, rolled back " << rolled_back << "; blocking round trips "
                                   << blocking_far << " speculative over 3 ms vs " << blocking_plain << " plain");
  BOOST_TEST(cloud_tokens > 0);
  BOOST_TEST(speculated > 0);
  BOOST_TEST(rolled_back > 0);
  // Every wrong path was dropped on the cloud too.
  BOOST_TEST(c.cloud->cloud_stats().truncates > 0u);
  BOOST_TEST(eventually([&] { return c.cloud->cloud_stats().live == 0u; }));
}

BOOST_AUTO_TEST_CASE(the_uploader_truncates_its_log_and_the_cloud_and_counts_the_waste) {
  // Fed straight to the uploader as edge_inference would: 10 rows go up, the last 4 turn out to be
  // a wrong path, 3 others replace them. The cloud drops the 4 (one Truncate), takes the 3, and the
  // Bye reports 13 rows uploaded of which 4 wasted. A truncate of nothing past the log is a no-op.
  Cluster c;
  const auto dim = static_cast<uint32_t>(c.edge->model().config().dim);
  auto rows = [&](uint32_t first, uint32_t count, uint16_t bits) {
    return PositionRows::states_f16(first, count, dim, std::vector<uint16_t>(count * dim, bits).data());
  };
  caf::scoped_actor producer{c.edge->system()};
  const uint64_t session = 41;
  producer->send(c.edge->uploader(), upload_atom::value, session, rows(0, 10, 0));
  BOOST_REQUIRE(eventually([&] { return c.cloud->cloud_stats().positions_received == 10u; }));
  producer->send(c.edge->uploader(), truncate_atom::value, session, uint32_t{6});
  producer->send(c.edge->uploader(), truncate_atom::value, session, uint32_t{20});
  producer->send(c.edge->uploader(), upload_atom::value, session, rows(6, 3, 0x3c00));
  BOOST_REQUIRE(eventually([&] { return c.cloud->cloud_stats().positions_received == 13u; }));
  const auto s = c.cloud->cloud_stats();
  BOOST_TEST(s.truncates == 1u);
  BOOST_TEST(s.positions_repeated == 0u);  // the replacing rows were taken as new, not as re-sends
  const uint64_t row = 2 * dim;
  producer->request(c.edge->uploader(), 10s, bye_atom::value, session)
      .receive(
          [&](uint64_t bytes, uint64_t wasted) {
            BOOST_TEST(bytes == 13 * row);
            BOOST_TEST(wasted == 4 * row);
          },
          [](caf::error& e) { BOOST_FAIL("bye: " << to_string(e)); });
}

BOOST_AUTO_TEST_CASE(a_cloud_lost_mid_speculation_leaves_a_consistent_response) {
  // Every token goes to the cloud over a 10 ms link and every second guess is wrong, so several
  // guesses and requests are out when the cloud process goes away at the 6th token. The response
  // goes on from its last shown token with the edge's last exit, as without speculation.
  Cluster c;
  linkem::LinkEmulator link(delayed(10ms), "127.0.0.1", c.cloud->cloud_port());
  auto edge = c.make_edge_behind(link, [&](NodeConfig& e) {
    e.speculation_test_miss_every = 2;
  });
  auto req = request_for(prompt_a(), 2.0, 30);
  req.speculate = true;
  const auto plain = [&] {
    auto r = req;
    r.speculate = false;
    return c.edge->generate(r);
  }();
  std::atomic<bool> kill{false};
  std::thread killer([&] {
    eventually([&] { return kill.load(); });
    c.cloud.reset();
  });
  int seen = 0;
  const auto r = edge->generate(req, [&](const TokenEvent&) {
    if (++seen == 6) kill = true;
    return true;
  });
  killer.join();
  BOOST_TEST(r.error == "");
  BOOST_TEST(r.tokens.size() == 30u);
  BOOST_TEST(r.stats.cloud_tokens >= 6);
  BOOST_TEST(r.stats.degraded_tokens >= 1);
  BOOST_TEST(r.stats.cloud_tokens + r.stats.degraded_tokens == 30);
  // The cloud's tokens are the non-speculative run's; the rest are the edge's own decisions.
  const auto cloud_part = static_cast<size_t>(r.stats.cloud_tokens);
  BOOST_TEST(std::vector<int32_t>(r.tokens.begin(), r.tokens.begin() + static_cast<long>(cloud_part)) ==
                 std::vector<int32_t>(plain.tokens.begin(), plain.tokens.begin() + static_cast<long>(cloud_part)),
             boost::test_tools::per_element());
  for (size_t i = cloud_part; i < r.sources.size(); ++i) BOOST_TEST((r.sources[i] == TokenSource::degraded));
  expect_edge_tokens_consistent(*edge, req, r);
}

BOOST_AUTO_TEST_CASE(a_response_cancelled_while_ahead_keeps_only_its_shown_positions) {
  // Over a 20 ms link the edge runs ahead of the cloud; the listener stops at the 4th token. What
  // the edge computed past it is rolled back, and the confirmed uploads are exactly the prompt and
  // the shown tokens.
  Cluster c;
  linkem::LinkEmulator link(delayed(20ms), "127.0.0.1", c.cloud->cloud_port());
  auto edge = c.make_edge_behind(link);
  auto req = request_for(prompt_a(), 2.0, 30);
  req.speculate = true;
  int seen = 0;
  const auto r = edge->generate(req, [&](const TokenEvent&) { return ++seen < 4; });
  BOOST_TEST(r.error == "");
  BOOST_TEST(to_string(r.finish_reason) == std::string("cancelled"));
  BOOST_TEST(r.stats.speculated > 0);
  const uint64_t row = 2 * static_cast<uint64_t>(edge->model().config().dim);
  BOOST_TEST(r.stats.bytes_uploaded - r.stats.bytes_wasted == (prompt_a().size() + r.tokens.size()) * row);
}

BOOST_AUTO_TEST_CASE(the_edge_runs_past_its_request_window_but_uploads_nothing_beyond_it) {
  // Every token goes to the cloud over a 20 ms link, one request at a time (max-requests 1), and
  // every third guess is made wrong. The edge computes on past the asked guess (a round trip holds
  // ~20 of its steps) instead of standing there, but uploads only the rows the asked request needs:
  // a miss at position p keeps rows [0, p], so no uploaded byte is wasted, while the positions
  // computed past the miss are rolled back. The tokens are still the non-speculative run's.
  Cluster c;
  linkem::LinkEmulator link(delayed(20ms), "127.0.0.1", c.cloud->cloud_port());
  auto edge = c.make_edge_behind(link, [&](NodeConfig& e) {
    e.speculation_max_requests = 1;
    e.speculation_test_miss_every = 3;
  });
  auto req = request_for(prompt_a(), 2.0, 12);
  req.speculate = true;
  const auto spec = edge->generate(req);
  req.speculate = false;
  const auto plain = edge->generate(req);
  BOOST_TEST(spec.error == "");
  BOOST_TEST(spec.tokens == plain.tokens);
  BOOST_TEST(spec.stats.cloud_tokens == 12);
  BOOST_TEST(spec.stats.misses >= 3);
  BOOST_TEST(spec.stats.speculated > spec.stats.cloud_tokens);
  BOOST_TEST(spec.stats.rolled_back > 0);
  BOOST_TEST(spec.stats.bytes_wasted == 0u);
  const uint64_t row = 2 * static_cast<uint64_t>(edge->model().config().dim);
  BOOST_TEST(spec.stats.bytes_uploaded == (prompt_a().size() + spec.tokens.size()) * row);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(exit_decider)

BOOST_AUTO_TEST_CASE(the_latency_budget_policy_lowers_theta_on_a_slow_link_only) {
  // Calibration: θ 0.3 keeps every token on the edge, 0.6 sends 30%, 0.9 sends 90%. Budget 10 ms
  // per token: over a 20 ms link (40 ms round trips) only θ 0.3 fits; over loopback all do, and the
  // configured θ 0.9 (the ceiling) stays. The first response of each edge, before any round trip
  // was measured, runs at the ceiling.
  Cluster c;
  const std::string calibration = c.dir.file("calibration.csv");
  std::ofstream(calibration) << "threshold,cloud_share\n0.3,0\n0.6,0.3\n0.9,0.9\n";
  linkem::LinkEmulator link(delayed(20ms), "127.0.0.1", c.cloud->cloud_port());
  auto budgeted = [&](NodeConfig& e) {
    e.exit_policy = ExitPolicy::latency_budget;
    e.exit_calibration = calibration;
    e.latency_budget = 10ms;
    e.threshold_floor = 0.3;
    e.exit_threshold = 0.9;
  };
  auto far = c.make_edge_behind(link, budgeted);
  auto near = c.make_edge(budgeted);
  for (Node* edge : {far.get(), near.get()}) {
    auto req = request_for(prompt_a(), 0, 6);
    req.threshold.reset();  // the decider's
    const auto first = edge->generate(req), second = edge->generate(req);
    BOOST_TEST_CONTEXT((edge == far.get() ? "20 ms link" : "loopback")) {
      BOOST_TEST(first.error == "");
      BOOST_TEST(first.stats.threshold == 0.9);
      BOOST_TEST(second.stats.threshold == (edge == far.get() ? 0.3 : 0.9));
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()
