@0x8e00d77c963159e9;
# cecollm wire protocol between edge and cloud nodes.
#
# Evolution rules: field and union ordinals (@N) are never renumbered, reused or
# retyped; the schema evolves only by appending fields, union members and enumerants.
# A breaking change bumps `protocolVersion`, which peers compare in Hello/Welcome.
# The C++ side never uses this schema directly: messages/codec.cpp translates it to the
# plain structs of messages/codec.hpp.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("ce::schema");

const protocolVersion :UInt32 = 1;

# Element type of a tensor payload. tokenIds are int32 little endian.
enum Dtype {
  f16 @0;
  f32 @1;
  tokenIds @2;
}

enum InferKind {
  collaborative @0;  # the cloud continues from the hidden states it holds
  cloudOnly @1;      # the cloud runs the whole model on uploaded token ids
  naiveSplit @2;     # the whole sequence travels inline; the cloud keeps nothing
}

# Edge -> cloud: opens a session.
struct Hello {
  protocolVersion @0 :UInt32;
  modelId @1 :Text;
  weightsHash @2 :Text;
  splitLayer @3 :UInt32;
  hiddenDim @4 :UInt32;
  dtype @5 :Dtype;
  clientName @6 :Text;
}

# Cloud -> edge: accepts a Hello.
struct Welcome {
  protocolVersion @0 :UInt32;
  modelId @1 :Text;
  weightsHash @2 :Text;
  splitLayer @3 :UInt32;
  hiddenDim @4 :UInt32;
  idleTimeoutMs @5 :UInt64;
  maxPositions @6 :UInt32;
  load @7 :Load;             # the cloud's load as it welcomes the edge (placement of sessions)
}

# A cloud's load, in a Welcome and in a LoadReport: what an edge with several clouds weighs
# when it places a new session (actors/edge/cloud_router.hpp).
struct Load {
  liveContexts @0 :UInt32;   # sessions held now
  maxContexts @1 :UInt32;    # ce.session.max-contexts
  queuedRequests @2 :UInt32; # infer requests waiting for uploads or compute
  contextBytes @3 :UInt64;   # memory the contexts hold
  memoryCapBytes @4 :UInt64; # ce.session.memory-cap
  draining @5 :Bool;         # stopping: takes no new sessions
}

# Edge -> cloud: asks for the cloud's load (answered with a LoadReport); also the edge's
# liveness check of a cloud that holds its link open but no longer answers.
struct LoadQuery {
  sentUs @0 :UInt64;         # the edge's clock, echoed back (round trip)
}

# Cloud -> edge: the answer to a LoadQuery.
struct LoadReport {
  sentUs @0 :UInt64;         # the query's
  load @1 :Load;
}

# Edge -> cloud: hidden states (f16/f32, row-major (count, hiddenDim)) or token ids of
# positions [firstPosition, firstPosition + count).
struct UploadChunk {
  sessionId @0 :UInt64;
  chunkId @1 :UInt64;
  firstPosition @2 :UInt32;
  count @3 :UInt32;
  dtype @4 :Dtype;
  payload @5 :Data;
}

# Cloud -> edge: the cloud holds positions [0, heldPositions).
struct UploadAck {
  sessionId @0 :UInt64;
  chunkId @1 :UInt64;
  heldPositions @2 :UInt32;
}

# Edge -> cloud: asks for the token after `position`.
struct InferRequest {
  sessionId @0 :UInt64;
  requestId @1 :UInt64;
  position @2 :UInt32;
  kind @3 :InferKind;
  temperature @4 :Float32;
  topP @5 :Float32;
  seed @6 :UInt64;
  inlineDtype @7 :Dtype;     # naiveSplit only
  inlineCount @8 :UInt32;    # naiveSplit only: position + 1
  inlinePayload @9 :Data;    # naiveSplit only: (inlineCount, hiddenDim) f32
  # The rest of the sampling rule (model/sampling.hpp: SamplingParams), applied as on the edge.
  topK @10 :UInt32;                   # 0: no limit
  minP @11 :Float32;                  # 0: off
  repetitionPenalty @12 :Float32 = 1.0;
  presencePenalty @13 :Float32;
  frequencyPenalty @14 :Float32;
  logitBias @15 :List(TokenBias);
  history @16 :List(TokenUse);        # the tokens up to `position`, when a penalty is set
  logprobs @17 :Int32 = -1;           # -1: none; N: the token's logprob and the N most likely
  scoredToken @18 :Int32 = -1;        # echo: answer with this token (and its logprob), chosen by no one
}

struct TokenBias {
  token @0 :Int32;
  bias @1 :Float32;
}

# One distinct token of the sequence before the chosen one.
struct TokenUse {
  token @0 :Int32;
  outputCount @1 :UInt32;   # occurrences in the generated part
  inPrompt @2 :Bool;
}

struct TokenLogprob {
  token @0 :Int32;
  logprob @1 :Float32;
}

# Cloud -> edge: the answer to an InferRequest.
struct InferReply {
  sessionId @0 :UInt64;
  requestId @1 :UInt64;
  position @2 :UInt32;
  token @3 :Int32;
  confidence @4 :Float32;
  cloudComputeUs @5 :UInt64;
  hasLogprobs @6 :Bool;                 # the request asked for logprobs (logprobs >= 0)
  logprob @7 :Float32;                  # the token's, under the final layer's distribution
  topLogprobs @8 :List(TokenLogprob);   # the most likely tokens, most likely first
}

# Edge -> cloud: closes a session.
struct Bye {
  sessionId @0 :UInt64;
}

# Edge -> cloud: the session's positions from `positions` on were speculative and wrong: the
# cloud drops their states and KV and cancels its requests for them (answered with `cancelled`).
# The reply is an UploadAck naming what the cloud still holds.
struct Truncate {
  sessionId @0 :UInt64;
  positions @1 :UInt32;
}

# Either way: a refusal. `code` is a ce::error value (messages/error.hpp).
struct Error {
  code @0 :UInt8;
  text @1 :Text;
  sessionId @2 :UInt64;
  requestId @3 :UInt64;
}

# The one root type of every message on the wire.
struct Frame {
  union {
    hello @0 :Hello;
    welcome @1 :Welcome;
    uploadChunk @2 :UploadChunk;
    uploadAck @3 :UploadAck;
    inferRequest @4 :InferRequest;
    inferReply @5 :InferReply;
    bye @6 :Bye;
    error @7 :Error;
    truncate @8 :Truncate;
    loadQuery @9 :LoadQuery;
    loadReport @10 :LoadReport;
  }
}
