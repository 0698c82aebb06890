// The HTTP API of a node over real sockets: OpenAI-style completions (plain and streamed)
// against Node::generate, stop strings, errors, the concurrency limit, clients that leave,
// API keys, /health and /metrics; logprobs, echo, n choices, samplers, seeds and ignored vendor
// fields in OpenAI's response shapes.
#include <boost/test/unit_test.hpp>

#include <httplib.h>

#include <algorithm>
#include <cmath>
#include <map>
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
    SamplingParams sampling;
    sampling.temperature = temperature;
    sampling.seed = seed;
    return direct(prompt_of(prompt), max_tokens, threshold, sampling);
  }
  // The same with every sampling knob and echo.
  GenerateResult direct(const std::vector<int32_t>& prompt, int max_tokens, std::optional<double> threshold,
                        const SamplingParams& sampling, bool echo = false) {
    GenerateRequest req;
    req.prompt = prompt;
    req.max_tokens = max_tokens;
    req.threshold = threshold;
    req.sampling = sampling;
    req.echo = echo;
    return node->generate(req);
  }
  // A text prompt as the API reads it: BOS, then the text's tokens.
  std::vector<int32_t> prompt_of(const std::string& text) const {
    SentencePieceTokenizer tok(http_tokenizer_file);
    std::vector<int32_t> ids = {static_cast<int32_t>(node->model().config().bos_id)};
    for (auto id : tok.encode(text)) ids.push_back(id);
    return ids;
  }
  json chat(const json& body) const {
    auto r = client().Post("/v1/chat/completions", body.dump(), "application/json");
    BOOST_REQUIRE(r);
    BOOST_REQUIRE_MESSAGE(r->status == 200, r->body);
    return json::parse(r->body);
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

json ok_json(const httplib::Result& r) {
  BOOST_REQUIRE(r);
  BOOST_REQUIRE_MESSAGE(r->status == 200, r->body);
  return json::parse(r->body);
}

// Logprobs of two generations of the same tokens: equal up to float rounding (the cloud may
// compute a position in a batch of another shape). Nulls match nulls; objects and arrays compare
// member by member.
bool same_logprobs(const json& a, const json& b) {
  if (a.is_number() && b.is_number()) return std::abs(a.get<double>() - b.get<double>()) <= 1e-4;
  if (a.type() != b.type() || a.size() != b.size()) return false;
  if (a.is_array()) {
    for (size_t i = 0; i < a.size(); ++i)
      if (!same_logprobs(a[i], b[i])) return false;
    return true;
  }
  if (a.is_object()) {
    for (auto it = a.begin(); it != a.end(); ++it)
      if (!b.contains(it.key()) || !same_logprobs(*it, b[it.key()])) return false;
    return true;
  }
  return a == b;
}

// Characters of a UTF-8 text (text_offset counts characters).
size_t characters(const std::string& text) {
  return static_cast<size_t>(
      std::count_if(text.begin(), text.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

// A completion choice's logprobs: parallel arrays of one length, the chosen token's logprob and
// at most `n` alternatives per token, every logprob <= 0, offsets rising within the text.
// `greedy`: each token is the most likely of its head's distribution, so it leads its alternatives
// with the same number (how lm-eval-harness tells a greedy continuation).
void check_completion_logprobs(const json& lp, const std::string& text, size_t n, bool greedy) {
  BOOST_REQUIRE(lp.is_object());
  const size_t count = lp["tokens"].size();
  BOOST_TEST(lp["token_logprobs"].size() == count);
  BOOST_TEST(lp["top_logprobs"].size() == count);
  BOOST_TEST(lp["text_offset"].size() == count);
  size_t previous = 0;
  for (size_t i = 0; i < count; ++i) {
    BOOST_TEST(lp["tokens"][i].is_string());
    const size_t offset = lp["text_offset"][i];
    BOOST_TEST(offset >= previous, i);
    BOOST_TEST(offset <= characters(text), i);
    previous = offset;
    if (lp["token_logprobs"][i].is_null()) {
      BOOST_TEST(lp["top_logprobs"][i].is_null());
      continue;
    }
    const double chosen = lp["token_logprobs"][i];
    BOOST_TEST(chosen <= 0.0);
    const json& top = lp["top_logprobs"][i];
    BOOST_TEST(top.is_object());
    BOOST_TEST(top.size() <= n, i);
    BOOST_TEST(top.size() >= std::min<size_t>(n, 1), i);
    double best = -1e30;
    for (auto it = top.begin(); it != top.end(); ++it) {
      BOOST_TEST(it->get<double>() <= 0.0);
      best = std::max(best, it->get<double>());
    }
    if (greedy && n > 0) {
      BOOST_TEST(best == chosen, "token " << i << ": " << top.dump() << " vs " << chosen);
      BOOST_TEST(top.contains(lp["tokens"][i].get<std::string>()), i);
    }
  }
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

BOOST_AUTO_TEST_CASE(completion_logprobs_come_aligned_with_the_tokens_from_the_head_that_chose_each) {
  Server s;
  const std::string prompt = "The jury said";
  // θ 0.05: some tokens leave at an edge exit, the rest come from the cloud.
  auto j = ok_json(s.post({{"prompt", prompt}, {"max_tokens", 10}, {"logprobs", 3}, {"x_ce", {{"threshold", 0.05}}}}));
  const json& choice = j["choices"][0];
  const json& lp = choice["logprobs"];
  check_completion_logprobs(lp, choice["text"], 3, /*greedy=*/true);
  const json& tokens = j["x_ce"]["tokens"];
  BOOST_REQUIRE(lp["tokens"].size() == tokens.size());
  BOOST_TEST(lp["text_offset"][0] == 0);
  // The numbers are the edge's, for the tokens and heads it reports (x_ce.tokens[i].source/layer).
  SamplingParams sampling;
  sampling.logprobs = 3;
  const auto want = s.direct(s.prompt_of(prompt), 10, 0.05, sampling);
  BOOST_REQUIRE(want.logprobs.size() == tokens.size());
  bool edge = false, cloud = false;
  for (size_t i = 0; i < tokens.size(); ++i) {
    BOOST_TEST(tokens[i]["id"] == want.tokens[i]);
    BOOST_TEST(tokens[i]["source"] == to_string(want.sources[i]));
    BOOST_TEST(tokens[i]["layer"] == want.layers[i]);
    BOOST_TEST(same_logprobs(lp["token_logprobs"][i], want.logprobs[i].logprob), i);
    BOOST_TEST(lp["top_logprobs"][i].size() <= want.logprobs[i].top.size());
    (want.sources[i] == TokenSource::cloud ? cloud : edge) = true;
  }
  BOOST_TEST_MESSAGE("edge tokens: " << edge << ", cloud tokens: " << cloud);
  // logprobs 0: the chosen token's logprob, no alternatives; none asked: null.
  j = ok_json(s.post({{"prompt", prompt}, {"max_tokens", 4}, {"logprobs", 0}}));
  check_completion_logprobs(j["choices"][0]["logprobs"], j["choices"][0]["text"], 0, true);
  for (const auto& top : j["choices"][0]["logprobs"]["top_logprobs"]) BOOST_TEST(top.empty());
  j = ok_json(s.post({{"prompt", prompt}, {"max_tokens", 4}}));
  BOOST_TEST(j["choices"][0]["logprobs"].is_null());
}

BOOST_AUTO_TEST_CASE(echo_puts_the_prompt_and_its_logprobs_before_the_completion) {
  Server s;
  SentencePieceTokenizer tok(http_tokenizer_file);
  const std::string prompt = "The jury said that";
  const auto ids = tok.encode(prompt);
  // lm-eval-harness's loglikelihood request: the prompt scored, nothing generated. The BOS the
  // server puts first is not echoed: the client's own tokens are, each scored after it.
  for (double theta : {0.0, 2.0}) {
    auto j = ok_json(s.post({{"prompt", prompt}, {"max_tokens", 0}, {"echo", true}, {"logprobs", 2},
                             {"x_ce", {{"threshold", theta}}}}));
    const json& choice = j["choices"][0];
    BOOST_TEST(choice["text"] == prompt);
    BOOST_TEST(choice["finish_reason"] == "length");
    BOOST_TEST(j["usage"]["completion_tokens"] == 0);
    BOOST_TEST(j["usage"]["prompt_tokens"] == ids.size() + 1);
    const json& lp = choice["logprobs"];
    check_completion_logprobs(lp, prompt, 2, /*greedy=*/false);
    BOOST_REQUIRE(lp["tokens"].size() == ids.size());
    // Each token's text sits at its offset (ASCII: characters are bytes); the first starts the text.
    BOOST_TEST(lp["text_offset"][0] == 0);
    for (size_t i = 1; i < ids.size(); ++i) {
      const std::string piece = lp["tokens"][i];
      BOOST_TEST(prompt.compare(lp["text_offset"][i].get<size_t>(), piece.size(), piece) == 0, i << ": '" << piece << "'");
    }
    // The numbers and heads are the edge's echo; x_ce.prompt_tokens names each token's head.
    SamplingParams sampling;
    sampling.logprobs = 2;
    const auto want = s.direct(s.prompt_of(prompt), 0, theta, sampling, /*echo=*/true);
    BOOST_REQUIRE(want.prompt_logprobs.size() == ids.size());
    const json& heads = j["x_ce"]["prompt_tokens"];
    BOOST_REQUIRE(heads.size() == ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      BOOST_TEST(same_logprobs(lp["token_logprobs"][i], want.prompt_logprobs[i].logprobs.logprob), i);
      BOOST_TEST(heads[i]["id"] == ids[i]);
      BOOST_TEST(heads[i]["source"] == (theta > 1 ? "cloud" : "edge"), i);  // θ 0: the first exit; θ 2: the cloud
      BOOST_TEST(heads[i]["layer"] == want.prompt_logprobs[i].layer);
    }
  }
  // Token ids that start with the BOS: it is echoed too, and has nothing before it (null).
  std::vector<int32_t> with_bos = s.prompt_of(prompt);
  auto j = ok_json(s.post({{"prompt", with_bos}, {"max_tokens", 0}, {"echo", true}, {"logprobs", 1}}));
  const json& lp = j["choices"][0]["logprobs"];
  BOOST_REQUIRE(lp["tokens"].size() == with_bos.size());
  BOOST_TEST(lp["token_logprobs"][0].is_null());
  BOOST_TEST(lp["top_logprobs"][0].is_null());
  for (size_t i = 1; i < with_bos.size(); ++i) BOOST_TEST(lp["token_logprobs"][i].is_number(), i);
  BOOST_TEST(j["x_ce"]["prompt_tokens"][0]["source"].is_null());
  BOOST_TEST(j["choices"][0]["text"] == prompt);

  // Echo with a completion: the text is prompt + completion, the logprobs the prompt's, then the
  // completion's (the same as without echo).
  const json plain = ok_json(s.post({{"prompt", prompt}, {"max_tokens", 6}, {"logprobs", 1}}));
  j = ok_json(s.post({{"prompt", prompt}, {"max_tokens", 6}, {"logprobs", 1}, {"echo", true}}));
  const std::string completion = plain["choices"][0]["text"];
  BOOST_TEST(j["choices"][0]["text"] == prompt + completion);
  const json both = j["choices"][0]["logprobs"];  // a copy: j is reused below
  check_completion_logprobs(both, prompt + completion, 1, false);
  const json& alone = plain["choices"][0]["logprobs"];
  BOOST_REQUIRE(both["tokens"].size() == ids.size() + alone["tokens"].size());
  for (size_t i = 0; i < alone["tokens"].size(); ++i) {
    BOOST_TEST(both["tokens"][ids.size() + i] == alone["tokens"][i]);
    BOOST_TEST(same_logprobs(both["token_logprobs"][ids.size() + i], alone["token_logprobs"][i]));
    BOOST_TEST(both["text_offset"][ids.size() + i].get<size_t>() == characters(prompt) + alone["text_offset"][i].get<size_t>());
  }
  BOOST_TEST(j["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]);
  // Echo without logprobs: the text only.
  j = ok_json(s.post({{"prompt", prompt}, {"max_tokens", 6}, {"echo", true}}));
  BOOST_TEST(j["choices"][0]["text"] == prompt + completion);
  BOOST_TEST(j["choices"][0]["logprobs"].is_null());
  // Streamed: the prompt first (with its logprobs), then the completion; the same in all.
  for (bool logprobs : {true, false}) {
    json body = {{"prompt", prompt}, {"max_tokens", 6}, {"echo", true}, {"stream", true}};
    if (logprobs) body["logprobs"] = 1;
    auto r = s.post(body);
    BOOST_REQUIRE(r);
    const auto events = sse_events(r->body);
    BOOST_REQUIRE(!events.empty());
    BOOST_TEST(events[0]["choices"][0]["text"] == prompt);
    std::string text;
    json streamed_tokens = json::array(), streamed_values = json::array();
    for (const auto& e : events) {
      text += e["choices"][0]["text"].get<std::string>();
      const json& l = e["choices"][0]["logprobs"];
      if (!l.is_null())
        for (size_t i = 0; i < l["tokens"].size(); ++i) {
          streamed_tokens.push_back(l["tokens"][i]);
          streamed_values.push_back(l["token_logprobs"][i]);
        }
    }
    BOOST_TEST(text == prompt + completion);
    if (logprobs) {
      BOOST_TEST(streamed_tokens == both["tokens"]);
      BOOST_TEST(same_logprobs(streamed_values, both["token_logprobs"]));
    } else {
      BOOST_TEST(streamed_tokens.empty());
    }
  }
}

BOOST_AUTO_TEST_CASE(n_choices_each_draw_with_their_own_seed_and_stream_under_their_index) {
  Server s;
  const json body = {{"prompt", "It was"}, {"max_tokens", 8}, {"temperature", 0.9}, {"seed", 42}, {"n", 3}, {"logprobs", 2}};
  const json j = ok_json(s.post(body));
  BOOST_REQUIRE(j["choices"].size() == 3u);
  BOOST_TEST(j["x_ce"]["seed"] == 42);
  BOOST_REQUIRE(j["x_ce"]["choices"].size() == 3u);
  size_t completion_tokens = 0;
  for (int i = 0; i < 3; ++i) {
    const json& choice = j["choices"][i];
    const json& figures = j["x_ce"]["choices"][i];
    BOOST_TEST(choice["index"] == i);
    BOOST_TEST(figures["index"] == i);
    BOOST_TEST(figures["seed"] == 42 + i);
    check_completion_logprobs(choice["logprobs"], choice["text"], 2, /*greedy=*/false);
    BOOST_TEST(choice["logprobs"]["tokens"].size() == figures["tokens"].size());
    // Choice i is what a request of its own with seed 42 + i draws.
    json one = body;
    one["n"] = 1;
    one["seed"] = 42 + i;
    const json alone = ok_json(s.post(one));
    BOOST_TEST(alone["choices"][0]["index"] == 0);
    BOOST_TEST(choice["text"] == alone["choices"][0]["text"], i);
    BOOST_TEST(ids_of(figures["tokens"]) == ids_of(alone["x_ce"]["tokens"]), i);
    BOOST_TEST(same_logprobs(choice["logprobs"]["token_logprobs"], alone["choices"][0]["logprobs"]["token_logprobs"]));
    completion_tokens += figures["tokens"].size();
  }
  BOOST_TEST(ids_of(j["x_ce"]["tokens"]) == ids_of(j["x_ce"]["choices"][0]["tokens"]));  // x_ce: choice 0, as with n = 1
  BOOST_TEST(j["usage"]["completion_tokens"] == completion_tokens);
  BOOST_TEST(j["usage"]["prompt_tokens"] == s.prompt_of("It was").size());  // counted once
  BOOST_TEST(j["usage"]["total_tokens"] == completion_tokens + s.prompt_of("It was").size());

  // Streamed: each event carries one choice under its index; each adds up to the same choice.
  json streamed = body;
  streamed["stream"] = true;
  streamed["stream_options"] = {{"include_usage", true}};
  auto r = s.post(streamed);
  BOOST_REQUIRE(r);
  bool done = false;
  const auto events = sse_events(r->body, &done);
  BOOST_TEST(done);
  std::map<int, std::string> texts;
  std::map<int, json> ids, values;
  std::map<int, int> finishes;
  for (const auto& e : events) {
    if (e["choices"].empty()) continue;  // the usage event
    BOOST_REQUIRE(e["choices"].size() == 1u);
    const json& c = e["choices"][0];
    const int index = c["index"];
    texts[index] += c["text"].get<std::string>();
    for (const auto& t : e["x_ce"]["tokens"]) ids[index].push_back(t["id"]);
    if (!c["logprobs"].is_null())
      for (const auto& v : c["logprobs"]["token_logprobs"]) values[index].push_back(v);
    if (!c["finish_reason"].is_null()) {
      ++finishes[index];
      BOOST_TEST(e["x_ce"]["seed"] == 42 + index);
    }
  }
  BOOST_REQUIRE(texts.size() == 3u);
  for (int i = 0; i < 3; ++i) {
    BOOST_TEST(texts[i] == j["choices"][i]["text"].get<std::string>(), i);
    BOOST_TEST(ids[i] == json(ids_of(j["x_ce"]["choices"][i]["tokens"])), i);
    BOOST_TEST(same_logprobs(values[i], j["choices"][i]["logprobs"]["token_logprobs"]), i);
    BOOST_TEST(finishes[i] == 1, i);
  }
  BOOST_TEST(events.back()["choices"].empty());
  BOOST_TEST(events.back()["usage"]["completion_tokens"] == completion_tokens);
  // best_of other than n is refused by name.
  r = s.post({{"prompt", "x"}, {"n", 2}, {"best_of", 3}});
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 400);
  BOOST_TEST(json::parse(r->body)["error"]["param"] == "best_of");
}

BOOST_AUTO_TEST_CASE(an_unseeded_sampled_request_draws_a_fresh_seed_and_reports_it) {
  Server s;
  const json body = {{"prompt", "It was"}, {"max_tokens", 10}, {"temperature", 1.0}};
  const json a = ok_json(s.post(body)), b = ok_json(s.post(body));
  const int64_t seed_a = a["x_ce"]["seed"], seed_b = b["x_ce"]["seed"];
  BOOST_TEST(seed_a != seed_b);
  for (int64_t seed : {seed_a, seed_b}) {
    BOOST_TEST(seed >= 0);
    BOOST_TEST(seed < (int64_t{1} << 53));  // a JavaScript number holds it exactly
  }
  // Sent back, the reported seed draws the same tokens.
  json again = body;
  again["seed"] = seed_a;
  const json c = ok_json(s.post(again));
  BOOST_TEST(c["x_ce"]["seed"] == seed_a);
  BOOST_TEST(ids_of(c["x_ce"]["tokens"]) == ids_of(a["x_ce"]["tokens"]));
  BOOST_TEST(c["choices"][0]["text"] == a["choices"][0]["text"]);
  // Greedy: no seed drawn (the tokens do not depend on it).
  BOOST_TEST(ok_json(s.post({{"prompt", "It was"}, {"max_tokens", 2}}))["x_ce"]["seed"] == 0);
}

BOOST_AUTO_TEST_CASE(the_samplers_reach_the_edge_as_asked) {
  Server s;
  const std::string prompt = "The jury said";
  // logit_bias +100 on one token: greedy picks it every time.
  const int32_t forced = 300;
  auto j = ok_json(s.post({{"prompt", prompt}, {"max_tokens", 5}, {"logit_bias", {{std::to_string(forced), 100}}}}));
  for (const auto& t : j["x_ce"]["tokens"]) BOOST_TEST(t["id"] == forced);
  // -100 on the greedy first token: another one comes first.
  const json greedy = ok_json(s.post({{"prompt", prompt}, {"max_tokens", 3}}));
  const int32_t first = greedy["x_ce"]["tokens"][0]["id"];
  j = ok_json(s.post({{"prompt", prompt}, {"max_tokens", 3}, {"logit_bias", {{std::to_string(first), -100}}}}));
  BOOST_TEST(j["x_ce"]["tokens"][0]["id"] != first);
  // Every knob at once: the tokens the edge draws with the same parameters, through HTTP or not.
  SamplingParams sampling;
  sampling.temperature = 0.9f;
  sampling.top_p = 0.95f;
  sampling.seed = 5;
  sampling.top_k = 8;
  sampling.min_p = 0.02f;
  sampling.repetition_penalty = 1.5f;
  sampling.presence_penalty = 0.5f;
  sampling.frequency_penalty = 0.75f;
  sampling.logit_bias = {{17, 2.5f}};
  j = ok_json(s.post({{"prompt", prompt}, {"max_tokens", 12}, {"temperature", 0.9}, {"top_p", 0.95}, {"seed", 5},
                      {"top_k", 8}, {"min_p", 0.02}, {"repetition_penalty", 1.5}, {"presence_penalty", 0.5},
                      {"frequency_penalty", 0.75}, {"logit_bias", {{"17", 2.5}}}}));
  BOOST_TEST(ids_of(j["x_ce"]["tokens"]) == s.direct(s.prompt_of(prompt), 12, std::nullopt, sampling).tokens);
  // Each knob alone: the tokens the edge draws with it, which differ from those without it (so that
  // a knob the API failed to pass on could not pass unseen).
  struct Knob {
    const char* name;
    json fields;
    std::function<void(SamplingParams&)> set;
  };
  const std::vector<Knob> knobs = {
      {"presence_penalty", {{"presence_penalty", 2}}, [](SamplingParams& p) { p.presence_penalty = 2; }},
      {"frequency_penalty", {{"frequency_penalty", 2}}, [](SamplingParams& p) { p.frequency_penalty = 2; }},
      {"repetition_penalty", {{"repetition_penalty", 3}}, [](SamplingParams& p) { p.repetition_penalty = 3; }},
      {"min_p", {{"temperature", 1}, {"seed", 3}, {"min_p", 0.5}},
       [](SamplingParams& p) { p.temperature = 1, p.seed = 3, p.min_p = 0.5f; }},
      {"top_p", {{"temperature", 1}, {"seed", 3}, {"top_p", 0.3}},
       [](SamplingParams& p) { p.temperature = 1, p.seed = 3, p.top_p = 0.3f; }},
      {"top_k", {{"temperature", 1}, {"seed", 3}, {"top_k", 2}},
       [](SamplingParams& p) { p.temperature = 1, p.seed = 3, p.top_k = 2; }},
  };
  for (const auto& knob : knobs) {
    json request = {{"prompt", prompt}, {"max_tokens", 16}};
    request.update(knob.fields);
    SamplingParams with, without;
    knob.set(with);
    without.temperature = with.temperature;
    without.seed = with.seed;
    const auto want = s.direct(s.prompt_of(prompt), 16, std::nullopt, with).tokens;
    BOOST_TEST(want != s.direct(s.prompt_of(prompt), 16, std::nullopt, without).tokens, knob.name << " changes nothing here");
    BOOST_TEST(ids_of(ok_json(s.post(request))["x_ce"]["tokens"]) == want, knob.name);
  }
  // top_k 1 is greedy whatever the temperature.
  j = ok_json(s.post({{"prompt", prompt}, {"max_tokens", 3}, {"temperature", 1.5}, {"top_k", 1}}));
  BOOST_TEST(ids_of(j["x_ce"]["tokens"]) == ids_of(greedy["x_ce"]["tokens"]));
}

BOOST_AUTO_TEST_CASE(vendor_fields_are_ignored_with_a_warning_header_and_unknown_ones_refused) {
  Server s;
  const json body = {{"prompt", "It was"}, {"max_tokens", 3}, {"typical_p", 0.9}, {"mirostat", 2}, {"cache_prompt", true}};
  auto r = s.post(body);
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 200);
  BOOST_TEST(r->get_header_value("Warning") == R"(299 - "ignored fields: cache_prompt, mirostat, typical_p")");
  BOOST_TEST(json::parse(r->body)["x_ce"]["ignored_fields"] == json({"cache_prompt", "mirostat", "typical_p"}));
  json streamed = body;
  streamed["stream"] = true;
  r = s.post(streamed);
  BOOST_REQUIRE(r);
  BOOST_TEST(r->get_header_value("Warning") == R"(299 - "ignored fields: cache_prompt, mirostat, typical_p")");
  BOOST_TEST(sse_events(r->body).back()["x_ce"]["ignored_fields"] == json({"cache_prompt", "mirostat", "typical_p"}));
  // None ignored: no header, no list.
  r = s.post({{"prompt", "It was"}, {"max_tokens", 3}});
  BOOST_TEST(!r->has_header("Warning"));
  BOOST_TEST(!json::parse(r->body)["x_ce"].contains("ignored_fields"));
  // A field no API has is still refused, by name.
  r = s.post({{"prompt", "It was"}, {"typical_p", 0.9}, {"colour", "blue"}});
  BOOST_TEST(r->status == 400);
  BOOST_TEST(json::parse(r->body)["error"]["param"] == "colour");
}

BOOST_AUTO_TEST_CASE(chat_logprobs_take_openais_shape_plain_and_streamed) {
  Server s([](NodeConfig& c) { write_chat_template(c.model_path, chatml_template); });
  const json messages = {{{"role", "user"}, {"content", "The jury said"}}};
  const json body = {{"messages", messages}, {"max_tokens", 8}, {"logprobs", true}, {"top_logprobs", 3},
                     {"x_ce", {{"threshold", 0.05}}}};
  const json j = s.chat(body);
  const json& lp = j["choices"][0]["logprobs"];
  BOOST_REQUIRE(lp.is_object());
  BOOST_TEST(lp["refusal"].is_null());
  const json& content = lp["content"];
  BOOST_REQUIRE(content.size() == j["x_ce"]["tokens"].size());
  std::string joined;
  for (const auto& entry : content) {
    const std::string token = entry["token"];
    const double logprob = entry["logprob"];
    BOOST_TEST(logprob <= 0.0);
    std::vector<int> bytes(token.begin(), token.end());
    for (auto& b : bytes) b &= 0xFF;
    BOOST_TEST(entry["bytes"].get<std::vector<int>>() == bytes);
    const json& top = entry["top_logprobs"];
    BOOST_TEST(top.size() == 3u);
    for (size_t k = 0; k < top.size(); ++k) {
      BOOST_TEST(top[k]["logprob"].get<double>() <= 0.0);
      BOOST_TEST(top[k].contains("bytes"));
      if (k > 0) BOOST_TEST(top[k]["logprob"].get<double>() <= top[k - 1]["logprob"].get<double>());  // most likely first
    }
    // Greedy: the chosen token leads its alternatives.
    BOOST_TEST(top[0]["token"] == entry["token"]);
    BOOST_TEST(top[0]["logprob"] == entry["logprob"]);
    joined += token;
  }
  BOOST_TEST_MESSAGE("chat text '" << j["choices"][0]["message"]["content"].get<std::string>() << "', tokens '" << joined << "'");
  // logprobs without top_logprobs: no alternatives; none asked: null.
  json no_top = body;
  no_top.erase("top_logprobs");
  for (const auto& entry : s.chat(no_top)["choices"][0]["logprobs"]["content"]) BOOST_TEST(entry["top_logprobs"].empty());
  json none = body;
  none.erase("top_logprobs");
  none.erase("logprobs");
  BOOST_TEST(s.chat(none)["choices"][0]["logprobs"].is_null());

  // Streamed: the chunks' logprobs add up to the same entries; n = 2 streams both under their index.
  json streamed = body;
  streamed["stream"] = true;
  streamed["n"] = 2;
  auto r = s.client().Post("/v1/chat/completions", streamed.dump(), "application/json");
  BOOST_REQUIRE(r);
  BOOST_REQUIRE(r->status == 200);
  std::map<int, json> entries;
  std::map<int, std::string> texts;
  for (const auto& e : sse_events(r->body)) {
    const json& c = e["choices"][0];
    BOOST_TEST(e["object"] == "chat.completion.chunk");
    texts[c["index"]] += c["delta"].value("content", "");
    if (!c["logprobs"].is_null())
      for (const auto& entry : c["logprobs"]["content"]) entries[c["index"]].push_back(entry);
  }
  BOOST_REQUIRE(entries.size() == 2u);
  for (int i = 0; i < 2; ++i) {  // greedy: both choices are the plain response
    BOOST_TEST(same_logprobs(entries[i], content), i);
    BOOST_TEST(texts[i] == j["choices"][0]["message"]["content"].get<std::string>(), i);
  }
}

BOOST_AUTO_TEST_SUITE_END()
