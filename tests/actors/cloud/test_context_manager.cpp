// The cloud's front door spoken to with raw frames from another actor system over loopback:
// handshake refusals, bad input, eviction, admission caps, idempotent retries.
#include <boost/test/unit_test.hpp>

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <random>
#include <thread>

#include "actors/atoms.hpp"
#include "actors/node/node.hpp"
#include "messages/codec.hpp"
#include "model/cloud_compute.hpp"
#include "model/position_rows.hpp"
#include "model/runtime.hpp"
#include "tests/actors/fixtures.hpp"
#include "tests/fp16_reference.hpp"

using namespace ce;
using namespace ce::test;

namespace {

struct RawClient {
  TempDir dir;
  std::string model_path;
  std::unique_ptr<Node> cloud;
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  cloud_front_actor server;

  explicit RawClient(std::function<void(NodeConfig&)> tweak = {}) {
    model_path = write_model(dir, collab_config(), 3);
    auto cc = node_config(Role::cloud, model_path);
    cc.log_level = LogLevel::error;
    if (tweak) tweak(cc);
    cloud = std::make_unique<Node>(cc);
    cfg.load<caf::io::middleman>();
    cfg.set("logger.console", caf::atom("none"));
    sys = std::make_unique<caf::actor_system>(cfg);
    auto a = sys->middleman().remote_actor<cloud_front_actor>("127.0.0.1", cloud->cloud_port());
    BOOST_REQUIRE_MESSAGE(a, "cannot reach the cloud: " << (a ? std::string() : sys->render(a.error())));
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
      const uint16_t h = float_to_half(0.01f * static_cast<float>((i / 2) % 50));
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

namespace {

// Rows whose row `nan_row` holds a NaN: the manager takes them, cloud_inference refuses them.
wire::UploadChunk rows_with_nan(const RawClient& c, uint64_t session, uint32_t count, uint32_t nan_row) {
  auto chunk = c.rows(session, 0, count);
  const size_t at = static_cast<size_t>(nan_row) * c.cloud->model().config().dim * 2;
  chunk.payload[at] = 0x00;
  chunk.payload[at + 1] = 0x7e;  // fp16 quiet NaN
  return chunk;
}

// Sends every request before any reply is read (so later ones queue behind the first on the
// cloud) and returns the replies in request order; a request the cloud leaves unanswered within
// `wait` comes back as ErrorReply{internal, "no reply within the wait"}.
std::vector<wire::Message> ask_together(RawClient& c, const std::vector<wire::Message>& requests,
                                        std::chrono::milliseconds wait) {
  auto replies = std::make_shared<std::vector<wire::Message>>(
      requests.size(), wire::ErrorReply{error::internal, "no reply within the wait"});
  auto remaining = std::make_shared<size_t>(requests.size());
  caf::scoped_actor waiter{*c.sys};
  const auto waiter_handle = caf::actor_cast<caf::actor>(waiter);
  const auto server = c.server;
  c.sys->spawn([=](caf::event_based_actor* self) {
    for (size_t i = 0; i < requests.size(); ++i) {
      auto settle = [=] {
        if (--*remaining == 0) self->send(waiter_handle, done_atom::value);
      };
      self->request(server, wait, frame_atom::value, wire::encode(requests[i]))
          .then(
              [=](const std::vector<char>& reply) {
                auto d = wire::decode(reply, {});
                if (d.ok) (*replies)[i] = d.message;
                settle();
              },
              [=](caf::error&) { settle(); });
    }
  });
  waiter->receive([](done_atom) {}, caf::after(wait + std::chrono::seconds(2)) >> [] {});
  return *replies;
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
  // Sampling tokens outside the vocabulary: that request is refused by name, the session lives on.
  auto bad_bias = infer(9, 5, 4);
  bad_bias.sampling.logit_bias = {{1 << 20, 1.0f}};
  BOOST_TEST(expect_error(c.ask(bad_bias), error::bad_request).text.find("logit_bias token") != std::string::npos);
  auto bad_score = infer(9, 5, 5);
  bad_score.scored_token = 1 << 20;
  BOOST_TEST(expect_error(c.ask(bad_score), error::bad_request).text.find("scored token") != std::string::npos);
  BOOST_TEST(std::holds_alternative<wire::UploadAck>(c.ask(c.rows(9, 5, 1))));
  auto scored = infer(9, 5, 6);
  scored.scored_token = 3;
  scored.sampling.logprobs = 2;
  const auto answer = c.ask(scored);
  BOOST_REQUIRE(std::holds_alternative<wire::InferReply>(answer));
  BOOST_TEST(std::get<wire::InferReply>(answer).token == 3);
  BOOST_TEST(std::get<wire::InferReply>(answer).has_logprobs);
  BOOST_TEST(std::get<wire::InferReply>(answer).logprobs.top.size() == 2u);
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

// A wrong speculation of an edge: positions 6..7 uploaded with other states and even answered,
// then truncated; a request parked for a dropped position is cancelled; the right rows that follow
// get the answer of a session that only ever saw them.
BOOST_AUTO_TEST_CASE(truncate_drops_a_wrong_path_and_cancels_its_requests) {
  RawClient c;
  c.ask(c.good_hello());
  auto wrong = c.rows(31, 6, 2);
  for (size_t i = 0; i < wrong.payload.size(); i += 2) wrong.payload[i + 1] ^= 0x04;  // other finite values
  c.ask(c.rows(31, 0, 6));
  c.ask(wrong);
  BOOST_REQUIRE(std::holds_alternative<wire::InferReply>(c.ask(infer(31, 7, 1))));
  auto ack = c.ask(wire::Truncate{31, 6});
  BOOST_REQUIRE(std::holds_alternative<wire::UploadAck>(ack));
  BOOST_TEST(std::get<wire::UploadAck>(ack).held_positions == 6u);
  auto stats = c.cloud->cloud_stats();
  BOOST_TEST(stats.truncates == 1u);
  BOOST_TEST(stats.positions_rolled_back == 2u);
  // A request for a position not uploaded yet waits; a truncate below it cancels it.
  auto replies = ask_together(c, {infer(31, 8, 2), wire::Truncate{31, 8}}, std::chrono::seconds(5));
  expect_error(replies[0], error::cancelled);
  BOOST_TEST(std::holds_alternative<wire::UploadAck>(replies[1]));
  // The right rows, then the same answer as a session that never saw the wrong ones.
  BOOST_TEST(std::get<wire::UploadAck>(c.ask(c.rows(31, 6, 2))).held_positions == 8u);
  c.ask(c.rows(32, 0, 6));
  c.ask(c.rows(32, 6, 2));
  auto got = c.ask(infer(31, 7, 3)), want = c.ask(infer(32, 7, 1));
  BOOST_REQUIRE(std::holds_alternative<wire::InferReply>(got));
  BOOST_REQUIRE(std::holds_alternative<wire::InferReply>(want));
  BOOST_TEST(std::get<wire::InferReply>(got).token == std::get<wire::InferReply>(want).token);
  BOOST_TEST(std::get<wire::InferReply>(got).confidence == std::get<wire::InferReply>(want).confidence);
  expect_error(c.ask(wire::Truncate{99, 0}), error::unknown_session);
}

BOOST_AUTO_TEST_CASE(idle_contexts_are_evicted_and_then_unknown) {
  RawClient c([](NodeConfig& cc) { cc.idle_timeout = std::chrono::milliseconds(300); });
  c.ask(c.good_hello());
  BOOST_TEST(std::holds_alternative<wire::UploadAck>(c.ask(c.rows(31, 0, 3))));
  BOOST_TEST(c.cloud->cloud_stats().live == 1u);
  CloudStats s = c.cloud->cloud_stats();
  for (int i = 0; i < 500 && s.evicted == 0; ++i) {  // the timer fires after 300 ms; poll, capped at 10 s
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    s = c.cloud->cloud_stats();
  }
  BOOST_TEST(s.live == 0u);
  BOOST_TEST(s.evicted == 1u);
  BOOST_TEST(s.bytes == 0u);
  BOOST_TEST(expect_error(c.ask(infer(31, 2, 1)), error::unknown_session).text.find("evicted") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(an_unknown_session_is_answered_within_the_deadline) {
  RawClient c([](NodeConfig& cc) { cc.request_deadline = std::chrono::milliseconds(200); });
  c.ask(c.good_hello());
  expect_error(ask_together(c, {infer(777, 0, 1)}, std::chrono::seconds(4))[0], error::unknown_session);
}

BOOST_AUTO_TEST_CASE(contexts_past_the_cap_are_refused_as_overloaded) {
  RawClient c([](NodeConfig& cc) { cc.max_contexts = 1; });
  c.ask(c.good_hello());
  BOOST_TEST(std::holds_alternative<wire::UploadAck>(c.ask(c.rows(41, 0, 2))));
  expect_error(c.ask(c.rows(42, 0, 2)), error::overloaded);
  c.ask(wire::Bye{41});
  BOOST_TEST(std::holds_alternative<wire::UploadAck>(c.ask(c.rows(42, 0, 2))));
}

// Many sessions at once, each at its own depth (a long catch-up among them, longer than one
// step's chunk), all requests in flight together: the scheduler batches them (its largest batch
// holds several sessions) and every answer equals the one CloudCompute gives that session alone.
// In the second round one session says Bye among the others' requests (its context ends while they
// are queued or batched with it); the others' answers stay their solo ones, then and after.
BOOST_AUTO_TEST_CASE(concurrent_sessions_get_their_solo_answers_from_batched_steps) {
  RawClient c([](NodeConfig& cc) { cc.batch_catch_up_chunk = 5; });
  c.ask(c.good_hello());
  const auto model = Model::load(c.model_path);
  const auto split = model->config().default_split;
  constexpr int kSessions = 12;
  const auto states = [&](uint64_t session, uint32_t first, uint32_t count) {
    auto chunk = c.rows(session, first, count);
    for (size_t i = 0; i < chunk.payload.size(); i += 2) {  // per session and position: different states
      const float v = 0.02f * static_cast<float>(((i / 2) * 7 + session * 13 + first * 3) % 61) - 0.6f;
      const uint16_t h = float_to_half(v);
      chunk.payload[i] = static_cast<uint8_t>(h & 0xff);
      chunk.payload[i + 1] = static_cast<uint8_t>(h >> 8);
    }
    return chunk;
  };
  constexpr int kLeaving = 5;
  constexpr uint64_t kLeavingSession = 700 + kLeaving;
  std::vector<std::unique_ptr<CloudCompute>> solo;
  std::vector<uint32_t> held(kSessions, 0);
  for (int round = 0; round < 3; ++round) {
    std::vector<wire::Message> uploads, infers;
    std::vector<wire::UploadChunk> chunks;
    std::vector<int> asking;  // the sessions of this round's requests, in order
    for (int i = 0; i < kSessions; ++i) {
      const uint64_t session = 700 + static_cast<uint64_t>(i);
      if (round == 0) solo.push_back(std::make_unique<CloudCompute>(model, split));
      if (round == 2 && i == kLeaving) continue;  // gone
      asking.push_back(i);
      // Round 0: prompts of 1 to 12 positions, session 11 one of 30 (six chunks of 5); later: 1-2 more.
      const uint32_t n = round == 0 ? (i == kSessions - 1 ? 30u : static_cast<uint32_t>(1 + i)) : static_cast<uint32_t>(1 + i % 2);
      chunks.push_back(states(session, held[static_cast<size_t>(i)], n));
      uploads.push_back(chunks.back());
      held[static_cast<size_t>(i)] += n;
      infers.push_back(infer(session, held[static_cast<size_t>(i)] - 1, static_cast<uint64_t>(round * 100 + i)));
    }
    for (const auto& m : ask_together(c, uploads, std::chrono::seconds(20)))
      BOOST_REQUIRE(std::holds_alternative<wire::UploadAck>(m));
    if (round == 1) infers.push_back(wire::Bye{kLeavingSession});  // leaves while the infers are out
    const auto replies = ask_together(c, infers, std::chrono::seconds(20));
    for (size_t j = 0; j < asking.size(); ++j) {
      const int i = asking[j];
      const auto& chunk = chunks[j];
      if (i == kLeaving && round == 1) {  // answered, or cancelled by its Bye: either is right
        BOOST_TEST((std::holds_alternative<wire::InferReply>(replies[j]) ||
                    std::holds_alternative<wire::ErrorReply>(replies[j])));
        continue;
      }
      solo[static_cast<size_t>(i)]->append(PositionRows::states_f16(
          chunk.first_position, chunk.count, static_cast<uint32_t>(model->config().dim),
          reinterpret_cast<const uint16_t*>(chunk.payload.data())));
      const auto want = solo[static_cast<size_t>(i)]->infer(held[static_cast<size_t>(i)] - 1, {});
      const auto* got = std::get_if<wire::InferReply>(&replies[j]);
      BOOST_REQUIRE_MESSAGE(got, "round " << round << " session " << i << ": " << wire::kind_name(replies[j]));
      BOOST_TEST(got->token == want.token, "round " << round << " session " << i);
      BOOST_TEST(std::abs(got->confidence - want.confidence) < 1e-4, "round " << round << " session " << i);
    }
  }
  const auto stats = c.cloud->cloud_stats().batching;
  BOOST_TEST(stats.max_sessions > 1u);             // requests in flight together were batched
  BOOST_TEST(stats.sessions > stats.steps);         // mean batch above one session
  BOOST_TEST(stats.queue_depth == 0u);
  uint64_t uploaded = 0;
  for (auto h : held) uploaded += h;
  // Every uploaded position filled once, none twice; the session that left may have gone before
  // its last 2 rows were.
  BOOST_TEST(stats.rows <= uploaded);
  BOOST_TEST(stats.rows >= uploaded - 2);
  BOOST_TEST(c.cloud->cloud_stats().live == static_cast<uint64_t>(kSessions - 1));
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(context_manager_recovery)

BOOST_AUTO_TEST_CASE(a_failed_inference_ends_the_context_instead_of_counting_as_an_answer) {
  RawClient c;
  c.ask(c.good_hello());
  BOOST_TEST(std::holds_alternative<wire::UploadAck>(c.ask(rows_with_nan(c, 51, 4, 2))));
  // The job fails in cloud_inference: the requester hears why ...
  BOOST_TEST(expect_error(c.ask(infer(51, 3, 1)), error::bad_request).text.find("NaN") != std::string::npos);
  // ... and the context is gone, not advanced: a retry or a new request is told the session is
  // unknown (so an edge rebuilds it from its log) instead of "already answered" or a cached error.
  BOOST_TEST(expect_error(c.ask(infer(51, 3, 1)), error::unknown_session).text.find("evicted or closed") !=
             std::string::npos);
  expect_error(c.ask(infer(51, 3, 2)), error::unknown_session);
  const auto s = c.cloud->cloud_stats();
  BOOST_TEST(s.live == 0u);
  BOOST_TEST(s.evicted == 1u);
  BOOST_TEST(s.bytes == 0u);
  // The rebuilt context serves.
  BOOST_TEST(std::get<wire::UploadAck>(c.ask(c.rows(51, 0, 4))).held_positions == 4u);
  BOOST_TEST(std::holds_alternative<wire::InferReply>(c.ask(infer(51, 3, 3))));
}

BOOST_AUTO_TEST_CASE(requests_queued_behind_a_failed_job_are_answered_at_once) {
  RawClient c;
  c.ask(c.good_hello());
  BOOST_TEST(std::holds_alternative<wire::UploadAck>(c.ask(rows_with_nan(c, 52, 6, 1))));
  // Two requests of one session: the second is parked (its position is not uploaded yet) while
  // the first's job fails. It must be told at once that the session is gone, not left waiting.
  auto replies = ask_together(c, {infer(52, 3, 1), infer(52, 7, 2)}, std::chrono::seconds(4));
  expect_error(replies[0], error::bad_request);
  expect_error(replies[1], error::unknown_session);
}

BOOST_AUTO_TEST_CASE(a_dead_inference_actor_fails_the_running_and_the_queued_requests) {
  RawClient c;
  c.ask(c.good_hello());
  BOOST_TEST(std::holds_alternative<wire::UploadAck>(c.ask(c.rows(53, 0, 6))));
  caf::anon_send_exit(c.cloud->cloud_inference(), caf::exit_reason::kill);
  auto replies = ask_together(c, {infer(53, 3, 1), infer(53, 7, 2)}, std::chrono::seconds(4));
  BOOST_TEST(expect_error(replies[0], error::internal).text.find("cloud inference failed") != std::string::npos);
  expect_error(replies[1], error::unknown_session);
  BOOST_TEST(c.cloud->cloud_stats().live == 0u);
}

BOOST_AUTO_TEST_CASE(a_refused_session_gets_overloaded_for_its_requests_without_waiting) {
  // The deadline a parked request would wait is far beyond the client's patience (4 s).
  RawClient c([](NodeConfig& cc) {
    cc.max_contexts = 1;
    cc.request_deadline = std::chrono::seconds(60);
  });
  c.ask(c.good_hello());
  BOOST_TEST(std::holds_alternative<wire::UploadAck>(c.ask(c.rows(41, 0, 2))));
  expect_error(c.ask(c.rows(42, 0, 2)), error::overloaded);
  auto replies = ask_together(c, {infer(42, 1, 1)}, std::chrono::seconds(4));
  expect_error(replies[0], error::overloaded);
  BOOST_TEST(c.cloud->cloud_stats().sessions_refused == 1u);
  // Admitted once there is room; its requests are served again.
  c.ask(wire::Bye{41});
  BOOST_TEST(std::holds_alternative<wire::UploadAck>(c.ask(c.rows(42, 0, 2))));
  BOOST_TEST(std::holds_alternative<wire::InferReply>(c.ask(infer(42, 1, 2))));
}

BOOST_AUTO_TEST_CASE(contexts_past_the_memory_cap_are_refused_as_overloaded) {
  RawClient c([](NodeConfig& cc) {
    cc.max_contexts = 100000;
    cc.memory_cap_mib = 1;
  });
  c.ask(c.good_hello());
  const uint32_t n = 120;
  const uint64_t chunk_bytes = static_cast<uint64_t>(n) * c.cloud->model().config().dim * 2;
  const uint64_t cap = 1u << 20;
  int admitted = 0;
  uint64_t held_at_refusal = 0;
  for (uint64_t s = 1000; s < 1400; ++s) {
    const uint64_t before = c.cloud->cloud_stats().bytes;
    auto reply = c.ask(c.rows(s, 0, n));
    if (std::holds_alternative<wire::ErrorReply>(reply)) {
      expect_error(reply, error::overloaded);
      held_at_refusal = before;
      break;
    }
    ++admitted;
    BOOST_TEST(before + chunk_bytes <= cap);  // admitted only with room for its upload
    BOOST_REQUIRE(std::holds_alternative<wire::InferReply>(c.ask(infer(s, n - 1, 1))));  // fills its KV
  }
  BOOST_TEST_MESSAGE(admitted << " contexts admitted under a 1 MiB cap, " << held_at_refusal << " bytes at refusal");
  BOOST_TEST(admitted >= 2);
  BOOST_TEST(held_at_refusal + chunk_bytes > cap);
  BOOST_TEST(c.cloud->cloud_stats().live == static_cast<uint64_t>(admitted));
  c.ask(wire::Bye{1000});
  BOOST_TEST(std::holds_alternative<wire::UploadAck>(c.ask(c.rows(2000, 0, n))));
}

BOOST_AUTO_TEST_CASE(frames_of_the_wrong_kind_or_dtype_are_refused) {
  RawClient c;
  c.ask(c.good_hello());
  for (const wire::Message& m : std::vector<wire::Message>{wire::Welcome{}, wire::UploadAck{}, wire::InferReply{},
                                                            wire::ErrorReply{error::internal, "x"}})
    BOOST_TEST(expect_error(c.ask(m), error::bad_request).text.find("is not a request") != std::string::npos,
               wire::kind_name(m));
  auto f32 = c.rows(61, 0, 2);
  f32.dtype = wire::Dtype::f32;
  f32.payload.resize(f32.payload.size() * 2);
  BOOST_TEST(expect_error(c.ask(f32), error::bad_request).text.find("dtype") != std::string::npos);
  BOOST_TEST(c.cloud->cloud_stats().live == 0u);
  // Token ids after hidden states in one context, and a cloud-only request on a split context.
  BOOST_TEST(std::holds_alternative<wire::UploadAck>(c.ask(c.rows(62, 0, 2))));
  wire::UploadChunk tokens;
  tokens.session_id = 62;
  tokens.first_position = 2;
  tokens.count = 1;
  tokens.dtype = wire::Dtype::token_ids;
  tokens.payload = {5, 0, 0, 0};
  BOOST_TEST(expect_error(c.ask(tokens), error::bad_request).text.find("differs") != std::string::npos);
  auto cloud_only = infer(62, 1, 1);
  cloud_only.kind = wire::InferKind::cloud_only;
  BOOST_TEST(expect_error(c.ask(cloud_only), error::bad_request).text.find("does not match") != std::string::npos);
  BOOST_TEST(std::holds_alternative<wire::InferReply>(c.ask(infer(62, 1, 2))));
}

BOOST_AUTO_TEST_CASE(anonymous_frames_open_nothing_and_the_cloud_keeps_serving) {
  RawClient c;
  c.ask(c.good_hello());
  for (int i = 0; i < 20; ++i) {
    caf::anon_send(c.server, frame_atom::value, wire::encode(c.rows(70 + i, 0, 2)));
    caf::anon_send(c.server, frame_atom::value, wire::encode(wire::Message{c.good_hello()}));
  }
  BOOST_TEST(std::holds_alternative<wire::UploadAck>(c.ask(c.rows(99, 0, 2))));
  const auto s = c.cloud->cloud_stats();
  BOOST_TEST(s.live == 1u);  // only the sender's own session
  BOOST_TEST(s.positions_received == 2u);
}

BOOST_AUTO_TEST_CASE(client_names_in_the_metrics_are_capped) {
  RawClient c;
  for (int i = 0; i < 300; ++i) {
    auto h = c.good_hello();
    h.client_name = "edge-" + std::to_string(i);
    BOOST_REQUIRE(std::holds_alternative<wire::Welcome>(c.ask(h)));
  }
  BOOST_TEST(std::holds_alternative<wire::UploadAck>(c.ask(c.rows(5, 0, 2))));
  BOOST_TEST(std::holds_alternative<wire::InferReply>(c.ask(infer(5, 1, 1))));
  const auto clients = c.cloud->cloud_requests_by_client();
  BOOST_TEST(clients.size() == 257u);  // 256 names, then "other"
  uint64_t other = 0;
  for (auto& [name, n] : clients) other += name == "other" ? n : 0;
  BOOST_TEST(other == 1u);  // the last Hello's name is past the cap: its request counts as "other"
}

BOOST_AUTO_TEST_SUITE_END()
