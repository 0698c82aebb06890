// The cloud's front door spoken to with raw frames from another actor system over loopback:
// handshake refusals, bad input, eviction, admission caps, idempotent retries.
#include <boost/test/unit_test.hpp>

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <random>
#include <thread>

#include "actors/atoms.hpp"
#include "actors/node.hpp"
#include "messages/codec.hpp"
#include "tests/actors/fixtures.hpp"

using namespace ce;
using namespace ce::test;

namespace {

struct RawClient {
  TempDir dir;
  std::string model_path;
  std::unique_ptr<Node> cloud;
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  caf::actor server;

  explicit RawClient(std::function<void(NodeConfig&)> tweak = {}) {
    model_path = write_model(dir, collab_config(), 3);
    auto cc = node_config(Role::cloud, model_path);
    cc.log_level = LogLevel::error;
    if (tweak) tweak(cc);
    cloud = std::make_unique<Node>(cc);
    cfg.load<caf::io::middleman>();
    cfg.set("logger.console", caf::atom("none"));
    sys = std::make_unique<caf::actor_system>(cfg);
    auto a = sys->middleman().remote_actor("127.0.0.1", cloud->cloud_port());
    BOOST_REQUIRE(a);
    server = *a;
  }
  ~RawClient() {
    server = nullptr;
    sys.reset();
  }

  wire::Message ask_raw(const std::vector<char>& bytes) {
    caf::scoped_actor self{*sys};
    wire::Message out = wire::ErrorReply{error::internal, "no reply"};
    self->request(server, std::chrono::seconds(10), frame_atom::value, bytes)
        .receive(
            [&](const std::vector<char>& reply) {
              auto d = wire::decode(reply, {});
              BOOST_REQUIRE_MESSAGE(d.ok, d.error_text);
              out = d.message;
            },
            [&](caf::error& e) { out = wire::ErrorReply{error::internal, sys->render(e)}; });
    return out;
  }
  wire::Message ask(const wire::Message& m) { return ask_raw(wire::encode(m)); }

  wire::Hello good_hello() const {
    wire::Hello h;
    const auto& mc = cloud->model().config();
    h.model_id = mc.name;
    h.weights_hash = cloud->model().weights_hash();
    h.split_layer = static_cast<uint32_t>(mc.default_split);
    h.hidden_dim = static_cast<uint32_t>(mc.dim);
    h.client_name = "raw-test";
    return h;
  }
  wire::UploadChunk rows(uint64_t session, uint32_t first, uint32_t count) const {
    wire::UploadChunk c;
    c.session_id = session;
    c.first_position = first;
    c.count = count;
    c.payload.resize(static_cast<size_t>(count) * cloud->model().config().dim * 2);
    for (size_t i = 0; i < c.payload.size(); i += 2) {  // small finite fp16 values
      const uint16_t h = wire::float_to_half(0.01f * static_cast<float>((i / 2) % 50));
      c.payload[i] = static_cast<uint8_t>(h & 0xff);
      c.payload[i + 1] = static_cast<uint8_t>(h >> 8);
    }
    return c;
  }
};

const wire::ErrorReply& expect_error(const wire::Message& m, error code) {
  static wire::ErrorReply none{};
  auto* e = std::get_if<wire::ErrorReply>(&m);
  BOOST_REQUIRE_MESSAGE(e, "expected an ErrorReply, got " << wire::kind_name(m));
  BOOST_TEST(std::string(to_string(e->code)) == std::string(to_string(code)), "text: " << e->text);
  return e ? *e : none;
}

wire::InferRequest infer(uint64_t session, uint32_t position, uint64_t request_id) {
  wire::InferRequest r;
  r.session_id = session;
  r.position = position;
  r.request_id = request_id;
  return r;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(context_manager)

BOOST_AUTO_TEST_CASE(hello_refuses_another_model_version_or_split) {
  RawClient c;
  auto h = c.good_hello();
  h.weights_hash = "0123456789abcdef";
  BOOST_TEST(expect_error(c.ask(h), error::model_mismatch).text.find("weights hash") != std::string::npos);
  h = c.good_hello();
  h.split_layer = 3;
  BOOST_TEST(expect_error(c.ask(h), error::model_mismatch).text.find("split layer") != std::string::npos);
  h = c.good_hello();
  h.protocol_version = 99;
  expect_error(c.ask(h), error::version_mismatch);
  auto w = c.ask(c.good_hello());
  BOOST_REQUIRE(std::holds_alternative<wire::Welcome>(w));
  BOOST_TEST(std::get<wire::Welcome>(w).hidden_dim == 32u);
}

BOOST_AUTO_TEST_CASE(requests_before_hello_are_refused) {
  RawClient c;
  BOOST_TEST(expect_error(c.ask(c.rows(5, 0, 2)), error::bad_request).text.find("before Hello") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(bad_input_gets_errors_and_the_cloud_keeps_serving) {
  RawClient c;
  BOOST_REQUIRE(std::holds_alternative<wire::Welcome>(c.ask(c.good_hello())));
  std::mt19937 rng(11);
  int refused = 0;
  for (int i = 0; i < 200; ++i) {  // garbage frames of random sizes
    std::vector<char> junk(8 * (1 + rng() % 64));
    for (auto& b : junk) b = static_cast<char>(rng());
    auto m = c.ask_raw(junk);
    refused += std::holds_alternative<wire::ErrorReply>(m);
  }
  BOOST_TEST(refused == 200);
  auto wrong_size = c.rows(9, 0, 2);
  wrong_size.payload.pop_back();
  BOOST_TEST(expect_error(c.ask(wrong_size), error::bad_message).text.find("UploadChunk.payload") != std::string::npos);
  BOOST_TEST(std::holds_alternative<wire::UploadAck>(c.ask(c.rows(9, 0, 3))));
  BOOST_TEST(expect_error(c.ask(c.rows(9, 5, 1)), error::bad_request).text.find("gap") != std::string::npos);
  BOOST_TEST(expect_error(c.ask(c.rows(10, 4, 1)), error::unknown_session).text.find("position 0") != std::string::npos);
  // A position not uploaded yet waits; an answered one is refused; the session still works.
  auto reply = c.ask(infer(9, 2, 1));
  BOOST_REQUIRE(std::holds_alternative<wire::InferReply>(reply));
  BOOST_TEST(std::get<wire::InferReply>(reply).position == 2u);
  expect_error(c.ask(infer(9, 1, 2)), error::bad_request);
  BOOST_TEST(std::holds_alternative<wire::UploadAck>(c.ask(c.rows(9, 3, 2))));
  BOOST_TEST(std::holds_alternative<wire::InferReply>(c.ask(infer(9, 4, 3))));
}

BOOST_AUTO_TEST_CASE(a_retried_request_gets_the_same_answer_without_a_second_append) {
  RawClient c;
  c.ask(c.good_hello());
  auto chunk = c.rows(21, 0, 4);
  auto first_ack = c.ask(chunk);
  auto again_ack = c.ask(chunk);  // a re-sent chunk: held stays 4
  BOOST_TEST(std::get<wire::UploadAck>(first_ack).held_positions == 4u);
  BOOST_TEST(std::get<wire::UploadAck>(again_ack).held_positions == 4u);
  auto a = c.ask(infer(21, 3, 7));
  auto b = c.ask(infer(21, 3, 7));
  BOOST_REQUIRE(std::holds_alternative<wire::InferReply>(a));
  BOOST_REQUIRE(std::holds_alternative<wire::InferReply>(b));
  BOOST_TEST(std::get<wire::InferReply>(a).token == std::get<wire::InferReply>(b).token);
}

BOOST_AUTO_TEST_CASE(idle_contexts_are_evicted_and_then_unknown) {
  RawClient c([](NodeConfig& cc) { cc.idle_timeout = std::chrono::milliseconds(300); });
  c.ask(c.good_hello());
  BOOST_TEST(std::holds_alternative<wire::UploadAck>(c.ask(c.rows(31, 0, 3))));
  BOOST_TEST(std::get<0>(c.cloud->cloud_stats()) == 1u);
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  auto [live, ended, bytes] = c.cloud->cloud_stats();
  BOOST_TEST(live == 0u);
  BOOST_TEST(ended == 1u);
  BOOST_TEST(bytes == 0u);
  BOOST_TEST(expect_error(c.ask(infer(31, 2, 1)), error::unknown_session).text.find("evicted") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(an_unknown_session_is_answered_within_the_deadline) {
  RawClient c([](NodeConfig& cc) { cc.request_deadline = std::chrono::milliseconds(200); });
  c.ask(c.good_hello());
  const auto t0 = std::chrono::steady_clock::now();
  expect_error(c.ask(infer(777, 0, 1)), error::unknown_session);
  const bool in_time = std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3);
  BOOST_TEST(in_time);
}

BOOST_AUTO_TEST_CASE(contexts_past_the_cap_are_refused_as_overloaded) {
  RawClient c([](NodeConfig& cc) { cc.max_contexts = 1; });
  c.ask(c.good_hello());
  BOOST_TEST(std::holds_alternative<wire::UploadAck>(c.ask(c.rows(41, 0, 2))));
  expect_error(c.ask(c.rows(42, 0, 2)), error::overloaded);
  c.ask(wire::Bye{41});
  BOOST_TEST(std::holds_alternative<wire::UploadAck>(c.ask(c.rows(42, 0, 2))));
}

BOOST_AUTO_TEST_SUITE_END()
