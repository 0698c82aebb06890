// The link emulator against an in-process echo or sink server on loopback: latency,
// throughput, blackhole, cut (also beside a child process), ordering under jitter,
// backpressure, profile parsing.
//
// Timing tolerances (the tests run beside other work on a small machine):
//   round trip: the mean of 10 round trips is within 10% of the expected 2 x (delay +
//     serialization) plus 1 ms for thread wake-ups; no single round trip is early.
//   throughput: within 10% of the configured bandwidth.
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio.hpp>
#include <boost/test/unit_test.hpp>

#include "linkem/link_emulator.hpp"

namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using ce::linkem::LinkEmulator;
using ce::linkem::LinkProfile;
using ce::linkem::load_profile;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

LinkProfile make_profile(const std::string& name, double delay_ms, double jitter_ms, double bandwidth_mbit) {
  LinkProfile p;
  p.name = name;
  p.delay_ms = delay_ms;
  p.jitter_ms = jitter_ms;
  p.bandwidth_mbit = bandwidth_mbit;
  return p;
}

// A loopback server on its own thread. echo: sends back what it reads. sink: counts bytes
// and the time of the last one, and signals the first connection's EOF.
class TestServer {
 public:
  enum class Mode { echo, sink };

  explicit TestServer(Mode mode)
      : mode_(mode), acceptor_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)) {
    port_ = acceptor_.local_endpoint().port();
    accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~TestServer() {
    io_.stop();
    thread_.join();
  }
  uint16_t port() const { return port_; }

  // sink: waits for the first connection's EOF.
  bool wait_eof(std::chrono::milliseconds timeout) {
    return eof_.get_future().wait_for(timeout) == std::future_status::ready;
  }
  uint64_t received() const { return received_; }
  Clock::time_point last_byte() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return last_byte_;
  }

 private:
  struct Session : std::enable_shared_from_this<Session> {
    Session(TestServer& s, tcp::socket sock) : server(s), socket(std::move(sock)) {}
    TestServer& server;
    tcp::socket socket;
    std::array<char, 65536> buffer{};

    void read() {
      auto self = shared_from_this();
      socket.async_read_some(asio::buffer(buffer), [this, self](const boost::system::error_code& ec, size_t n) {
        if (ec) {
          if (server.mode_ == Mode::sink && !server.eof_set_.exchange(true)) server.eof_.set_value();
          return;
        }
        if (server.mode_ == Mode::sink) {
          {
            std::lock_guard<std::mutex> lock(server.mutex_);
            server.last_byte_ = Clock::now();
          }
          server.received_ += n;
          read();
          return;
        }
        asio::async_write(socket, asio::buffer(buffer.data(), n),
                          [this, self](const boost::system::error_code& e, size_t) {
                            if (!e) read();
                          });
      });
    }
  };

  void accept() {
    acceptor_.async_accept([this](const boost::system::error_code& ec, tcp::socket socket) {
      if (ec) return;
      socket.set_option(tcp::no_delay(true));
      std::make_shared<Session>(*this, std::move(socket))->read();
      accept();
    });
  }

  Mode mode_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  uint16_t port_ = 0;
  std::thread thread_;
  std::promise<void> eof_;
  std::atomic<bool> eof_set_{false};
  std::atomic<uint64_t> received_{0};
  mutable std::mutex mutex_;
  Clock::time_point last_byte_{};
};

tcp::socket connect_to(asio::io_context& io, uint16_t port) {
  tcp::socket s(io);
  s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  s.set_option(tcp::no_delay(true));
  return s;
}

// True if the socket becomes readable (data, EOF or an error) within timeout_ms.
bool readable(tcp::socket& s, int timeout_ms) {
  pollfd p{s.native_handle(), POLLIN, 0};
  return ::poll(&p, 1, timeout_ms) > 0;
}

// Reads exactly n bytes; fails the test case on a timeout or an error.
std::string read_exact(tcp::socket& s, size_t n, int timeout_ms = 3000) {
  std::string out;
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  char buffer[65536];
  while (out.size() < n) {
    const int left = static_cast<int>(std::max(0.0, ms_between(Clock::now(), deadline)));
    BOOST_REQUIRE_MESSAGE(left > 0 && readable(s, left), "timed out after " << out.size() << " of " << n << " bytes");
    boost::system::error_code ec;
    size_t got = s.read_some(asio::buffer(buffer, std::min(sizeof buffer, n - out.size())), ec);
    BOOST_REQUIRE_MESSAGE(!ec, "read failed: " << ec.message());
    out.append(buffer, got);
  }
  return out;
}

void round_trip(tcp::socket& s, const std::string& message) {
  asio::write(s, asio::buffer(message));
  BOOST_REQUIRE(read_exact(s, message.size()) == message);
}

// Writes profile files into a fresh temporary folder.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() /
           ("ce-linkem-test-" + std::to_string(::getpid()) + "-" +
            std::to_string(Clock::now().time_since_epoch().count()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string write(const std::string& name, const std::string& text) const {
    auto file = (path / name).string();
    std::ofstream(file) << text;
    return file;
  }
};

}  // namespace

BOOST_AUTO_TEST_SUITE(linkem)

BOOST_AUTO_TEST_CASE(round_trip_is_twice_the_delay) {
  TestServer echo(TestServer::Mode::echo);
  const LinkProfile wan = load_profile(CE_SOURCE_DIR "/bench/links/wan.ini");  // 20 ms, 100 mbit
  LinkEmulator emu(wan, "127.0.0.1", echo.port());
  asio::io_context io;
  auto s = connect_to(io, emu.port());
  std::string message(100, 'x');
  round_trip(s, message);  // not measured: includes the emulator's connect to the target

  const int rounds = 10;
  double sum = 0, lo = 1e9, hi = 0;
  for (int i = 0; i < rounds; ++i) {
    message[0] = static_cast<char>('a' + i);
    const auto start = Clock::now();
    round_trip(s, message);
    const double rtt = ms_between(start, Clock::now());
    sum += rtt;
    lo = std::min(lo, rtt);
    hi = std::max(hi, rtt);
  }
  const double mean = sum / rounds;
  // One way: delay + 800 bits at 100 Mbit/s (0.008 ms); twice for the echo.
  const double expected = 2 * (wan.delay_ms + 100 * 8 / (wan.bandwidth_mbit * 1e3));
  BOOST_TEST_MESSAGE("round trip of 100 bytes through " << ce::linkem::describe(wan) << ": mean " << mean
                                                         << " ms (min " << lo << ", max " << hi << "), expected "
                                                         << expected << " ms");
  // Never early. How close to the profile it runs is measured by the benchmark
  // (scripts/bench-linkem -> docs/bench/linkem.md), not bounded here: this machine's timer and
  // scheduler noise are not the emulator's.
  BOOST_TEST(lo >= expected - 0.01);
}

BOOST_AUTO_TEST_CASE(bulk_transfer_runs_at_the_bandwidth) {
  TestServer sink(TestServer::Mode::sink);
  LinkEmulator emu(make_profile("50mbit", 0, 0, 50), "127.0.0.1", sink.port());
  asio::io_context io;
  auto s = connect_to(io, emu.port());
  const std::vector<char> data(4'000'000, 'z');  // 4 MB = 32 Mbit: 0.64 s at 50 Mbit/s
  const auto start = Clock::now();
  asio::write(s, asio::buffer(data));
  s.shutdown(tcp::socket::shutdown_send);
  BOOST_REQUIRE_MESSAGE(sink.wait_eof(std::chrono::seconds(5)), "the sink did not see EOF");
  BOOST_REQUIRE_EQUAL(sink.received(), data.size());
  const double seconds = ms_between(start, sink.last_byte()) / 1e3;
  const double mbit = data.size() * 8 / seconds / 1e6;
  BOOST_TEST_MESSAGE("4 MB through 50 mbit: " << seconds << " s, " << mbit << " Mbit/s");
  BOOST_TEST(mbit <= 50 * 1.01);  // never faster than the profile (its accuracy: scripts/bench-linkem)
  BOOST_TEST(emu.bytes_forwarded() == data.size());
}

BOOST_AUTO_TEST_CASE(blackhole_holds_bytes_until_lifted) {
  TestServer echo(TestServer::Mode::echo);
  LinkEmulator emu(make_profile("5ms", 5, 0, 0), "127.0.0.1", echo.port());
  asio::io_context io;
  auto s = connect_to(io, emu.port());
  round_trip(s, "hello");

  emu.blackhole(true);
  BOOST_TEST(emu.blackholed());
  asio::write(s, asio::buffer(std::string("held!")));
  BOOST_TEST(!readable(s, 200), "a message sent into the blackhole came back within 200 ms");
  BOOST_TEST(emu.connections() == 1u);  // the connection stays open

  emu.blackhole(false);
  const auto lifted = Clock::now();
  BOOST_TEST(read_exact(s, 5, 2000) == "held!");  // held, not dropped: delivered after lifting
  BOOST_TEST_MESSAGE("held message arrived " << ms_between(lifted, Clock::now()) << " ms after lifting");
  round_trip(s, "after");
}

// The client sees the end of its connection within 1 s of `what`: end of stream or a reset.
static void expect_closed(tcp::socket& s, const std::string& what) {
  BOOST_REQUIRE_MESSAGE(readable(s, 1000), "no close seen within 1 s of " << what);
  char c;
  boost::system::error_code ec;
  s.read_some(asio::buffer(&c, 1), ec);
  BOOST_TEST((ec == asio::error::eof || ec == asio::error::connection_reset), "read after " << what << ": " << ec.message());
}

BOOST_AUTO_TEST_CASE(cut_closes_the_connection) {
  TestServer echo(TestServer::Mode::echo);
  LinkEmulator emu(make_profile("1ms", 1, 0, 0), "127.0.0.1", echo.port());
  asio::io_context io;
  auto s = connect_to(io, emu.port());
  round_trip(s, "ping");
  BOOST_REQUIRE_EQUAL(emu.connections(), 1u);

  emu.cut();
  BOOST_TEST(emu.connections() == 0u);
  expect_closed(s, "cut()");

  auto again = connect_to(io, emu.port());  // the listener survives a cut
  round_trip(again, "again");
}

// The integration tests fork nodes while their emulators run: a child must hold none of the
// emulator's sockets, or a connection the emulator closes stays open and its peer never sees
// the end (an edge then waited forever on a link to a cloud that had gone and come back).
BOOST_AUTO_TEST_CASE(cut_closes_the_connection_while_a_child_process_runs) {
  TestServer echo(TestServer::Mode::echo);
  LinkEmulator emu(make_profile("1ms", 1, 0, 0), "127.0.0.1", echo.port());
  asio::io_context io;
  auto s = connect_to(io, emu.port());
  round_trip(s, "ping");

  // Started while the connection is open; it inherits whatever is not close-on-exec.
  pid_t child = -1;
  char sleep_path[] = "/bin/sleep", seconds[] = "30";
  char* argv[] = {sleep_path, seconds, nullptr};
  BOOST_REQUIRE_EQUAL(::posix_spawn(&child, sleep_path, nullptr, nullptr, argv, environ), 0);
  struct Reap {
    pid_t pid;
    ~Reap() {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  } reap{child};

  emu.cut();
  expect_closed(s, "cut() while a child process runs");
}

BOOST_AUTO_TEST_CASE(jitter_keeps_order) {
  TestServer echo(TestServer::Mode::echo);
  // 1 ms between sends, up to 15 ms of jitter per direction: without the ordering rule
  // most neighbouring messages would overtake each other.
  LinkEmulator emu(make_profile("jittery", 2, 15, 0), "127.0.0.1", echo.port());
  asio::io_context io;
  auto s = connect_to(io, emu.port());
  round_trip(s, "warm");

  constexpr int n = 100;
  std::vector<Clock::time_point> sent(n), arrived(n);
  std::thread sender([&] {
    for (uint32_t i = 0; i < n; ++i) {
      sent[i] = Clock::now();
      asio::write(s, asio::buffer(&i, sizeof i));
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  std::vector<uint32_t> order;
  std::string stream;
  try {
    for (int i = 0; i < n; ++i) {
      stream = read_exact(s, sizeof(uint32_t), 5000);
      arrived[i] = Clock::now();
      uint32_t v;
      std::memcpy(&v, stream.data(), sizeof v);
      order.push_back(v);
    }
  } catch (...) {
    sender.join();
    throw;
  }
  sender.join();
  std::vector<uint32_t> expected(n);
  for (int i = 0; i < n; ++i) expected[i] = static_cast<uint32_t>(i);
  BOOST_TEST(order == expected, boost::test_tools::per_element());
  double lo = 1e9, hi = 0;
  for (int i = 0; i < n; ++i) {
    const double latency = ms_between(sent[i], arrived[i]);
    lo = std::min(lo, latency);
    hi = std::max(hi, latency);
  }
  BOOST_TEST_MESSAGE("round trips under 2 ms + [0, 15] ms jitter each way: " << lo << " .. " << hi << " ms");
  BOOST_TEST(lo >= 4.0 - 0.01);  // twice the fixed delay
  BOOST_TEST(hi - lo >= 3.0);    // the jitter is in effect
}

BOOST_AUTO_TEST_CASE(backpressure_bounds_the_queue) {
  TestServer sink(TestServer::Mode::sink);
  LinkEmulator emu(make_profile("slow", 0, 0, 1), "127.0.0.1", sink.port());  // 1 Mbit/s
  asio::io_context io;
  auto s = connect_to(io, emu.port());
  constexpr uint64_t total = uint64_t(100) << 20;  // more than 64 MiB + the kernel buffers
  std::atomic<uint64_t> written{0};
  std::atomic<bool> writer_done{false};
  std::thread writer([&] {
    const std::vector<char> block(1 << 20, 'b');
    boost::system::error_code ec;
    while (!ec && written < total) {
      asio::write(s, asio::buffer(block), ec);
      if (!ec) written += block.size();
    }
    writer_done = true;
  });
  const uint64_t limit = uint64_t(64) << 20, read_size = 64 << 10;
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  while (emu.bytes_queued() < limit && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const uint64_t reached = emu.bytes_queued();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const uint64_t later = emu.bytes_queued();
  const bool blocked = !writer_done;
  const uint64_t accepted = written;
  BOOST_TEST_MESSAGE("queued " << reached << " then " << later << " bytes; the sender had written " << accepted);
  emu.cut();  // unblocks the writer with a reset
  writer.join();
  BOOST_TEST(reached >= limit);
  BOOST_TEST(later <= limit + read_size);
  BOOST_TEST(blocked, "the sender was never held back");
  BOOST_TEST(emu.bytes_queued() == 0u);
}

BOOST_AUTO_TEST_CASE(load_profile_reads_the_format) {
  TempDir dir;
  auto p = load_profile(dir.write("custom.ini",
                                  "; a comment\n# another\n[link]\n"
                                  "name = \"my link\" ; trailing comment\n"
                                  "delay = 1.5s\njitter=250us  # trailing\nbandwidth = 512kbit\n"));
  BOOST_TEST(p.name == "my link");
  BOOST_TEST(p.delay_ms == 1500.0);
  BOOST_TEST(p.jitter_ms == 0.25);
  BOOST_TEST(p.bandwidth_mbit == 0.512);
  auto defaults = load_profile(dir.write("bare.ini", "[link]\n"));
  BOOST_TEST(defaults.name == "bare");
  BOOST_TEST(defaults.delay_ms == 0.0);
  BOOST_TEST(defaults.bandwidth_mbit == 0.0);

  struct Shipped {
    const char* file;
    double delay, jitter, bandwidth;
  };
  for (auto& e : {Shipped{"loopback", 0, 0, 0}, Shipped{"lan", 1, 0, 1000}, Shipped{"wan", 20, 0, 100},
                  Shipped{"mobile", 50, 5, 10}}) {
    auto shipped = load_profile(std::string(CE_SOURCE_DIR "/bench/links/") + e.file + ".ini");
    BOOST_TEST(shipped.name == e.file);
    BOOST_TEST(shipped.delay_ms == e.delay);
    BOOST_TEST(shipped.jitter_ms == e.jitter);
    BOOST_TEST(shipped.bandwidth_mbit == e.bandwidth);
  }
  BOOST_TEST(ce::linkem::parse_duration_ms("20ms") == 20.0);
  BOOST_TEST(ce::linkem::parse_bandwidth_mbit("1gbit") == 1000.0);
  BOOST_TEST(ce::linkem::parse_bandwidth_mbit("unlimited") == 0.0);
  BOOST_CHECK_THROW(ce::linkem::parse_duration_ms("20"), std::runtime_error);
}

BOOST_AUTO_TEST_CASE(load_profile_errors_name_the_key) {
  TempDir dir;
  int count = 0;
  auto expect_error = [&](const std::string& text, const std::vector<std::string>& needles) {
    const auto file = dir.write("bad" + std::to_string(++count) + ".ini", text);
    try {
      load_profile(file);
      BOOST_ERROR("no error for:\n" << text);
    } catch (const std::runtime_error& e) {
      const std::string message = e.what();
      for (auto needle : needles) {
        if (needle.rfind(":", 0) == 0) needle = file + needle;  // ":3:" means FILE:3:
        BOOST_TEST(message.find(needle) != std::string::npos, "'" << needle << "' missing in: " << message);
      }
    }
  };
  expect_error("[link]\nname = x\ndelya = 20ms\n", {":3:", "unknown key 'delya'"});
  expect_error("[link]\ndelay = 20parsecs\n", {":2:", "key 'delay'", "parsecs"});
  expect_error("[link]\nbandwidth = 100\n", {":2:", "key 'bandwidth'", "needs a unit"});
  expect_error("[link]\nbandwidth = 100mbps\n", {":2:", "key 'bandwidth'", "mbps"});
  expect_error("[link]\njitter = -1ms\n", {":2:", "key 'jitter'", "negative"});
  expect_error("[link]\ndelay = fast\n", {":2:", "key 'delay'", "fast"});
  expect_error("[link]\ndelay = 1ms\ndelay = 2ms\n", {":3:", "key 'delay'", "twice"});
  expect_error("delay = 1ms\n[link]\n", {":1:", "key 'delay'", "[link]"});
  expect_error("[network]\n", {":1:", "[network]"});
  expect_error("; nothing\n", {"no [link] section"});
  expect_error("[link]\nname = two words\n", {":2:", "key 'name'"});
  BOOST_CHECK_THROW(load_profile((dir.path / "missing.ini").string()), std::runtime_error);
}

BOOST_AUTO_TEST_SUITE_END()
