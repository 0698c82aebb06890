#include "actors/http/completion_request.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
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
    "model", "max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "logit_bias", "seed", "stop", "stream", "stream_options", "n", "best_of", "user",
    "logprobs", "x_ce"};
const std::set<std::string> completion_fields = {"prompt", "echo", "suffix"};
const std::set<std::string> chat_fields = {"messages", "max_completion_tokens", "top_logprobs", "response_format",
                                           "tools", "tool_choice", "parallel_tool_calls"};

// The body as a JSON object whose every field is known: the endpoint's (checked later) or an
// ignored vendor field (listed in `ignored`, sorted); else the first unknown field is the error.
std::optional<ApiError> parse_body(const std::string& text, const std::set<std::string>& own_fields, json& body,
                                   std::vector<std::string>& ignored) {
  try {
    body = json::parse(text);
  } catch (const json::parse_error& e) {
    return bad("", std::string("the body is not valid JSON: ") + e.what());
  }
  if (!body.is_object()) return bad("", std::string("the body must be a JSON object, not ") + type_name(body));
  static const std::set<std::string> vendor(ignored_vendor_fields().begin(), ignored_vendor_fields().end());
  for (auto it = body.begin(); it != body.end(); ++it) {
    if (shared_fields.count(it.key()) || own_fields.count(it.key())) continue;
    if (!vendor.count(it.key())) return bad(it.key(), "Unrecognized request argument supplied: " + it.key());
    ignored.push_back(it.key());  // nlohmann's objects iterate in key order: sorted already
  }
  return std::nullopt;
}

// logit_bias: {"token id": bias in [-100, 100]} as OpenAI takes it; ids must be in the vocabulary.
std::optional<ApiError> parse_logit_bias(const json& bias, int vocab_size, std::vector<TokenBias>& out) {
  if (!bias.is_object())
    return bad("logit_bias", std::string("'logit_bias' must be an object mapping token ids (as strings) to numbers in "
                                         "[-100, 100], not ") + type_name(bias));
  for (auto it = bias.begin(); it != bias.end(); ++it) {
    const std::string& key = it.key();
    // The canonical decimal spelling only: "05" and "5" must not both name token 5.
    const bool digits = !key.empty() && key.size() <= 10 && key.find_first_not_of("0123456789") == std::string::npos &&
                        (key == "0" || key[0] != '0');
    const int64_t id = digits ? std::stoll(key) : -1;
    if (id < 0 || id >= vocab_size)
      return bad("logit_bias", "Invalid key in 'logit_bias': '" + key + "' is not a token id in [0, " +
                                   std::to_string(vocab_size) + ")");
    const double b = it->is_number() ? it->get<double>() : std::nan("");
    if (!std::isfinite(b) || b < -100 || b > 100)
      return bad("logit_bias", "'logit_bias' of token " + key + " must be a number in [-100, 100], got " + it->dump());
    out.push_back({static_cast<int32_t>(id), static_cast<float>(b)});
  }
  std::sort(out.begin(), out.end(), [](const TokenBias& a, const TokenBias& b) { return a.token < b.token; });
  return std::nullopt;
}

// Every field but the prompt (or messages), echo and logprobs into `r`; the first problem found,
// if any. `min_max_tokens`: 0 where a response may generate nothing (echo).
std::optional<ApiError> parse_shared(const json& body, const CompletionDefaults& defaults, CompletionRequest& r,
                                     const char* max_tokens_field, int min_max_tokens) {
  FieldReader f{body, std::nullopt};
  if (const json* m = f.get("model")) {
    if (!m->is_string()) return bad("model", std::string("'model' must be a string, not ") + type_name(*m));
    if (m->get<std::string>() != defaults.model)
      return ApiError{404, "The model '" + m->get<std::string>() + "' does not exist; this server serves '" + defaults.model + "'",
                      "invalid_request_error", "model", "model_not_found"};
  }
  if (const json* v = f.get(max_tokens_field); v && v->is_number_integer() && v->get<int64_t>() == 0 && min_max_tokens > 0)
    return bad(max_tokens_field, std::string("'") + max_tokens_field +
                                     "' must be at least 1 (0, the prompt's logprobs alone, needs 'echo' on /v1/completions)");
  r.max_tokens = static_cast<int>(f.integer(max_tokens_field, min_max_tokens, 1 << 20).value_or(defaults.max_tokens));
  r.temperature = f.number("temperature", 0, 2).value_or(defaults.temperature);
  r.top_p = f.number("top_p", 0, 1, true).value_or(defaults.top_p);
  // -1 is llama-server's and vLLM's spelling of "no limit", 0 OpenAI-compatible servers'.
  r.top_k = static_cast<int32_t>(std::max<int64_t>(0, f.integer("top_k", -1, std::numeric_limits<int32_t>::max()).value_or(0)));
  r.min_p = f.number("min_p", 0, 1).value_or(0);
  r.repetition_penalty = f.number("repetition_penalty", 0, 10, true).value_or(1);
  r.presence_penalty = f.number("presence_penalty", -2, 2).value_or(0);
  r.frequency_penalty = f.number("frequency_penalty", -2, 2).value_or(0);
  if (const json* bias = f.get("logit_bias"))
    if (auto e = parse_logit_bias(*bias, defaults.vocab_size, r.logit_bias)) return *e;
  if (auto seed = f.integer("seed", std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max())) {
    r.seed = *seed;
  } else if (r.temperature > 0 && defaults.draw_seed) {
    r.seed = defaults.draw_seed();
    r.seed_drawn = true;
  }
  r.stream = f.boolean("stream").value_or(false);
  r.n = static_cast<int>(f.integer("n", 1, max_choices).value_or(1));
  if (f.error) return *f.error;  // a bad n, not the best_of it makes look wrong
  // best_of > n would mean generating candidates and returning the most likely: not done here.
  if (auto best_of = f.integer("best_of", 1, 1 << 20); best_of && *best_of != r.n)
    return bad("best_of", "'best_of' must equal n (" + std::to_string(r.n) +
                              "): this server returns every choice it generates and ranks none");

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
  if (const json* user = f.get("user"); user && !user->is_string()) return bad("user", "'user' must be a string");

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

const std::vector<std::string>& ignored_vendor_fields() {
  static const std::vector<std::string> fields = [] {
    std::vector<std::string> v = {
        // llama-server
        "cache_prompt", "dry_allowed_length", "dry_base", "dry_multiplier", "dry_penalty_last_n",
        "dry_sequence_breakers", "dynatemp_exponent", "dynatemp_range", "id_slot", "ignore_eos", "min_keep", "mirostat",
        "mirostat_eta", "mirostat_tau", "n_keep", "n_predict", "n_probs", "penalize_nl", "post_sampling_probs",
        "repeat_last_n", "return_tokens", "samplers", "t_max_predict_ms", "tfs_z", "timings_per_token", "typical_p",
        "xtc_probability", "xtc_threshold",
        // vLLM
        "add_special_tokens", "include_stop_str_in_output", "length_penalty", "min_tokens", "priority",
        "prompt_logprobs", "return_tokens_as_token_ids", "skip_special_tokens", "spaces_between_special_tokens",
        "stop_token_ids", "truncate_prompt_tokens", "use_beam_search",
        // Text Generation Inference
        "decoder_input_details", "details", "do_sample", "return_full_text", "top_n_tokens", "truncate", "watermark",
        // Ollama
        "keep_alive",
        // OpenAI's own, about storage and billing rather than the tokens
        "metadata", "service_tier", "store"};
    std::sort(v.begin(), v.end());
    return v;
  }();
  return fields;
}

SamplingParams CompletionRequest::sampling(int index) const {
  SamplingParams s;
  s.temperature = static_cast<float>(temperature);
  s.top_p = static_cast<float>(top_p);
  s.seed = static_cast<uint64_t>(choice_seed(index));
  s.top_k = top_k;
  s.min_p = static_cast<float>(min_p);
  s.repetition_penalty = static_cast<float>(repetition_penalty);
  s.presence_penalty = static_cast<float>(presence_penalty);
  s.frequency_penalty = static_cast<float>(frequency_penalty);
  s.logit_bias = logit_bias;
  s.logprobs = logprobs;
  return s;
}

std::string to_json(const ApiError& e) {
  auto or_null = [](const std::string& s) { return s.empty() ? json(nullptr) : json(s); };
  json body = {{"error", {{"message", e.message}, {"type", e.type}, {"param", or_null(e.param)}, {"code", or_null(e.code)}}}};
  return body.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::variant<CompletionRequest, ApiError> parse_completion_request(const std::string& text,
                                                                   const CompletionDefaults& defaults) {
  json body;
  CompletionRequest r;
  if (auto e = parse_body(text, completion_fields, body, r.ignored_fields)) return *e;
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
  r.echo = f.boolean("echo").value_or(false);
  if (f.error) return *f.error;
  if (auto e = parse_shared(body, defaults, r, "max_tokens", r.echo ? 0 : 1)) return *e;
  // OpenAI's completions take a count: the chosen token's logprob and this many alternatives.
  r.logprobs = static_cast<int>(f.integer("logprobs", 0, SamplingParams::max_top_logprobs).value_or(-1));
  if (const json* suffix = f.get("suffix"); suffix) return bad("suffix", "suffix is not supported");
  if (f.error) return *f.error;
  return r;
}

std::variant<ChatRequest, ApiError> parse_chat_request(const std::string& text, const CompletionDefaults& defaults) {
  json body;
  ChatRequest r;
  if (auto e = parse_body(text, chat_fields, body, r.completion.ignored_fields)) return *e;
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
  if (auto e = parse_shared(body, defaults, r.completion, has_max_tokens ? "max_tokens" : "max_completion_tokens", 1))
    return *e;
  // Chat's logprobs are a switch; top_logprobs the number of alternatives, only with it on.
  const bool logprobs = f.boolean("logprobs").value_or(false);
  const auto top = f.integer("top_logprobs", 0, SamplingParams::max_top_logprobs);
  if (f.error) return *f.error;
  if (top && !logprobs) return bad("top_logprobs", "'top_logprobs' needs 'logprobs' to be true");
  if (logprobs) r.completion.logprobs = static_cast<int>(top.value_or(0));
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
