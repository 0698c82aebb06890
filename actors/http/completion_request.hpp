#pragma once
// The body of an OpenAI-style POST /v1/completions or /v1/chat/completions, parsed and checked field by field. Every
// problem becomes an ApiError whose message names the field, as OpenAI's API answers. Kept
// apart from the HTTP server so that it can be tested without sockets. JSON-free header.
#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "config/node_config.hpp"

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
  int64_t seed = 0;
  int vocab_size = 0;  // for prompts given as token ids
};

struct CompletionRequest {
  std::string prompt;                      // text; empty when prompt_ids is used
  std::vector<int32_t> prompt_ids;         // a prompt given as token ids
  int max_tokens = 0;
  double temperature = 0;
  double top_p = 1;
  int64_t seed = 0;
  std::vector<std::string> stop;           // up to 4 non-empty strings
  bool stream = false;
  bool include_usage = false;              // stream_options.include_usage
  std::optional<double> threshold;         // x_ce.threshold
  std::optional<InferenceMode> mode;       // x_ce.mode, spelled as in config files
  std::optional<bool> speculate;           // x_ce.speculate (collaborative mode; default ce.speculation.enabled)
};

std::variant<CompletionRequest, ApiError> parse_completion_request(const std::string& body,
                                                                   const CompletionDefaults& defaults);

// One message of a conversation; content parts of type text are joined.
struct ChatTurn {
  std::string role, content;
};

// POST /v1/chat/completions: the conversation and the same generation fields as a completion
// (max_completion_tokens, or its older name max_tokens); `completion.prompt` stays empty until the
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
