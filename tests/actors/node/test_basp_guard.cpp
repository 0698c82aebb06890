// The cloud's front door relay: bytes pass both ways, and the connection caps (global and per
// source address), the eviction of connections without a handshake at the cap, the handshake
// timeout and the BASP header checks close what they should, before it reaches the listener.
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>
#include <vector>

#include "actors/log.hpp"
#include "actors/node/basp_guard.hpp"
#include "tests/loopback.hpp"

using namespace ce;
using namespace ce::test;
using namespace std::chrono_literals;

namespace {

int connect_to(uint16_t port) {
  int fd = connect_loopback(port);
  BOOST_REQUIRE(fd >= 0);
  return fd;
}

// A socket connected to 127.0.0.1:port from `source` (any 127.x.y.z: Linux routes all of
// 127/8 to loopback), so that one test plays several client addresses.
int connect_from(const char* source, uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  BOOST_REQUIRE(fd >= 0);
  sockaddr_in local{};
  local.sin_family = AF_INET;
  BOOST_REQUIRE(inet_pton(AF_INET, source, &local.sin_addr) == 1);
  BOOST_REQUIRE_MESSAGE(bind(fd, reinterpret_cast<sockaddr*>(&local), sizeof local) == 0, "bind to " << source);
  auto remote = loopback_address(port);
  BOOST_REQUIRE_MESSAGE(connect(fd, reinterpret_cast<sockaddr*>(&remote), sizeof remote) == 0, "connect from " << source);
  return fd;
}

// Bytes read within the timeout; closed = the peer hung up.
std::string read_some(int fd, std::chrono::milliseconds timeout, bool* closed = nullptr) {
  pollfd p{fd, POLLIN, 0};
  std::string out;
  if (poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return out;
  char buf[4096];
  auto n = recv(fd, buf, sizeof buf, 0);
  if (n <= 0) {
    if (closed) *closed = true;
    return out;
  }
  return std::string(buf, static_cast<size_t>(n));
}

// A listener standing in for CAF's: echoes whatever each connection sends.
struct EchoServer {
  int listener = -1;
  uint16_t port = 0;
  std::atomic<int> connections{0};
  std::atomic<size_t> bytes{0};
  std::thread thread;
  std::atomic<bool> stop{false};
  EchoServer() {
    listener = listen_loopback(&port);
    thread = std::thread([this] {
      std::vector<std::thread> workers;
      while (!stop) {
        pollfd p{listener, POLLIN, 0};
        if (poll(&p, 1, 50) <= 0) continue;
        int fd = accept(listener, nullptr, nullptr);
        if (fd < 0) continue;
        connections++;
        workers.emplace_back([this, fd] {
          char buf[4096];
          while (!stop) {
            pollfd q{fd, POLLIN, 0};
            if (poll(&q, 1, 50) <= 0) continue;
            auto n = recv(fd, buf, sizeof buf, 0);
            if (n <= 0) break;
            bytes += static_cast<size_t>(n);
            send(fd, buf, static_cast<size_t>(n), MSG_NOSIGNAL);
          }
          close(fd);
        });
      }
      for (auto& w : workers) w.join();
    });
  }
  ~EchoServer() {
    stop = true;
    thread.join();
    close(listener);
  }
};

std::string basp_header(uint8_t operation, uint32_t payload, uint8_t padding = 0) {
  std::string h(32, '\0');
  h[0] = static_cast<char>(operation);
  h[1] = static_cast<char>(padding);
  h[4] = static_cast<char>(payload >> 24);
  h[5] = static_cast<char>(payload >> 16);
  h[6] = static_cast<char>(payload >> 8);
  h[7] = static_cast<char>(payload);
  return h;
}

BaspGuard::Options options(uint16_t target) {
  BaspGuard::Options o;
  o.target_port = target;
  o.max_payload = 1000;
  o.max_connections = 3;
  o.handshake_timeout = 300ms;
  return o;
}

void send_all(int fd, const std::string& bytes) {
  BOOST_REQUIRE(send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()));
}

// True when the guard closes fd within `within` (reads and drops whatever comes first).
bool closed_within(int fd, std::chrono::milliseconds within) {
  const auto deadline = std::chrono::steady_clock::now() + within;
  bool closed = false;
  while (!closed && std::chrono::steady_clock::now() < deadline) read_some(fd, 20ms, &closed);
  return closed;
}

// True while fd is open: nothing closes it within a short look.
bool still_open(int fd) { return !closed_within(fd, 100ms); }

// A completed handshake: the client handshake header, read back from the echo listener, so
// the guard has seen it (and marked the connection established) before the caller goes on.
void handshake(int fd) {
  send_all(fd, basp_header(1, 0));
  BOOST_REQUIRE_EQUAL(read_some(fd, 2s).size(), 32u);
}

// Polls the guard's stats until `done` holds (or 5 s pass); false if it never did.
template <class Done>
bool wait_for(const BaspGuard& guard, Done done) {
  for (int i = 0; i < 500; ++i) {
    if (done(guard.stats())) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

// Whatever this process writes to stderr (where the log goes) while it lives.
struct CapturedStderr {
  std::string path;
  int saved = -1;
  CapturedStderr() {
    char name[] = "/tmp/ce-guard-log-XXXXXX";
    int fd = mkstemp(name);
    BOOST_REQUIRE(fd >= 0);
    path = name;
    std::fflush(stderr);
    saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
  }
  std::string text() const {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  ~CapturedStderr() {
    std::fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    std::remove(path.c_str());
  }
};

// Warnings on while it lives (a test before may have left the level at error).
struct WarningsLogged {
  const bool were_off = !log_enabled(LogLevel::warning);
  WarningsLogged() {
    if (were_off) set_log_level(LogLevel::warning);
  }
  ~WarningsLogged() {
    if (were_off) set_log_level(LogLevel::error);
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(basp_guard)

BOOST_AUTO_TEST_CASE(basp_framed_bytes_pass_both_ways) {
  EchoServer echo;
  BaspGuard guard(options(echo.port));
  int fd = connect_to(guard.port());
  // A handshake header with a 10-byte payload, split across sends, then a heartbeat.
  const std::string stream = basp_header(1, 10) + "0123456789" + basp_header(6, 0);
  send_all(fd, stream.substr(0, 20));
  std::this_thread::sleep_for(20ms);
  send_all(fd, stream.substr(20));
  std::string back;
  for (int i = 0; i < 50 && back.size() < stream.size(); ++i) back += read_some(fd, 100ms);
  BOOST_TEST(back == stream);
  // Past the handshake timeout the established connection stays open.
  std::this_thread::sleep_for(400ms);
  send_all(fd, basp_header(6, 0));
  BOOST_TEST(read_some(fd, 1s).size() == 32u);
  close(fd);
  BOOST_TEST(guard.stats().accepted == 1u);
  BOOST_TEST(guard.stats().closed_bad_header == 0u);
}

BOOST_AUTO_TEST_CASE(bad_headers_are_closed_before_the_listener_sees_them) {
  EchoServer echo;
  BaspGuard guard(options(echo.port));
  const std::vector<std::string> bad = {
      basp_header(2, 0),                       // not a handshake first
      basp_header(1, 4000000000u),             // a 4 GB payload claim
      basp_header(1, 1001),                    // just over the cap
      basp_header(1, 0, 7),                    // nonzero padding
      basp_header(1, 0) + basp_header(9, 0),   // unknown operation later
      std::string(32, '\xff'),                 // junk
  };
  for (const auto& bytes : bad) {
    int fd = connect_to(guard.port());
    send_all(fd, bytes);
    bool closed = false;
    std::string back;
    for (int i = 0; i < 20 && !closed; ++i) back += read_some(fd, 100ms, &closed);
    BOOST_TEST(closed);
    // Only the valid prefix (the handshake of the last case) can have reached the listener.
    BOOST_TEST(back.size() <= 32u);
    close(fd);
  }
  BOOST_TEST(guard.stats().closed_bad_header == bad.size());
  BOOST_TEST(echo.bytes.load() <= 32u);
}

BOOST_AUTO_TEST_CASE(silent_connections_are_closed_after_the_handshake_timeout) {
  EchoServer echo;
  BaspGuard guard(options(echo.port));
  int fd = connect_to(guard.port());
  const auto start = std::chrono::steady_clock::now();
  bool closed = false;
  for (int i = 0; i < 30 && !closed; ++i) read_some(fd, 100ms, &closed);
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  BOOST_TEST(closed);
  BOOST_TEST(waited >= 0.25);  // not before the timeout; the read loop above caps the wait at 3 s
  BOOST_TEST(guard.stats().closed_handshake_timeout == 1u);
  close(fd);
}

BOOST_AUTO_TEST_CASE(connections_beyond_the_cap_are_refused) {
  EchoServer echo;
  auto o = options(echo.port);
  o.handshake_timeout = 10s;
  BaspGuard guard(o);
  std::vector<int> held;
  // Established (handshake seen), so that none of them can be evicted for the newcomer.
  for (int i = 0; i < 3; ++i) {
    held.push_back(connect_to(guard.port()));
    handshake(held.back());
  }
  int extra = connect_to(guard.port());
  bool closed = false;
  for (int i = 0; i < 50 && !closed; ++i) read_some(extra, 100ms, &closed);
  BOOST_TEST(closed);
  BOOST_TEST(guard.stats().refused_over_limit == 1u);
  BOOST_TEST(guard.stats().evicted_pre_handshake == 0u);
  for (int fd : held) BOOST_TEST(still_open(fd));
  close(extra);
  // A slot frees when a connection ends.
  close(held.back());
  held.pop_back();
  for (int i = 0; i < 500 && guard.stats().live > 2; ++i) std::this_thread::sleep_for(10ms);
  int again = connect_to(guard.port());
  send_all(again, basp_header(1, 0));
  BOOST_TEST(read_some(again, 1s).size() == 32u);
  close(again);
  for (int fd : held) close(fd);
}

BOOST_AUTO_TEST_CASE(connections_beyond_the_per_address_cap_are_refused_at_once) {
  EchoServer echo;
  auto o = options(echo.port);
  o.max_connections = 10;
  o.max_connections_per_address = 2;
  o.handshake_timeout = 10s;  // a refusal must not be the timeout
  BaspGuard guard(o);
  std::vector<int> flood = {connect_from("127.0.0.2", guard.port()), connect_from("127.0.0.2", guard.port())};
  BOOST_REQUIRE(wait_for(guard, [](const BaspGuard::Stats& s) { return s.live == 2; }));
  const auto start = std::chrono::steady_clock::now();
  int third = connect_from("127.0.0.2", guard.port());
  BOOST_TEST(closed_within(third, 2s));
  BOOST_TEST((std::chrono::steady_clock::now() - start < 1s));
  BOOST_TEST(guard.stats().refused_per_address == 1u);
  BOOST_TEST(guard.stats().refused_over_limit == 0u);
  BOOST_TEST(guard.stats().live == 2);
  close(third);
  // Another address is not held back by the first one's count, and is relayed.
  int other = connect_from("127.0.0.3", guard.port());
  handshake(other);
  BOOST_TEST(guard.stats().refused_per_address == 1u);
  // Silent connections count too: they are what a flood is made of.
  for (int fd : flood) BOOST_TEST(still_open(fd));
  // A slot of the address frees when one of its connections ends.
  close(flood.back());
  flood.pop_back();
  BOOST_REQUIRE(wait_for(guard, [](const BaspGuard::Stats& s) { return s.live == 2; }));
  int again = connect_from("127.0.0.2", guard.port());
  handshake(again);
  BOOST_TEST(guard.stats().refused_per_address == 1u);
  for (int fd : {other, again, flood[0]}) close(fd);
}

BOOST_AUTO_TEST_CASE(at_the_cap_a_newcomer_evicts_a_connection_without_handshake) {
  EchoServer echo;
  auto o = options(echo.port);
  o.max_connections = 3;
  o.handshake_timeout = 10s;  // so that only an eviction can free a slot in this test
  BaspGuard guard(o);
  int edge1 = connect_from("127.0.0.3", guard.port());
  handshake(edge1);
  int silent = connect_from("127.0.0.2", guard.port());
  int edge2 = connect_from("127.0.0.4", guard.port());
  handshake(edge2);
  BOOST_REQUIRE(wait_for(guard, [](const BaspGuard::Stats& s) { return s.live == 3; }));
  // The cap is full: the newcomer gets the silent connection's slot, not a refusal.
  int newcomer = connect_from("127.0.0.5", guard.port());
  handshake(newcomer);
  BOOST_TEST(closed_within(silent, 2s));
  BOOST_TEST(guard.stats().evicted_pre_handshake == 1u);
  BOOST_TEST(guard.stats().refused_over_limit == 0u);
  BOOST_TEST(guard.stats().live == 3);
  // Established connections are never evicted: with all three past their handshake, the next
  // newcomer is the one refused.
  int late = connect_from("127.0.0.6", guard.port());
  BOOST_TEST(closed_within(late, 2s));
  BOOST_TEST(guard.stats().refused_over_limit == 1u);
  BOOST_TEST(guard.stats().evicted_pre_handshake == 1u);
  for (int fd : {edge1, edge2, newcomer}) {
    BOOST_TEST(still_open(fd));
    send_all(fd, basp_header(6, 0));  // and still relayed
    BOOST_TEST(read_some(fd, 1s).size() == 32u);
  }
  for (int fd : {edge1, edge2, newcomer, silent, late}) close(fd);
}

BOOST_AUTO_TEST_CASE(eviction_takes_from_the_address_holding_most_connections_without_handshake) {
  EchoServer echo;
  auto o = options(echo.port);
  o.max_connections = 4;
  o.max_connections_per_address = 4;
  o.handshake_timeout = 10s;
  BaspGuard guard(o);
  // A lone edge still in its handshake is the oldest connection, yet the flooding address pays.
  int lone = connect_from("127.0.0.5", guard.port());
  BOOST_REQUIRE(wait_for(guard, [](const BaspGuard::Stats& s) { return s.live == 1; }));
  std::vector<int> flood;
  for (int i = 0; i < 3; ++i) {
    flood.push_back(connect_from("127.0.0.2", guard.port()));
    BOOST_REQUIRE(wait_for(guard, [i](const BaspGuard::Stats& s) { return s.live == i + 2; }));
  }
  // Two newcomers: each evicts the flood's oldest (it holds 3, then 2 waiting; the others 1).
  int newcomer1 = connect_from("127.0.0.3", guard.port());
  BOOST_REQUIRE(wait_for(guard, [](const BaspGuard::Stats& s) { return s.evicted_pre_handshake == 1u; }));
  int newcomer2 = connect_from("127.0.0.4", guard.port());
  BOOST_REQUIRE(wait_for(guard, [](const BaspGuard::Stats& s) { return s.evicted_pre_handshake == 2u; }));
  BOOST_TEST(closed_within(flood[0], 2s));
  BOOST_TEST(closed_within(flood[1], 2s));
  BOOST_TEST(still_open(flood[2]));
  BOOST_TEST(still_open(lone));
  // Now every address holds one connection without handshake: the oldest of all goes.
  int newcomer3 = connect_from("127.0.0.6", guard.port());
  BOOST_REQUIRE(wait_for(guard, [](const BaspGuard::Stats& s) { return s.evicted_pre_handshake == 3u; }));
  BOOST_TEST(closed_within(lone, 2s));
  for (int fd : {flood[2], newcomer1, newcomer2, newcomer3}) BOOST_TEST(still_open(fd));
  BOOST_TEST(guard.stats().refused_over_limit == 0u);
  for (int fd : {lone, flood[0], flood[1], flood[2], newcomer1, newcomer2, newcomer3}) close(fd);
}

BOOST_AUTO_TEST_CASE(junk_is_closed_at_once_not_at_the_handshake_timeout) {
  EchoServer echo;
  auto o = options(echo.port);
  o.handshake_timeout = 10s;
  BaspGuard guard(o);
  // Shorter than a header too: each field is checked as soon as its bytes are in.
  for (const std::string& junk : {std::string("GET / HTTP/1.1\r\nHost: x\r\n\r\n") + std::string(8, ' '),
                                  std::string(32, '\xff'), std::string(64, '\0'), std::string("GET "),
                                  std::string("\r\n"), std::string("\x01\x00\x07", 3)}) {
    int fd = connect_to(guard.port());
    const auto start = std::chrono::steady_clock::now();
    send_all(fd, junk);
    BOOST_TEST(closed_within(fd, 3s));
    BOOST_TEST((std::chrono::steady_clock::now() - start < 1s));
    close(fd);
  }
  BOOST_TEST(guard.stats().closed_bad_header == 6u);
  BOOST_TEST(guard.stats().closed_handshake_timeout == 0u);
  BOOST_TEST(echo.bytes.load() == 0u);  // not a byte of it reached the listener
}

BOOST_AUTO_TEST_CASE(a_flood_is_logged_once_a_second_per_address_not_once_per_connection) {
  EchoServer echo;
  auto o = options(echo.port);
  o.max_connections = 64;
  o.max_connections_per_address = 2;
  o.handshake_timeout = 10s;
  const int attempts = 200;
  uint64_t refused = 0;
  std::string log;
  {
    WarningsLogged warnings;
    CapturedStderr captured;
    {
      BaspGuard guard(o);
      std::vector<int> fds;
      for (int i = 0; i < attempts; ++i) fds.push_back(connect_from("127.0.0.2", guard.port()));
      BOOST_REQUIRE(wait_for(guard, [&](const BaspGuard::Stats& s) { return s.refused_per_address == attempts - 2u; }));
      refused = guard.stats().refused_per_address;
      std::this_thread::sleep_for(1600ms);  // past the second in which they came: its summary is written
      for (int fd : fds) close(fd);
    }
    log = captured.text();
  }
  BOOST_TEST_MESSAGE("guard log for " << attempts << " connections from one address:\n" << log);
  std::istringstream lines(log);
  int lines_about_the_address = 0;
  uint64_t logged = 0;
  const std::regex summary_count("(\\d+) refused \\(ce.listen.max-connections-per-address\\)");
  for (std::string line; std::getline(lines, line);) {
    if (line.find("127.0.0.2") == std::string::npos) continue;
    lines_about_the_address++;
    std::smatch m;
    if (std::regex_search(line, m, summary_count)) logged += std::stoull(m[1]);
    else if (line.find("ce.listen.max-connections-per-address") != std::string::npos) logged += 1;  // the first one
  }
  // The first refusal as it happened, then one summary a second (the flood took under 2 s).
  BOOST_TEST(lines_about_the_address >= 2);
  BOOST_TEST(lines_about_the_address <= 4);
  BOOST_TEST(logged == refused);  // every refusal is accounted for, none twice
}

BOOST_AUTO_TEST_CASE(a_taken_address_is_a_clear_error) {
  EchoServer echo;
  BaspGuard first(options(echo.port));
  auto o = options(echo.port);
  o.listen_port = first.port();
  BOOST_CHECK_EXCEPTION(BaspGuard{o}, std::runtime_error, [&](const std::runtime_error& e) {
    return std::string(e.what()).find(std::to_string(first.port())) != std::string::npos;
  });
  o.listen_host = "not-an-address";
  BOOST_CHECK_THROW(BaspGuard{o}, std::runtime_error);
}

BOOST_AUTO_TEST_SUITE_END()
