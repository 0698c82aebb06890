#pragma once
// The messages between edge and cloud as plain structs, and their wire codec.
//
// The wire format is Cap'n Proto (messages/protocol.capnp); only codec.cpp sees the
// generated code. A frame is one std::vector<char> (a CAF built-in type), produced by
// encode() and checked field by field by decode() before anyone trusts it.

#include <cstddef>
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "messages/error.hpp"
#include "model/sampling.hpp"

namespace ce::wire {

constexpr uint32_t protocol_version = 1;

// Element type of a payload. token_ids: int32 little endian.
enum class Dtype : uint8_t { f16 = 0, f32 = 1, token_ids = 2 };

// Edge -> cloud: opens a session.
struct Hello {
  uint32_t protocol_version = wire::protocol_version;
  std::string model_id;
  std::string weights_hash;
  uint32_t split_layer = 0;
  uint32_t hidden_dim = 0;
  Dtype dtype = Dtype::f16;
  std::string client_name;
};

// A cloud's load: what an edge with several clouds weighs when it places a new session.
struct Load {
  uint32_t live_contexts = 0;
  uint32_t max_contexts = 0;
  uint32_t queued_requests = 0;  // infer requests waiting for uploads or compute
  uint64_t context_bytes = 0;
  uint64_t memory_cap_bytes = 0;
  bool draining = false;         // stopping: takes no new sessions
  // Takes no new session now: draining, or at its context or memory cap.
  bool full() const {
    return draining || (max_contexts > 0 && live_contexts >= max_contexts) ||
           (memory_cap_bytes > 0 && context_bytes >= memory_cap_bytes);
  }
};

// Cloud -> edge: accepts a Hello.
struct Welcome {
  uint32_t protocol_version = wire::protocol_version;
  std::string model_id;
  std::string weights_hash;
  uint32_t split_layer = 0;
  uint32_t hidden_dim = 0;
  uint64_t idle_timeout_ms = 0;
  uint32_t max_positions = 0;
  Load load;
};

// Hidden states (f16 or f32, row-major (count, hidden_dim)) or token ids (cloud-only
// mode) of positions [first_position, first_position + count).
struct UploadChunk {
  uint64_t session_id = 0;
  uint64_t chunk_id = 0;
  uint32_t first_position = 0;
  uint32_t count = 0;
  Dtype dtype = Dtype::f16;
  std::vector<uint8_t> payload;
};

// Cloud -> edge: the cloud holds positions [0, held_positions).
struct UploadAck {
  uint64_t session_id = 0;
  uint64_t chunk_id = 0;
  uint32_t held_positions = 0;
};

enum class InferKind : uint8_t { collaborative = 0, cloud_only = 1, naive_split = 2 };

// Asks for the token after `position`. naive_split carries the whole sequence inline
// (fp32, positions [0, position], row-major (inline_count, hidden_dim)) and the cloud
// keeps nothing; other kinds leave the inline fields empty.
struct InferRequest {
  uint64_t session_id = 0;
  uint64_t request_id = 0;
  uint32_t position = 0;
  InferKind kind = InferKind::collaborative;
  SamplingParams sampling;   // the rule the edge applies too
  TokenHistory history;      // the tokens up to `position` (only when sampling.penalizes())
  int32_t scored_token = -1; // echo: score this token instead of choosing
  Dtype inline_dtype = Dtype::f32;
  uint32_t inline_count = 0;
  std::vector<uint8_t> inline_payload;
};

// Cloud -> edge: the answer to an InferRequest.
struct InferReply {
  uint64_t session_id = 0;
  uint64_t request_id = 0;
  uint32_t position = 0;
  int32_t token = 0;
  float confidence = 0;
  uint64_t cloud_compute_us = 0;
  bool has_logprobs = false;
  Logprobs logprobs;         // when has_logprobs
};

// Edge -> cloud: closes a session.
struct Bye {
  uint64_t session_id = 0;
};

// Edge -> cloud: positions [positions, ...) of the session were a wrong speculation; the cloud
// drops them and cancels its requests for them. Answered with an UploadAck (what is still held).
struct Truncate {
  uint64_t session_id = 0;
  uint32_t positions = 0;
};

// Edge -> cloud: asks for the cloud's load (and whether it still answers).
struct LoadQuery {
  uint64_t sent_us = 0;  // echoed in the report
};

// Cloud -> edge: the answer to a LoadQuery.
struct LoadReport {
  uint64_t sent_us = 0;
  Load load;
};

// Either way: a refusal. On the wire it is the Error struct.
struct ErrorReply {
  error code = error::none;
  std::string text;
  uint64_t session_id = 0;
  uint64_t request_id = 0;
};

using Message = std::variant<Hello, Welcome, UploadChunk, UploadAck, InferRequest, InferReply, Bye, ErrorReply,
                             Truncate, LoadQuery, LoadReport>;

// What the receiver accepts. Zero hidden_dim / max_positions skip the checks that need them.
struct Limits {
  uint32_t hidden_dim = 0;
  uint32_t max_positions = 0;
  uint64_t max_frame_bytes = 64ull << 20;
};

// The limits for a model's dim and max_seq: the largest frame a peer may send is a naïve-split
// InferRequest inlining every position in fp32, plus 1 MiB for the rest of the frame.
Limits limits_for(uint32_t hidden_dim, uint32_t max_positions);

struct Decoded {
  bool ok = false;
  Message message;
  error code = error::none;  // bad_message when !ok
  std::string error_text;    // names the bad field, e.g. "UploadChunk.payload: ..."
};

// Strings longer than this are refused by decode().
constexpr size_t max_text_bytes = 4096;

std::vector<char> encode(const Message& m);

// Never throws and never aborts, whatever the bytes. ok=false comes with
// code=error::bad_message and an error_text that names the offending field.
Decoded decode(const char* data, size_t size, const Limits& limits);
inline Decoded decode(const std::vector<char>& bytes, const Limits& limits) {
  return decode(bytes.data(), bytes.size(), limits);
}

size_t element_bytes(Dtype d);  // f16: 2, f32: 4, token_ids: 4

// Same kind and every field equal (floats bit for bit): what decode(encode(m)) must give back.
bool same_fields(const Message& a, const Message& b);


// Names for logs.
const char* to_string(Dtype d);
const char* to_string(InferKind k);
const char* kind_name(const Message& m);  // "Hello", "UploadChunk", ...

}  // namespace ce::wire
