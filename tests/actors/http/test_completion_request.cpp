// The OpenAI-style completion request parser and the streaming text helpers.
#include <boost/test/unit_test.hpp>

#include <nlohmann/json.hpp>

#include "actors/http/completion_request.hpp"

using namespace ce;

namespace {

CompletionDefaults defaults() { return {"tiny", 32, 0.0, 1.0, 7, 100}; }

ApiError error_of(const std::string& body) {
  auto r = parse_completion_request(body, defaults());
  BOOST_REQUIRE_MESSAGE(std::holds_alternative<ApiError>(r), "accepted: " + body);
  return std::get<ApiError>(r);
}

CompletionRequest parsed(const std::string& body) {
  auto r = parse_completion_request(body, defaults());
  BOOST_REQUIRE_MESSAGE(std::holds_alternative<CompletionRequest>(r),
                        "refused: " + body + ": " + (std::holds_alternative<ApiError>(r) ? std::get<ApiError>(r).message : ""));
  return std::get<CompletionRequest>(r);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(completion_request)

BOOST_AUTO_TEST_CASE(defaults_come_from_the_node_and_fields_override_them) {
  auto r = parsed(R"({"prompt": "Hello"})");
  BOOST_TEST(r.prompt == "Hello");
  BOOST_TEST(r.max_tokens == 32);
  BOOST_TEST(r.seed == 7);
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
      {R"({"prompt": "x", "n": 2})", "n"},
      {R"({"prompt": "x", "echo": true})", "echo"},
      {R"({"prompt": "x", "logprobs": 2})", "logprobs"},
      {R"({"prompt": "x", "suffix": "y"})", "suffix"},
      {R"({"prompt": "x", "presence_penalty": 1})", "presence_penalty"},
      {R"({"prompt": "x", "logit_bias": {"5": 1}})", "logit_bias"},
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
