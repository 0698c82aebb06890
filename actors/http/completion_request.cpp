#include "actors/http/completion_request.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <set>

namespace ce {
namespace {

using json = nlohmann::json;

ApiError bad(const std::string& param, const std::string& message) { return ApiError{400, message, "invalid_request_error", param, ""}; }

const char* type_name(const json& v) { return v.type_name(); }

// Helpers that read one field or explain why they cannot.
struct FieldReader {
  const json& body;
  std::optional<ApiError> error;

  const json* get(const char* name) {
    auto it = body.find(name);
    return it == body.end() || it->is_null() ? nullptr : &*it;
  }
  void fail(const std::string& param, const std::string& message) {
    if (!error) error = bad(param, message);
  }
  std::optional<double> number(const char* name, double lo, double hi, bool lo_open = false) {
    const json* v = get(name);
    if (!v) return std::nullopt;
    if (!v->is_number()) {
      fail(name, std::string("'") + name + "' must be a number, not " + type_name(*v));
      return std::nullopt;
    }
    const double x = v->get<double>();
    if (!std::isfinite(x) || x < lo || x > hi || (lo_open && x == lo)) {
      fail(name, std::string("'") + name + "' must be in " + (lo_open ? "(" : "[") + json(lo).dump() + ", " +
                     json(hi).dump() + "], got " + v->dump());
      return std::nullopt;
    }
    return x;
  }
  std::optional<int64_t> integer(const char* name, int64_t lo, int64_t hi) {
    const json* v = get(name);
    if (!v) return std::nullopt;
    if (!v->is_number_integer()) {
      fail(name, std::string("'") + name + "' must be an integer, not " + (v->is_number() ? "a fraction" : type_name(*v)));
      return std::nullopt;
    }
    if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(hi)) {
      fail(name, std::string("'") + name + "' is too large: " + v->dump());
      return std::nullopt;
    }
    const int64_t x = v->get<int64_t>();
    if (x < lo || x > hi) {
      fail(name, std::string("'") + name + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                     v->dump());
      return std::nullopt;
    }
    return x;
  }
  std::optional<bool> boolean(const char* name) {
    const json* v = get(name);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) {
      fail(name, std::string("'") + name + "' must be a boolean, not " + type_name(*v));
      return std::nullopt;
    }
    return v->get<bool>();
  }
};

// The fields /v1/completions and /v1/chat/completions share; each endpoint adds its own.
const std::set<std::string> shared_fields = {
    "model", "max_tokens", "temperature", "top_p", "seed", "stop", "stream", "stream_options", "n", "user",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "x_ce"};
const std::set<std::string> completion_fields = {"prompt", "best_of", "echo", "suffix"};
const std::set<std::string> chat_fields = {"messages", "max_completion_tokens", "top_logprobs", "response_format",
                                           "tools", "tool_choice", "parallel_tool_calls"};

std::optional<ApiError> parse_body(const std::string& text, const std::set<std::string>& own_fields, json& body) {
  try {
    body = json::parse(text);
  } catch (const json::parse_error& e) {
    return bad("", std::string("the body is not valid JSON: ") + e.what());
  }
  if (!body.is_object()) return bad("", std::string("the body must be a JSON object, not ") + type_name(body));
  for (auto it = body.begin(); it != body.end(); ++it)
    if (!shared_fields.count(it.key()) && !own_fields.count(it.key()))
      return bad(it.key(), "Unrecognized request argument supplied: " + it.key());
  return std::nullopt;
}

// Every field but the prompt (or messages) into `r`; the first problem found, if any.
std::optional<ApiError> parse_shared(const json& body, const CompletionDefaults& defaults, CompletionRequest& r,
                                     const char* max_tokens_field) {
  FieldReader f{body, std::nullopt};
  if (const json* m = f.get("model")) {
    if (!m->is_string()) return bad("model", std::string("'model' must be a string, not ") + type_name(*m));
    if (m->get<std::string>() != defaults.model)
      return ApiError{404, "The model '" + m->get<std::string>() + "' does not exist; this server serves '" + defaults.model + "'",
                      "invalid_request_error", "model", "model_not_found"};
  }
  r.max_tokens = static_cast<int>(f.integer(max_tokens_field, 1, 1 << 20).value_or(defaults.max_tokens));
  r.temperature = f.number("temperature", 0, 2).value_or(defaults.temperature);
  r.top_p = f.number("top_p", 0, 1, true).value_or(defaults.top_p);
  r.seed = f.integer("seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()).value_or(defaults.seed);
  r.stream = f.boolean("stream").value_or(false);

  if (const json* stop = f.get("stop")) {
    if (stop->is_string()) {
      r.stop.push_back(stop->get<std::string>());
    } else if (stop->is_array() && stop->size() <= 4) {
      for (const auto& s : *stop) {
        if (!s.is_string()) return bad("stop", "'stop' must be a string or an array of up to 4 strings");
        r.stop.push_back(s.get<std::string>());
      }
    } else {
      return bad("stop", "'stop' must be a string or an array of up to 4 strings");
    }
    for (const auto& s : r.stop)
      if (s.empty()) return bad("stop", "stop strings must not be empty");
  }
  if (const json* so = f.get("stream_options")) {
    if (!so->is_object()) return bad("stream_options", "'stream_options' must be an object");
    if (!r.stream) return bad("stream_options", "'stream_options' is only allowed when 'stream' is true");
    for (auto it = so->begin(); it != so->end(); ++it) {
      if (it.key() != "include_usage") return bad("stream_options", "Unrecognized stream option: " + it.key());
      if (!it->is_boolean()) return bad("stream_options", "'stream_options.include_usage' must be a boolean");
      r.include_usage = it->get<bool>();
    }
  }
  // Accepted at their defaults only: anything else would silently change the meaning.
  if (auto n = f.integer("n", 1, 128); n && *n != 1) return bad("n", "only n = 1 is supported");
  if (const json* user = f.get("user"); user && !user->is_string()) return bad("user", "'user' must be a string");
  for (const char* penalty : {"presence_penalty", "frequency_penalty"})
    if (auto p = f.number(penalty, -2, 2); p && *p != 0) return bad(penalty, std::string(penalty) + " is not supported");
  if (const json* bias = f.get("logit_bias"); bias && (!bias->is_object() || !bias->empty()))
    return bad("logit_bias", "logit_bias is not supported");

  if (const json* x = f.get("x_ce")) {
    if (!x->is_object()) return bad("x_ce", std::string("'x_ce' must be an object, not ") + type_name(*x));
    for (auto it = x->begin(); it != x->end(); ++it) {
      if (it.key() == "threshold") {
        if (!it->is_number() || it->get<double>() < 0 || it->get<double>() > 2 || !std::isfinite(it->get<double>()))
          return bad("x_ce.threshold", "'x_ce.threshold' must be a number in [0, 2] (> 1: never exit early)");
        r.threshold = it->get<double>();
      } else if (it.key() == "mode") {
        if (it->is_string()) r.mode = inference_mode_named(it->get<std::string>());
        if (!r.mode) return bad("x_ce.mode", "'x_ce.mode' must be one of " + inference_mode_names());
      } else if (it.key() == "speculate") {
        if (!it->is_boolean()) return bad("x_ce.speculate", "'x_ce.speculate' must be true or false");
        r.speculate = it->get<bool>();
      } else {
        return bad("x_ce." + it.key(), "Unrecognized x_ce option: " + it.key() + " (known: threshold, mode, speculate)");
      }
    }
  }
  if (f.error) return *f.error;
  return std::nullopt;
}

}  // namespace

std::string to_json(const ApiError& e) {
  auto or_null = [](const std::string& s) { return s.empty() ? json(nullptr) : json(s); };
  json body = {{"error", {{"message", e.message}, {"type", e.type}, {"param", or_null(e.param)}, {"code", or_null(e.code)}}}};
  return body.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::variant<CompletionRequest, ApiError> parse_completion_request(const std::string& text,
                                                                   const CompletionDefaults& defaults) {
  json body;
  if (auto e = parse_body(text, completion_fields, body)) return *e;
  CompletionRequest r;
  FieldReader f{body, std::nullopt};
  const json* prompt = f.get("prompt");
  if (!prompt) return bad("prompt", "'prompt' is required");
  auto take_ids = [&](const json& arr) -> std::optional<ApiError> {
    for (const auto& id : arr) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= defaults.vocab_size)
        return bad("prompt", "token ids in 'prompt' must be integers in [0, " + std::to_string(defaults.vocab_size) + ")");
      r.prompt_ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
    }
    return std::nullopt;
  };
  if (prompt->is_string()) {
    r.prompt = prompt->get<std::string>();
  } else if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_string()) {
    r.prompt = (*prompt)[0].get<std::string>();
  } else if (prompt->is_array() && !prompt->empty() && (*prompt)[0].is_number()) {
    if (auto e = take_ids(*prompt)) return *e;
  } else if (prompt->is_array() && prompt->size() == 1 && (*prompt)[0].is_array()) {
    if (auto e = take_ids((*prompt)[0])) return *e;
  } else if (prompt->is_array() && prompt->size() > 1) {
    return bad("prompt", "batched prompts are not supported: send one prompt per request");
  } else {
    return bad("prompt", std::string("'prompt' must be a string (or an array of token ids), not ") + type_name(*prompt));
  }
  if (r.prompt.empty() && r.prompt_ids.empty()) return bad("prompt", "'prompt' must not be empty");
  if (auto e = parse_shared(body, defaults, r, "max_tokens")) return *e;
  if (auto b = f.integer("best_of", 1, 128); b && *b != 1) return bad("best_of", "only best_of = 1 is supported");
  if (auto echo = f.boolean("echo"); echo && *echo) return bad("echo", "echo is not supported");
  if (auto lp = f.integer("logprobs", 0, 5); lp && *lp != 0) return bad("logprobs", "logprobs are not supported");
  if (const json* suffix = f.get("suffix"); suffix) return bad("suffix", "suffix is not supported");
  if (f.error) return *f.error;
  return r;
}

std::variant<ChatRequest, ApiError> parse_chat_request(const std::string& text, const CompletionDefaults& defaults) {
  json body;
  if (auto e = parse_body(text, chat_fields, body)) return *e;
  ChatRequest r;
  FieldReader f{body, std::nullopt};
  const json* messages = f.get("messages");
  if (!messages) return bad("messages", "'messages' is required");
  if (!messages->is_array() || messages->empty())
    return bad("messages", "'messages' must be a non-empty array of {role, content} objects");
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) return bad(at, at + " must be an object with 'role' and 'content'");
    auto role = m.find("role");
    if (role == m.end() || !role->is_string() || role->get<std::string>().empty())
      return bad(at + ".role", at + ".role must be a non-empty string");
    ChatTurn turn{role->get<std::string>(), ""};
    auto content = m.find("content");
    if (content == m.end() || content->is_null()) {
      if (turn.role != "assistant") return bad(at + ".content", at + ".content is required");
    } else if (content->is_string()) {
      turn.content = content->get<std::string>();
    } else if (content->is_array()) {  // content parts: only text ones can be read by a text model
      for (const auto& part : *content) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
          return bad(at + ".content", at + ".content parts must be {\"type\": \"text\", \"text\": ...}: this model reads text only");
        turn.content += part["text"].get<std::string>();
      }
    } else {
      return bad(at + ".content", at + ".content must be a string or an array of text parts, not " + type_name(*content));
    }
    for (auto it = m.begin(); it != m.end(); ++it)
      if (it.key() != "role" && it.key() != "content" && it.key() != "name")
        return bad(at + "." + it.key(), at + "." + it.key() + " is not supported (tool calls are not)");
    r.messages.push_back(std::move(turn));
  }
  const bool has_max_tokens = f.get("max_tokens") != nullptr, has_max_completion = f.get("max_completion_tokens") != nullptr;
  if (has_max_tokens && has_max_completion)
    return bad("max_completion_tokens", "give 'max_completion_tokens' or its older name 'max_tokens', not both");
  if (auto e = parse_shared(body, defaults, r.completion, has_max_tokens ? "max_tokens" : "max_completion_tokens")) return *e;
  if (auto lp = f.boolean("logprobs"); lp && *lp) return bad("logprobs", "logprobs are not supported");
  if (auto top = f.integer("top_logprobs", 0, 20); top && *top != 0) return bad("top_logprobs", "logprobs are not supported");
  if (const json* format = f.get("response_format");
      format && !(format->is_object() && format->value("type", "") == "text"))
    return bad("response_format", "only response_format {\"type\": \"text\"} is supported");
  if (const json* tools = f.get("tools"); tools && !(tools->is_array() && tools->empty()))
    return bad("tools", "tools are not supported");
  if (const json* choice = f.get("tool_choice"); choice && !(choice->is_string() && choice->get<std::string>() == "none"))
    return bad("tool_choice", "tools are not supported (tool_choice may only be \"none\")");
  if (f.error) return *f.error;
  return r;
}

size_t find_stop(const std::string& text, const std::vector<std::string>& stop) {
  size_t best = std::string::npos;
  for (const auto& s : stop) best = std::min(best, text.find(s));
  return best;
}

size_t stop_prefix_overlap(const std::string& text, const std::vector<std::string>& stop) {
  size_t longest = 0;
  for (const auto& s : stop)
    for (size_t k = std::min(s.empty() ? 0 : s.size() - 1, text.size()); k > longest; --k)
      if (text.compare(text.size() - k, k, s, 0, k) == 0) {
        longest = k;
        break;
      }
  return longest;
}

}  // namespace ce
