// Plain structs <-> Cap'n Proto frames. The only file that includes the generated
// protocol.capnp.h: each message has a to_capnp (encode) and a from_capnp (decode and
// validate) below, in schema order.

#include "messages/codec.hpp"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/array.h>
#include <kj/exception.h>
#include <kj/io.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <functional>
#include <tuple>
#include <iterator>
#include <utility>

#include "protocol.capnp.h"

namespace ce::wire {
namespace {

namespace s = ::ce::schema;

static_assert(s::PROTOCOL_VERSION == protocol_version, "protocol.capnp and codec.hpp disagree");
static_assert(static_cast<uint16_t>(s::Dtype::TOKEN_IDS) == static_cast<uint16_t>(Dtype::token_ids));
static_assert(static_cast<uint16_t>(s::InferKind::NAIVE_SPLIT) ==
              static_cast<uint16_t>(InferKind::naive_split));

// Reading may visit each word of the frame once; the slack covers list elements of zero
// size, which Cap'n Proto charges as one word each.
constexpr uint64_t traversal_slack_words = 1024;
// Frame -> message struct -> Text/Data is depth 3; nothing legitimate nests deeper.
constexpr int nesting_limit = 8;
constexpr size_t max_quoted_exception = 200;

// ---------------------------------------------------------------------------- encoding

capnp::Text::Reader text(const std::string& s) { return {s.c_str(), s.size()}; }
capnp::Data::Reader data(const std::vector<uint8_t>& v) { return {v.data(), v.size()}; }
s::Dtype to_capnp(Dtype d) { return static_cast<s::Dtype>(d); }
s::InferKind to_capnp(InferKind k) { return static_cast<s::InferKind>(k); }

void to_capnp(const Hello& m, s::Frame::Builder frame) {
  auto b = frame.initHello();
  b.setProtocolVersion(m.protocol_version);
  b.setModelId(text(m.model_id));
  b.setWeightsHash(text(m.weights_hash));
  b.setSplitLayer(m.split_layer);
  b.setHiddenDim(m.hidden_dim);
  b.setDtype(to_capnp(m.dtype));
  b.setClientName(text(m.client_name));
}

void to_capnp(const Load& m, s::Load::Builder b) {
  b.setLiveContexts(m.live_contexts);
  b.setMaxContexts(m.max_contexts);
  b.setQueuedRequests(m.queued_requests);
  b.setContextBytes(m.context_bytes);
  b.setMemoryCapBytes(m.memory_cap_bytes);
  b.setDraining(m.draining);
}

void to_capnp(const Welcome& m, s::Frame::Builder frame) {
  auto b = frame.initWelcome();
  b.setProtocolVersion(m.protocol_version);
  b.setModelId(text(m.model_id));
  b.setWeightsHash(text(m.weights_hash));
  b.setSplitLayer(m.split_layer);
  b.setHiddenDim(m.hidden_dim);
  b.setIdleTimeoutMs(m.idle_timeout_ms);
  b.setMaxPositions(m.max_positions);
  to_capnp(m.load, b.initLoad());
}

void to_capnp(const UploadChunk& m, s::Frame::Builder frame) {
  auto b = frame.initUploadChunk();
  b.setSessionId(m.session_id);
  b.setChunkId(m.chunk_id);
  b.setFirstPosition(m.first_position);
  b.setCount(m.count);
  b.setDtype(to_capnp(m.dtype));
  b.setPayload(data(m.payload));
}

void to_capnp(const UploadAck& m, s::Frame::Builder frame) {
  auto b = frame.initUploadAck();
  b.setSessionId(m.session_id);
  b.setChunkId(m.chunk_id);
  b.setHeldPositions(m.held_positions);
}

void to_capnp(const InferRequest& m, s::Frame::Builder frame) {
  auto b = frame.initInferRequest();
  b.setSessionId(m.session_id);
  b.setRequestId(m.request_id);
  b.setPosition(m.position);
  b.setKind(to_capnp(m.kind));
  const auto& p = m.sampling;
  b.setTemperature(p.temperature);
  b.setTopP(p.top_p);
  b.setSeed(p.seed);
  b.setInlineDtype(to_capnp(m.inline_dtype));
  b.setInlineCount(m.inline_count);
  b.setInlinePayload(data(m.inline_payload));
  b.setTopK(static_cast<uint32_t>(p.top_k));
  b.setMinP(p.min_p);
  b.setRepetitionPenalty(p.repetition_penalty);
  b.setPresencePenalty(p.presence_penalty);
  b.setFrequencyPenalty(p.frequency_penalty);
  auto bias = b.initLogitBias(static_cast<unsigned>(p.logit_bias.size()));
  for (unsigned i = 0; i < bias.size(); ++i) {
    bias[i].setToken(p.logit_bias[i].token);
    bias[i].setBias(p.logit_bias[i].bias);
  }
  auto uses = b.initHistory(static_cast<unsigned>(m.history.uses.size()));
  for (unsigned i = 0; i < uses.size(); ++i) {
    uses[i].setToken(m.history.uses[i].token);
    uses[i].setOutputCount(m.history.uses[i].output_count);
    uses[i].setInPrompt(m.history.uses[i].in_prompt);
  }
  b.setLogprobs(p.logprobs);
  b.setScoredToken(m.scored_token);
}

void to_capnp(const InferReply& m, s::Frame::Builder frame) {
  auto b = frame.initInferReply();
  b.setSessionId(m.session_id);
  b.setRequestId(m.request_id);
  b.setPosition(m.position);
  b.setToken(m.token);
  b.setConfidence(m.confidence);
  b.setCloudComputeUs(m.cloud_compute_us);
  b.setHasLogprobs(m.has_logprobs);
  b.setLogprob(m.logprobs.logprob);
  auto top = b.initTopLogprobs(static_cast<unsigned>(m.logprobs.top.size()));
  for (unsigned i = 0; i < top.size(); ++i) {
    top[i].setToken(m.logprobs.top[i].token);
    top[i].setLogprob(m.logprobs.top[i].logprob);
  }
}

void to_capnp(const Bye& m, s::Frame::Builder frame) {
  frame.initBye().setSessionId(m.session_id);
}

void to_capnp(const Truncate& m, s::Frame::Builder frame) {
  auto b = frame.initTruncate();
  b.setSessionId(m.session_id);
  b.setPositions(m.positions);
}

void to_capnp(const LoadQuery& m, s::Frame::Builder frame) { frame.initLoadQuery().setSentUs(m.sent_us); }

void to_capnp(const LoadReport& m, s::Frame::Builder frame) {
  auto b = frame.initLoadReport();
  b.setSentUs(m.sent_us);
  to_capnp(m.load, b.initLoad());
}

void to_capnp(const ErrorReply& m, s::Frame::Builder frame) {
  auto b = frame.initError();
  b.setCode(static_cast<uint8_t>(m.code));
  b.setText(text(m.text));
  b.setSessionId(m.session_id);
  b.setRequestId(m.request_id);
}

// Bytes of strings and payloads, so that the first segment holds the whole frame.
size_t variable_bytes(const Hello& m) {
  return m.model_id.size() + m.weights_hash.size() + m.client_name.size();
}
size_t variable_bytes(const Welcome& m) { return m.model_id.size() + m.weights_hash.size(); }
size_t variable_bytes(const UploadChunk& m) { return m.payload.size(); }
size_t variable_bytes(const InferRequest& m) { return m.inline_payload.size(); }
size_t variable_bytes(const ErrorReply& m) { return m.text.size(); }
template <class T>
size_t variable_bytes(const T&) {
  return 0;
}

// ---------------------------------------------------------------------------- decoding

Decoded fail(std::string text) {
  Decoded d;
  d.code = error::bad_message;
  d.error_text = std::move(text);
  return d;
}

std::string quote(const char* what) {
  std::string s = what ? what : "";
  if (s.size() > max_quoted_exception) s = s.substr(0, max_quoted_exception) + "...";
  return s;
}

std::string show_float(float f) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", static_cast<double>(f));
  return buf;
}

std::string show(uint64_t v) { return std::to_string(v); }

// Reads one message, keeping the first problem found ("<Message>.<field>: <why>");
// checks after it are skipped.
class Check {
 public:
  explicit Check(const char* message) : message_(message) {}

  bool failed() const { return !problem_.empty(); }

  // `why` is only called on failure, so the happy path builds no strings.
  template <class Why>
  void require(bool fine, const char* field, Why&& why) {
    if (!fine && !failed()) problem_ = std::string(message_) + "." + field + ": " + why();
  }

  void text(capnp::Text::Reader t, const char* field, std::string& out) {
    require(t.size() <= max_text_bytes, field, [&] {
      return show(t.size()) + " bytes, limit " + show(max_text_bytes);
    });
    if (!failed()) out.assign(t.cStr(), t.size());
  }

  void bytes(capnp::Data::Reader d, std::vector<uint8_t>& out) {
    if (!failed()) out.assign(d.begin(), d.end());
  }

  void dtype(s::Dtype raw, const char* field, Dtype& out) {
    auto v = static_cast<uint16_t>(raw);
    require(v <= static_cast<uint16_t>(Dtype::token_ids), field,
            [&] { return "unknown dtype " + show(v); });
    out = static_cast<Dtype>(v);
  }

  void kind(s::InferKind raw, const char* field, InferKind& out) {
    auto v = static_cast<uint16_t>(raw);
    require(v <= static_cast<uint16_t>(InferKind::naive_split), field,
            [&] { return "unknown kind " + show(v); });
    out = static_cast<InferKind>(v);
  }

  // A payload of `rows` rows: rows int32 token ids, or rows * hidden_dim elements of
  // `d`. With hidden_dim unknown (0), a whole positive number of elements per row.
  void payload_size(size_t size, uint32_t rows, Dtype d, uint32_t hidden_dim, const char* field,
                    const char* rows_name) {
    if (failed()) return;
    const uint64_t element = element_bytes(d);
    if (d == Dtype::token_ids) {
      const uint64_t want = uint64_t{rows} * element;
      require(size == want, field, [&] {
        return show(size) + " bytes, expected " + rows_name + "*4 = " + show(want);
      });
    } else if (hidden_dim > 0) {
      uint64_t want = 0;
      const bool overflow = __builtin_mul_overflow(uint64_t{rows} * hidden_dim, element, &want);
      require(!overflow && size == want, field, [&] {
        return show(size) + " bytes, expected " + rows_name + "*hidden_dim*" + show(element) +
               " = " + (overflow ? std::string("(overflow)") : show(want));
      });
    } else {
      const uint64_t row = uint64_t{rows} * element;
      require(size > 0 && row > 0 && size % row == 0, field, [&] {
        return show(size) + " bytes, not a positive multiple of " + rows_name + "*" +
               show(element) + " = " + show(row);
      });
    }
  }

  Decoded finish(Message m) {
    if (failed()) return fail(std::move(problem_));
    Decoded d;
    d.ok = true;
    d.message = std::move(m);
    return d;
  }

 private:
  const char* message_;
  std::string problem_;
};

Decoded from_capnp(s::Hello::Reader r, const Limits&) {
  Check c("Hello");
  Hello m;
  m.protocol_version = r.getProtocolVersion();
  c.text(r.getModelId(), "model_id", m.model_id);
  c.text(r.getWeightsHash(), "weights_hash", m.weights_hash);
  m.split_layer = r.getSplitLayer();
  m.hidden_dim = r.getHiddenDim();
  c.require(m.hidden_dim > 0, "hidden_dim", [] { return std::string("must be > 0"); });
  c.dtype(r.getDtype(), "dtype", m.dtype);
  c.text(r.getClientName(), "client_name", m.client_name);
  return c.finish(std::move(m));
}

// Every value is the peer's own count: nothing to refuse, and a Welcome from an older cloud
// (no load) reads as an empty, not full, node.
Load from_capnp(s::Load::Reader r) {
  Load m;
  m.live_contexts = r.getLiveContexts();
  m.max_contexts = r.getMaxContexts();
  m.queued_requests = r.getQueuedRequests();
  m.context_bytes = r.getContextBytes();
  m.memory_cap_bytes = r.getMemoryCapBytes();
  m.draining = r.getDraining();
  return m;
}

Decoded from_capnp(s::Welcome::Reader r, const Limits&) {
  Check c("Welcome");
  Welcome m;
  m.protocol_version = r.getProtocolVersion();
  c.text(r.getModelId(), "model_id", m.model_id);
  c.text(r.getWeightsHash(), "weights_hash", m.weights_hash);
  m.split_layer = r.getSplitLayer();
  m.hidden_dim = r.getHiddenDim();
  m.idle_timeout_ms = r.getIdleTimeoutMs();
  m.max_positions = r.getMaxPositions();
  m.load = from_capnp(r.getLoad());
  return c.finish(std::move(m));
}

Decoded from_capnp(s::UploadChunk::Reader r, const Limits& limits) {
  Check c("UploadChunk");
  UploadChunk m;
  m.session_id = r.getSessionId();
  m.chunk_id = r.getChunkId();
  m.first_position = r.getFirstPosition();
  m.count = r.getCount();
  c.dtype(r.getDtype(), "dtype", m.dtype);
  c.require(m.count >= 1, "count", [] { return std::string("must be >= 1"); });
  const uint64_t end = uint64_t{m.first_position} + m.count;
  c.require(limits.max_positions == 0 || end <= limits.max_positions, "first_position", [&] {
    return "first_position + count = " + show(end) + " exceeds max_positions = " +
           show(limits.max_positions);
  });
  const auto payload = r.getPayload();
  c.payload_size(payload.size(), m.count, m.dtype, limits.hidden_dim, "payload", "count");
  c.bytes(payload, m.payload);
  return c.finish(std::move(m));
}

Decoded from_capnp(s::UploadAck::Reader r, const Limits&) {
  UploadAck m;
  m.session_id = r.getSessionId();
  m.chunk_id = r.getChunkId();
  m.held_positions = r.getHeldPositions();
  return Check("UploadAck").finish(std::move(m));
}

Decoded from_capnp(s::InferRequest::Reader r, const Limits& limits) {
  Check c("InferRequest");
  InferRequest m;
  m.session_id = r.getSessionId();
  m.request_id = r.getRequestId();
  m.position = r.getPosition();
  c.require(limits.max_positions == 0 || m.position < limits.max_positions, "position", [&] {
    return show(m.position) + " >= max_positions = " + show(limits.max_positions);
  });
  c.kind(r.getKind(), "kind", m.kind);
  auto& p = m.sampling;
  p.temperature = r.getTemperature();
  c.require(std::isfinite(p.temperature) && p.temperature >= 0, "temperature",
            [&] { return show_float(p.temperature) + ", must be finite and >= 0"; });
  p.top_p = r.getTopP();
  c.require(p.top_p > 0 && p.top_p <= 1, "top_p", [&] { return show_float(p.top_p) + ", must be in (0, 1]"; });
  p.seed = r.getSeed();
  const uint32_t top_k = r.getTopK();
  c.require(top_k <= uint32_t{1} << 24, "top_k", [&] { return show(top_k) + ", must be <= 2^24"; });
  p.top_k = static_cast<int32_t>(top_k);
  p.min_p = r.getMinP();
  c.require(p.min_p >= 0 && p.min_p <= 1, "min_p", [&] { return show_float(p.min_p) + ", must be in [0, 1]"; });
  p.repetition_penalty = r.getRepetitionPenalty();
  c.require(std::isfinite(p.repetition_penalty) && p.repetition_penalty > 0, "repetition_penalty",
            [&] { return show_float(p.repetition_penalty) + ", must be finite and > 0"; });
  p.presence_penalty = r.getPresencePenalty();
  c.require(std::isfinite(p.presence_penalty), "presence_penalty", [&] { return show_float(p.presence_penalty); });
  p.frequency_penalty = r.getFrequencyPenalty();
  c.require(std::isfinite(p.frequency_penalty), "frequency_penalty", [&] { return show_float(p.frequency_penalty); });
  // Tokens are checked against the vocabulary where it is known (CloudCompute::check); here their
  // number and values: a list longer than the context cannot be a sequence's history.
  const auto bias = r.getLogitBias();
  c.require(limits.max_positions == 0 || bias.size() <= limits.max_positions, "logit_bias",
            [&] { return show(bias.size()) + " entries, more than max_positions"; });
  for (auto b : bias) {
    c.require(std::isfinite(b.getBias()), "logit_bias", [&] { return show_float(b.getBias()) + " for token " + show(b.getToken()); });
    p.logit_bias.push_back({b.getToken(), b.getBias()});
  }
  const auto uses = r.getHistory();
  c.require(limits.max_positions == 0 || uses.size() <= limits.max_positions, "history",
            [&] { return show(uses.size()) + " tokens, more than max_positions"; });
  for (auto u : uses) m.history.uses.push_back({u.getToken(), u.getOutputCount(), u.getInPrompt()});
  p.logprobs = r.getLogprobs();
  c.require(p.logprobs >= -1 && p.logprobs <= SamplingParams::max_top_logprobs, "logprobs",
            [&] { return show(p.logprobs) + ", must be in [-1, " + show(SamplingParams::max_top_logprobs) + "]"; });
  m.scored_token = r.getScoredToken();
  c.require(m.scored_token >= -1, "scored_token", [&] { return show(m.scored_token) + ", must be >= -1"; });
  c.dtype(r.getInlineDtype(), "inline_dtype", m.inline_dtype);
  m.inline_count = r.getInlineCount();
  const auto payload = r.getInlinePayload();
  if (m.kind == InferKind::naive_split) {
    const uint64_t want = uint64_t{m.position} + 1;
    c.require(m.inline_count == want, "inline_count", [&] {
      return show(m.inline_count) + ", expected position + 1 = " + show(want);
    });
    c.require(m.inline_dtype == Dtype::f32, "inline_dtype", [&] {
      return std::string(to_string(m.inline_dtype)) + ", naive_split needs f32";
    });
    c.payload_size(payload.size(), m.inline_count, m.inline_dtype, limits.hidden_dim,
                   "inline_payload", "inline_count");
    c.bytes(payload, m.inline_payload);
  } else {
    c.require(m.inline_count == 0, "inline_count", [&] {
      return show(m.inline_count) + ", must be 0 for " + to_string(m.kind);
    });
    c.require(payload.size() == 0, "inline_payload", [&] {
      return show(payload.size()) + " bytes, must be empty for " + to_string(m.kind);
    });
  }
  return c.finish(std::move(m));
}

Decoded from_capnp(s::InferReply::Reader r, const Limits&) {
  InferReply m;
  m.session_id = r.getSessionId();
  m.request_id = r.getRequestId();
  m.position = r.getPosition();
  m.token = r.getToken();
  m.confidence = r.getConfidence();
  m.cloud_compute_us = r.getCloudComputeUs();
  m.has_logprobs = r.getHasLogprobs();
  m.logprobs.logprob = r.getLogprob();
  Check c("InferReply");
  const auto top = r.getTopLogprobs();
  c.require(top.size() <= SamplingParams::max_top_logprobs, "top_logprobs",
            [&] { return show(top.size()) + " entries, at most " + show(SamplingParams::max_top_logprobs); });
  for (auto t : top) m.logprobs.top.push_back({t.getToken(), t.getLogprob()});
  // Log-probabilities: finite and at most 0 (a cloud is another machine).
  auto is_logprob = [](float l) { return std::isfinite(l) && l <= 0; };
  c.require(is_logprob(m.logprobs.logprob), "logprob", [&] { return show_float(m.logprobs.logprob) + ", must be finite and <= 0"; });
  for (const auto& t : m.logprobs.top)
    c.require(is_logprob(t.logprob), "top_logprobs", [&] { return show_float(t.logprob) + ", must be finite and <= 0"; });
  return c.finish(std::move(m));
}

Decoded from_capnp(s::Bye::Reader r, const Limits&) {
  Bye m;
  m.session_id = r.getSessionId();
  return Check("Bye").finish(std::move(m));
}

Decoded from_capnp(s::Truncate::Reader r, const Limits& limits) {
  Check c("Truncate");
  Truncate m;
  m.session_id = r.getSessionId();
  m.positions = r.getPositions();
  c.require(limits.max_positions == 0 || m.positions <= limits.max_positions, "positions", [&] {
    return show(m.positions) + " > max_positions = " + show(limits.max_positions);
  });
  return c.finish(std::move(m));
}

Decoded from_capnp(s::LoadQuery::Reader r, const Limits&) {
  return Check("LoadQuery").finish(LoadQuery{r.getSentUs()});
}

Decoded from_capnp(s::LoadReport::Reader r, const Limits&) {
  return Check("LoadReport").finish(LoadReport{r.getSentUs(), from_capnp(r.getLoad())});
}

Decoded from_capnp(s::Error::Reader r, const Limits&) {
  Check c("Error");
  ErrorReply m;
  // A code from a newer peer is still an error: keep its text, call it internal.
  const uint8_t code = r.getCode();
  m.code = code <= static_cast<uint8_t>(last_error) ? static_cast<error>(code) : error::internal;
  c.text(r.getText(), "text", m.text);
  m.session_id = r.getSessionId();
  m.request_id = r.getRequestId();
  return c.finish(std::move(m));
}

Decoded from_capnp(s::Frame::Reader frame, const Limits& limits) {
  switch (frame.which()) {
    case s::Frame::HELLO: return from_capnp(frame.getHello(), limits);
    case s::Frame::WELCOME: return from_capnp(frame.getWelcome(), limits);
    case s::Frame::UPLOAD_CHUNK: return from_capnp(frame.getUploadChunk(), limits);
    case s::Frame::UPLOAD_ACK: return from_capnp(frame.getUploadAck(), limits);
    case s::Frame::INFER_REQUEST: return from_capnp(frame.getInferRequest(), limits);
    case s::Frame::INFER_REPLY: return from_capnp(frame.getInferReply(), limits);
    case s::Frame::BYE: return from_capnp(frame.getBye(), limits);
    case s::Frame::ERROR: return from_capnp(frame.getError(), limits);
    case s::Frame::TRUNCATE: return from_capnp(frame.getTruncate(), limits);
    case s::Frame::LOAD_QUERY: return from_capnp(frame.getLoadQuery(), limits);
    case s::Frame::LOAD_REPORT: return from_capnp(frame.getLoadReport(), limits);
  }
  return fail("Frame: unknown message kind " + show(static_cast<uint16_t>(frame.which())));
}

}  // namespace

std::vector<char> encode(const Message& m) {
  constexpr size_t fixed_words = 64;  // segment table, Frame, the largest message struct
  const size_t extra = std::visit([](const auto& x) { return variable_bytes(x); }, m);
  capnp::MallocMessageBuilder builder(fixed_words + extra / sizeof(capnp::word) + 8);
  auto frame = builder.initRoot<s::Frame>();
  std::visit([&](const auto& x) { to_capnp(x, frame); }, m);

  std::vector<char> out(capnp::computeSerializedSizeInWords(builder) * sizeof(capnp::word));
  kj::ArrayOutputStream stream(
      kj::arrayPtr(reinterpret_cast<kj::byte*>(out.data()), out.size()));
  capnp::writeMessage(stream, builder);
  return out;
}

Limits limits_for(uint32_t hidden_dim, uint32_t max_positions) {
  return {hidden_dim, max_positions,
          static_cast<uint64_t>(max_positions) * hidden_dim * element_bytes(Dtype::f32) + (1u << 20)};
}

Decoded decode(const char* data, size_t size, const Limits& limits) {
  if (size == 0) return fail("Frame: empty");
  if (size % sizeof(capnp::word) != 0)
    return fail("Frame: " + show(size) + " bytes, not a multiple of 8");
  if (size > limits.max_frame_bytes)
    return fail("Frame: " + show(size) + " bytes, max_frame_bytes = " + show(limits.max_frame_bytes));
  try {
    // FlatArrayMessageReader needs aligned words; the caller's bytes may not be.
    auto words = kj::heapArray<capnp::word>(size / sizeof(capnp::word));
    std::memcpy(words.begin(), data, size);
    capnp::ReaderOptions options;
    options.traversalLimitInWords = size / sizeof(capnp::word) + traversal_slack_words;
    options.nestingLimit = nesting_limit;
    capnp::FlatArrayMessageReader reader(words, options);
    if (reader.getEnd() != words.end()) {
      const auto used = static_cast<size_t>(reader.getEnd() - words.begin()) * sizeof(capnp::word);
      return fail("Frame: " + show(size - used) + " trailing bytes after the message");
    }
    return from_capnp(reader.getRoot<s::Frame>(), limits);
  } catch (const kj::Exception& e) {
    return fail("Frame: malformed: " + quote(e.getDescription().cStr()));
  } catch (const std::exception& e) {
    return fail("Frame: malformed: " + quote(e.what()));
  } catch (...) {
    return fail("Frame: malformed");
  }
}

namespace {

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// One tuple of fields per message kind; floats as their bits so that equal means identical.
auto fields(const Hello& m) {
  return std::tie(m.protocol_version, m.model_id, m.weights_hash, m.split_layer, m.hidden_dim, m.dtype, m.client_name);
}
auto fields(const Load& m) {
  return std::tie(m.live_contexts, m.max_contexts, m.queued_requests, m.context_bytes, m.memory_cap_bytes, m.draining);
}
auto fields(const Welcome& m) {
  return std::tuple_cat(std::tie(m.protocol_version, m.model_id, m.weights_hash, m.split_layer, m.hidden_dim,
                                 m.idle_timeout_ms, m.max_positions),
                        fields(m.load));
}
auto fields(const UploadChunk& m) {
  return std::tie(m.session_id, m.chunk_id, m.first_position, m.count, m.dtype, m.payload);
}
auto fields(const UploadAck& m) { return std::tie(m.session_id, m.chunk_id, m.held_positions); }
auto fields(const InferRequest& m) {
  const auto& p = m.sampling;
  std::vector<std::tuple<int32_t, uint32_t>> bias;
  for (const auto& b : p.logit_bias) bias.emplace_back(b.token, bits(b.bias));
  std::vector<std::tuple<int32_t, uint32_t, bool>> uses;
  for (const auto& u : m.history.uses) uses.emplace_back(u.token, u.output_count, u.in_prompt);
  return std::make_tuple(m.session_id, m.request_id, m.position, m.kind, bits(p.temperature), bits(p.top_p), p.seed,
                         m.inline_dtype, m.inline_count, std::cref(m.inline_payload), p.top_k, bits(p.min_p),
                         bits(p.repetition_penalty), bits(p.presence_penalty), bits(p.frequency_penalty), bias, uses,
                         p.logprobs, m.scored_token);
}
auto fields(const InferReply& m) {
  std::vector<std::tuple<int32_t, uint32_t>> top;
  for (const auto& t : m.logprobs.top) top.emplace_back(t.token, bits(t.logprob));
  return std::make_tuple(m.session_id, m.request_id, m.position, m.token, bits(m.confidence), m.cloud_compute_us,
                         m.has_logprobs, bits(m.logprobs.logprob), top);
}
auto fields(const Bye& m) { return std::tie(m.session_id); }
auto fields(const ErrorReply& m) { return std::tie(m.code, m.text, m.session_id, m.request_id); }
auto fields(const Truncate& m) { return std::tie(m.session_id, m.positions); }
auto fields(const LoadQuery& m) { return std::tie(m.sent_us); }
auto fields(const LoadReport& m) { return std::tuple_cat(std::tie(m.sent_us), fields(m.load)); }

}  // namespace

bool same_fields(const Message& a, const Message& b) {
  if (a.index() != b.index()) return false;
  return std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        return fields(x) == fields(std::get<T>(b));
      },
      a);
}

size_t element_bytes(Dtype d) {
  switch (d) {
    case Dtype::f16: return 2;
    case Dtype::f32: return 4;
    case Dtype::token_ids: return 4;
  }
  return 0;
}

// ---------------------------------------------------------------------------- names

const char* to_string(Dtype d) {
  switch (d) {
    case Dtype::f16: return "f16";
    case Dtype::f32: return "f32";
    case Dtype::token_ids: return "token_ids";
  }
  return "unknown_dtype";
}

const char* to_string(InferKind k) {
  switch (k) {
    case InferKind::collaborative: return "collaborative";
    case InferKind::cloud_only: return "cloud_only";
    case InferKind::naive_split: return "naive_split";
  }
  return "unknown_kind";
}

const char* kind_name(const Message& m) {
  static const char* const names[] = {"Hello",        "Welcome",    "UploadChunk", "UploadAck",
                                      "InferRequest", "InferReply", "Bye",         "ErrorReply",
                                      "Truncate",     "LoadQuery",  "LoadReport"};
  static_assert(std::size(names) == std::variant_size_v<Message>);
  return names[m.index()];
}

}  // namespace ce::wire
