// The HTTP API of a node over real sockets: OpenAI-style completions (plain and streamed)
// against Node::generate, stop strings, errors, the concurrency limit, clients that leave,
// API keys, /health and /metrics.
#include <boost/test/unit_test.hpp>

#include <httplib.h>

#include <optional>

#include <future>
#include <nlohmann/json.hpp>

#include "actors/http/http_api.hpp"
#include "actors/node/node.hpp"
#include "linkem/link_emulator.hpp"
#include "model/text/sentencepiece_tokenizer.hpp"
#include "tests/actors/fixtures.hpp"
#include "tests/actors/http/http_node.hpp"
#include "tests/loopback.hpp"
#include "tests/prometheus.hpp"

using namespace ce;
using namespace ce::test;
using json = nlohmann::json;

namespace {


// One process holding cloud and edge (linked over loopback) and the HTTP API (http_node.hpp).
struct Server : HttpNode {
  explicit Server(const std::function<void(NodeConfig&)>& tweak = {}, Role role = Role::both, bool with_cloud = true)
      : HttpNode(tweak, {role, with_cloud}) {}
  // GenerateResult of the same request straight from the node.
  GenerateResult direct(const std::string& prompt, int max_tokens, std::optional<double> threshold, float temperature = 0,
                        uint64_t seed = 0) {
    SentencePieceTokenizer tok(http_tokenizer_file);
    GenerateRequest req;
    req.prompt = {static_cast<int32_t>(node->model().config().bos_id)};
    for (auto id : tok.encode(prompt)) req.prompt.push_back(id);
    req.max_tokens = max_tokens;
    req.threshold = threshold;
    req.sampling = {temperature, 1.0f, seed};
    return node->generate(req);
  }
};

std::vector<int32_t> ids_of(const json& tokens) {
  std::vector<int32_t> out;
  for (const auto& t : tokens) out.push_back(t["id"].get<int32_t>());
  return out;
}

// The events of a server-sent-event body, [DONE] excluded.
std::vector<json> sse_events(const std::string& body, bool* saw_done = nullptr) {
  std::vector<json> out;
  size_t at = 0;
  while ((at = body.find("data: ", at)) != std::string::npos) {
    const size_t end = body.find("\n\n", at);
    BOOST_REQUIRE(end != std::string::npos);
    const std::string data = body.substr(at + 6, end - at - 6);
    if (data == "[DONE]") {
      if (saw_done) *saw_done = true;
    } else {
      out.push_back(json::parse(data));
    }
    at = end + 2;
  }
  return out;
}

// A ChatML template (SmolLM2's and Qwen's form) written as a published tokenizer_config.json.
const std::string chatml_template =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

void write_chat_template(const std::string& model_dir, const std::string& source) {
  write_file(model_dir + "/tokenizer_config.json", json({{"chat_template", source}}).dump());
}

}  // namespace

BOOST_AUTO_TEST_SUITE(http_api)

BOOST_AUTO_TEST_CASE(a_completion_equals_the_nodes_own_generation) {
  Server s;
  for (double theta : {0.0, 0.05, 2.0}) {
    auto r = s.post({{"prompt", "The jury said"}, {"max_tokens", 12}, {"x_ce", {{"threshold", theta}}}});
    BOOST_REQUIRE(r);
    BOOST_TEST(r->status == 200);
    auto j = json::parse(r->body);
    auto want = s.direct("The jury said", 12, theta);
    BOOST_TEST(ids_of(j["x_ce"]["tokens"]) == want.tokens);
    BOOST_TEST(j["object"] == "text_completion");
    BOOST_TEST(j["usage"]["completion_tokens"].get<size_t>() == want.tokens.size());
    BOOST_TEST(j["usage"]["prompt_tokens"].get<int>() == want.stats.prompt_tokens);
    BOOST_TEST(j["x_ce"]["cloud_tokens"].get<int>() == want.stats.cloud_tokens);
    // Confirmed bytes: what a rolled-back speculation wasted differs from run to run.
    BOOST_TEST(j["x_ce"]["bytes_uploaded"].get<uint64_t>() - j["x_ce"]["bytes_wasted"].get<uint64_t>() ==
               want.stats.bytes_uploaded - want.stats.bytes_wasted);
    BOOST_TEST(j["x_ce"]["speculation"].get<bool>());  // collaborative mode speculates by default
    BOOST_TEST(j["x_ce"]["confirmed_positions"].get<int>() ==
               j["x_ce"]["speculated_positions"].get<int>() - j["x_ce"]["rolled_back_positions"].get<int>());
    if (theta == 2.0) BOOST_TEST(j["x_ce"]["offload_share"].get<double>() == 1.0);
    if (theta == 0.0) BOOST_TEST(j["x_ce"]["cloud_tokens"].get<int>() == 0);
  }
  // Sampling: the same seed gives the same tokens, through HTTP or not.
  auto r = s.post({{"prompt", "It was"}, {"max_tokens", 10}, {"temperature", 0.9}, {"seed", 42}});
  BOOST_REQUIRE(r);
  BOOST_TEST(ids_of(json::parse(r->body)["x_ce"]["tokens"]) == s.direct("It was", 10, std::nullopt, 0.9f, 42).tokens);
  // Standalone on request: no cloud tokens, nothing uploaded.
  r = s.post({{"prompt", "It was"}, {"max_tokens", 10}, {"x_ce", {{"mode", "standalone"}, {"threshold", 2}}}});
  BOOST_REQUIRE(r);
  auto j = json::parse(r->body);
  BOOST_TEST(j["x_ce"]["mode"] == "standalone");
  BOOST_TEST(j["x_ce"]["cloud_tokens"].get<int>() == 0);
  BOOST_TEST(j["x_ce"]["bytes_uploaded"].get<int>() == 0);
}

BOOST_AUTO_TEST_CASE(a_streamed_completion_carries_the_same_text_and_tokens) {
  Server s;
  const json body = {{"prompt", "The jury said"}, {"max_tokens", 14}, {"x_ce", {{"threshold", 0.05}}}};
  auto plain = json::parse(s.post(body)->body);
  json streamed_body = body;
  streamed_body["stream"] = true;
  streamed_body["stream_options"] = {{"include_usage", true}};
  auto r = s.post(streamed_body);
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 200);
  BOOST_TEST(r->get_header_value("Content-Type").find("text/event-stream") == 0u);
  bool done = false;
  auto events = sse_events(r->body, &done);
  BOOST_TEST(done);
  BOOST_REQUIRE(events.size() >= 3u);
  std::string text;
  json tokens = json::array();
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    const auto& e = events[i];
    BOOST_TEST(e["id"] == events[0]["id"]);
    text += e["choices"][0]["text"].get<std::string>();
    for (const auto& t : e["x_ce"]["tokens"]) tokens.push_back(t);
    const bool last = i + 2 == events.size();
    BOOST_TEST(e["choices"][0]["finish_reason"].is_null() == !last);
  }
  BOOST_TEST(text == plain["choices"][0]["text"].get<std::string>());
  BOOST_TEST(ids_of(tokens) == ids_of(plain["x_ce"]["tokens"]));
  BOOST_TEST(events.back()["choices"].empty());
  BOOST_TEST(events.back()["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]);
}

BOOST_AUTO_TEST_CASE(a_stop_string_ends_the_text_before_it) {
  Server s;
  auto full = json::parse(s.post({{"prompt", "The"}, {"max_tokens", 16}, {"x_ce", {{"threshold", 2}}}})->body);
  const std::string text = full["choices"][0]["text"];
  BOOST_REQUIRE(text.size() > 6u);
  const std::string stop = text.substr(text.size() / 2, 2);
  const auto cut = text.find(stop);
  for (bool stream : {false, true}) {
    auto r = s.post({{"prompt", "The"}, {"max_tokens", 16}, {"x_ce", {{"threshold", 2}}}, {"stop", {stop}}, {"stream", stream}});
    BOOST_REQUIRE(r);
    std::string got;
    std::string finish;
    if (stream) {
      for (const auto& e : sse_events(r->body)) {
        got += e["choices"][0]["text"].get<std::string>();
        if (!e["choices"][0]["finish_reason"].is_null()) finish = e["choices"][0]["finish_reason"];
      }
    } else {
      auto j = json::parse(r->body);
      got = j["choices"][0]["text"];
      finish = j["choices"][0]["finish_reason"];
    }
    BOOST_TEST(got == text.substr(0, cut), "stream " << stream);
    BOOST_TEST(finish == "stop");
  }
}

BOOST_AUTO_TEST_CASE(bad_requests_get_openai_style_errors_and_the_server_keeps_serving) {
  Server s;
  const std::vector<std::pair<std::string, int>> cases = {
      {"{", 400}, {"null", 400}, {R"({"prompt": ""})", 400}, {R"({"prompt": "x", "max_tokens": 100000})", 400},
      {R"({"prompt": "x", "max_tokens": 127})", 400},  // 128-position model: prompt + 127 > context
      {R"({"prompt": "x", "temperature": "warm"})", 400}, {R"({"prompt": "x", "model": "other"})", 404},
      {std::string(2 << 20, 'x'), 413}};
  for (const auto& [body, status] : cases) {
    auto r = s.client().Post("/v1/completions", body, "application/json");
    BOOST_REQUIRE(r);
    BOOST_TEST(r->status == status, body.substr(0, 60));
    if (status != 413) BOOST_TEST(json::parse(r->body)["error"]["message"].get<std::string>().size() > 5u);
  }
  auto r = s.client().Get("/v1/nothing");
  BOOST_TEST(r->status == 404);
  BOOST_TEST(json::parse(r->body)["error"]["message"].get<std::string>().find("/v1/nothing") != std::string::npos);
  r = s.post({{"prompt", "Still"}, {"max_tokens", 3}});
  BOOST_TEST(r->status == 200);
}

BOOST_AUTO_TEST_CASE(beyond_the_concurrency_limit_requests_get_429_and_a_client_that_leaves_frees_its_slot) {
  // An edge whose cloud sits behind an emulated link of 20 ms each way: every cloud token waits
  // at least 40 ms, so a 40-token response takes > 1.6 s.
  TempDir cloud_dir;
  Node cloud(node_config(Role::cloud, write_model(cloud_dir, collab_config(2048), 11, http_tokenizer_file)));
  linkem::LinkProfile twenty_ms;
  twenty_ms.delay_ms = 20;
  linkem::LinkEmulator link(twenty_ms, "127.0.0.1", cloud.cloud_port());
  Server s(
      [&](NodeConfig& c) {
        c.http_max_concurrent = 1;
        c.http_queue = 0;  // no wait queue: refused at once (the queue: tests/integration/test_http_service.cpp)
        c.cloud_port = link.port();
      },
      Role::edge);
  const json slow = {{"prompt", "The"}, {"max_tokens", 40}, {"x_ce", {{"threshold", 2}}}, {"stream", true}};
  // A raw client that reads the first event and then hangs up.
  int fd = connect_loopback(s.api->port());
  BOOST_REQUIRE(fd >= 0);
  const std::string body = slow.dump();
  const std::string request = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                              std::to_string(body.size()) + "\r\n\r\n" + body;
  BOOST_REQUIRE(write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size()));
  char buf[4096];
  std::string got;
  while (got.find("data: ") == std::string::npos) {
    auto n = read(fd, buf, sizeof buf);
    BOOST_REQUIRE(n > 0);
    got.append(buf, static_cast<size_t>(n));
  }
  // The slot is taken: a second request is refused.
  auto r = s.post({{"prompt", "x"}, {"max_tokens", 2}});
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 429);
  BOOST_TEST(r->get_header_value("Retry-After") == "1");
  BOOST_TEST(json::parse(r->body)["error"]["code"] == "rate_limit_exceeded");
  // Tokens the client saw before it left (events read so far; more may sit unread in the socket).
  size_t seen = 0;
  for (size_t at = got.find("data: "); at != std::string::npos; at = got.find("data: ", at + 1)) ++seen;
  close(fd);
  // The generation stops at the next token it cannot deliver, long before its 40 tokens: counted
  // in tokens, not seconds (polling is capped at 30 s).
  int in_flight = 1;
  for (int i = 0; i < 1500 && in_flight; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    in_flight = s.get_json("/health")["requests_in_flight"];
  }
  BOOST_TEST(in_flight == 0);
  const auto metrics = s.client().Get("/metrics")->body;
  const double generated = metric(metrics, R"(ce_tokens_total{source="cloud",layer="4"})") +
                           std::max(0.0, metric(metrics, R"(ce_tokens_total{source="degraded",layer="2"})"));
  BOOST_TEST_MESSAGE("the client saw " << seen << " tokens; the response generated " << generated);
  BOOST_TEST(generated >= 1);
  BOOST_TEST(generated <= static_cast<double>(seen) + 3);  // read ahead by the socket + the one under way
  BOOST_TEST(metric(metrics, R"(ce_responses_total{mode="collaborative",finish="cancelled"})") == 1);
  r = s.post({{"prompt", "x"}, {"max_tokens", 2}});
  BOOST_TEST(r->status == 200);
}

BOOST_AUTO_TEST_CASE(metrics_move_as_requests_are_served) {
  Server s;
  auto before = s.client().Get("/metrics")->body;
  BOOST_TEST(before.find("# TYPE ce_tokens_total counter") != std::string::npos);
  BOOST_TEST(metric(before, "ce_cloud_connected") == 1);
  BOOST_TEST(metric(before, "ce_cloud_contexts_live") == 0);
  int cloud = 0, edge = 0, requests = 0;
  for (double theta : {0.0, 2.0}) {
    auto j = json::parse(s.post({{"prompt", "A"}, {"max_tokens", 5}, {"x_ce", {{"threshold", theta}}}})->body);
    cloud += j["x_ce"]["cloud_tokens"].get<int>();
    requests += j["x_ce"]["cloud_requests"].get<int>();
    edge += 5 - j["x_ce"]["cloud_tokens"].get<int>();
  }
  s.post({{"prompt", ""}});
  auto after = s.client().Get("/metrics")->body;
  BOOST_TEST(metric(after, R"(ce_http_requests_total{path="/v1/completions",code="200"})") == 2);
  BOOST_TEST(metric(after, R"(ce_http_requests_total{path="/v1/completions",code="400"})") == 1);
  BOOST_TEST(metric(after, R"(ce_tokens_total{source="cloud",layer="4"})") == cloud);
  BOOST_TEST(cloud == 5);
  BOOST_TEST(metric(after, "ce_cloud_round_trip_seconds_count") == cloud);
  BOOST_TEST(metric(after, "ce_offload_share") == 0.5);
  BOOST_TEST(metric(after, "ce_upload_bytes_total") > 0);
  BOOST_TEST(metric(after, R"(ce_cloud_infer_requests_total{client=")" + [] {
                       char h[256] = {0};
                       gethostname(h, sizeof h - 1);
                       return std::string(h);
                     }() + "\"}") == requests);
  BOOST_TEST(requests >= cloud);  // speculation asks for positions it then rolls back
  BOOST_TEST(metric(after, "ce_cloud_requests_total") == requests);
  BOOST_TEST(metric(after, R"(ce_speculation_positions_total{outcome="confirmed"})") >= 0);
  BOOST_TEST(after.find("ce_cloud_truncates_total") != std::string::npos);
  // Both sessions closed by Bye; each Bye travels after its response, so wait for the second.
  for (int i = 0; i < 500 && metric(after, "ce_cloud_evictions_total") < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    after = s.client().Get("/metrics")->body;
  }
  BOOST_TEST(metric(after, "ce_cloud_evictions_total") == 2);
  BOOST_TEST(metric(after, "ce_process_resident_bytes") > 1e6);
  auto health = s.get_json("/health");
  BOOST_TEST(health["status"] == "ok");
  BOOST_TEST(health["cloud"]["connected"] == true);
}

BOOST_AUTO_TEST_CASE(an_api_key_guards_the_completions) {
  Server s([](NodeConfig& c) { c.http_api_key = "sesame"; });
  auto r = s.post({{"prompt", "x"}, {"max_tokens", 2}});
  BOOST_TEST(r->status == 401);
  BOOST_TEST(json::parse(r->body)["error"]["code"] == "invalid_api_key");
  r = s.post({{"prompt", "x"}, {"max_tokens", 2}}, {{"Authorization", "Bearer wrong"}});
  BOOST_TEST(r->status == 401);
  r = s.post({{"prompt", "x"}, {"max_tokens", 2}}, {{"Authorization", "Bearer sesame"}});
  BOOST_TEST(r->status == 200);
  BOOST_TEST(s.client().Get("/health")->status == 200);  // health and metrics stay open for probes
}

BOOST_AUTO_TEST_CASE(api_keys_come_from_the_ini_a_key_file_and_the_environment) {
  TempDir keys;
  write_file(keys.file("keys"), "# one per line\nfrom-file-1\n\n  from-file-2  \n");
  ::setenv("CE_HTTP_API_KEYS", "from-env-1,from-env-2", 1);
  Server s([&](NodeConfig& c) {
    c.http_api_key = "from-ini";
    c.http_api_key_file = keys.file("keys");
  });
  ::unsetenv("CE_HTTP_API_KEYS");
  for (const char* key : {"from-ini", "from-file-1", "from-file-2", "from-env-1", "from-env-2"}) {
    auto r = s.post({{"prompt", "x"}, {"max_tokens", 2}}, {{"Authorization", std::string("Bearer ") + key}});
    BOOST_TEST(r->status == 200, key);
  }
  for (const char* key : {"# one per line", "", "from-file", "from-env-1,from-env-2"}) {
    auto r = s.post({{"prompt", "x"}, {"max_tokens", 2}}, {{"Authorization", std::string("Bearer ") + key}});
    BOOST_TEST(r->status == 401, key);
  }
  // A key file that cannot be read stops the node from serving, by name.
  BOOST_CHECK_EXCEPTION(Server([&](NodeConfig& c) { c.http_api_key_file = keys.file("absent"); }), std::runtime_error,
                        [](const std::runtime_error& e) { return std::string(e.what()).find("api-key-file") != std::string::npos; });
}

BOOST_AUTO_TEST_CASE(an_edge_without_its_cloud_answers_503_for_cloud_only_and_degrades_the_rest) {
  uint16_t nobody = 0;
  close(listen_loopback(&nobody));  // a port nothing listens on
  Server s([&](NodeConfig& c) { c.cloud_port = nobody; }, Role::edge, /*with_cloud=*/false);
  BOOST_TEST(s.get_json("/health")["status"] == "degraded");
  auto r = s.post({{"prompt", "The"}, {"max_tokens", 4}, {"x_ce", {{"mode", "cloud-only"}}}});
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 503);
  const auto error = json::parse(r->body)["error"];
  BOOST_TEST(error["message"].get<std::string>().find("cloud-only response failed") != std::string::npos, r->body);
  BOOST_TEST(error["type"] == "server_error");
  // Collaborative and naïve split still answer, from the edge's last exit.
  for (const char* mode : {"collaborative", "naive-split"}) {
    r = s.post({{"prompt", "The"}, {"max_tokens", 4}, {"x_ce", {{"mode", mode}, {"threshold", 2}}}});
    BOOST_TEST(r->status == 200, mode);
    BOOST_TEST(json::parse(r->body)["x_ce"]["degraded_tokens"] == 4, mode);
  }
}

BOOST_AUTO_TEST_CASE(a_cloud_node_serves_health_and_metrics_only) {
  Server s({}, Role::cloud);
  auto health = s.get_json("/health");
  BOOST_TEST(health["role"] == "cloud");
  BOOST_TEST(health["contexts"]["live"] == 0);
  BOOST_TEST(s.client().Get("/metrics")->body.find("ce_cloud_contexts_live 0") != std::string::npos);
  auto r = s.post({{"prompt", "x"}});
  BOOST_TEST(r->status == 404);
}

BOOST_AUTO_TEST_CASE(a_taken_port_is_a_clear_error) {
  Server s;
  const uint16_t taken = s.api->port();
  BOOST_CHECK_EXCEPTION(Server([&](NodeConfig& c) { c.http_port = taken; }), std::runtime_error,
                        [&](const std::runtime_error& e) {
                          return std::string(e.what()).find(":" + std::to_string(taken)) != std::string::npos;
                        });
}

BOOST_AUTO_TEST_CASE(a_chat_completion_renders_the_template_and_equals_the_nodes_own_generation) {
  Server s([](NodeConfig& c) { write_chat_template(c.model_path, chatml_template); });
  const json messages = {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "The jury said"}}};
  auto r = s.client().Post("/v1/chat/completions",
                           json({{"messages", messages}, {"max_completion_tokens", 10}, {"x_ce", {{"threshold", 2}}}}).dump(),
                           "application/json");
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 200, r->body);
  const auto j = json::parse(r->body);
  BOOST_TEST(j["object"] == "chat.completion");
  BOOST_TEST(j["id"].get<std::string>().rfind("chatcmpl-", 0) == 0);
  BOOST_TEST(j["choices"][0]["message"]["role"] == "assistant");
  // The prompt is the template's text as it stands (no BOS added: a template places its own).
  SentencePieceTokenizer tok(http_tokenizer_file);
  GenerateRequest req;
  req.prompt = tok.encode("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nThe jury said<|im_end|>\n"
                          "<|im_start|>assistant\n");
  req.max_tokens = 10;
  req.threshold = 2.0;
  const auto want = s.node->generate(req);
  BOOST_TEST(ids_of(j["x_ce"]["tokens"]) == want.tokens);
  BOOST_TEST(j["usage"]["prompt_tokens"].get<size_t>() == req.prompt.size());
  BOOST_TEST(j["choices"][0]["message"]["content"] == tok.decode(want.tokens).substr(0, j["choices"][0]["message"]["content"].get<std::string>().size()));

  // Streamed: the role first, then content deltas that add up to the same text, then the finish.
  auto streamed = s.client().Post(
      "/v1/chat/completions",
      json({{"messages", messages}, {"max_tokens", 10}, {"stream", true}, {"x_ce", {{"threshold", 2}}}}).dump(),
      "application/json");
  BOOST_REQUIRE(streamed);
  bool done = false;
  const auto events = sse_events(streamed->body, &done);
  BOOST_TEST(done);
  BOOST_REQUIRE(events.size() >= 2u);
  BOOST_TEST(events.front()["object"] == "chat.completion.chunk");
  BOOST_TEST(events.front()["choices"][0]["delta"]["role"] == "assistant");
  std::string text;
  for (const auto& e : events) text += e["choices"][0]["delta"].value("content", "");
  BOOST_TEST(text == j["choices"][0]["message"]["content"].get<std::string>());
  BOOST_TEST(!events.back()["choices"][0]["finish_reason"].is_null());
}

BOOST_AUTO_TEST_CASE(tokenize_and_detokenize_take_llama_servers_shapes_and_a_model_is_found_by_id) {
  Server s;
  SentencePieceTokenizer tok(http_tokenizer_file);
  const auto post = [&](const char* path, const json& body) {
    auto r = s.client().Post(path, body.dump(), "application/json");
    BOOST_REQUIRE(r);
    return std::make_pair(r->status, json::parse(r->body));
  };
  const std::string text = "The jury said that the city";
  auto [status, body] = post("/tokenize", {{"content", text}});
  BOOST_TEST(status == 200);
  const auto ids = tok.encode(text);
  BOOST_TEST(body["tokens"].get<std::vector<int32_t>>() == ids);
  std::tie(status, body) = post("/tokenize", {{"content", text}, {"add_special", true}, {"with_pieces", true}});
  BOOST_TEST(body["tokens"][0]["id"] == s.node->model().config().bos_id);  // BOS first, as a prompt reads
  BOOST_TEST(body["tokens"][1]["id"] == ids[0]);
  BOOST_TEST(body["tokens"][1]["piece"] == tok.decode({ids[0]}));
  std::tie(status, body) = post("/detokenize", {{"tokens", ids}});
  BOOST_TEST(status == 200);
  BOOST_TEST(body["content"] == text);
  std::tie(status, body) = post("/detokenize", {{"tokens", {1, 99999}}});
  BOOST_TEST(status == 400);
  BOOST_TEST(body["error"]["param"] == "tokens");
  std::tie(status, body) = post("/tokenize", {{"content", 5}});
  BOOST_TEST(status == 400);

  const std::string name = s.node->model().config().name;
  const auto one = s.get_json("/v1/models/" + name);
  BOOST_TEST(one["id"] == name);
  BOOST_TEST(one["object"] == "model");
  auto missing = s.client().Get("/v1/models/no-such-model");
  BOOST_REQUIRE(missing);
  BOOST_TEST(missing->status == 404);
  BOOST_TEST(json::parse(missing->body)["error"]["code"] == "model_not_found");
}

BOOST_AUTO_TEST_CASE(chat_requests_without_a_template_or_that_it_refuses_are_clear_400s) {
  {
    Server base;  // the model has no chat template: a base model
    auto r = base.client().Post("/v1/chat/completions",
                                json({{"messages", {{{"role", "user"}, {"content", "hi"}}}}}).dump(), "application/json");
    BOOST_REQUIRE(r);
    BOOST_TEST(r->status == 400);
    BOOST_TEST(json::parse(r->body)["error"]["code"] == "no_chat_template");
  }
  Server s([](NodeConfig& c) {
    write_chat_template(c.model_path, "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
                                      "supported') }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}");
  });
  const auto post = [&](const json& body) {
    auto r = s.client().Post("/v1/chat/completions", body.dump(), "application/json");
    BOOST_REQUIRE(r);
    return std::make_pair(r->status, json::parse(r->body));
  };
  auto [status, body] = post({{"messages", {{{"role", "system"}, {"content", "x"}}, {{"role", "user"}, {"content", "hi"}}}}});
  BOOST_TEST(status == 400);
  BOOST_TEST(body["error"]["message"].get<std::string>().find("System role not supported") != std::string::npos);
  std::tie(status, body) = post({{"messages", {{{"content", "no role"}}}}});
  BOOST_TEST(status == 400);
  BOOST_TEST(body["error"]["param"] == "messages[0].role");
  std::tie(status, body) = post({{"messages", json::array()}});
  BOOST_TEST(status == 400);
  std::tie(status, body) = post({{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 4}, {"max_completion_tokens", 4}});
  BOOST_TEST(status == 400);
  BOOST_TEST(body["error"]["param"] == "max_completion_tokens");
  std::tie(status, body) = post({{"messages", {{{"role", "user"}, {"content", {{{"type", "image_url"}}}}}}}});
  BOOST_TEST(status == 400);
  BOOST_TEST(body["error"]["message"].get<std::string>().find("text only") != std::string::npos);
  // And the server still serves a good one.
  std::tie(status, body) = post({{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"max_tokens", 3}});
  BOOST_TEST(status == 200);
  BOOST_TEST(body["choices"][0]["message"]["role"] == "assistant");
}

BOOST_AUTO_TEST_SUITE_END()
