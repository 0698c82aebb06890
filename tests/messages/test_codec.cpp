// Tests of messages/: round trips, fp16 conversion, every decoding rule, and fuzzing
// with garbage, bit flips and truncations.

#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "messages/codec.hpp"

namespace ce::wire {

// Field-wise equality, for round-trip checks only.
bool operator==(const Hello& a, const Hello& b) {
  return a.protocol_version == b.protocol_version && a.model_id == b.model_id &&
         a.weights_hash == b.weights_hash && a.split_layer == b.split_layer &&
         a.hidden_dim == b.hidden_dim && a.dtype == b.dtype && a.client_name == b.client_name;
}
bool operator==(const Load& a, const Load& b) {
  return a.live_contexts == b.live_contexts && a.max_contexts == b.max_contexts &&
         a.queued_requests == b.queued_requests && a.context_bytes == b.context_bytes &&
         a.memory_cap_bytes == b.memory_cap_bytes && a.draining == b.draining;
}
bool operator==(const LoadQuery& a, const LoadQuery& b) { return a.sent_us == b.sent_us; }
bool operator==(const LoadReport& a, const LoadReport& b) { return a.sent_us == b.sent_us && a.load == b.load; }
bool operator==(const Welcome& a, const Welcome& b) {
  return a.protocol_version == b.protocol_version && a.model_id == b.model_id &&
         a.weights_hash == b.weights_hash && a.split_layer == b.split_layer &&
         a.hidden_dim == b.hidden_dim && a.idle_timeout_ms == b.idle_timeout_ms &&
         a.max_positions == b.max_positions && a.load == b.load;
}
bool operator==(const UploadChunk& a, const UploadChunk& b) {
  return a.session_id == b.session_id && a.chunk_id == b.chunk_id &&
         a.first_position == b.first_position && a.count == b.count && a.dtype == b.dtype &&
         a.payload == b.payload;
}
bool operator==(const UploadAck& a, const UploadAck& b) {
  return a.session_id == b.session_id && a.chunk_id == b.chunk_id &&
         a.held_positions == b.held_positions;
}
bool same_sampling(const SamplingParams& a, const SamplingParams& b) {
  bool bias = a.logit_bias.size() == b.logit_bias.size();
  for (size_t i = 0; bias && i < a.logit_bias.size(); ++i)
    bias = a.logit_bias[i].token == b.logit_bias[i].token && a.logit_bias[i].bias == b.logit_bias[i].bias;
  return bias && a.temperature == b.temperature && a.top_p == b.top_p && a.seed == b.seed && a.top_k == b.top_k &&
         a.min_p == b.min_p && a.repetition_penalty == b.repetition_penalty &&
         a.presence_penalty == b.presence_penalty && a.frequency_penalty == b.frequency_penalty &&
         a.logprobs == b.logprobs;
}
bool same_history(const TokenHistory& a, const TokenHistory& b) {
  bool same = a.uses.size() == b.uses.size();
  for (size_t i = 0; same && i < a.uses.size(); ++i)
    same = a.uses[i].token == b.uses[i].token && a.uses[i].output_count == b.uses[i].output_count &&
           a.uses[i].in_prompt == b.uses[i].in_prompt;
  return same;
}
bool same_logprobs(const Logprobs& a, const Logprobs& b) {
  bool same = a.logprob == b.logprob && a.top.size() == b.top.size();
  for (size_t i = 0; same && i < a.top.size(); ++i)
    same = a.top[i].token == b.top[i].token && a.top[i].logprob == b.top[i].logprob;
  return same;
}
bool operator==(const InferRequest& a, const InferRequest& b) {
  return a.session_id == b.session_id && a.request_id == b.request_id &&
         a.position == b.position && a.kind == b.kind && a.inline_dtype == b.inline_dtype &&
         a.inline_count == b.inline_count && a.inline_payload == b.inline_payload &&
         same_sampling(a.sampling, b.sampling) && same_history(a.history, b.history) && a.scored_token == b.scored_token;
}
bool operator==(const InferReply& a, const InferReply& b) {
  return a.session_id == b.session_id && a.request_id == b.request_id &&
         a.position == b.position && a.token == b.token && a.confidence == b.confidence &&
         a.cloud_compute_us == b.cloud_compute_us && a.has_logprobs == b.has_logprobs &&
         same_logprobs(a.logprobs, b.logprobs);
}
bool operator==(const Bye& a, const Bye& b) { return a.session_id == b.session_id; }
bool operator==(const Truncate& a, const Truncate& b) {
  return a.session_id == b.session_id && a.positions == b.positions;
}
bool operator==(const ErrorReply& a, const ErrorReply& b) {
  return a.code == b.code && a.text == b.text && a.session_id == b.session_id &&
         a.request_id == b.request_id;
}

}  // namespace ce::wire

namespace {

using namespace ce::wire;
using ce::error;

constexpr uint32_t hidden = 8;
const Limits limits{hidden, 128, 1u << 20};

std::vector<uint8_t> bytes_of(size_t n, uint8_t seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 7);
  return v;
}

Hello hello() {
  Hello m;
  m.protocol_version = 3;
  m.model_id = "tinyllama-1.1b";
  m.weights_hash = "sha256:0123456789abcdef";
  m.split_layer = 6;
  m.hidden_dim = hidden;
  m.dtype = Dtype::f32;
  m.client_name = "edge-7";
  return m;
}

Load some_load() {
  Load l;
  l.live_contexts = 5;
  l.max_contexts = 64;
  l.queued_requests = 3;
  l.context_bytes = 123'456'789'012ull;  // above 32 bits: the field is 64-bit
  l.memory_cap_bytes = 1ull << 40;
  l.draining = true;
  return l;
}

Welcome welcome() {
  Welcome m;
  m.protocol_version = 2;
  m.model_id = "tinyllama-1.1b";
  m.weights_hash = "sha256:feed";
  m.split_layer = 6;
  m.hidden_dim = hidden;
  m.idle_timeout_ms = 30'000;
  m.max_positions = 2048;
  m.load = some_load();
  return m;
}

UploadChunk chunk(Dtype d = Dtype::f16, uint32_t count = 3) {
  UploadChunk m;
  m.session_id = 0x1122334455667788ull;
  m.chunk_id = 42;
  m.first_position = 5;
  m.count = count;
  m.dtype = d;
  m.payload = bytes_of(d == Dtype::token_ids ? count * 4 : count * hidden * element_bytes(d), 3);
  return m;
}

UploadAck ack() { return UploadAck{99, 43, 17}; }

InferRequest request(InferKind kind = InferKind::collaborative) {
  InferRequest m;
  m.session_id = 99;
  m.request_id = 1234;
  m.position = 10;
  m.kind = kind;
  m.sampling.temperature = 0.7f;
  m.sampling.top_p = 0.9f;
  m.sampling.seed = 0xdeadbeefcafeull;
  m.sampling.top_k = 40;
  m.sampling.min_p = 0.05f;
  m.sampling.repetition_penalty = 1.1f;
  m.sampling.presence_penalty = -0.5f;
  m.sampling.frequency_penalty = 0.25f;
  m.sampling.logit_bias = {{3, -100.0f}, {17, 2.5f}};
  m.sampling.logprobs = 5;
  m.history.uses = {{2, 0, true}, {9, 3, false}, {11, 1, true}};
  if (kind == InferKind::naive_split) {
    m.inline_dtype = Dtype::f32;
    m.inline_count = m.position + 1;
    m.inline_payload = bytes_of(m.inline_count * hidden * 4, 9);
  }
  return m;
}

InferReply reply() {
  InferReply m;
  m.session_id = 99;
  m.request_id = 1234;
  m.position = 10;
  m.token = -31999;
  m.confidence = 0.875f;
  m.cloud_compute_us = 12345678901ull;
  m.has_logprobs = true;
  m.logprobs = {-0.25f, {{7, -0.125f}, {-31999, -0.25f}, {4, -3.5f}}};
  return m;
}

ErrorReply error_reply(error code = error::unknown_session) {
  return ErrorReply{code, "no session 99", 99, 1234};
}

std::vector<Message> all_kinds() {
  return {hello(),
          welcome(),
          chunk(Dtype::f16),
          chunk(Dtype::f32),
          chunk(Dtype::token_ids),
          ack(),
          request(InferKind::collaborative),
          request(InferKind::cloud_only),
          request(InferKind::naive_split),
          reply(),
          Bye{77},
          error_reply(),
          Truncate{77, 12},
          LoadQuery{987654321},
          LoadReport{987654321, some_load()}};
}

// Expects a refusal naming `field` in its text.
void expect_refused(const Message& m, const Limits& l, const std::string& field) {
  const Decoded d = decode(encode(m), l);
  BOOST_TEST(!d.ok);
  BOOST_TEST((d.code == error::bad_message));
  BOOST_TEST(d.error_text.find(field) != std::string::npos,
             "error_text '" << d.error_text << "' should name " << field);
}

void expect_accepted(const Message& m, const Limits& l) {
  const Decoded d = decode(encode(m), l);
  BOOST_TEST(d.ok, d.error_text);
  BOOST_TEST((d.message == m));
}

// Whatever the bytes: no crash, and either a valid message (which then round-trips) or
// bad_message with a reason.
void expect_sane(const char* data, size_t size, const Limits& l) {
  const Decoded d = decode(data, size, l);
  if (d.ok) {
    BOOST_TEST((d.code == error::none));
    const Decoded again = decode(encode(d.message), l);
    BOOST_TEST(again.ok, again.error_text);
    BOOST_TEST((again.message == d.message));
  } else {
    BOOST_TEST((d.code == error::bad_message));
    BOOST_TEST(!d.error_text.empty());
  }
}

}  // namespace

BOOST_AUTO_TEST_SUITE(messages)

// ------------------------------------------------------------------------ round trips

BOOST_AUTO_TEST_CASE(round_trip_every_kind) {
  for (const Message& m : all_kinds()) {
    BOOST_TEST_CONTEXT(kind_name(m)) {
      const std::vector<char> bytes = encode(m);
      BOOST_TEST(bytes.size() % 8 == 0u);
      const Decoded d = decode(bytes, limits);
      BOOST_TEST(d.ok, d.error_text);
      BOOST_TEST((d.code == error::none));
      BOOST_TEST(d.message.index() == m.index());
      BOOST_TEST((d.message == m));
    }
  }
}

BOOST_AUTO_TEST_CASE(round_trip_every_error_code) {
  for (int c = 0; c <= static_cast<int>(ce::last_error); ++c) {
    expect_accepted(error_reply(static_cast<error>(c)), limits);
  }
}

BOOST_AUTO_TEST_CASE(error_code_from_newer_peer_reads_as_internal) {
  const Decoded d = decode(encode(error_reply(static_cast<error>(200))), limits);
  BOOST_TEST_REQUIRE(d.ok, d.error_text);
  const auto& e = std::get<ErrorReply>(d.message);
  BOOST_TEST((e.code == error::internal));
  BOOST_TEST(e.text == "no session 99");
}

BOOST_AUTO_TEST_CASE(round_trip_big_payload_and_unaligned_input) {
  UploadChunk m = chunk(Dtype::f16, 100);
  const Limits big{4096, 0, 64ull << 20};
  m.payload = bytes_of(size_t{100} * 4096 * 2, 1);  // 800 KiB
  std::vector<char> bytes = encode(m);
  std::vector<char> shifted(bytes.size() + 1);
  std::memcpy(shifted.data() + 1, bytes.data(), bytes.size());
  const Decoded d = decode(shifted.data() + 1, bytes.size(), big);
  BOOST_TEST(d.ok, d.error_text);
  BOOST_TEST((d.message == Message{m}));
}

BOOST_AUTO_TEST_CASE(defaults_and_names) {
  BOOST_TEST(protocol_version == 1u);
  BOOST_TEST(Hello{}.protocol_version == protocol_version);
  BOOST_TEST(element_bytes(Dtype::f16) == 2u);
  BOOST_TEST(element_bytes(Dtype::f32) == 4u);
  BOOST_TEST(element_bytes(Dtype::token_ids) == 4u);
  BOOST_TEST(std::string(ce::to_string(error::unknown_session)) == "unknown_session");
  BOOST_TEST(std::string(ce::to_string(error::version_mismatch)) == "version_mismatch");
  BOOST_TEST(std::string(ce::to_string(error::none)) == "none");
  BOOST_TEST(std::string(to_string(Dtype::token_ids)) == "token_ids");
  BOOST_TEST(std::string(to_string(InferKind::naive_split)) == "naive_split");
  BOOST_TEST(std::string(kind_name(Message{Bye{}})) == "Bye");
  BOOST_TEST(std::string(kind_name(Message{ErrorReply{}})) == "ErrorReply");
}

// ------------------------------------------------------------------ decoding rules

BOOST_AUTO_TEST_CASE(frame_size_rules) {
  const std::vector<char> good = encode(Bye{1});
  Decoded d = decode(good.data(), 0, limits);
  BOOST_TEST(!d.ok);
  BOOST_TEST((d.code == error::bad_message));
  BOOST_TEST(d.error_text.find("Frame") != std::string::npos);

  d = decode(good.data(), good.size() - 3, limits);
  BOOST_TEST(!d.ok);
  BOOST_TEST(d.error_text.find("multiple of 8") != std::string::npos, d.error_text);

  std::vector<char> trailing = good;
  trailing.resize(good.size() + 8, 0);
  d = decode(trailing, limits);
  BOOST_TEST(!d.ok);
  BOOST_TEST(d.error_text.find("trailing") != std::string::npos, d.error_text);
}

BOOST_AUTO_TEST_CASE(oversize_frame_is_refused) {
  UploadChunk m = chunk(Dtype::f32, 64);
  const std::vector<char> bytes = encode(m);  // 64 * 8 * 4 = 2 KiB of payload
  Limits small = limits;
  small.max_frame_bytes = 1024;
  Decoded d = decode(bytes, small);
  BOOST_TEST(!d.ok);
  BOOST_TEST((d.code == error::bad_message));
  BOOST_TEST(d.error_text.find("max_frame_bytes") != std::string::npos, d.error_text);

  small.max_frame_bytes = bytes.size();  // exactly at the limit is fine
  d = decode(bytes, small);
  BOOST_TEST(d.ok, d.error_text);

  const Limits big{4096, 0, 1u << 20};
  UploadChunk huge = chunk(Dtype::f16, 200);
  huge.payload.assign(size_t{200} * 4096 * 2, 0);  // 1.6 MB > 1 MiB
  d = decode(encode(huge), big);
  BOOST_TEST(!d.ok);
  BOOST_TEST(d.error_text.find("max_frame_bytes") != std::string::npos, d.error_text);
}

BOOST_AUTO_TEST_CASE(malformed_capnp_is_refused) {
  // A segment table that promises far more words than follow.
  std::vector<char> bytes = {0, 0, 0, 0, char(0xff), char(0xff), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  Decoded d = decode(bytes, limits);
  BOOST_TEST(!d.ok);
  BOOST_TEST((d.code == error::bad_message));
  BOOST_TEST(d.error_text.find("Frame") != std::string::npos, d.error_text);

  // A root pointer that points outside its segment.
  bytes = {0, 0, 0, 0, 1, 0, 0, 0, char(0xfc), char(0xff), char(0xff), 0x7f, 1, 0, 1, 0};
  d = decode(bytes, limits);
  BOOST_TEST(!d.ok);
  BOOST_TEST(d.error_text.find("Frame") != std::string::npos, d.error_text);
}

BOOST_AUTO_TEST_CASE(unknown_message_kind_is_refused) {
  // A Bye frame is: segment table (8 bytes), root pointer (8), then the Frame struct whose
  // first data word holds the union discriminant (Bye = 6). A newer peer might send 11.
  std::vector<char> bytes = encode(Bye{5});
  BOOST_TEST_REQUIRE(bytes.size() >= 18u);
  BOOST_TEST_REQUIRE(bytes[16] == 6);
  BOOST_TEST_REQUIRE(bytes[17] == 0);
  BOOST_TEST_REQUIRE(decode(bytes, limits).ok);
  bytes[16] = 10;  // LoadReport, the last kind this side knows (its fields all zero)
  BOOST_TEST(decode(bytes, limits).ok);
  bytes[16] = 11;
  const Decoded d = decode(bytes, limits);
  BOOST_TEST(!d.ok);
  BOOST_TEST((d.code == error::bad_message));
  BOOST_TEST(d.error_text.find("unknown message kind") != std::string::npos, d.error_text);
}

BOOST_AUTO_TEST_CASE(truncate_past_max_positions_is_refused) {
  expect_accepted(Truncate{3, 128}, limits);  // every position dropped but none kept past the end
  expect_refused(Truncate{3, 129}, limits, "Truncate.positions");
}

BOOST_AUTO_TEST_CASE(enum_out_of_range_is_refused) {
  Hello h = hello();
  h.dtype = static_cast<Dtype>(3);
  expect_refused(h, limits, "Hello.dtype");

  UploadChunk c = chunk();
  c.dtype = static_cast<Dtype>(200);
  expect_refused(c, limits, "UploadChunk.dtype");

  InferRequest r = request();
  r.kind = static_cast<InferKind>(3);
  expect_refused(r, limits, "InferRequest.kind");

  r = request();
  r.inline_dtype = static_cast<Dtype>(9);
  expect_refused(r, limits, "InferRequest.inline_dtype");
}

BOOST_AUTO_TEST_CASE(hello_rules) {
  Hello h = hello();
  h.hidden_dim = 0;
  expect_refused(h, limits, "Hello.hidden_dim");
}

BOOST_AUTO_TEST_CASE(strings_are_capped) {
  const std::string at_cap(max_text_bytes, 'x');
  const std::string over(max_text_bytes + 1, 'x');

  Hello h = hello();
  h.model_id = at_cap;
  expect_accepted(h, limits);
  h.model_id = over;
  expect_refused(h, limits, "Hello.model_id");
  h = hello();
  h.weights_hash = over;
  expect_refused(h, limits, "Hello.weights_hash");
  h = hello();
  h.client_name = over;
  expect_refused(h, limits, "Hello.client_name");

  Welcome w = welcome();
  w.model_id = over;
  expect_refused(w, limits, "Welcome.model_id");
  w = welcome();
  w.weights_hash = over;
  expect_refused(w, limits, "Welcome.weights_hash");

  ErrorReply e = error_reply();
  e.text = over;
  expect_refused(e, limits, "Error.text");
}

BOOST_AUTO_TEST_CASE(upload_chunk_rules) {
  UploadChunk c = chunk();
  c.count = 0;
  c.payload.clear();
  expect_refused(c, limits, "UploadChunk.count");

  c = chunk(Dtype::f16, 3);
  c.first_position = 126;  // 126 + 3 > 128
  expect_refused(c, limits, "UploadChunk.first_position");
  c.first_position = 125;  // ends exactly at max_positions
  expect_accepted(c, limits);
  c.first_position = 0xffffffffu;  // no wrap-around
  expect_refused(c, limits, "UploadChunk.first_position");

  // The example from the brief: 64 rows of 8 halves are 1024 bytes.
  c = chunk(Dtype::f16, 64);
  c.payload.resize(1000);
  const Decoded d = decode(encode(c), limits);
  BOOST_TEST(!d.ok);
  BOOST_TEST(d.error_text == "UploadChunk.payload: 1000 bytes, expected count*hidden_dim*2 = 1024");

  c = chunk(Dtype::f32, 3);
  c.payload.resize(c.payload.size() - 4);
  expect_refused(c, limits, "UploadChunk.payload");
  c = chunk(Dtype::token_ids, 3);
  c.payload.push_back(0);
  expect_refused(c, limits, "UploadChunk.payload");
  c = chunk(Dtype::token_ids, 3);
  c.payload.clear();
  expect_refused(c, limits, "UploadChunk.payload");

  // hidden_dim unknown: any whole number of elements per row, but not none.
  const Limits open{0, 0, 1u << 20};
  c = chunk(Dtype::f16, 3);
  c.payload = bytes_of(3 * 2 * 5, 1);
  expect_accepted(c, open);
  c.payload = bytes_of(3 * 2 * 5 + 1, 1);
  expect_refused(c, open, "UploadChunk.payload");
  c.payload.clear();
  expect_refused(c, open, "UploadChunk.payload");
  c = chunk(Dtype::token_ids, 3);
  c.payload.resize(16);
  expect_refused(c, open, "UploadChunk.payload");

  // max_positions 0: positions are not bounded.
  c = chunk(Dtype::f16, 3);
  c.first_position = 1'000'000;
  expect_accepted(c, Limits{hidden, 0, 1u << 20});
}

BOOST_AUTO_TEST_CASE(infer_reply_logprobs_must_be_log_probabilities) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (float l : {0.5f, nan, -std::numeric_limits<float>::infinity()}) {
    InferReply m = reply();
    m.logprobs.logprob = l;
    expect_refused(m, limits, "InferReply.logprob");
    m = reply();
    m.logprobs.top[1].logprob = l;
    expect_refused(m, limits, "InferReply.top_logprobs");
  }
  InferReply m = reply();
  m.logprobs.top.assign(21, {1, -1.0f});
  expect_refused(m, limits, "InferReply.top_logprobs");
  m.logprobs.top.resize(20);
  expect_accepted(m, limits);
}

BOOST_AUTO_TEST_CASE(infer_request_rules) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  InferRequest r = request();
  r.position = 128;
  expect_refused(r, limits, "InferRequest.position");
  r.position = 127;
  expect_accepted(r, limits);

  for (float t : {-0.5f, inf, -inf, nan}) {
    r = request();
    r.sampling.temperature = t;
    expect_refused(r, limits, "InferRequest.temperature");
  }
  r = request();
  r.sampling.temperature = 0;
  expect_accepted(r, limits);

  for (float p : {0.0f, -0.1f, 1.0001f, inf, nan}) {
    r = request();
    r.sampling.top_p = p;
    expect_refused(r, limits, "InferRequest.top_p");
  }
  r = request();
  r.sampling.top_p = 1;
  expect_accepted(r, limits);

  // The rest of the sampling rule: values no sampler could use are refused by name.
  for (float m : {-0.1f, 1.5f, nan}) {
    r = request();
    r.sampling.min_p = m;
    expect_refused(r, limits, "InferRequest.min_p");
  }
  for (float rp : {0.0f, -1.0f, inf, nan}) {
    r = request();
    r.sampling.repetition_penalty = rp;
    expect_refused(r, limits, "InferRequest.repetition_penalty");
  }
  r = request();
  r.sampling.presence_penalty = nan;
  expect_refused(r, limits, "InferRequest.presence_penalty");
  r = request();
  r.sampling.frequency_penalty = inf;
  expect_refused(r, limits, "InferRequest.frequency_penalty");
  r = request();
  r.sampling.logit_bias = {{1, nan}};
  expect_refused(r, limits, "InferRequest.logit_bias");
  r = request();
  r.sampling.logit_bias.assign(129, ce::TokenBias{1, 1});  // more entries than positions
  expect_refused(r, limits, "InferRequest.logit_bias");
  r = request();
  r.history.uses.assign(129, ce::TokenUse{1, 1, false});
  expect_refused(r, limits, "InferRequest.history");
  for (int32_t n : {-2, 21}) {
    r = request();
    r.sampling.logprobs = n;
    expect_refused(r, limits, "InferRequest.logprobs");
  }
  r = request();
  r.scored_token = -5;
  expect_refused(r, limits, "InferRequest.scored_token");
  r = request();
  r.sampling.top_k = (1 << 24) + 1;
  expect_refused(r, limits, "InferRequest.top_k");
  r = request();
  r.sampling.logprobs = 20;
  r.scored_token = 4;
  expect_accepted(r, limits);

  // naive_split carries positions [0, position] inline, as f32.
  r = request(InferKind::naive_split);
  r.inline_count = r.position;
  expect_refused(r, limits, "InferRequest.inline_count");
  r = request(InferKind::naive_split);
  r.inline_dtype = Dtype::f16;
  r.inline_payload.resize(r.inline_payload.size() / 2);
  expect_refused(r, limits, "InferRequest.inline_dtype");
  r = request(InferKind::naive_split);
  r.inline_dtype = Dtype::token_ids;
  expect_refused(r, limits, "InferRequest.inline_dtype");
  r = request(InferKind::naive_split);
  r.inline_payload.pop_back();
  expect_refused(r, limits, "InferRequest.inline_payload");
  r = request(InferKind::naive_split);
  r.inline_payload.clear();
  expect_refused(r, limits, "InferRequest.inline_payload");
  r = request(InferKind::naive_split);
  r.position = 0xffffffffu;  // position + 1 must not wrap to 0
  r.inline_count = 0;
  r.inline_payload.clear();
  expect_refused(r, Limits{hidden, 0, 1u << 20}, "InferRequest.inline_count");

  // Other kinds carry nothing inline.
  for (InferKind k : {InferKind::collaborative, InferKind::cloud_only}) {
    r = request(k);
    r.inline_count = 3;
    expect_refused(r, limits, "InferRequest.inline_count");
    r = request(k);
    r.inline_payload = bytes_of(8, 0);
    expect_refused(r, limits, "InferRequest.inline_payload");
  }
}

// ------------------------------------------------------------------------ fuzzing

BOOST_AUTO_TEST_CASE(random_garbage_never_crashes) {
  std::mt19937_64 rng(20240601);
  int accepted = 0;
  for (int i = 0; i < 10'000; ++i) {
    size_t size = rng() % 2049;
    if (rng() % 4 != 0) size &= ~size_t{7};  // mostly whole words, to get past the size check
    std::vector<char> bytes(size);
    for (char& b : bytes) b = static_cast<char>(rng());
    if (size >= 8 && rng() % 2 == 0) {
      // A plausible segment table (one segment filling the buffer), to reach deeper code.
      const uint32_t zero = 0, words = static_cast<uint32_t>(size / 8 - 1);
      std::memcpy(bytes.data(), &zero, 4);
      std::memcpy(bytes.data() + 4, &words, 4);
      if (size >= 16 && rng() % 2 == 0) {
        // A root struct pointer right after itself, with a small random shape.
        const uint32_t ptr0 = 0, ptr1 = static_cast<uint32_t>((rng() % 3) | ((rng() % 3) << 16));
        std::memcpy(bytes.data() + 8, &ptr0, 4);
        std::memcpy(bytes.data() + 12, &ptr1, 4);
      }
    }
    const Limits& l = (i % 2) ? limits : Limits{};
    const Decoded d = decode(bytes, l);
    accepted += d.ok;
    expect_sane(bytes.data(), bytes.size(), l);
  }
  BOOST_TEST_MESSAGE("random garbage accepted as valid: " << accepted << " of 10000");
}

BOOST_AUTO_TEST_CASE(bit_flips_and_truncations_never_crash) {
  std::mt19937_64 rng(4242);
  for (const Message& m : all_kinds()) {
    BOOST_TEST_CONTEXT(kind_name(m)) {
      const std::vector<char> good = encode(m);
      for (int i = 0; i < 2'000; ++i) {
        std::vector<char> bytes = good;
        const int flips = 1 + static_cast<int>(rng() % 4);
        for (int f = 0; f < flips; ++f) {
          const size_t bit = rng() % (bytes.size() * 8);
          bytes[bit / 8] = static_cast<char>(bytes[bit / 8] ^ (1 << (bit % 8)));
        }
        expect_sane(bytes.data(), bytes.size(), limits);
      }
      for (int i = 0; i < 500; ++i) {  // whole random words overwritten
        std::vector<char> bytes = good;
        const size_t word = rng() % (bytes.size() / 8);
        const uint64_t value = rng();
        std::memcpy(bytes.data() + word * 8, &value, 8);
        expect_sane(bytes.data(), bytes.size(), limits);
      }
      for (size_t size = 0; size < good.size(); ++size) {  // every truncation
        expect_sane(good.data(), size, limits);
        const Decoded d = decode(good.data(), size, limits);
        BOOST_TEST(!d.ok, "truncated to " << size << " of " << good.size());
      }
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

// Inputs that once crashed the fuzzer (tests/fuzz/run-fuzz saves them there) stay fixed.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

BOOST_AUTO_TEST_SUITE(fuzz_regressions)

BOOST_AUTO_TEST_CASE(every_saved_fuzzer_input_is_handled) {
  namespace fs = std::filesystem;
  size_t replayed = 0;
  for (const auto& entry : fs::directory_iterator(std::string(CE_SOURCE_DIR) + "/tests/fuzz/regressions")) {
    if (!entry.is_regular_file() || entry.path().filename().string().front() == '.') continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    BOOST_TEST(LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()) == 0);
    // Crafted ones say what decode must make of them (tests/fuzz/make_regressions.cpp).
    const std::string name = entry.path().filename().string();
    const auto decoded = ce::wire::decode(bytes, {256, 1024, 4u << 20});
    if (name.rfind("refuse-", 0) == 0) {
      BOOST_TEST(!decoded.ok, name);
      BOOST_TEST(!decoded.error_text.empty(), name);
    } else if (name.rfind("accept-", 0) == 0) {
      BOOST_TEST(decoded.ok, name << ": " << decoded.error_text);
    }
    ++replayed;
  }
  BOOST_TEST_MESSAGE("replayed " << replayed << " saved fuzzer inputs");
  BOOST_TEST(replayed >= 15u);  // the crafted set at least
  // The property itself on a valid frame and on junk (abort() would end the test binary).
  auto frame = ce::wire::encode(ce::wire::Bye{5});
  BOOST_TEST(LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(frame.data()), frame.size()) == 0);
  const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 1, 2, 3};
  BOOST_TEST(LLVMFuzzerTestOneInput(junk, sizeof junk) == 0);
}

BOOST_AUTO_TEST_SUITE_END()
