// A real cloud ce-node under a connection flood: 300 silent connections from 127.0.0.2, each
// reopened as soon as the cloud closes it, and junk connections from 127.0.0.3 (from another
// address than the silent ones, so that the cloud admits them and the junk reaches its checks
// rather than the per-address cap). A real edge ce-node connecting from 127.0.0.1 must get its
// Welcome within a second and be served by the cloud.
// Measured before the per-address cap and the eviction of connections without a handshake:
// 70 silent connections held the cap until the 5 s handshake timeout, and a new edge waiting
// 3 s gave up and answered standalone.
#include <boost/test/unit_test.hpp>

#include <httplib.h>

#include <atomic>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>

#include "tests/integration/processes.hpp"
#include "tests/loopback_client.hpp"
#include "tests/prometheus.hpp"

using namespace ce;
using namespace ce::test;
using json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

// Floods a port until destroyed: keeps `silent` connections from silent_source open that never
// send a byte (each one the cloud closes is opened again within milliseconds: up to 16 every
// 5 ms, ~3,000 a second, as much as this 2-core test machine can spare besides the cloud and the
// edge), and opens junk connections (random bytes, then hang up) from junk_source besides, one
// every 2 ms.
class Flood {
 public:
  Flood(const char* silent_source, const char* junk_source, uint16_t port, int silent)
      : silent_source_(silent_source), junk_source_(junk_source), port_(port), fds_(static_cast<size_t>(silent), -1) {
    silent_thread_ = std::thread([this] { keep_silent_connections(); });
    junk_thread_ = std::thread([this] { send_junk(); });
  }
  ~Flood() {
    stop_ = true;
    silent_thread_.join();
    junk_thread_.join();
    for (int fd : fds_)
      if (fd >= 0) close(fd);
  }
  uint64_t connections() const { return connections_.load(); }

 private:
  void keep_silent_connections() {
    std::vector<pollfd> polled(fds_.size());
    while (!stop_) {
      const auto round_end = std::chrono::steady_clock::now() + 5ms;
      int reopened = 0;
      for (auto& fd : fds_)
        if (fd < 0 && reopened++ < kReopenedPerRound && (fd = connect_from(silent_source_, port_)) >= 0) connections_++;
      for (size_t i = 0; i < fds_.size(); ++i) polled[i] = {fds_[i], POLLIN, 0};
      if (poll(polled.data(), polled.size(), 0) > 0) {
        for (size_t i = 0; i < fds_.size(); ++i) {
          if (!(polled[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
          char buf[4096];
          if (recv(fds_[i], buf, sizeof buf, 0) > 0) continue;  // CAF's server handshake, relayed: never answered
          close(fds_[i]);
          fds_[i] = -1;
        }
      }
      std::this_thread::sleep_until(round_end);
    }
  }
  void send_junk() {
    std::mt19937 rng(7);
    while (!stop_) {
      int fd = connect_from(junk_source_, port_);
      if (fd >= 0) {
        connections_++;
        std::vector<char> junk(1 + rng() % 512);
        for (auto& c : junk) c = static_cast<char>(rng());
        send(fd, junk.data(), junk.size(), MSG_NOSIGNAL);
        close(fd);
      }
      std::this_thread::sleep_for(2ms);
    }
  }
  static constexpr int kReopenedPerRound = 16;
  const char *silent_source_, *junk_source_;
  uint16_t port_;
  std::vector<int> fds_;  // the flood's silent connections, -1 where one is to be reopened
  std::atomic<uint64_t> connections_{0};
  std::atomic<bool> stop_{false};
  std::thread silent_thread_, junk_thread_;
};

// The file's text as it is now.
std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Milliseconds since midnight of a log line's stamp ("HH:MM:SS.mmm ..."), or -1.
long stamp_ms(const std::string& line) {
  int h = 0, m = 0, s = 0, ms = 0;
  if (std::sscanf(line.c_str(), "%d:%d:%d.%d", &h, &m, &s, &ms) != 4) return -1;
  return ((h * 60L + m) * 60L + s) * 1000L + ms;
}

// The first log line containing `what`, or "" when none (yet).
std::string first_line_with(const std::string& text, const std::string& what) {
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);)
    if (line.find(what) != std::string::npos) return line;
  return "";
}

// Seconds from the edge's start of networking to the cloud's Welcome, read from its log: from the
// line the node writes once its model is loaded, just before it starts CAF and the uploader
// dials (so this bounds the connect-to-Welcome time from above), to the uploader's "connected to
// cloud" (written on the Welcome). -1 when the Welcome did not come within `timeout`.
double seconds_to_welcome(const std::string& edge_log, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    const std::string text = read_text(edge_log);
    const std::string welcomed = first_line_with(text, "connected to cloud");
    if (!welcomed.empty()) {
      const std::string started = first_line_with(text, "[node] role edge");
      BOOST_REQUIRE_MESSAGE(!started.empty(), "the edge's log has no start line:\n" << text);
      long ms = stamp_ms(welcomed) - stamp_ms(started);
      if (ms < 0) ms += 24 * 3600 * 1000;  // across midnight
      return ms / 1000.0;
    }
    std::this_thread::sleep_for(10ms);
  }
  return -1;
}

// What the edge and the cloud did under the flood.
struct Outcome {
  double seconds_to_welcome = -1;
  json response;
  std::string metrics, cloud_log;
  double flood_seconds = 0;
  uint64_t flood_connections = 0;
};

// Starts a cloud with `listen_keys` under [ce.listen], floods its port, then
// starts an edge (from 127.0.0.1) that needs the cloud for every token and asks it for 8 tokens.
Outcome edge_under_flood(const std::string& listen_keys) {
  Deployment d;
  const std::string cloud_log = d.dir.file("cloud.log");
  CloudProcess cloud(d.write_config("cloud.ini", "role = \"cloud\"\n[ce.listen]\nport = 0\n" + listen_keys +
                                                     "[ce.http]\nport = 0\n"),
                     d.dir.file("ready"), cloud_log);
  Outcome out;
  const auto flood_start = std::chrono::steady_clock::now();
  {
    Flood flood("127.0.0.2", "127.0.0.3", cloud.port, 300);
    // Under way before the edge comes: the cap already taken as far as the cloud lets it.
    while (flood.connections() < 600 && std::chrono::steady_clock::now() - flood_start < 5s)
      std::this_thread::sleep_for(10ms);
    const std::string edge_log = d.dir.file("edge.log");
    EdgeProcess edge(d.write_config("edge.ini", "role = \"edge\"\nexit.threshold = 2\n[ce.cloud]\nport = " +
                                                    std::to_string(cloud.port) + "\n"),
                     {"--max-tokens", "8"}, edge_log);
    out.seconds_to_welcome = seconds_to_welcome(edge_log, 8s);
    edge.send_prompt("The jury said");
    std::string line;
    if (edge.read_response(line, 30s)) out.response = json::parse(line);
    BOOST_TEST(edge.finish() == 0);
    out.flood_connections = flood.connections();
    out.flood_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - flood_start).count();
    BOOST_REQUIRE(cloud.alive());
  }
  // The flood's second is over: its summary lines are written.
  std::this_thread::sleep_for(1300ms);
  httplib::Client http("127.0.0.1", cloud.http_port);
  auto r = http.Get("/metrics");
  BOOST_REQUIRE(r);
  out.metrics = r->body;
  out.cloud_log = read_text(cloud_log);
  return out;
}

double connections(const Outcome& out, const std::string& result) {
  return metric(out.metrics, "ce_cloud_connections_total{result=\"" + result + "\"}");
}

void report(const Outcome& out, int log_lines) {
  BOOST_TEST_MESSAGE("flood of " << out.flood_connections << " connections in " << out.flood_seconds
                                 << " s; edge welcomed " << out.seconds_to_welcome
                                 << " s after it started dialling; cloud connections: accepted "
                                 << connections(out, "accepted") << ", per_address_limit "
                                 << connections(out, "per_address_limit") << ", evicted_pre_handshake "
                                 << connections(out, "evicted_pre_handshake") << ", over_limit "
                                 << connections(out, "over_limit") << ", bad_header " << connections(out, "bad_header")
                                 << ", handshake_timeout " << connections(out, "handshake_timeout") << "; "
                                 << log_lines << " log lines about the flood");
}

// The cloud's log lines about the flooding addresses: the guard folds them to about one a
// second per address, however many connections the flood opens.
int log_lines_about_the_flood(const Outcome& out) {
  std::istringstream lines(out.cloud_log);
  int n = 0;
  for (std::string line; std::getline(lines, line);)
    n += line.find("127.0.0.2") != std::string::npos || line.find("127.0.0.3") != std::string::npos;
  return n;
}

void expect_served_by_the_cloud(const Outcome& out) {
  BOOST_TEST(out.seconds_to_welcome >= 0.0);
  BOOST_TEST(out.seconds_to_welcome < 1.0);
  BOOST_REQUIRE_MESSAGE(!out.response.is_null(), "the edge gave no response");
  BOOST_TEST(out.response["error"] == "");
  BOOST_TEST(out.response["stats"]["cloud_tokens"].get<int>() == 8);  // θ 2: every token from the cloud
}

}  // namespace

BOOST_AUTO_TEST_SUITE(listener_flood)

// The default caps: the flooding address holds at most ce.listen.max-connections-per-address
// slots, every other connection from it is closed at once, and the edge finds slots free.
BOOST_AUTO_TEST_CASE(an_edge_gets_in_while_one_address_floods_the_port) {
  const Outcome out = edge_under_flood("");
  report(out, log_lines_about_the_flood(out));
  expect_served_by_the_cloud(out);
  BOOST_TEST(connections(out, "per_address_limit") > 100);
  BOOST_TEST(connections(out, "bad_header") > 10);  // the junk, closed at once
  BOOST_TEST(connections(out, "over_limit") == 0);
  BOOST_TEST(log_lines_about_the_flood(out) <= 2 * (static_cast<int>(out.flood_seconds) + 3));
  // The refusals are counted in the log too, not only dropped.
  BOOST_TEST(std::regex_search(out.cloud_log,
                               std::regex("from 127\\.0\\.0\\.2 in the last [0-9.]+ s: [0-9]+ refused "
                                          "\\(ce\\.listen\\.max-connections-per-address\\)")));
}

// One address allowed to fill the whole cap (the per-address cap at max-connections, the old
// 5 s handshake timeout): only the eviction of a connection without a handshake lets the edge in.
BOOST_AUTO_TEST_CASE(an_edge_gets_in_while_silent_connections_fill_the_cap) {
  const Outcome out =
      edge_under_flood("max-connections = 16\nmax-connections-per-address = 16\nhandshake-timeout = 5s\n");
  report(out, log_lines_about_the_flood(out));
  expect_served_by_the_cloud(out);
  // 127.0.0.2 alone cannot push past its own 16 (its 17th is refused), so an eviction means a
  // newcomer from elsewhere took a slot at the full cap: the edge, or junk.
  BOOST_TEST(connections(out, "evicted_pre_handshake") >= 1);
  BOOST_TEST(log_lines_about_the_flood(out) <= 2 * (static_cast<int>(out.flood_seconds) + 3));
}

BOOST_AUTO_TEST_SUITE_END()
