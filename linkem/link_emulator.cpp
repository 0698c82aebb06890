// The link emulator: profile parsing and the Boost.Asio proxy. See link_emulator.hpp for the
// model; everything network-related runs on Engine::thread, so the per-connection state needs
// no locking. Only the profile (mutex) and the counters and blackhole flag (atomics) are
// touched from other threads.
#include "linkem/link_emulator.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <deque>
#include <fstream>
#include <functional>
#include <future>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

namespace ce::linkem {

// ---------------------------------------------------------------------------------------
// Profiles

namespace {

constexpr double kMaxDelayMs = 3600.0 * 1000.0;  // one hour
constexpr double kMinBandwidthMbit = 0.001;      // 1 kbit/s
constexpr double kMaxBandwidthMbit = 1e6;        // 1 Tbit/s

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string format_number(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

// Splits "20ms" / "1.5 s" / "100mbit" into a non-negative finite number and a lower-case
// unit. `what` names the kind of value in messages ("duration", "bandwidth").
std::pair<double, std::string> split_quantity(const std::string& raw, const char* what,
                                              const char* example) {
  const std::string text = trim(raw);
  if (text.empty()) throw std::runtime_error(std::string("empty ") + what + " (e.g. " + example + ")");
  double value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end == text.data())
    throw std::runtime_error(std::string("bad ") + what + " '" + text + "': expected a number and a unit, e.g. " +
                             example);
  if (!std::isfinite(value))
    throw std::runtime_error(std::string("bad ") + what + " '" + text + "': not a finite number");
  if (value < 0) throw std::runtime_error(std::string("bad ") + what + " '" + text + "': must not be negative");
  std::string unit = lower(trim(std::string(end, text.data() + text.size())));
  return {value, unit};
}

}  // namespace

double parse_duration_ms(const std::string& text) {
  auto [value, unit] = split_quantity(text, "duration", "20ms");
  double ms;
  if (unit == "us")
    ms = value / 1000.0;
  else if (unit == "ms")
    ms = value;
  else if (unit == "s")
    ms = value * 1000.0;
  else if (unit.empty())
    throw std::runtime_error("duration '" + trim(text) + "' needs a unit: us, ms or s (e.g. 20ms)");
  else
    throw std::runtime_error("duration '" + trim(text) + "' has an unknown unit '" + unit +
                             "' (use us, ms or s, e.g. 20ms)");
  if (ms > kMaxDelayMs) throw std::runtime_error("duration '" + trim(text) + "' is longer than one hour");
  return ms;
}

double parse_bandwidth_mbit(const std::string& text) {
  if (lower(trim(text)) == "unlimited") return 0;
  auto [value, unit] = split_quantity(text, "bandwidth", "100mbit");
  double mbit;
  if (unit == "bit")
    mbit = value / 1e6;
  else if (unit == "kbit")
    mbit = value / 1e3;
  else if (unit == "mbit")
    mbit = value;
  else if (unit == "gbit")
    mbit = value * 1e3;
  else if (unit.empty())
    throw std::runtime_error("bandwidth '" + trim(text) +
                             "' needs a unit: bit, kbit, mbit or gbit (e.g. 100mbit), or 'unlimited'");
  else
    throw std::runtime_error("bandwidth '" + trim(text) + "' has an unknown unit '" + unit +
                             "' (use bit, kbit, mbit or gbit, e.g. 100mbit, or 'unlimited')");
  if (mbit != 0 && mbit < kMinBandwidthMbit)
    throw std::runtime_error("bandwidth '" + trim(text) + "' is below 1kbit (use 0 or 'unlimited' for no limit)");
  if (mbit > kMaxBandwidthMbit) throw std::runtime_error("bandwidth '" + trim(text) + "' is above 1000000mbit");
  return mbit;
}

std::string describe(const LinkProfile& p) {
  return (p.name.empty() ? std::string("(unnamed)") : p.name) + ": delay " + format_number(p.delay_ms) +
         "ms, jitter " + format_number(p.jitter_ms) + "ms, bandwidth " +
         (p.bandwidth_mbit > 0 ? format_number(p.bandwidth_mbit) + "mbit" : std::string("unlimited"));
}

void check_profile(const LinkProfile& p) {
  auto bad = [&](const std::string& what) {
    throw std::invalid_argument("link profile '" + p.name + "': " + what);
  };
  if (!(p.delay_ms >= 0 && p.delay_ms <= kMaxDelayMs)) bad("delay must be in 0..3600000 ms");
  if (!(p.jitter_ms >= 0 && p.jitter_ms <= kMaxDelayMs)) bad("jitter must be in 0..3600000 ms");
  if (!(p.bandwidth_mbit == 0 || (p.bandwidth_mbit >= kMinBandwidthMbit && p.bandwidth_mbit <= kMaxBandwidthMbit)))
    bad("bandwidth must be 0 (unlimited) or in 0.001..1000000 mbit");
}

LinkProfile load_profile(const std::string& ini_path) {
  std::ifstream in(ini_path);
  if (!in) throw std::runtime_error(ini_path + ": cannot open link profile");

  LinkProfile profile;
  {  // default name: the file name without directory and extension
    std::string base = ini_path.substr(ini_path.find_last_of('/') + 1);
    if (auto dot = base.rfind('.'); dot != std::string::npos && dot > 0) base = base.substr(0, dot);
    profile.name = base;
  }
  bool in_link = false, seen_link = false;
  std::map<std::string, int> seen;  // key -> line
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    const std::string where = ini_path + ":" + std::to_string(line_no) + ": ";
    // Strip a comment: ';' or '#' at the start or after whitespace, outside quotes.
    bool quoted = false;
    for (size_t i = 0; i < line.size(); ++i) {
      char c = line[i];
      if (c == '"' && (i == 0 || line[i - 1] != '\\')) quoted = !quoted;
      if (!quoted && (c == ';' || c == '#') && (i == 0 || std::isspace(static_cast<unsigned char>(line[i - 1])))) {
        line.resize(i);
        break;
      }
    }
    line = trim(line);
    if (line.empty()) continue;
    if (line.front() == '[') {
      if (line.back() != ']') throw std::runtime_error(where + "malformed section header '" + line + "'");
      std::string section = trim(line.substr(1, line.size() - 2));
      if (section != "link")
        throw std::runtime_error(where + "unknown section '[" + section + "]' (a link profile has only [link])");
      if (seen_link) throw std::runtime_error(where + "duplicate section [link]");
      seen_link = in_link = true;
      continue;
    }
    auto eq = line.find('=');
    if (eq == std::string::npos) throw std::runtime_error(where + "expected 'key = value', got '" + line + "'");
    std::string key = trim(line.substr(0, eq)), value = trim(line.substr(eq + 1));
    if (key.empty()) throw std::runtime_error(where + "missing key before '='");
    const std::string about = where + "key '" + key + "': ";
    if (!in_link) throw std::runtime_error(about + "appears before the [link] section");
    if (key != "name" && key != "delay" && key != "jitter" && key != "bandwidth")
      throw std::runtime_error(where + "unknown key '" + key +
                               "' in [link] (known keys: name, delay, jitter, bandwidth)");
    if (auto it = seen.find(key); it != seen.end())
      throw std::runtime_error(about + "set twice (first on line " + std::to_string(it->second) + ")");
    seen[key] = line_no;
    if (value.empty()) throw std::runtime_error(about + "empty value");
    try {
      if (key == "name") {
        if (value.front() == '"') {
          std::string out;
          size_t i = 1;
          for (; i < value.size() && value[i] != '"'; ++i) {
            if (value[i] == '\\' && i + 1 < value.size()) ++i;
            out += value[i];
          }
          if (i + 1 != value.size()) throw std::runtime_error("bad quoted string " + value);
          value = out;
        } else if (value.find_first_of(" \t\"") != std::string::npos) {
          throw std::runtime_error("a name with spaces must be quoted: " + value);
        }
        if (value.empty()) throw std::runtime_error("empty name");
        profile.name = value;
      } else if (key == "delay") {
        profile.delay_ms = parse_duration_ms(value);
      } else if (key == "jitter") {
        profile.jitter_ms = parse_duration_ms(value);
      } else {
        profile.bandwidth_mbit = parse_bandwidth_mbit(value);
      }
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(about + e.what());
    }
  }
  if (in.bad()) throw std::runtime_error(ini_path + ": read error");
  if (!seen_link) throw std::runtime_error(ini_path + ": no [link] section");
  check_profile(profile);  // the parsers already keep every value in range
  return profile;
}

// ---------------------------------------------------------------------------------------
// The proxy

namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using boost::system::error_code;

constexpr std::size_t kReadSize = 64 * 1024;
constexpr std::size_t kQueueLimit = std::size_t(64) << 20;  // stop reading at this many queued bytes
constexpr std::size_t kResumeBelow = kQueueLimit / 2;      // ... and resume below this

// Every socket of the emulator is close-on-exec from its creation (SOCK_CLOEXEC; Asio opens and
// accepts without it, and setting FD_CLOEXEC afterwards leaves a window): the emulator runs
// inside processes that start others (the integration tests fork cloud nodes while their
// emulators run). A child holding a copy keeps a connection open after the emulator closed it,
// so its peer sees neither FIN nor RST, unlike on a real link: an edge behind a lost or refused
// upstream waited forever for a cloud that had come back, and cut() reset nothing.
template <class Socket, class Protocol>
void open_cloexec(Socket& socket, const Protocol& protocol, error_code& ec) {
  const int fd = ::socket(protocol.family(), protocol.type() | SOCK_CLOEXEC, protocol.protocol());
  if (fd < 0) {
    ec = error_code(errno, boost::system::system_category());
    return;
  }
  socket.assign(protocol, fd, ec);
  if (ec) ::close(fd);
}

Clock::duration from_ms(double ms) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::milli>(ms));
}

struct Chunk {
  std::vector<char> data;
  Clock::time_point release;
};

// One direction of a connection: reads `from`, queues, writes `to` at the release times.
struct Direction {
  Direction(asio::io_context& io, tcp::socket& from_socket, tcp::socket& to_socket)
      : from(from_socket), to(to_socket), timer(io) {}
  tcp::socket& from;
  tcp::socket& to;
  std::unique_ptr<char[]> buffer = std::make_unique<char[]>(kReadSize);
  std::deque<Chunk> queue;
  std::size_t queued = 0;
  std::optional<std::vector<char>> held;  // read while the blackhole was on, not yet stamped
  bool reading = false;                   // an async_read_some is pending
  bool paused = false;                    // backpressure: queue above kQueueLimit
  bool writing = false;                   // an async_write is pending
  bool waiting = false;                   // the timer waits for the front chunk's release
  bool eof = false;                       // `from` sent FIN
  bool fin_sent = false;                  // ... and it was passed on to `to`
  asio::steady_timer timer;
  Clock::time_point link_free{};     // when the link finishes serializing the last chunk
  Clock::time_point last_release{};  // release time of the last chunk (order is kept)
};

struct Connection;

// The emulator's state (LinkEmulator::Impl is this; the name is private to LinkEmulator).
struct Engine {
  asio::io_context io;  // first member: destroyed last, after everything that uses it
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  tcp::acceptor acceptor{io};
  asio::steady_timer accept_retry{io};
  tcp::resolver::results_type targets;
  std::set<std::shared_ptr<Connection>> connections;  // io thread only
  bool stopping = false;                              // io thread only
  std::mt19937_64 rng{std::random_device{}()};        // io thread only

  mutable std::mutex profile_mutex;
  LinkProfile profile;
  std::atomic<bool> blackhole{false};
  std::atomic<uint64_t> forwarded{0};
  std::atomic<uint64_t> queued{0};
  std::atomic<std::size_t> open{0};
  uint16_t port = 0;
  std::thread thread;

  LinkProfile current_profile() const {
    std::lock_guard<std::mutex> lock(profile_mutex);
    return profile;
  }
  void accept();
  void remove(const std::shared_ptr<Connection>& c) {
    connections.erase(c);
    open = connections.size();
  }
  // Runs fn on the io thread and waits for it.
  void run_sync(const std::function<void()>& fn) {
    std::promise<void> done;
    auto finished = done.get_future();
    asio::post(io, [&] {
      fn();
      done.set_value();
    });
    finished.wait();
  }
};

struct Connection : std::enable_shared_from_this<Connection> {
  Connection(Engine& owner, tcp::socket accepted)
      : impl(owner),
        client(std::move(accepted)),
        server(owner.io),
        up(owner.io, client, server),
        down(owner.io, server, client) {}

  Engine& impl;
  tcp::socket client;  // the accepted side
  tcp::socket server;  // towards the target
  Direction up;        // client -> server
  Direction down;      // server -> client
  bool closed = false;

  void connect() {
    error_code ignored;
    client.set_option(tcp::no_delay(true), ignored);
    connect_to(impl.targets.begin());
  }

  // Tries the target's addresses in turn, as asio::async_connect does, but each on a socket
  // opened close-on-exec (see open_cloexec); closes the client when none takes the connection.
  void connect_to(tcp::resolver::results_type::const_iterator target) {
    if (closed) return;
    if (target == impl.targets.end()) {
      close(false);
      return;
    }
    const tcp::endpoint endpoint = target->endpoint();
    error_code ec;
    server.close(ec);
    open_cloexec(server, endpoint.protocol(), ec);
    if (ec) {
      connect_to(std::next(target));
      return;
    }
    auto self = shared_from_this();
    server.async_connect(endpoint, [this, self, target](const error_code& ec) {
      if (closed) return;
      if (ec) {
        connect_to(std::next(target));
        return;
      }
      error_code ignored;
      server.set_option(tcp::no_delay(true), ignored);
      read(up);
      read(down);
    });
  }

  void read(Direction& d) {
    if (closed || d.reading || d.paused || d.eof || d.held || impl.blackhole) return;
    d.reading = true;
    auto self = shared_from_this();
    d.from.async_read_some(asio::buffer(d.buffer.get(), kReadSize),
                           [this, self, &d](const error_code& ec, std::size_t n) { on_read(d, ec, n); });
  }

  void on_read(Direction& d, const error_code& ec, std::size_t n) {
    d.reading = false;
    if (closed) return;
    if (ec == asio::error::eof) {
      d.eof = true;  // passed on as a FIN once the queue has drained
      pump(d);
      return;
    }
    if (ec) {
      close(false);
      return;
    }
    std::vector<char> data(d.buffer.get(), d.buffer.get() + n);
    if (impl.blackhole) {
      d.held = std::move(data);  // stamped when the blackhole is lifted; reading stops till then
      return;
    }
    enqueue(d, std::move(data), Clock::now());
    read(d);
    pump(d);
  }

  // Gives a chunk read at `now` its release time (see the model in the header).
  void enqueue(Direction& d, std::vector<char> data, Clock::time_point now) {
    const LinkProfile p = impl.current_profile();
    const std::size_t n = data.size();
    Clock::time_point sent = now;  // when the last bit has left the sender
    if (p.bandwidth_mbit > 0) {
      const Clock::time_point start = std::max(now, d.link_free);
      sent = start + from_ms(double(n) * 8.0 / (p.bandwidth_mbit * 1e6) * 1e3);
      d.link_free = sent;
    }
    double extra_ms = p.delay_ms;
    if (p.jitter_ms > 0) extra_ms += std::uniform_real_distribution<double>(0.0, p.jitter_ms)(impl.rng);
    const Clock::time_point release = std::max(sent + from_ms(extra_ms), d.last_release);
    d.last_release = release;
    d.queue.push_back({std::move(data), release});
    d.queued += n;
    impl.queued += n;
    if (d.queued >= kQueueLimit) d.paused = true;
  }

  // Sends the front chunk when it is due (or the FIN once everything before it is out).
  void pump(Direction& d) {
    if (closed || d.writing || d.waiting || impl.blackhole) return;
    auto self = shared_from_this();
    if (d.queue.empty()) {
      if (d.eof && !d.fin_sent) {
        error_code ignored;
        d.to.shutdown(tcp::socket::shutdown_send, ignored);
        d.fin_sent = true;
        if (up.fin_sent && down.fin_sent) close(false);
      }
      return;
    }
    Chunk& front = d.queue.front();
    if (front.release > Clock::now()) {
      d.waiting = true;
      d.timer.expires_at(front.release);
      d.timer.async_wait([this, self, &d](const error_code& ec) {
        d.waiting = false;
        if (ec || closed) return;
        pump(d);
      });
      return;
    }
    d.writing = true;
    asio::async_write(d.to, asio::buffer(front.data), [this, self, &d](const error_code& ec, std::size_t n) {
      d.writing = false;
      if (closed) return;
      if (ec) {
        close(false);
        return;
      }
      impl.forwarded += n;
      d.queued -= n;
      impl.queued -= n;
      d.queue.pop_front();
      if (d.paused && d.queued < kResumeBelow) {
        d.paused = false;
        read(d);
      }
      pump(d);
    });
  }

  // After the blackhole is lifted.
  void resume() {
    for (Direction* d : {&up, &down}) {
      if (closed || impl.blackhole) return;
      if (d->held) {
        std::vector<char> data = std::move(*d->held);
        d->held.reset();
        enqueue(*d, std::move(data), Clock::now());
      }
      read(*d);
      pump(*d);
    }
  }

  // reset: SO_LINGER 0, so the peers see ECONNRESET rather than an orderly EOF.
  void close(bool reset) {
    if (closed) return;
    closed = true;
    auto self = shared_from_this();  // keep alive while leaving the set
    for (tcp::socket* s : {&client, &server}) {
      error_code ignored;
      if (reset && s->is_open()) s->set_option(asio::socket_base::linger(true, 0), ignored);
      s->close(ignored);
    }
    for (Direction* d : {&up, &down}) {
      d->timer.cancel();
      impl.queued -= d->queued;
      d->queued = 0;
      // The chunks stay until the Connection dies: a cancelled write may still refer to one.
    }
    impl.remove(self);
  }
};

// Waits for a connection and takes it with accept4(SOCK_CLOEXEC) (see open_cloexec); the
// listener is non-blocking, so a client gone before it was taken costs only another wait.
void Engine::accept() {
  acceptor.async_wait(tcp::acceptor::wait_read, [this](error_code ec) {
    if (stopping || ec == asio::error::operation_aborted) return;
    tcp::socket socket(io);
    if (!ec) {
      const int fd = ::accept4(acceptor.native_handle(), nullptr, nullptr, SOCK_CLOEXEC);
      const int err = errno;
      if (fd < 0 && (err == EAGAIN || err == EWOULDBLOCK || err == ECONNABORTED || err == EINTR)) {
        accept();
        return;
      }
      if (fd < 0) {
        ec = error_code(err, boost::system::system_category());
      } else {
        socket.assign(tcp::v4(), fd, ec);
        if (ec) ::close(fd);
      }
    }
    if (ec) {  // e.g. out of file descriptors: try again shortly instead of spinning
      accept_retry.expires_after(std::chrono::milliseconds(100));
      accept_retry.async_wait([this](const error_code& e) {
        if (!e && !stopping) accept();
      });
      return;
    }
    auto c = std::make_shared<Connection>(*this, std::move(socket));
    connections.insert(c);
    open = connections.size();
    c->connect();
    accept();
  });
}

}  // namespace

struct LinkEmulator::Impl : Engine {};

LinkEmulator::LinkEmulator(LinkProfile profile, std::string target_host, uint16_t target_port,
                           uint16_t listen_port)
    : impl_(std::make_unique<Impl>()) {
  check_profile(profile);
  impl_->profile = std::move(profile);
  try {
    tcp::resolver resolver(impl_->io);
    impl_->targets = resolver.resolve(target_host, std::to_string(target_port));
  } catch (const boost::system::system_error& e) {
    throw std::runtime_error("link emulator: cannot resolve target " + target_host + ":" +
                             std::to_string(target_port) + ": " + e.code().message());
  }
  try {
    const tcp::endpoint endpoint(asio::ip::make_address("127.0.0.1"), listen_port);
    error_code ec;
    open_cloexec(impl_->acceptor, endpoint.protocol(), ec);
    if (ec) throw boost::system::system_error(ec);
    impl_->acceptor.non_blocking(true);  // accept() takes connections with accept4
    impl_->acceptor.set_option(asio::socket_base::reuse_address(true));
    impl_->acceptor.bind(endpoint);
    impl_->acceptor.listen();
    impl_->port = impl_->acceptor.local_endpoint().port();
  } catch (const boost::system::system_error& e) {
    throw std::runtime_error("link emulator: cannot listen on 127.0.0.1:" + std::to_string(listen_port) + ": " +
                             e.code().message());
  }
  impl_->work.emplace(impl_->io.get_executor());
  impl_->accept();
  Impl* impl = impl_.get();
  impl_->thread = std::thread([impl] {
    for (;;) {
      try {
        impl->io.run();
        return;
      } catch (const std::exception& e) {  // a handler threw (e.g. bad_alloc): report, go on
        std::cerr << "link emulator: " << e.what() << "\n";
      }
    }
  });
}

LinkEmulator::~LinkEmulator() {
  Impl* impl = impl_.get();
  asio::post(impl->io, [impl] {
    impl->stopping = true;
    error_code ignored;
    impl->acceptor.close(ignored);
    impl->accept_retry.cancel();
    auto all = impl->connections;
    for (auto& c : all) c->close(false);
    impl->work.reset();
    impl->io.stop();  // handlers still queued are destroyed with the io_context
  });
  impl->thread.join();
}

uint16_t LinkEmulator::port() const { return impl_->port; }

void LinkEmulator::set_profile(const LinkProfile& profile) {
  check_profile(profile);
  std::lock_guard<std::mutex> lock(impl_->profile_mutex);
  impl_->profile = profile;
}

LinkProfile LinkEmulator::profile() const { return impl_->current_profile(); }

void LinkEmulator::blackhole(bool on) {
  const bool was = impl_->blackhole.exchange(on);
  if (was && !on) {
    impl_->run_sync([impl = impl_.get()] {
      auto all = impl->connections;
      for (auto& c : all) c->resume();
    });
  }
}

bool LinkEmulator::blackholed() const { return impl_->blackhole; }

void LinkEmulator::cut() {
  impl_->run_sync([impl = impl_.get()] {
    auto all = impl->connections;
    for (auto& c : all) c->close(true);
  });
}

uint64_t LinkEmulator::bytes_forwarded() const { return impl_->forwarded; }
std::size_t LinkEmulator::connections() const { return impl_->open; }
uint64_t LinkEmulator::bytes_queued() const { return impl_->queued; }

}  // namespace ce::linkem
