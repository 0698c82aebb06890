// The HTTP API as a service under load (issue 22): the FIFO wait queue beyond
// ce.http.max-concurrent, the latency and process metrics (checked with an independent Prometheus
// text parser from npm), request ids in and out and in the log, and slow clients that must not
// starve it (a flood of stalled connections, a client trickling its body).
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>

#include <httplib.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "actors/http/http_api.hpp"
#include "actors/http/metrics.hpp"
#include "actors/http/wait_queue.hpp"
#include "actors/log.hpp"
#include "actors/node/node.hpp"
#include "linkem/link_emulator.hpp"
#include "tests/actors/fixtures.hpp"
#include "tests/actors/http/http_node.hpp"
#include "tests/loopback_client.hpp"
#include "tests/loopback.hpp"
#include "tests/prometheus.hpp"

using namespace ce;
using namespace ce::test;
using json = nlohmann::json;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {


double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// An HTTP API over a tiny random model (http_node.hpp): one process holding cloud and edge, or
// (slow_cloud) an edge whose cloud sits behind an emulated link of 20 ms each way, so that every
// cloud token takes at least 40 ms and a response of N cloud tokens more than N x 40 ms.
struct Service : HttpNode {
  explicit Service(const std::function<void(NodeConfig&)>& tweak = {}, bool slow_cloud = false)
      : HttpNode(tweak, {Role::both, true, slow_cloud ? 20.0 : 0.0}) {}
  json health() const {
    auto r = client().Get("/health");
    BOOST_REQUIRE(r);
    return json::parse(r->body);
  }
  std::string metrics() const {
    auto r = client().Get("/metrics");
    BOOST_REQUIRE(r);
    return r->body;
  }
  // Polls /health until `field` reaches `value` (at most 10 s).
  void wait_for(const char* field, int value) const {
    for (int i = 0; i < 1000; ++i) {
      if (health()[field] == value) return;
      std::this_thread::sleep_for(10ms);
    }
    BOOST_FAIL(std::string("/health ") + field + " never reached " + std::to_string(value));
  }
};

bool send_all(int fd, const std::string& data) {
  return send(fd, data.data(), data.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(data.size());
}

// What the server sends until it closes the connection or `timeout` passes.
std::string read_until_closed(int fd, std::chrono::milliseconds timeout) {
  std::string out;
  const auto end = Clock::now() + timeout;
  char buf[4096];
  while (Clock::now() < end) {
    pollfd p{fd, POLLIN, 0};
    if (poll(&p, 1, 50) <= 0) continue;
    const auto n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

// /metrics parsed by the npm package parse-prometheus-text-format plus the format rules of
// prometheus_text_check.js: {name: {type, help, metrics: [...]}}. Fails the test when the text
// breaks a rule.
json parse_prometheus(const std::string& text) {
  TempDir dir;
  const std::string in = dir.file("metrics.txt"), out = dir.file("parsed.json"), err = dir.file("stderr.txt");
  write_file(in, text);
  const std::string cmd = "node " CE_SOURCE_DIR "/tests/integration/prometheus_text_check.js " CE_NPM_HTTP_DIR " < " +
                          in + " > " + out + " 2> " + err;
  const int rc = std::system(cmd.c_str());
  std::ifstream e(err);
  const std::string why((std::istreambuf_iterator<char>(e)), std::istreambuf_iterator<char>());
  BOOST_REQUIRE_MESSAGE(rc == 0, "the Prometheus text parser refused /metrics: " << why);
  std::ifstream o(out);
  return json::parse(o);
}

double sample_value(const json& family, const std::map<std::string, std::string>& labels = {}) {
  for (const auto& m : family["metrics"]) {
    std::map<std::string, std::string> got;
    if (m.contains("labels"))
      for (auto& [k, v] : m["labels"].items()) got[k] = v.get<std::string>();
    if (got == labels) return std::stod(m.contains("value") ? m["value"].get<std::string>() : m["count"].get<std::string>());
  }
  return -1;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// What the process writes to stderr while `body` runs, and after it until `complete` says the
// text is whole (or 5 s have passed): a server thread may log a request just after its client
// got the response.
std::string capture_stderr(const std::function<void()>& body,
                           const std::function<bool(const std::string&)>& complete = {}) {
  TempDir dir;
  const std::string path = dir.file("stderr.txt");
  const auto read_all = [&] {
    std::ifstream in(path);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  std::fflush(stderr);
  const int saved = dup(2);
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  dup2(fd, 2);
  close(fd);
  body();
  const auto deadline = Clock::now() + 5s;
  while (complete && !complete(read_all()) && Clock::now() < deadline) std::this_thread::sleep_for(10ms);
  std::fflush(stderr);
  dup2(saved, 2);
  close(saved);
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

BOOST_AUTO_TEST_SUITE(http_service)

BOOST_AUTO_TEST_CASE(the_wait_queue_admits_in_arrival_order_and_refuses_beyond_its_bound) {
  WaitQueue q(1, 3);
  BOOST_REQUIRE((q.acquire(1s, {}) == WaitQueue::Outcome::admitted));
  std::mutex m;
  std::vector<int> order;
  std::vector<std::thread> waiters;
  for (int i = 0; i < 3; ++i) {
    waiters.emplace_back([&, i] {
      if (q.acquire(10s, {}) != WaitQueue::Outcome::admitted) return;
      {
        std::lock_guard<std::mutex> lock(m);
        order.push_back(i);
      }
      q.release();
    });
    while (q.waiting() != i + 1) std::this_thread::sleep_for(1ms);  // i is in line before i + 1 comes
  }
  BOOST_TEST((q.acquire(10s, {}) == WaitQueue::Outcome::queue_full));
  q.release();
  for (auto& t : waiters) t.join();
  BOOST_TEST(order == std::vector<int>({0, 1, 2}));
  BOOST_TEST(q.running() == 0);

  // A wait that times out, and one whose client left, give their place up.
  BOOST_REQUIRE((q.acquire(1s, {}) == WaitQueue::Outcome::admitted));
  Clock::duration waited{};
  BOOST_TEST((q.acquire(50ms, {}, &waited) == WaitQueue::Outcome::timed_out));
  BOOST_TEST((waited >= 50ms));
  BOOST_TEST((q.acquire(10s, [] { return false; }) == WaitQueue::Outcome::abandoned));
  BOOST_TEST(q.waiting() == 0);
  q.release();
  // With no queue, a busy server refuses at once.
  WaitQueue none(1, 0);
  BOOST_REQUIRE((none.acquire(1s, {}) == WaitQueue::Outcome::admitted));
  BOOST_TEST((none.acquire(1s, {}) == WaitQueue::Outcome::queue_full));
}

BOOST_AUTO_TEST_CASE(beyond_max_concurrent_completions_wait_first_come_first_served_then_get_429) {
  Service s(
      [](NodeConfig& c) {
        c.http_max_concurrent = 1;
        c.http_queue = 2;
      },
      /*slow_cloud=*/true);
  // The slot holder: 30 cloud tokens one after the other (no speculation), at least 1.2 s.
  auto first = std::async(std::launch::async, [&] {
    return s.post({{"prompt", "The"}, {"max_tokens", 30}, {"x_ce", {{"threshold", 2}, {"speculate", false}}}});
  });
  s.wait_for("requests_in_flight", 1);
  // Two wait, in this order: the second arrives only once the first is in line.
  const json small = {{"prompt", "It was"}, {"max_tokens", 2}, {"x_ce", {{"threshold", 2}}}};
  auto second = std::async(std::launch::async, [&] { return s.post(small, {{"X-Request-Id", "second"}}); });
  s.wait_for("requests_waiting", 1);
  auto third = std::async(std::launch::async, [&] { return s.post(small, {{"X-Request-Id", "third"}}); });
  s.wait_for("requests_waiting", 2);
  // The queue is full: the next two are refused at once, with a Retry-After.
  for (int i = 0; i < 2; ++i) {
    const auto t0 = Clock::now();
    auto r = s.post(small);
    BOOST_REQUIRE(r);
    BOOST_TEST(r->status == 429);
    BOOST_TEST(seconds_since(t0) < 0.5);
    BOOST_TEST(std::stoi(r->get_header_value("Retry-After")) >= 1);
    BOOST_TEST(json::parse(r->body)["error"]["code"] == "rate_limit_exceeded");
  }
  BOOST_TEST(s.health()["requests_in_flight"] == 1);  // still the first one
  auto r1 = first.get(), r2 = second.get(), r3 = third.get();
  BOOST_REQUIRE(r1);
  BOOST_REQUIRE(r2);
  BOOST_REQUIRE(r3);
  BOOST_TEST(r1->status == 200);
  BOOST_TEST(r2->status == 200);
  BOOST_TEST(r3->status == 200);
  const auto j1 = json::parse(r1->body)["x_ce"], j2 = json::parse(r2->body)["x_ce"], j3 = json::parse(r3->body)["x_ce"];
  // The edge numbers its responses as they start: FIFO means 1 < 2 < 3.
  BOOST_TEST(j1["generation"].get<uint64_t>() < j2["generation"].get<uint64_t>());
  BOOST_TEST(j2["generation"].get<uint64_t>() < j3["generation"].get<uint64_t>());
  BOOST_TEST(j2["request_id"] == "second");
  BOOST_TEST(j3["request_id"] == "third");
  BOOST_TEST(j2["queue_ms"].get<double>() > 100);  // it waited for the first (>= 1.2 s in all)
  BOOST_TEST(j3["queue_ms"].get<double>() > j2["queue_ms"].get<double>());
  BOOST_TEST(j1["queue_ms"].get<double>() < 50);
  const auto m = s.metrics();
  BOOST_TEST(metric(m, R"(ce_requests_refused_total{endpoint="completions",reason="queue_full"})") == 2);
  BOOST_TEST(metric(m, "ce_request_queue_time_seconds_count") == 3);
  BOOST_TEST(metric(m, "ce_request_queue_time_seconds_sum") > 0.2);
  BOOST_TEST(metric(m, "ce_http_requests_waiting") == 0);
  BOOST_TEST(metric(m, R"(ce_requests_finished_total{endpoint="completions",finished_reason="length"})") == 3);
  BOOST_TEST(metric(m, R"(ce_http_requests_total{path="/v1/completions",code="429"})") == 2);
}

BOOST_AUTO_TEST_CASE(a_request_that_waits_too_long_gets_429_and_one_that_leaves_frees_its_place) {
  Service s(
      [](NodeConfig& c) {
        c.http_max_concurrent = 1;
        c.http_queue = 2;
        c.http_queue_timeout = 300ms;
      },
      /*slow_cloud=*/true);
  auto first = std::async(std::launch::async, [&] {
    return s.post({{"prompt", "The"}, {"max_tokens", 30}, {"x_ce", {{"threshold", 2}, {"speculate", false}}}});
  });
  s.wait_for("requests_in_flight", 1);
  const auto t0 = Clock::now();
  auto r = s.post({{"prompt", "x"}, {"max_tokens", 2}});
  const double waited = seconds_since(t0);
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 429);
  BOOST_TEST(json::parse(r->body)["error"]["code"] == "queue_timeout");
  BOOST_TEST(std::stoi(r->get_header_value("Retry-After")) >= 1);
  BOOST_TEST(waited >= 0.29);
  BOOST_TEST(waited < 1.0);  // the first still runs (>= 1.2 s): the timeout, not the slot, ended it
  // A client that queues and hangs up leaves the line at once (not at the timeout).
  int fd = connect_loopback(s.api->port());
  BOOST_REQUIRE(fd >= 0);
  const std::string body = json({{"prompt", "x"}, {"max_tokens", 2}}).dump();
  BOOST_REQUIRE(send_all(fd, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                                 std::to_string(body.size()) + "\r\n\r\n" + body));
  s.wait_for("requests_waiting", 1);
  close(fd);
  const auto left = Clock::now();
  s.wait_for("requests_waiting", 0);
  BOOST_TEST(seconds_since(left) < 0.25);
  BOOST_REQUIRE(first.get()->status == 200);
  const auto m = s.metrics();
  BOOST_TEST(metric(m, R"(ce_requests_refused_total{endpoint="completions",reason="queue_timeout"})") == 1);
  BOOST_TEST(metric(m, R"(ce_requests_refused_total{endpoint="completions",reason="client_left"})") == 1);
}

BOOST_AUTO_TEST_CASE(a_flood_of_stalled_connections_cannot_starve_health_metrics_or_a_completion) {
  Service s([](NodeConfig& c) {
    c.http_max_connections_per_address = 8;
    c.http_read_timeout = 2s;
  });
  const uint16_t port = s.api->port();
  // 48 connections from one address send a head and part of a body, then go quiet.
  const std::string head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           "Content-Length: 100\r\n\r\n{\"prompt\": \"The";
  const auto flood_start = Clock::now();
  std::vector<int> flood;
  for (int i = 0; i < 48; ++i) {
    int fd = connect_from("127.0.0.2", port);
    BOOST_REQUIRE(fd >= 0);
    send_all(fd, head);  // a refused one may be closed already
    flood.push_back(fd);
  }
  // Another client trickles its body, a byte every 300 ms: each read is quick, the whole is not.
  int trickler = connect_from("127.0.0.3", port);
  BOOST_REQUIRE(trickler >= 0);
  BOOST_REQUIRE(send_all(trickler, head));
  std::atomic<bool> trickling{true};
  std::thread trickle([&] {
    while (trickling && send_all(trickler, " ")) std::this_thread::sleep_for(300ms);
  });
  // The address is at its cap: a new connection from it is refused at once, 429 (it sends
  // nothing, so the refusal is read, not reset).
  int extra = connect_from("127.0.0.2", port);
  BOOST_REQUIRE(extra >= 0);
  auto t0 = Clock::now();
  const auto refused = read_until_closed(extra, 1000ms);
  BOOST_TEST(seconds_since(t0) < 0.5);
  close(extra);
  BOOST_TEST(refused.rfind("HTTP/1.1 429", 0) == 0, refused);
  BOOST_TEST(refused.find("Retry-After: 1") != std::string::npos);
  // Meanwhile other clients are served at once.
  double worst_health = 0, worst_metrics = 0;
  for (int i = 0; i < 5; ++i) {
    t0 = Clock::now();
    auto h = s.client().Get("/health");
    worst_health = std::max(worst_health, seconds_since(t0));
    BOOST_REQUIRE(h);
    BOOST_TEST(h->status == 200);
    t0 = Clock::now();
    auto m = s.client().Get("/metrics");
    worst_metrics = std::max(worst_metrics, seconds_since(t0));
    BOOST_REQUIRE(m);
    BOOST_TEST(m->status == 200);
  }
  t0 = Clock::now();
  auto good = s.post({{"prompt", "The jury said"}, {"max_tokens", 8}});
  const double completion_seconds = seconds_since(t0);
  BOOST_REQUIRE(good);
  BOOST_TEST(good->status == 200);
  BOOST_TEST_MESSAGE("under a flood of 48 stalled connections: /health at most " << worst_health * 1000 << " ms, /metrics "
                     << worst_metrics * 1000 << " ms, an 8-token completion " << completion_seconds * 1000 << " ms");
  BOOST_TEST(worst_health < 1.0);
  BOOST_TEST(worst_metrics < 1.0);
  BOOST_TEST(completion_seconds < 1.5);
  auto m = s.metrics();
  BOOST_TEST(metric(m, R"(ce_http_connections_total{result="refused_per_address"})") == 41);  // 40 + the extra
  // The read bound cuts the 8 admitted stalled ones and the trickler off: 408, then closed.
  const auto stalled = read_until_closed(flood[0], 5000ms);
  const double cut_after = seconds_since(flood_start);
  BOOST_TEST(stalled.rfind("HTTP/1.1 408", 0) == 0, stalled);
  BOOST_TEST(cut_after >= 1.9);
  BOOST_TEST(cut_after < 4.0);
  const auto trickled = read_until_closed(trickler, 5000ms);
  BOOST_TEST(trickled.rfind("HTTP/1.1 408", 0) == 0, trickled);
  BOOST_TEST_MESSAGE("stalled and trickling requests cut off with 408 after " << cut_after << " s (read timeout 2 s)");
  trickling = false;
  trickle.join();
  close(trickler);
  for (int fd : flood) close(fd);
  // All gone but the scrape's own connection.
  for (int i = 0; i < 300 && (metric(m, "ce_http_read_timeouts_total") < 9 || metric(m, "ce_http_connections_open") > 1); ++i) {
    std::this_thread::sleep_for(10ms);
    m = s.metrics();
  }
  BOOST_TEST(metric(m, "ce_http_read_timeouts_total") == 9);
  BOOST_TEST(metric(m, "ce_http_connections_open") == 1);
  // The flooding address may connect again.
  int again = connect_from("127.0.0.2", port);
  BOOST_REQUIRE(again >= 0);
  BOOST_REQUIRE(send_all(again, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  BOOST_TEST(read_until_closed(again, 2000ms).rfind("HTTP/1.1 200", 0) == 0);
  close(again);
}

BOOST_AUTO_TEST_CASE(metrics_parse_as_prometheus_text_with_latency_token_and_process_families) {
  Service s;
  const json body = {{"prompt", "The jury said"}, {"max_tokens", 6}, {"x_ce", {{"threshold", 0.05}}}};
  auto plain = json::parse(s.post(body)->body);
  json streamed = body;
  streamed["stream"] = true;
  BOOST_REQUIRE(s.post(streamed)->status == 200);
  s.post({{"prompt", ""}});  // a 400: not a completion run
  const auto families = parse_prometheus(s.metrics());
  const auto type_of = [&](const std::string& name) {
    return families.contains(name) ? families[name]["type"].get<std::string>() : "missing";
  };
  for (const char* h : {"ce_time_to_first_token_seconds", "ce_inter_token_latency_seconds",
                        "ce_e2e_request_latency_seconds", "ce_request_queue_time_seconds", "ce_cloud_round_trip_seconds"})
    BOOST_TEST(type_of(h) == "histogram", h);
  for (const char* c : {"ce_prompt_tokens_total", "ce_generation_tokens_total", "ce_requests_finished_total",
                        "ce_requests_refused_total", "ce_http_requests_total", "process_cpu_seconds_total",
                        "ce_http_connections_total", "ce_http_read_timeouts_total"})
    BOOST_TEST(type_of(c) == "counter", c);
  for (const char* g : {"process_resident_memory_bytes", "process_virtual_memory_bytes", "process_start_time_seconds",
                        "process_open_fds", "process_max_fds", "ce_http_requests_waiting", "ce_http_requests_in_flight",
                        "ce_http_connections_open"})
    BOOST_TEST(type_of(g) == "gauge", g);

  const int generated = plain["usage"]["completion_tokens"].get<int>();
  const int prompt = plain["usage"]["prompt_tokens"].get<int>();
  BOOST_REQUIRE(generated == 6);
  BOOST_TEST(sample_value(families["ce_time_to_first_token_seconds"]) == 2);  // the histogram's count
  BOOST_TEST(sample_value(families["ce_inter_token_latency_seconds"]) == 2 * (generated - 1));
  BOOST_TEST(sample_value(families["ce_e2e_request_latency_seconds"]) == 2);
  BOOST_TEST(sample_value(families["ce_request_queue_time_seconds"]) == 2);
  BOOST_TEST(sample_value(families["ce_prompt_tokens_total"]) == 2 * prompt);
  BOOST_TEST(sample_value(families["ce_generation_tokens_total"]) == 2 * generated);
  BOOST_TEST(sample_value(families["ce_requests_finished_total"], {{"endpoint", "completions"}, {"finished_reason", "length"}}) == 2);
  BOOST_TEST(sample_value(families["ce_http_requests_total"], {{"path", "/v1/completions"}, {"code", "400"}}) == 1);
  // Time to first token <= end to end, both measured from the same arrival.
  const auto sum = [&](const char* name) { return std::stod(families[name]["metrics"][0]["sum"].get<std::string>()); };
  BOOST_TEST(sum("ce_time_to_first_token_seconds") <= sum("ce_e2e_request_latency_seconds"));
  BOOST_TEST(sum("ce_e2e_request_latency_seconds") > 0);

  // process_* as /proc and getrlimit tell.
  rlimit limit{};
  getrlimit(RLIMIT_NOFILE, &limit);
  BOOST_TEST(sample_value(families["process_max_fds"]) == static_cast<double>(limit.rlim_cur));
  BOOST_TEST(sample_value(families["process_open_fds"]) > 3);
  BOOST_TEST(sample_value(families["process_resident_memory_bytes"]) > 1e6);
  BOOST_TEST(sample_value(families["process_virtual_memory_bytes"]) >= sample_value(families["process_resident_memory_bytes"]));
  BOOST_TEST(sample_value(families["process_cpu_seconds_total"]) > 0);
  const double start = sample_value(families["process_start_time_seconds"]);
  const double now = static_cast<double>(std::time(nullptr));
  BOOST_TEST(start <= now + 1);
  BOOST_TEST(start > now - 3600);  // this test process started within the hour
  const auto p = process_stats();
  BOOST_TEST(std::fabs(p.start_time_seconds - start) < 0.05);

  // The checker is no rubber stamp: a repeated family and a non-number are refused.
  TempDir dir;
  write_file(dir.file("bad.txt"), "# TYPE a counter\na 1\n# TYPE a gauge\na 2\n");
  BOOST_TEST(std::system(("node " CE_SOURCE_DIR "/tests/integration/prometheus_text_check.js " CE_NPM_HTTP_DIR " < " +
                          dir.file("bad.txt") + " > /dev/null 2>&1")
                             .c_str()) != 0);
  write_file(dir.file("bad.txt"), "# TYPE a counter\na one\n");
  BOOST_TEST(std::system(("node " CE_SOURCE_DIR "/tests/integration/prometheus_text_check.js " CE_NPM_HTTP_DIR " < " +
                          dir.file("bad.txt") + " > /dev/null 2>&1")
                             .c_str()) != 0);
}

BOOST_AUTO_TEST_CASE(each_request_has_an_id_echoed_in_its_response_and_its_access_log_line) {
  Service s;
  const auto id_of = [&](const httplib::Headers& headers, const std::string& path = "/health") {
    auto r = s.client().Get(path.c_str(), headers);
    BOOST_REQUIRE(r);
    return r->get_header_value("X-Request-Id");
  };
  BOOST_TEST(id_of({{"X-Request-Id", "trace-42.a:b"}}) == "trace-42.a:b");
  BOOST_TEST(id_of({{"X-Request-Id", "a b<c>\"d;e"}}) == "abcde");  // sanitised
  BOOST_TEST(id_of({{"X-Request-Id", std::string(300, 'x')}}) == std::string(64, 'x'));  // capped
  const std::regex uuid("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}");
  const auto generated = id_of({}), other = id_of({});
  BOOST_TEST(std::regex_match(generated, uuid), generated);
  BOOST_TEST(generated != other);
  BOOST_TEST(std::regex_match(id_of({{"X-Request-Id", "<>"}}), uuid));  // nothing left: generated
  BOOST_TEST(id_of({{"X-Request-Id", "lost"}}, "/v1/nothing") == "lost");  // a 404 has it too

  // The access log: one line per request, with method, path, status, duration, client and id.
  std::string id, body;
  const auto log = capture_stderr([&] {
    set_log_level(LogLevel::info);
    auto r = s.post({{"prompt", "The jury"}, {"max_tokens", 3}}, {{"X-Request-Id", "from-client-7"}});
    if (r) {
      id = r->get_header_value("X-Request-Id");
      body = r->body;
    }
    s.client().Get("/health", {{"X-Request-Id", "probe-1"}});
  }, [](const std::string& text) {  // both access lines: the completion's may come after the probe's
    return text.find("req=probe-1") != std::string::npos && text.find("req=from-client-7") != std::string::npos;
  });
  set_log_level(LogLevel::warning);
  BOOST_TEST(id == "from-client-7");
  const auto j = json::parse(body);
  BOOST_TEST(j["x_ce"]["request_id"] == "from-client-7");
  BOOST_TEST_MESSAGE(log);
  int completion_lines = 0, health_lines = 0;
  const std::regex access(R"(\[http\] POST /v1/completions 200 [0-9.]+ ms client 127\.0\.0\.1:[0-9]+ generation ([0-9]+), )"
                          R"([0-9]+ \+ 3 tokens, length, queued [0-9.]+ ms req=from-client-7$)");
  for (const auto& line : lines_of(log)) {
    std::smatch match;
    if (std::regex_search(line, match, access)) {
      ++completion_lines;
      BOOST_TEST(std::stoull(match[1]) == j["x_ce"]["generation"].get<uint64_t>());
    }
    if (std::regex_search(line, std::regex(R"(\[http\] GET /health 200 [0-9.]+ ms client 127\.0\.0\.1:[0-9]+ req=probe-1$)")))
      ++health_lines;
    if (line.find("from-client-7") != std::string::npos) BOOST_TEST(line.find("req=from-client-7") != std::string::npos, line);
  }
  BOOST_TEST(completion_lines == 1);
  BOOST_TEST(health_lines == 1);
}

BOOST_AUTO_TEST_CASE(the_http_service_keys_parse_with_units_and_ranges) {
  const std::string minimal = "[ce]\nrole = \"edge\"\nmodel.path = \"m\"\n";
  auto c = parse_node_config_text(minimal + "[ce.http]\nqueue = 3\nqueue-timeout = 1500ms\nread-timeout = 2s\n"
                                            "max-connections-per-address = 5\n",
                                  "t.ini", "/");
  BOOST_TEST(c.http_queue == 3);
  BOOST_TEST(c.http_queue_timeout.count() == 1500);
  BOOST_TEST(c.http_read_timeout.count() == 2000);
  BOOST_TEST(c.http_max_connections_per_address == 5);
  const NodeConfig d;
  BOOST_TEST(d.http_queue == 64);
  BOOST_TEST(d.http_queue_timeout.count() == 30000);
  BOOST_TEST(d.http_read_timeout.count() == 10000);
  BOOST_TEST(d.http_max_connections_per_address == 64);
  for (const char* bad : {"queue = -1", "queue-timeout = 5", "read-timeout = 0ms", "max-connections-per-address = 0"})
    BOOST_CHECK_THROW(parse_node_config_text(minimal + "[ce.http]\n" + bad + "\n", "t.ini", "/"), ConfigError);
  const auto help = config_keys_help();
  for (const char* key : {"ce.http.queue", "ce.http.queue-timeout", "ce.http.read-timeout",
                          "ce.http.max-connections-per-address"})
    BOOST_TEST(help.find(key) != std::string::npos, key);
}

BOOST_AUTO_TEST_SUITE_END()
