// The cloud's front door relay: bytes pass both ways, and the connection cap, the handshake
// timeout and the BASP header checks close what they should, before it reaches the listener.
#include <boost/test/unit_test.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

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
  for (int i = 0; i < 3; ++i) {
    held.push_back(connect_to(guard.port()));
    send_all(held.back(), basp_header(1, 0));
  }
  for (int i = 0; i < 500 && guard.stats().live < 3; ++i) std::this_thread::sleep_for(10ms);
  int extra = connect_to(guard.port());
  bool closed = false;
  for (int i = 0; i < 50 && !closed; ++i) read_some(extra, 100ms, &closed);
  BOOST_TEST(closed);
  BOOST_TEST(guard.stats().refused_over_limit == 1u);
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
