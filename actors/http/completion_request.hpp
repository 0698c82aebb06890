#pragma once
// The body of an OpenAI-style POST /v1/completions or /v1/chat/completions, parsed and checked field by field. Every
// problem becomes an ApiError whose message names the field, as OpenAI's API answers. Kept
// apart from the HTTP server so that it can be tested without sockets. JSON-free header.
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "config/node_config.hpp"
#include "model/sampling.hpp"

namespace ce {

struct ApiError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;  // the field at fault, or empty
  std::string code;   // e.g. "context_length_exceeded", or empty
};

// {"error": {"message", "type", "param", "code"}}, nulls where empty.
std::string to_json(const ApiError& error);

// Values a request falls back on (from the node's config) and what it is checked against.
struct CompletionDefaults {
  std::string model;  // the served model's name; a request naming another gets 404
  int max_tokens = 64;
  double temperature = 0;
  double top_p = 1;
  // The seed of a sampled request (temperature > 0) that names none: unseeded requests must not
  // all draw the same tokens. Unset: 0. A greedy request without a seed gets 0 (its tokens do not
  // depend on it).
  std::function<int64_t()> draw_seed;
  int vocab_size = 0;  // for prompts given as token ids and logit_bias keys
};

// Fields other servers' clients send (llama-server, vLLM, TGI, Ollama, newer OpenAI ones) that this
// server does not implement: ignored, named in a Warning header and x_ce.ignored_fields, rather
// than refused. A field in neither this list nor the API is refused with 400 naming it.
const std::vector<std::string>& ignored_vendor_fields();

// Requests may ask for up to this many choices (n).
constexpr int max_choices = 16;

struct CompletionRequest {
  std::string prompt;                      // text; empty when prompt_ids is used
  std::vector<int32_t> prompt_ids;         // a prompt given as token ids
  int max_tokens = 0;                      // 0 only with echo: the prompt's logprobs alone
  double temperature = 0;
  double top_p = 1;
  int32_t top_k = 0;                       // 0: off (-1 in a request means off too, as llama-server)
  double min_p = 0;
  double repetition_penalty = 1;
  double presence_penalty = 0;
  double frequency_penalty = 0;
  std::vector<TokenBias> logit_bias;       // sorted by token
  int64_t seed = 0;                        // choice i samples with seed + i
  bool seed_drawn = false;                 // no seed was given: drawn by CompletionDefaults::draw_seed
  int n = 1;                               // choices, 1..max_choices
  int logprobs = -1;                       // -1: none; N: each token's logprob and the N most likely
  bool echo = false;                       // completions: the prompt before the completion (and its logprobs)
  std::vector<std::string> stop;           // up to 4 non-empty strings
  bool stream = false;
  bool include_usage = false;              // stream_options.include_usage
  std::optional<double> threshold;         // x_ce.threshold
  std::optional<InferenceMode> mode;       // x_ce.mode, spelled as in config files
  std::optional<bool> speculate;           // x_ce.speculate (collaborative mode; default ce.speculation.enabled)
  std::vector<std::string> ignored_fields; // fields of ignored_vendor_fields() the request had, sorted

  // The knobs of choice `index` (its seed: choice_seed(index)), logprobs included.
  SamplingParams sampling(int index = 0) const;
  // Choice `index` samples with seed + index (wrapping, as a 64-bit seed does), as x_ce reports it.
  int64_t choice_seed(int index) const {
    return static_cast<int64_t>(static_cast<uint64_t>(seed) + static_cast<uint64_t>(index));
  }
};

std::variant<CompletionRequest, ApiError> parse_completion_request(const std::string& body,
                                                                   const CompletionDefaults& defaults);

// One message of a conversation; content parts of type text are joined.
struct ChatTurn {
  std::string role, content;
};

// POST /v1/chat/completions: the conversation and the same generation fields as a completion
// (max_completion_tokens, or its older name max_tokens; logprobs as a boolean and top_logprobs
// instead of a count; no echo); `completion.prompt` stays empty until the
// chat template renders the messages.
struct ChatRequest {
  std::vector<ChatTurn> messages;
  CompletionRequest completion;
};

std::variant<ChatRequest, ApiError> parse_chat_request(const std::string& body, const CompletionDefaults& defaults);

// Where the first stop string occurs in text (npos if none), and how many trailing bytes of
// text could still become the start of a stop string (to hold back while streaming).
size_t find_stop(const std::string& text, const std::vector<std::string>& stop);
size_t stop_prefix_overlap(const std::string& text, const std::vector<std::string>& stop);

}  // namespace ce
