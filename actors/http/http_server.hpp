#pragma once
// The HTTP API's server: cpp-httplib's request parsing and routing, with the connections' lifetime
// in our hands, so that slow or hostile clients cannot starve it.
//
// Why not httplib's own: Debian's cpp-httplib 0.11.4 bounds each recv() (set_read_timeout) but not
// a request as a whole, so a client trickling a byte every few seconds holds a worker for ever;
// each connection takes a worker of a fixed ThreadPool before a byte is read, so 40 stalled
// connections leave /health waiting in the pool's queue; it listens with a backlog of 5; and it has
// no per-client limit. Its hooks do not reach far enough: the TaskQueue gets an opaque closure (it
// cannot tell which socket a worker is stuck on), and set_socket_options only sees the listening
// socket. But Server::process_and_close_socket(sock) is virtual and Server::process_request(Stream&,
// ...) is protected, and Stream is an abstract class: so this subclass takes each accepted socket
// itself and runs httplib's parser over a Stream of its own.
//
//   - Admission, on httplib's accept thread (its TaskQueue runs the closure inline, which only calls
//     our process_and_close_socket): a connection beyond max_per_address for its client address, or
//     beyond max_total in all, is answered 429 / 503 at once without a read and closed; the others
//     go to a thread of their own from an elastic pool (at most max_total threads, started on
//     demand, kept idle). An admitted connection never waits for a worker, so /health and /metrics
//     answer while stalled clients hold theirs.
//   - The read bound, in ConnectionStream: from a request's first byte its head and body must arrive
//     within read_timeout in total; every read waits at most until that deadline (not a per-recv
//     timeout that each trickled byte restarts), then fails. httplib answers the failed read 400;
//     the HTTP API's error handler turns that into 408 (read_expired()) and the connection closes.
//     A request may also read at most read_budget bytes (head + body): a head of endless header
//     lines cannot grow without bound either. An idle keep-alive connection is closed after httplib's
//     keep-alive timeout.
//   - Each request gets an id: X-Request-Id as the client sent it (sanitised: [A-Za-z0-9._:/+=@-],
//     at most 64 characters) or a generated one; it is the thread's log request id
//     (set_log_request_id) while the request is served.
//   - Refusals and read timeouts are counted (stats()) and logged at most once per 10 s each, with
//     the count since the last line and a few of the addresses.
// Header-only because ce_http's sources are listed in actors/CMakeLists.txt; only
// actors/http/http_api.cpp includes it (it includes httplib.h).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <httplib.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cctype>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "actors/log.hpp"

namespace ce {

struct ConnectionLimits {
  std::chrono::milliseconds read_timeout{10000};  // a request's head + body, from its first byte
  size_t read_budget = 2 << 20;                   // bytes a request may read (head + body)
  int max_per_address = 64;                       // open connections per client address
  int max_total = 256;                            // open connections in all (= connection threads)
  std::chrono::milliseconds write_timeout{5000};  // each write of a response
};

// X-Request-Id as given, cut to what is safe in a header and a log line; a fresh id when nothing is
// left.
inline std::string sanitize_request_id(const std::string& given) {
  std::string out;
  for (char c : given) {
    const bool ok = std::isalnum(static_cast<unsigned char>(c)) || std::strchr("-_.:/+=@", c) != nullptr;
    if (ok && c != '\0') out += c;
    if (out.size() == 64) break;
  }
  if (!out.empty()) return out;
  thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[40];
  const uint64_t a = rng(), b = rng();
  // A version-4 UUID, as vLLM and most proxies generate.
  std::snprintf(buf, sizeof buf, "%08x-%04x-4%03x-%04x-%012llx", static_cast<unsigned>(a >> 32),
                static_cast<unsigned>((a >> 16) & 0xffff), static_cast<unsigned>(a & 0xfff),
                static_cast<unsigned>(0x8000 | ((b >> 48) & 0x3fff)),
                static_cast<unsigned long long>(b & 0xffffffffffffULL));
  return buf;
}

// One connection's socket as httplib reads and writes it; it lives as long as the connection (so
// bytes of a pipelined next request, read ahead into the buffer, are not lost).
class ConnectionStream final : public httplib::Stream {
 public:
  ConnectionStream(int fd, std::string address, int port, const ConnectionLimits& limits,
                   const std::atomic<bool>& stopping)
      : fd_(fd), address_(std::move(address)), port_(port), limits_(limits), stopping_(stopping) {}

  // Waits up to `idle` for the next request's first byte; false when the client closes, stays
  // silent or the server stops.
  bool wait_for_request(std::chrono::milliseconds idle) {
    if (buffered()) return true;
    return wait(POLLIN, std::chrono::steady_clock::now() + idle);
  }
  // A request starts: its head and body must be read by now + read_timeout.
  void begin_request() {
    started_ = std::chrono::steady_clock::now();
    deadline_ = started_ + limits_.read_timeout;
    budget_ = limits_.read_budget;
    read_expired_ = over_budget_ = false;
  }
  std::chrono::steady_clock::time_point started() const { return started_; }
  bool read_expired() const { return read_expired_; }
  bool over_budget() const { return over_budget_; }
  const std::string& address() const { return address_; }
  int port() const { return port_; }

  // The client is still connected: no end of stream and no error pending (a client waiting for
  // its response sends nothing, so anything readable is either more pipelined data or its end).
  bool peer_alive() const {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) return true;
    if (p.revents & (POLLERR | POLLNVAL)) return false;
    char c;
    const auto n = ::recv(fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR));
  }

  bool is_readable() const override {
    if (buffered()) return true;
    if (wait(POLLIN, deadline_)) return true;
    if (std::chrono::steady_clock::now() >= deadline_) read_expired_ = true;
    return false;
  }
  bool is_writable() const override {
    return wait(POLLOUT, std::chrono::steady_clock::now() + limits_.write_timeout, /*stop_early=*/false) && peer_alive();
  }
  ssize_t read(char* ptr, size_t size) override {
    if (!buffered()) {
      if (budget_ == 0) {
        over_budget_ = true;
        return -1;
      }
      if (!is_readable()) return -1;
      ssize_t n;
      do n = ::recv(fd_, buffer_.data(), std::min(buffer_.size(), budget_), 0);
      while (n < 0 && errno == EINTR);
      if (n <= 0) return n;
      budget_ -= static_cast<size_t>(n);
      begin_ = 0;
      end_ = static_cast<size_t>(n);
    }
    const size_t n = std::min(size, end_ - begin_);
    std::memcpy(ptr, buffer_.data() + begin_, n);
    begin_ += n;
    return static_cast<ssize_t>(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    if (!is_writable()) return -1;
    ssize_t n;
    do n = ::send(fd_, ptr, size, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n;
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    ip = address_;
    port = port_;
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) numeric_address(addr, ip, port);
  }
  socket_t socket() const override { return fd_; }

  // "1.2.3.4" / "::1" and the port of a socket address (an IPv4-mapped IPv6 address as IPv4).
  static void numeric_address(const sockaddr_storage& addr, std::string& ip, int& port) {
    char text[INET6_ADDRSTRLEN] = {0};
    if (addr.ss_family == AF_INET) {
      const auto& a = reinterpret_cast<const sockaddr_in&>(addr);
      ::inet_ntop(AF_INET, &a.sin_addr, text, sizeof text);
      port = ntohs(a.sin_port);
    } else if (addr.ss_family == AF_INET6) {
      const auto& a = reinterpret_cast<const sockaddr_in6&>(addr);
      if (IN6_IS_ADDR_V4MAPPED(&a.sin6_addr)) ::inet_ntop(AF_INET, &a.sin6_addr.s6_addr[12], text, sizeof text);
      else ::inet_ntop(AF_INET6, &a.sin6_addr, text, sizeof text);
      port = ntohs(a.sin6_port);
    }
    ip = text;
  }

 private:
  bool buffered() const { return begin_ < end_; }
  // Polls for `events` until `until`, in slices short enough to notice the server stopping. A
  // false for want of time comes only once `until` has passed (poll's milliseconds rounded up).
  bool wait(short events, std::chrono::steady_clock::time_point until, bool stop_early = true) const {
    using namespace std::chrono;
    for (;;) {
      if (stop_early && stopping_) return false;
      const auto now = steady_clock::now();
      if (now >= until) return false;
      const auto left = ceil<milliseconds>(until - now).count();
      pollfd p{fd_, events, 0};
      const int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 100)));
      if (r > 0) return true;  // readable, writable, or an error/hang-up the next call reports
      if (r < 0 && errno != EINTR) return false;
    }
  }

  const int fd_;
  const std::string address_;
  const int port_;
  const ConnectionLimits& limits_;
  const std::atomic<bool>& stopping_;
  std::array<char, 16384> buffer_{};
  size_t begin_ = 0, end_ = 0;
  std::chrono::steady_clock::time_point started_{}, deadline_ = std::chrono::steady_clock::time_point::max();
  size_t budget_ = 0;
  mutable bool read_expired_ = false;
  bool over_budget_ = false;
};

// At most one log line per `interval` for a kind of event, with the count since the last line and
// a few of the client addresses.
class RateLimitedLog {
 public:
  RateLimitedLog(std::string what, std::chrono::seconds interval = std::chrono::seconds(10))
      : what_(std::move(what)), interval_(interval) {}
  void note(const std::string& address) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++count_;
    if (addresses_.size() < 4) addresses_.insert(address);
    const auto now = std::chrono::steady_clock::now();
    if (logged_once_ && now - last_ < interval_) return;
    emit(now);
  }
  void flush() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (count_) emit(std::chrono::steady_clock::now());
  }

 private:
  void emit(std::chrono::steady_clock::time_point now) {
    std::string from;
    for (const auto& a : addresses_) from += (from.empty() ? "" : ", ") + a;
    char since[48] = "";
    if (logged_once_)
      std::snprintf(since, sizeof since, " in the last %.1f s", std::chrono::duration<double>(now - last_).count());
    CE_LOG(warning, "http", what_ << ": " << count_ << since
                                  << " (from " << from << (addresses_.size() >= 4 ? ", ..." : "")
                                  << "); at most one such line per " << interval_.count() << " s");
    count_ = 0;
    addresses_.clear();
    last_ = now;
    logged_once_ = true;
  }
  const std::string what_;
  const std::chrono::seconds interval_;
  std::mutex mutex_;
  uint64_t count_ = 0;
  std::set<std::string> addresses_;
  std::chrono::steady_clock::time_point last_{};
  bool logged_once_ = false;
};

class GuardedServer : public httplib::Server {
 public:
  struct Stats {
    uint64_t accepted = 0;
    uint64_t refused_per_address = 0;  // beyond max_per_address
    uint64_t refused_total = 0;        // beyond max_total
    uint64_t read_timeouts = 0;        // requests whose head + body did not arrive within read_timeout
    uint64_t open = 0;                 // connections open now
    uint64_t threads = 0;              // connection threads started so far (idle ones included)
  };
  // What the connection thread serving the current request knows of it (null outside one).
  struct Current {
    ConnectionStream* stream = nullptr;
    std::string request_id;
    std::string detail;  // what the access log line adds (a completion's generation, tokens, ...)
  };

  explicit GuardedServer(ConnectionLimits limits)
      : limits_(limits),
        per_address_log_("HTTP connections refused: over ce.http.max-connections-per-address = " +
                         std::to_string(limits.max_per_address)),
        total_log_("HTTP connections refused: over " + std::to_string(limits.max_total) + " open connections in all"),
        timeout_log_("HTTP requests cut off (408): head and body not read within ce.http.read-timeout") {
    // The accept loop's TaskQueue runs each closure at once on the accept thread: the closure is
    // our process_and_close_socket, which decides and hands off without blocking.
    new_task_queue = [] { return new InlineQueue; };
  }
  ~GuardedServer() override { shutdown_connections(); }

  // After bind: a backlog for bursts (httplib listens with 5: a burst of connects would have SYNs
  // dropped and a probe retried a second later).
  void widen_backlog() { ::listen(svr_sock_, 1024); }

  // Stops accepting (Server::stop) and ends idle and reading connections within ~0.1 s; the running
  // responses finish. Call with the listen thread joined after it, then shutdown_connections().
  void begin_stop() {
    stopping_ = true;
    stop();
  }
  void shutdown_connections() {
    stopping_ = true;
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> lock(pool_mutex_);
      pool_stop_ = true;
      threads.swap(threads_);
    }
    pool_cv_.notify_all();
    for (auto& t : threads)
      if (t.joinable()) t.join();
    per_address_log_.flush();
    total_log_.flush();
    timeout_log_.flush();
  }
  bool stopping() const { return stopping_; }

  Stats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    Stats s = stats_;
    s.open = open_;
    return s;
  }
  static Current& current() {
    static thread_local Current c;
    return c;
  }

 private:
  class InlineQueue : public httplib::TaskQueue {
   public:
    void enqueue(std::function<void()> fn) override { fn(); }
    void shutdown() override {}
  };

  // The accept thread, once per accepted socket: admit (hand to a connection thread) or refuse.
  bool process_and_close_socket(socket_t sock) override {
    sockaddr_storage peer{};
    socklen_t len = sizeof peer;
    std::string address;
    int port = -1;
    if (::getpeername(sock, reinterpret_cast<sockaddr*>(&peer), &len) == 0)
      ConnectionStream::numeric_address(peer, address, port);
    int refusal = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) refusal = 503;
      else if (static_cast<int>(open_) >= limits_.max_total) refusal = 503;
      else if (per_address_[address] >= limits_.max_per_address) refusal = 429;
      if (refusal == 0) {
        ++open_;
        ++per_address_[address];
        ++stats_.accepted;
      } else if (refusal == 429) {
        ++stats_.refused_per_address;
      } else if (!stopping_) {
        ++stats_.refused_total;
      }
      if (per_address_[address] == 0) per_address_.erase(address);
    }
    if (refusal) {
      refuse(sock, refusal);
      if (refusal == 429) per_address_log_.note(address);
      else if (!stopping_) total_log_.note(address);
      return false;
    }
    post([this, sock, address, port] { serve(sock, address, port); });
    return true;
  }

  // A short canned answer, written without blocking, then the socket closed. What the client has
  // sent so far is drained first, so that the close is a FIN, not a reset that could destroy the
  // answer before the client reads it.
  static void refuse(int sock, int status) {
    char scratch[4096];
    while (::recv(sock, scratch, sizeof scratch, MSG_DONTWAIT) > 0) {
    }
    const std::string body =
        status == 429 ? R"({"error":{"message":"Too many connections from this address (ce.http.max-connections-per-address); retry shortly","type":"rate_limit_error","param":null,"code":"too_many_connections"}})"
                      : R"({"error":{"message":"The server holds too many connections; retry shortly","type":"server_error","param":null,"code":"server_busy"}})";
    const std::string response = std::string("HTTP/1.1 ") + (status == 429 ? "429 Too Many Requests" : "503 Service Unavailable") +
                                 "\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\n"
                                 "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    (void)::send(sock, response.data(), response.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    ::shutdown(sock, SHUT_WR);
    ::close(sock);
  }

  // Closes a served connection without destroying the last answer: a client may still be sending
  // (a body refused as too large, 413, is not read), and closing a socket with unread bytes sends a
  // reset that can discard the answer before the client reads it. So the write side is shut first
  // (the client sees the end of the answer), then what the client still sends is read and dropped
  // until it closes too, for at most 500 ms and 16 MiB (a lingering close, as nginx does); a
  // stopping server does not wait.
  void linger_close(int sock) {
    ::shutdown(sock, SHUT_WR);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
    char scratch[16384];
    size_t dropped = 0;
    while (dropped < (16u << 20) && !stopping_) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd p{sock, POLLIN, 0};
      const int ready = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 100)));
      if (ready < 0) break;
      if (ready == 0) continue;  // wait on (stopping_ is checked every 100 ms)
      const auto n = ::recv(sock, scratch, sizeof scratch, MSG_DONTWAIT);
      if (n <= 0) break;  // the client closed (0) or the connection is gone
      dropped += static_cast<size_t>(n);
    }
    ::close(sock);
  }

  // A connection thread: httplib's request loop (process_server_socket_core's keep-alive loop) over
  // a ConnectionStream.
  void serve(int sock, const std::string& address, int port) {
    {
      ConnectionStream strm(sock, address, port, limits_, stopping_);
      auto& cur = current();
      size_t count = keep_alive_max_count_;
      while (!stopping_ && svr_sock_ != INVALID_SOCKET && count > 0 &&
             strm.wait_for_request(std::chrono::seconds(keep_alive_timeout_sec_))) {
        strm.begin_request();
        cur = Current{&strm, "", ""};
        bool connection_closed = false;
        const bool ok = process_request(strm, count == 1, connection_closed, [&](httplib::Request& req) {
          cur.request_id = sanitize_request_id(req.get_header_value("X-Request-Id"));
          req.headers.erase("X-Request-Id");
          req.headers.emplace("X-Request-Id", cur.request_id);
          set_log_request_id(cur.request_id);
        });
        const bool expired = strm.read_expired();
        cur = Current{};
        set_log_request_id("");
        if (expired) {
          {
            std::lock_guard<std::mutex> lock(mutex_);
            ++stats_.read_timeouts;
          }
          timeout_log_.note(address);
          break;
        }
        if (!ok || connection_closed || strm.over_budget()) break;
        --count;
      }
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      --open_;
      if (--per_address_[address] <= 0) per_address_.erase(address);
    }
    linger_close(sock);  // the slot is free already: only this thread waits
  }

  // The elastic pool: a job runs on an idle thread, or on a new one when none is idle (admission
  // caps the open connections, hence the threads, at max_total).
  void post(std::function<void()> job) {
    std::unique_lock<std::mutex> lock(pool_mutex_);
    if (pool_stop_) {  // shutting down: the job sees stopping_ and only closes its socket
      lock.unlock();
      job();
      return;
    }
    jobs_.push_back(std::move(job));
    if (idle_ >= jobs_.size()) {
      pool_cv_.notify_one();
      return;
    }
    threads_.emplace_back([this] { work(); });
    std::lock_guard<std::mutex> stats_lock(mutex_);
    ++stats_.threads;
  }
  void work() {
    std::unique_lock<std::mutex> lock(pool_mutex_);
    for (;;) {
      ++idle_;
      pool_cv_.wait(lock, [this] { return pool_stop_ || !jobs_.empty(); });
      --idle_;
      if (jobs_.empty()) return;  // stopping, nothing left
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      job();
      lock.lock();
    }
  }

  const ConnectionLimits limits_;
  std::atomic<bool> stopping_{false};
  mutable std::mutex mutex_;  // admission and stats
  std::map<std::string, int> per_address_;
  uint64_t open_ = 0;
  Stats stats_;
  RateLimitedLog per_address_log_, total_log_, timeout_log_;

  std::mutex pool_mutex_;
  std::condition_variable pool_cv_;
  std::deque<std::function<void()>> jobs_;
  size_t idle_ = 0;
  bool pool_stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace ce
