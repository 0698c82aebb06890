// Prometheus text rendering of the nodes' /metrics.
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <ctime>
#include <regex>
#include <sstream>
#include <thread>

#include "actors/http/metrics.hpp"

using namespace ce;

BOOST_AUTO_TEST_SUITE(metrics)

BOOST_AUTO_TEST_CASE(counters_gauges_and_histograms_render_as_prometheus_text) {
  Metrics m;
  m.declare_counter("ce_requests_total", "requests");
  m.declare_gauge("ce_share", "a share");
  m.declare_histogram("ce_latency_seconds", "latency", {0.01, 0.1, 1});
  m.add("ce_requests_total", 1, {{"code", "200"}});
  m.add("ce_requests_total", 2, {{"code", "200"}});
  m.add("ce_requests_total", 1, {{"code", "4\"0\\0\n"}});
  m.set("ce_share", 0.25);
  for (double v : {0.005, 0.05, 0.05, 0.5, 5.0}) m.observe("ce_latency_seconds", v);
  const auto text = m.render();
  BOOST_TEST_MESSAGE(text);
  BOOST_TEST(text.find("# TYPE ce_requests_total counter\n") != std::string::npos);
  BOOST_TEST(text.find("ce_requests_total{code=\"200\"} 3\n") != std::string::npos);
  BOOST_TEST(text.find(R"(ce_requests_total{code="4\"0\\0\n"} 1)") != std::string::npos);
  BOOST_TEST(text.find("ce_share 0.25\n") != std::string::npos);
  // Buckets are cumulative, +Inf equals the count.
  BOOST_TEST(text.find("ce_latency_seconds_bucket{le=\"0.01\"} 1\n") != std::string::npos);
  BOOST_TEST(text.find("ce_latency_seconds_bucket{le=\"0.1\"} 3\n") != std::string::npos);
  BOOST_TEST(text.find("ce_latency_seconds_bucket{le=\"1\"} 4\n") != std::string::npos);
  BOOST_TEST(text.find("ce_latency_seconds_bucket{le=\"+Inf\"} 5\n") != std::string::npos);
  BOOST_TEST(text.find("ce_latency_seconds_count 5\n") != std::string::npos);
  BOOST_TEST(text.find("ce_latency_seconds_sum 5.605\n") != std::string::npos);
  // Every line is a comment or `name{labels} value`.
  const std::regex sample(R"(^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? [-+0-9.eInfNa]+$)");
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);)
    BOOST_TEST((line.rfind("# ", 0) == 0 || std::regex_match(line, sample)), line);
}

BOOST_AUTO_TEST_CASE(undeclared_or_mistyped_updates_are_programming_errors) {
  Metrics m;
  m.declare_gauge("ce_g", "g");
  BOOST_CHECK_THROW(m.add("ce_unknown"), std::logic_error);
  BOOST_CHECK_THROW(m.observe("ce_g", 1), std::logic_error);
  BOOST_CHECK_THROW(m.declare_counter("ce_g", "again"), std::logic_error);
}

BOOST_AUTO_TEST_CASE(concurrent_updates_are_all_counted) {
  Metrics m;
  m.declare_counter("ce_c", "c");
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) m.add("ce_c", 1, {{"k", i % 2 ? "a" : "b"}});
    });
  for (auto& t : threads) t.join();
  const auto text = m.render();
  BOOST_TEST(text.find("ce_c{k=\"a\"} 20000\n") != std::string::npos);
  BOOST_TEST(text.find("ce_c{k=\"b\"} 20000\n") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(resident_memory_is_read) { BOOST_TEST(resident_memory_bytes() > 1000000u); }

BOOST_AUTO_TEST_CASE(process_figures_are_read_from_proc) {
  const auto p = process_stats();
  BOOST_TEST(p.resident_bytes > 1000000u);
  BOOST_TEST(p.virtual_bytes >= p.resident_bytes);
  BOOST_TEST(p.open_fds >= 3u);  // stdin, stdout, stderr at least
  BOOST_TEST(p.max_fds >= p.open_fds);
  const double now = static_cast<double>(std::time(nullptr));
  BOOST_TEST(p.start_time_seconds <= now + 1);
  BOOST_TEST(p.start_time_seconds > now - 24 * 3600);
  // CPU time grows with work (in clock ticks: spin until one passes, at most 5 s).
  volatile double x = 0;
  const auto start = std::chrono::steady_clock::now();
  while (process_stats().cpu_seconds <= p.cpu_seconds && std::chrono::steady_clock::now() - start < std::chrono::seconds(5))
    for (int i = 0; i < 1000000; ++i) x = x + i * 0.5;
  BOOST_TEST(process_stats().cpu_seconds > p.cpu_seconds);
}

BOOST_AUTO_TEST_SUITE_END()
