// The OpenAI-style completion request parser and the streaming text helpers.
#include <boost/test/unit_test.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>

#include "actors/http/completion_request.hpp"

using namespace ce;

namespace {

// A vocabulary of 100 tokens; unseeded sampled requests draw 4242 (a real node draws at random).
CompletionDefaults tiny_defaults() { return {"tiny", 32, 0.0, 1.0, [] { return int64_t{4242}; }, 100}; }

ApiError error_of(const std::string& body, const CompletionDefaults& d = tiny_defaults()) {
  auto r = parse_completion_request(body, d);
  BOOST_REQUIRE_MESSAGE(std::holds_alternative<ApiError>(r), "accepted: " + body);
  return std::get<ApiError>(r);
}

CompletionRequest parsed(const std::string& body, const CompletionDefaults& d = tiny_defaults()) {
  auto r = parse_completion_request(body, d);
  BOOST_REQUIRE_MESSAGE(std::holds_alternative<CompletionRequest>(r),
                        "refused: " + body + ": " + (std::holds_alternative<ApiError>(r) ? std::get<ApiError>(r).message : ""));
  return std::get<CompletionRequest>(r);
}

// A chat request with one user message and the given fields besides.
std::string chat_body(const std::string& fields) {
  return R"({"messages": [{"role": "user", "content": "hi"}])" + (fields.empty() ? "" : ", " + fields) + "}";
}

std::variant<ChatRequest, ApiError> parse_chat(const std::string& fields) {
  return parse_chat_request(chat_body(fields), tiny_defaults());
}

CompletionRequest parsed_chat(const std::string& fields) {
  auto r = parse_chat(fields);
  BOOST_REQUIRE_MESSAGE(std::holds_alternative<ChatRequest>(r),
                        "refused: " + fields + ": " + (std::holds_alternative<ApiError>(r) ? std::get<ApiError>(r).message : ""));
  return std::get<ChatRequest>(r).completion;
}

ApiError chat_error_of(const std::string& fields) {
  auto r = parse_chat(fields);
  BOOST_REQUIRE_MESSAGE(std::holds_alternative<ApiError>(r), "accepted: " + fields);
  return std::get<ApiError>(r);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(completion_request)

BOOST_AUTO_TEST_CASE(defaults_come_from_the_node_and_fields_override_them) {
  auto r = parsed(R"({"prompt": "Hello"})");
  BOOST_TEST(r.prompt == "Hello");
  BOOST_TEST(r.max_tokens == 32);
  BOOST_TEST(r.seed == 0);  // greedy: no seed drawn
  BOOST_TEST(!r.seed_drawn);
  BOOST_TEST(r.n == 1);
  BOOST_TEST(r.logprobs == -1);
  BOOST_TEST(!r.echo);
  BOOST_TEST(r.top_k == 0);
  BOOST_TEST(r.min_p == 0);
  BOOST_TEST(r.repetition_penalty == 1);
  BOOST_TEST(r.logit_bias.empty());
  BOOST_TEST(r.ignored_fields.empty());
  BOOST_TEST(!r.stream);
  BOOST_TEST(!r.threshold.has_value());
  BOOST_TEST(!r.speculate.has_value());
  r = parsed(R"({"model": "tiny", "prompt": ["Hi"], "max_tokens": 5, "temperature": 0.7, "top_p": 0.9, "seed": -3,
               "stop": ["\n", "."], "stream": true, "stream_options": {"include_usage": true}, "n": 1, "echo": false,
               "logprobs": null, "user": "me", "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {},
               "x_ce": {"threshold": 0.5, "mode": "standalone", "speculate": false}})");
  BOOST_TEST(r.prompt == "Hi");
  BOOST_TEST(r.max_tokens == 5);
  BOOST_TEST(r.temperature == 0.7);
  BOOST_TEST(r.top_p == 0.9);
  BOOST_TEST(r.seed == -3);
  BOOST_TEST(r.stop.size() == 2u);
  BOOST_TEST(r.stream);
  BOOST_TEST(r.include_usage);
  BOOST_TEST(*r.threshold == 0.5);
  BOOST_TEST((*r.mode == InferenceMode::standalone));
  BOOST_TEST((r.speculate == std::optional<bool>(false)));
  r = parsed(R"({"prompt": [1, 5, 99]})");
  BOOST_TEST(r.prompt_ids == (std::vector<int32_t>{1, 5, 99}));
  r = parsed(R"({"prompt": [[3, 4]], "stop": "x"})");
  BOOST_TEST(r.prompt_ids == (std::vector<int32_t>{3, 4}));
  BOOST_TEST(r.stop == (std::vector<std::string>{"x"}));
}

BOOST_AUTO_TEST_CASE(every_bad_field_is_named_with_a_4xx) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{not json", ""},
      {"[1]", ""},
      {R"({})", "prompt"},
      {R"({"prompt": ""})", "prompt"},
      {R"({"prompt": 5})", "prompt"},
      {R"({"prompt": ["a", "b"]})", "prompt"},
      {R"({"prompt": [1, 100]})", "prompt"},
      {R"({"prompt": [1, -1]})", "prompt"},
      {R"({"prompt": "x", "max_tokens": "9"})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 0})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 2.5})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 18446744073709551615})", "max_tokens"},
      {R"({"prompt": "x", "temperature": 3})", "temperature"},
      {R"({"prompt": "x", "temperature": "hot"})", "temperature"},
      {R"({"prompt": "x", "top_p": 0})", "top_p"},
      {R"({"prompt": "x", "seed": "1"})", "seed"},
      {R"({"prompt": "x", "stream": "yes"})", "stream"},
      {R"({"prompt": "x", "stream_options": {"include_usage": true}})", "stream_options"},
      {R"({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]})", "stop"},
      {R"({"prompt": "x", "stop": [""]})", "stop"},
      {R"({"prompt": "x", "stop": [1]})", "stop"},
      {R"({"prompt": "x", "suffix": "y"})", "suffix"},
      {R"({"prompt": "x", "user": 5})", "user"},
      {R"({"prompt": "x", "x_ce": 1})", "x_ce"},
      {R"({"prompt": "x", "x_ce": {"threshold": -0.1}})", "x_ce.threshold"},
      {R"({"prompt": "x", "x_ce": {"mode": "fast"}})", "x_ce.mode"},
      {R"({"prompt": "x", "x_ce": {"speculate": 1}})", "x_ce.speculate"},
      {R"({"prompt": "x", "x_ce": {"speed": 1}})", "x_ce.speed"},
      {R"({"prompt": "x", "colour": "blue"})", "colour"},
  };
  for (const auto& [body, param] : cases) {
    auto e = error_of(body);
    BOOST_TEST(e.status == 400, body);
    BOOST_TEST(e.param == param, body << " -> " << e.message);
    BOOST_TEST(!e.message.empty());
    auto j = nlohmann::json::parse(to_json(e));
    BOOST_TEST(j["error"]["message"].get<std::string>() == e.message);
  }
  auto e = error_of(R"({"model": "gpt-4", "prompt": "x"})");
  BOOST_TEST(e.status == 404);
  BOOST_TEST(e.code == "model_not_found");
}

BOOST_AUTO_TEST_CASE(the_samplers_are_read_into_the_sampling_parameters_of_each_choice) {
  auto r = parsed(R"({"prompt": "x", "temperature": 0.8, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
                      "repetition_penalty": 1.3, "presence_penalty": -1.5, "frequency_penalty": 2,
                      "logit_bias": {"12": 3.5, "5": -100, "0": 100, "99": 0}, "seed": 11, "n": 3})");
  BOOST_TEST(r.top_k == 40);
  BOOST_TEST(r.min_p == 0.05);
  BOOST_TEST(r.repetition_penalty == 1.3);
  BOOST_TEST(r.presence_penalty == -1.5);
  BOOST_TEST(r.frequency_penalty == 2);
  BOOST_TEST(r.n == 3);
  // Sorted by token id (not by the keys' spelling, where "12" < "5").
  BOOST_REQUIRE(r.logit_bias.size() == 4u);
  const std::vector<std::pair<int32_t, float>> want = {{0, 100.f}, {5, -100.f}, {12, 3.5f}, {99, 0.f}};
  for (size_t i = 0; i < want.size(); ++i) {
    BOOST_TEST(r.logit_bias[i].token == want[i].first);
    BOOST_TEST(r.logit_bias[i].bias == want[i].second);
  }
  for (int index : {0, 2}) {
    const SamplingParams s = r.sampling(index);
    BOOST_TEST(s.seed == 11u + static_cast<unsigned>(index));  // choice i: seed + i
    BOOST_TEST(s.temperature == 0.8f);
    BOOST_TEST(s.top_p == 0.9f);
    BOOST_TEST(s.top_k == 40);
    BOOST_TEST(s.min_p == 0.05f);
    BOOST_TEST(s.repetition_penalty == 1.3f);
    BOOST_TEST(s.presence_penalty == -1.5f);
    BOOST_TEST(s.frequency_penalty == 2.0f);
    BOOST_TEST(s.logit_bias.size() == 4u);
    BOOST_TEST(s.logprobs == -1);
  }
  // -1 is llama-server's "no top-k", as 0 is; the penalties' bounds are allowed.
  r = parsed(R"({"prompt": "x", "top_k": -1, "repetition_penalty": 10, "presence_penalty": 2, "frequency_penalty": -2,
                 "min_p": 1})");
  BOOST_TEST(r.top_k == 0);
  BOOST_TEST(r.repetition_penalty == 10);
  // The seed wraps as an unsigned number does: choice 1 of the largest seed is the smallest.
  r = parsed(R"({"prompt": "x", "seed": 9223372036854775807, "n": 2})");
  BOOST_TEST(r.sampling(1).seed == uint64_t{9223372036854775808u});
}

BOOST_AUTO_TEST_CASE(bad_sampler_values_are_refused_naming_the_field) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"prompt": "x", "top_k": 1.5})", "top_k"},
      {R"({"prompt": "x", "top_k": -2})", "top_k"},
      {R"({"prompt": "x", "top_k": "5"})", "top_k"},
      {R"({"prompt": "x", "min_p": 1.5})", "min_p"},
      {R"({"prompt": "x", "min_p": -0.1})", "min_p"},
      {R"({"prompt": "x", "repetition_penalty": 0})", "repetition_penalty"},
      {R"({"prompt": "x", "repetition_penalty": 10.5})", "repetition_penalty"},
      {R"({"prompt": "x", "presence_penalty": 2.5})", "presence_penalty"},
      {R"({"prompt": "x", "frequency_penalty": -3})", "frequency_penalty"},
      {R"({"prompt": "x", "frequency_penalty": true})", "frequency_penalty"},
      {R"({"prompt": "x", "logit_bias": [[5, 1]]})", "logit_bias"},
      {R"({"prompt": "x", "logit_bias": {"5": 101}})", "logit_bias"},
      {R"({"prompt": "x", "logit_bias": {"5": -100.5}})", "logit_bias"},
      {R"({"prompt": "x", "logit_bias": {"5": "1"}})", "logit_bias"},
      {R"({"prompt": "x", "n": 0})", "n"},
      {R"({"prompt": "x", "n": 17})", "n"},
      {R"({"prompt": "x", "n": 1.5})", "n"},
      {R"({"prompt": "x", "n": 2, "best_of": 3})", "best_of"},
      {R"({"prompt": "x", "best_of": 2})", "best_of"},
      {R"({"prompt": "x", "n": 0, "best_of": 3})", "n"},
      {R"({"prompt": "x", "logprobs": 21})", "logprobs"},
      {R"({"prompt": "x", "logprobs": -1})", "logprobs"},
      {R"({"prompt": "x", "logprobs": true})", "logprobs"},
      {R"({"prompt": "x", "echo": "yes"})", "echo"},
      {R"({"prompt": "x", "max_tokens": 0})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": 0, "echo": false, "logprobs": 1})", "max_tokens"},
      {R"({"prompt": "x", "max_tokens": -1, "echo": true})", "max_tokens"},
  };
  for (const auto& [body, param] : cases) {
    auto e = error_of(body);
    BOOST_TEST(e.status == 400, body);
    BOOST_TEST(e.param == param, body << " -> " << e.message);
  }
  // A logit_bias key that is no token id of this model is named in the message.
  for (const char* key : {"100", "-1", "05", "abc", "", "99999999999"}) {
    auto e = error_of(std::string(R"({"prompt": "x", "logit_bias": {")") + key + R"(": 1}})");
    BOOST_TEST(e.param == "logit_bias");
    BOOST_TEST(e.message.find(std::string("'") + key + "'") != std::string::npos, e.message);
    BOOST_TEST(e.message.find("[0, 100)") != std::string::npos, e.message);
  }
  BOOST_TEST(error_of(R"({"prompt": "x", "logit_bias": {"7": 300}})").message.find("token 7") != std::string::npos);
  BOOST_TEST(error_of(R"({"prompt": "x", "max_tokens": 0})").message.find("echo") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(logprobs_and_echo_take_openais_shapes_per_endpoint) {
  BOOST_TEST(parsed(R"({"prompt": "x", "logprobs": 0})").logprobs == 0);
  BOOST_TEST(parsed(R"({"prompt": "x", "logprobs": 20})").logprobs == 20);
  BOOST_TEST(parsed(R"({"prompt": "x", "logprobs": null})").logprobs == -1);
  // lm-eval-harness's loglikelihood request: the prompt's logprobs alone.
  auto r = parsed(R"({"prompt": [5, 6, 7], "max_tokens": 0, "echo": true, "logprobs": 1, "temperature": 0})");
  BOOST_TEST(r.max_tokens == 0);
  BOOST_TEST(r.echo);
  BOOST_TEST(r.logprobs == 1);
  BOOST_TEST(r.sampling().logprobs == 1);
  BOOST_TEST(parsed(R"({"prompt": "x", "echo": true})").echo);  // text only: allowed without logprobs

  // Chat: a switch and a count of alternatives.
  BOOST_TEST(parsed_chat("").logprobs == -1);
  BOOST_TEST(parsed_chat(R"("logprobs": false)").logprobs == -1);
  BOOST_TEST(parsed_chat(R"("logprobs": true)").logprobs == 0);
  BOOST_TEST(parsed_chat(R"("logprobs": true, "top_logprobs": 5)").logprobs == 5);
  BOOST_TEST(parsed_chat(R"("logprobs": true, "top_logprobs": 20, "n": 2, "top_k": 3)").n == 2);
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"("top_logprobs": 3)", "top_logprobs"},
      {R"("logprobs": false, "top_logprobs": 3)", "top_logprobs"},
      {R"("logprobs": true, "top_logprobs": 21)", "top_logprobs"},
      {R"("logprobs": 3)", "logprobs"},
      {R"("echo": true)", "echo"},  // not a chat field
      {R"("max_tokens": 0)", "max_tokens"},
      {R"("max_completion_tokens": 0)", "max_completion_tokens"},
      {R"("logit_bias": {"100": 1})", "logit_bias"},
  };
  for (const auto& [fields, param] : cases) {
    auto e = chat_error_of(fields);
    BOOST_TEST(e.status == 400, fields);
    BOOST_TEST(e.param == param, fields << " -> " << e.message);
  }
}

BOOST_AUTO_TEST_CASE(a_sampled_request_without_a_seed_draws_one_and_a_greedy_one_does_not) {
  int draws = 0;
  CompletionDefaults d = tiny_defaults();
  d.draw_seed = [&] { return int64_t{1000} + draws++; };
  auto r = parsed(R"({"prompt": "x", "temperature": 0.7})", d);
  BOOST_TEST(r.seed == 1000);
  BOOST_TEST(r.seed_drawn);
  r = parsed(R"({"prompt": "x", "temperature": 0.7, "seed": null})", d);
  BOOST_TEST(r.seed == 1001);  // a new draw for each request
  BOOST_TEST(r.seed_drawn);
  r = parsed(R"({"prompt": "x", "temperature": 0.7, "seed": 5})", d);
  BOOST_TEST(r.seed == 5);
  BOOST_TEST(!r.seed_drawn);
  r = parsed(R"({"prompt": "x", "temperature": 0})", d);
  BOOST_TEST(r.seed == 0);
  BOOST_TEST(!r.seed_drawn);
  BOOST_TEST(draws == 2);
  // The node's default temperature counts: a request that names none samples, and draws.
  d.temperature = 0.5;
  r = parsed(R"({"prompt": "x"})", d);
  BOOST_TEST(r.seed == 1002);
  BOOST_TEST(r.seed_drawn);
  BOOST_TEST(parsed_chat(R"("temperature": 1)").seed_drawn);
}

BOOST_AUTO_TEST_CASE(other_servers_vendor_fields_are_ignored_and_listed_and_unknown_ones_refused) {
  auto r = parsed(R"({"prompt": "x", "typical_p": 0.9, "mirostat": 2, "cache_prompt": true, "n_predict": 5,
                      "skip_special_tokens": false, "top_n_tokens": 3})");
  BOOST_TEST(r.ignored_fields ==
             (std::vector<std::string>{"cache_prompt", "mirostat", "n_predict", "skip_special_tokens", "top_n_tokens", "typical_p"}));
  BOOST_TEST(r.max_tokens == 32);  // n_predict ignored, not read as max_tokens
  BOOST_TEST(parsed_chat(R"("ignore_eos": true, "min_tokens": 2)").ignored_fields ==
             (std::vector<std::string>{"ignore_eos", "min_tokens"}));
  // Still refused: a field nobody's API has, even beside ignored ones, named.
  auto e = error_of(R"({"prompt": "x", "mirostat": 2, "colour": "blue"})");
  BOOST_TEST(e.param == "colour");
  BOOST_TEST(e.message.find("colour") != std::string::npos);
  BOOST_TEST(chat_error_of(R"("typical_p": 0.9, "guided_json": {})").param == "guided_json");

  // The documented list: the fields llama-server's, vLLM's and TGI's clients commonly send, none
  // of them a field this API reads (that one would be silently dropped).
  const auto& fields = ignored_vendor_fields();
  BOOST_TEST(std::is_sorted(fields.begin(), fields.end()));
  for (const char* f : {"typical_p", "mirostat", "mirostat_tau", "mirostat_eta", "tfs_z", "ignore_eos", "cache_prompt",
                        "n_predict", "repeat_last_n", "penalize_nl", "min_tokens", "skip_special_tokens",
                        "spaces_between_special_tokens", "include_stop_str_in_output"})
    BOOST_TEST(std::binary_search(fields.begin(), fields.end(), std::string(f)), f);
  for (const char* f : {"top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "logit_bias",
                        "n", "best_of", "logprobs", "top_logprobs", "echo", "seed", "suffix", "stop", "x_ce"})
    BOOST_TEST(!std::binary_search(fields.begin(), fields.end(), std::string(f)), f);
}

BOOST_AUTO_TEST_CASE(stop_strings_are_found_and_their_prefixes_held_back) {
  const std::vector<std::string> stop = {"\n\n", "END"};
  BOOST_TEST(find_stop("abc", stop) == std::string::npos);
  BOOST_TEST(find_stop("ab\n\ncd END", stop) == 2u);
  BOOST_TEST(find_stop("abEND", stop) == 2u);
  BOOST_TEST(stop_prefix_overlap("abc", stop) == 0u);
  BOOST_TEST(stop_prefix_overlap("abc\n", stop) == 1u);
  BOOST_TEST(stop_prefix_overlap("abcEN", stop) == 2u);
  BOOST_TEST(stop_prefix_overlap("E", stop) == 1u);
  BOOST_TEST(stop_prefix_overlap("abc", {}) == 0u);
}

BOOST_AUTO_TEST_SUITE_END()
