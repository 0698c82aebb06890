#include "actors/node/basp_guard.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio.hpp>
#include <list>
#include <map>
#include <optional>
#include <sstream>
#include <thread>
#include <vector>

#include "actors/log.hpp"

namespace ce {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

// CAF 0.17 BASP header on the wire (caf/io/basp/header.hpp, binary serializer, network order):
// operation u8, two padding bytes, flags u8, payload_len u32, operation_data u64,
// source_actor u64, dest_actor u64.
constexpr size_t kHeaderSize = 32;
constexpr uint8_t kClientHandshake = 0x01;
constexpr uint8_t kLastOperation = 0x06;  // heartbeat

uint32_t read_be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

// Follows the client-to-cloud byte stream header by header.
class BaspFraming {
 public:
  explicit BaspFraming(uint32_t max_payload) : max_payload_(max_payload) {}
  // Checks a chunk before it is forwarded; returns an empty string, or why the stream is bad.
  std::string check(const uint8_t* data, size_t size) {
    while (size > 0) {
      if (payload_left_ > 0) {
        const size_t n = std::min<uint64_t>(payload_left_, size);
        payload_left_ -= n;
        data += n;
        size -= n;
        continue;
      }
      const size_t n = std::min(kHeaderSize - header_fill_, size);
      std::copy(data, data + n, header_.begin() + static_cast<long>(header_fill_));
      header_fill_ += n;
      data += n;
      size -= n;
      // Each field as soon as its bytes are in: junk shorter than a header (a port scanner's
      // "GET /", a stray newline) is closed at once, not after the handshake timeout.
      if (auto why = check_fields(header_fill_); !why.empty()) return why;
      if (header_fill_ < kHeaderSize) break;
      header_fill_ = 0;
      payload_left_ = read_be32(&header_[4]);
      ++headers_;
    }
    return "";
  }
  uint64_t headers() const { return headers_; }

 private:
  // The fields of the header being read that its first `filled` bytes hold.
  std::string check_fields(size_t filled) const {
    const uint8_t op = header_[0];
    if (filled >= 1 && headers_ == 0 && op != kClientHandshake) return "first BASP message is not a client handshake";
    if (filled >= 1 && (op < kClientHandshake || op > kLastOperation)) return "unknown BASP operation " + std::to_string(op);
    if (filled >= 3 && (header_[1] != 0 || header_[2] != 0)) return "nonzero BASP header padding";
    if (filled >= 8 && read_be32(&header_[4]) > max_payload_)
      return "BASP payload of " + std::to_string(read_be32(&header_[4])) + " bytes claimed (cap " +
             std::to_string(max_payload_) + ")";
    return "";
  }

  uint32_t max_payload_;
  std::array<uint8_t, kHeaderSize> header_{};
  size_t header_fill_ = 0;
  uint64_t payload_left_ = 0;
  uint64_t headers_ = 0;
};

// Why the guard closed a connection, for the log and its counters.
enum class Closure { per_address_cap, over_limit, evicted, bad_header, handshake_timeout };
constexpr size_t kClosureKinds = 5;

const char* reason_of(Closure closure) {
  switch (closure) {
    case Closure::per_address_cap: return "refused (ce.listen.max-connections-per-address)";
    case Closure::over_limit: return "refused (ce.listen.max-connections, none to evict)";
    case Closure::evicted: return "evicted before their handshake to make room";
    case Closure::bad_header: return "closed: not BASP or a bad header";
    case Closure::handshake_timeout: return "closed: no handshake within ce.listen.handshake-timeout";
  }
  return "closed";
}

// The guard's log lines about closed connections, folded per source address, so that a flood
// costs a few lines a second however many connections it opens: the first closure from an
// address is logged as it happens, with its detail; those after it are counted, and each
// second that saw some ends in one summary line per address (while they keep coming, the
// address stays counted: one line a second). Lines are capped per second across addresses
// too, for floods from many addresses.
class ClosureLog {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr auto kWindow = std::chrono::seconds(1);
  static constexpr size_t kMaxLinesPerWindow = 16;        // immediate lines, all addresses together
  static constexpr size_t kMaxAddressesPerSummary = 16;   // the rest fold into one line
  static constexpr size_t kMaxTrackedAddresses = 4096;    // bounds the memory a flood can take

  // Records a closure; true when the caller should log this one now.
  bool note(const std::string& address, Closure closure, Clock::time_point now) {
    if (now - lines_window_start_ >= kWindow) {
      lines_window_start_ = now;
      lines_in_window_ = 0;
    }
    auto it = windows_.find(address);
    if (it == windows_.end()) {
      if (windows_.size() >= kMaxTrackedAddresses) {
        untracked_[static_cast<size_t>(closure)]++;
        return false;
      }
      it = windows_.emplace(address, Window{now, {}}).first;
      if (lines_in_window_ < kMaxLinesPerWindow) {
        lines_in_window_++;
        return true;
      }
    }
    it->second.counted[static_cast<size_t>(closure)]++;
    return false;
  }

  // Summary lines for the addresses whose second is over; forgets the addresses that had
  // nothing to count in it.
  std::vector<std::string> flush(Clock::time_point now) {
    struct Due {
      std::string address;
      std::array<uint64_t, kClosureKinds> counted;
      uint64_t total;
      double seconds;
    };
    std::vector<Due> due;
    for (auto it = windows_.begin(); it != windows_.end();) {
      auto& w = it->second;
      if (now - w.opened < kWindow) {
        ++it;
        continue;
      }
      uint64_t total = 0;
      for (auto n : w.counted) total += n;
      if (total == 0) {
        it = windows_.erase(it);
        continue;
      }
      due.push_back({it->first, w.counted, total, std::chrono::duration<double>(now - w.opened).count()});
      w = Window{now, {}};
      ++it;
    }
    std::sort(due.begin(), due.end(), [](const Due& a, const Due& b) { return a.total > b.total; });
    std::vector<std::string> lines;
    std::array<uint64_t, kClosureKinds> rest = untracked_;
    size_t rest_addresses = 0;
    for (size_t i = 0; i < due.size(); ++i) {
      if (i < kMaxAddressesPerSummary) {
        std::ostringstream line;
        line.precision(2);
        line << "from " << due[i].address << " in the last " << std::fixed << due[i].seconds << " s:" << counts(due[i].counted);
        lines.push_back(line.str());
      } else {
        rest_addresses++;
        for (size_t k = 0; k < kClosureKinds; ++k) rest[k] += due[i].counted[k];
      }
    }
    uint64_t rest_total = 0;
    for (auto n : rest) rest_total += n;
    if (rest_total > 0) {
      std::ostringstream line;
      line << "from " << rest_addresses << " more addresses";
      if (untracked_ != decltype(untracked_){}) line << " and untracked ones";
      line << ":" << counts(rest);
      lines.push_back(line.str());
    }
    untracked_ = {};
    return lines;
  }

  bool empty() const { return windows_.empty() && untracked_ == decltype(untracked_){}; }

 private:
  struct Window {
    Clock::time_point opened;
    std::array<uint64_t, kClosureKinds> counted{};  // closures not logged on their own
  };
  static std::string counts(const std::array<uint64_t, kClosureKinds>& counted) {
    std::string out;
    for (size_t k = 0; k < kClosureKinds; ++k)
      if (counted[k] > 0)
        out += (out.empty() ? " " : ", ") + std::to_string(counted[k]) + " " + reason_of(static_cast<Closure>(k));
    return out;
  }
  std::map<std::string, Window> windows_;
  std::array<uint64_t, kClosureKinds> untracked_{};
  Clock::time_point lines_window_start_{};
  size_t lines_in_window_ = 0;
};

constexpr auto kLogFlushPeriod = std::chrono::milliseconds(250);

}  // namespace

struct BaspGuard::Impl : std::enable_shared_from_this<BaspGuard::Impl> {
  Options options;
  struct Link;
  // What one source address holds: its live connections, and those of them that have not
  // completed their handshake, oldest first (the candidates for eviction at the cap).
  struct Source {
    int live = 0;
    std::list<Link*> waiting;
  };
  // Declared before io: links still queued in io when it is destroyed update them.
  std::atomic<uint64_t> accepted{0}, refused{0}, refused_per_address{0}, evicted{0}, bad_header{0}, timed_out{0};
  std::atomic<int> live{0};
  std::map<asio::ip::address, Source> sources;  // io thread only; an address with no live connection is erased
  ClosureLog closure_log;                       // io thread only
  uint64_t next_serial = 0;                     // arrival order of the connections
  asio::io_context io;
  tcp::acceptor acceptor{io};
  asio::steady_timer log_timer{io};
  bool log_timer_armed = false;
  std::thread thread;
  std::vector<std::weak_ptr<Link>> links;  // io thread only: closed when the guard goes

  // One relayed connection: client <-> CAF.
  struct Link : std::enable_shared_from_this<Link> {
    Impl& guard;
    tcp::socket client, upstream;
    asio::steady_timer handshake_timer;
    BaspFraming framing;
    std::array<uint8_t, 64 * 1024> from_client{}, from_upstream{};
    bool closed = false, handshake_done = false;
    asio::ip::address source;
    std::string peer;
    uint64_t serial;
    bool holds_slot = false;
    std::optional<std::list<Link*>::iterator> waiting_at;  // in guard.sources[source].waiting

    Link(Impl& g, tcp::socket socket, const tcp::endpoint& remote)
        : guard(g),
          client(std::move(socket)),
          upstream(g.io),
          handshake_timer(g.io),
          framing(g.options.max_payload),
          source(remote.address()),
          peer(remote.address().to_string() + ":" + std::to_string(remote.port())),
          serial(g.next_serial++) {}
    ~Link() { guard.release(*this); }

    void start() {
      auto self = shared_from_this();
      handshake_timer.expires_after(guard.options.handshake_timeout);
      handshake_timer.async_wait([self](boost::system::error_code ec) {
        if (ec || self->handshake_done || self->closed) return;
        self->guard.timed_out++;
        self->guard.log_closure(self->source, Closure::handshake_timeout,
                                "closed " + self->peer + ": no handshake within " +
                                    std::to_string(self->guard.options.handshake_timeout.count()) +
                                    " ms (ce.listen.handshake-timeout)");
        self->close();
      });
      boost::system::error_code ignored;
      client.set_option(tcp::no_delay(true), ignored);  // Nagle + delayed ACKs cost ~40 ms per token
      upstream.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), guard.options.target_port),
                             [self](boost::system::error_code ec) {
                               if (ec) return self->close();
                               boost::system::error_code ignored;
                               self->upstream.set_option(tcp::no_delay(true), ignored);
                               self->read_client();
                               self->read_upstream();
                             });
    }
    void close() {
      if (closed) return;
      closed = true;
      guard.release(*this);  // the slot is free now, not when the last handler has run
      boost::system::error_code ignored;
      handshake_timer.cancel();
      client.close(ignored);
      upstream.close(ignored);
    }
    // The peer spoke the protocol: from now on it is an edge, not a candidate for eviction.
    void handshake_completed() {
      if (handshake_done) return;
      handshake_done = true;
      handshake_timer.cancel();
      guard.stop_waiting(*this);
    }
    void read_client() {
      auto self = shared_from_this();
      client.async_read_some(asio::buffer(from_client), [self](boost::system::error_code ec, size_t n) {
        if (ec || self->closed) return self->close();
        if (self->guard.options.inspect_basp) {
          if (auto why = self->framing.check(self->from_client.data(), n); !why.empty()) {
            self->guard.bad_header++;
            self->guard.log_closure(self->source, Closure::bad_header, "closed " + self->peer + ": " + why);
            return self->close();
          }
          if (self->framing.headers() > 0) self->handshake_completed();
        } else {
          self->handshake_completed();  // TLS: the first bytes arrived
        }
        self->pass_on(self->upstream, self->from_client.data(), n, &Link::read_client);
      });
    }
    void read_upstream() {
      auto self = shared_from_this();
      upstream.async_read_some(asio::buffer(from_upstream), [self](boost::system::error_code ec, size_t n) {
        if (ec || self->closed) return self->close();
        self->pass_on(self->client, self->from_upstream.data(), n, &Link::read_upstream);
      });
    }
    // Writes the chunk just read to the other side, then reads the next one from where it came.
    void pass_on(tcp::socket& to, const uint8_t* data, size_t n, void (Link::*read_next)()) {
      auto self = shared_from_this();
      asio::async_write(to, asio::buffer(data, n), [self, read_next](boost::system::error_code ec, size_t) {
        if (ec) return self->close();
        ((*self).*read_next)();
      });
    }
  };

  // Counts a new connection against the caps; it waits for its handshake until it completes it.
  void take_slot(Link& link) {
    auto& src = sources[link.source];
    src.live++;
    live++;
    link.holds_slot = true;
    link.waiting_at = src.waiting.insert(src.waiting.end(), &link);
  }
  void stop_waiting(Link& link) {
    if (!link.waiting_at) return;
    if (auto it = sources.find(link.source); it != sources.end()) it->second.waiting.erase(*link.waiting_at);
    link.waiting_at.reset();
  }
  // Gives a connection's slot back (once: from close(), or from ~Link for one never closed).
  void release(Link& link) {
    if (!link.holds_slot) return;
    link.holds_slot = false;
    stop_waiting(link);
    live--;
    auto it = sources.find(link.source);
    if (it != sources.end() && --it->second.live <= 0) sources.erase(it);
  }

  // The connection that makes room for a newcomer when every slot is taken: one that has not
  // completed its handshake, from the source address that holds the most of those (its
  // oldest; among addresses holding as many, the oldest of all). nullptr when every live
  // connection has completed its handshake: then the newcomer is refused.
  //
  // Why evict rather than refuse the newcomer (the old rule, under which 70 silent connections
  // kept a new edge out until the handshake timeout) or reserve slots:
  //  - a connection without a handshake has nothing to lose: it never spoke BASP, and a real
  //    edge caught in its handshake reconnects with backoff. Established edges are never
  //    evicted, so the cap still protects them and the cloud's memory;
  //  - reserved slots (say, some only for addresses holding none) stay empty while no one
  //    needs them, and fill up as well once a flood comes from as many addresses as there are
  //    reserved slots; eviction keeps every slot usable and has no such threshold;
  //  - the heaviest address pays first, so that a flood from fewer addresses than the cap
  //    never evicts a lone edge in its handshake, however fast it reconnects; against one
  //    address each, oldest first leaves a newcomer its slot until max-connections newer
  //    connections have arrived, while a real edge needs one round trip to complete its
  //    handshake.
  // The scan visits each address with a live connection, at most max-connections, and only
  // runs when the cap is full.
  Link* eviction_candidate() const {
    const Source* heaviest = nullptr;
    for (const auto& [address, src] : sources) {
      if (src.waiting.empty()) continue;
      if (!heaviest || src.waiting.size() > heaviest->waiting.size() ||
          (src.waiting.size() == heaviest->waiting.size() &&
           src.waiting.front()->serial < heaviest->waiting.front()->serial))
        heaviest = &src;
    }
    return heaviest ? heaviest->waiting.front() : nullptr;
  }

  void log_closure(const asio::ip::address& address, Closure closure, const std::string& detail) {
    if (closure_log.note(address.to_string(), closure, ClosureLog::Clock::now()))
      CE_LOG(warning, "guard", detail << " (more from " << address << " are counted, logged once a second)");
    arm_log_timer();
  }
  // Writes the summaries of ClosureLog while it has any to come. Captures this, not a
  // shared_ptr: the timer lives in io, which lives in this object.
  void arm_log_timer() {
    if (log_timer_armed || closure_log.empty()) return;
    log_timer_armed = true;
    log_timer.expires_after(kLogFlushPeriod);
    log_timer.async_wait([this](boost::system::error_code ec) {
      log_timer_armed = false;
      if (ec) return;
      for (const auto& line : closure_log.flush(ClosureLog::Clock::now())) CE_LOG(warning, "guard", line);
      arm_log_timer();
    });
  }

  // Admits an accepted connection, or closes it at once when a cap says so.
  void admit(tcp::socket socket) {
    boost::system::error_code ec;
    const auto remote = socket.remote_endpoint(ec);
    if (ec) return;  // the peer is gone already
    auto refuse = [&](Closure closure, const std::string& detail) {
      log_closure(remote.address(), closure, detail);
      boost::system::error_code ignored;
      socket.close(ignored);
    };
    const std::string peer = remote.address().to_string() + ":" + std::to_string(remote.port());
    if (auto it = sources.find(remote.address());
        it != sources.end() && it->second.live >= options.max_connections_per_address) {
      refused_per_address++;
      return refuse(Closure::per_address_cap, "refused " + peer + ": " + std::to_string(it->second.live) + " live from " +
                                                  remote.address().to_string() +
                                                  " (ce.listen.max-connections-per-address)");
    }
    if (live.load() >= options.max_connections) {
      Link* victim = eviction_candidate();
      if (!victim) {
        refused++;
        return refuse(Closure::over_limit, "refused " + peer + ": " + std::to_string(options.max_connections) +
                                               " live, all past their handshake (ce.listen.max-connections)");
      }
      evicted++;
      log_closure(victim->source, Closure::evicted,
                  "evicted " + victim->peer + " (no handshake yet) to make room for " + peer + ": " +
                      std::to_string(options.max_connections) + " live (ce.listen.max-connections)");
      victim->close();
    }
    accepted++;
    auto link = std::make_shared<Link>(*this, std::move(socket), remote);
    take_slot(*link);
    links.erase(std::remove_if(links.begin(), links.end(), [](const std::weak_ptr<Link>& l) { return l.expired(); }),
                links.end());
    links.push_back(link);
    link->start();
  }

  void accept() {
    auto self = shared_from_this();
    acceptor.async_accept([self](boost::system::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !self->acceptor.is_open()) return;
      if (!ec) self->admit(std::move(socket));
      self->accept();
    });
  }
};

BaspGuard::BaspGuard(Options options) : impl_(std::make_shared<Impl>()) {
  impl_->options = std::move(options);
  const auto& o = impl_->options;
  boost::system::error_code ec;
  const auto address = asio::ip::make_address(o.listen_host == "localhost" ? "127.0.0.1" : o.listen_host, ec);
  if (ec) throw std::runtime_error("ce.listen.host = \"" + o.listen_host + "\": not an IP address");
  tcp::endpoint endpoint(address, o.listen_port);
  impl_->acceptor.open(endpoint.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(endpoint, ec);
  if (!ec) impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    throw std::runtime_error("cannot listen on " + o.listen_host + ":" + std::to_string(o.listen_port) + ": " +
                             ec.message());
  impl_->accept();
  impl_->thread = std::thread([impl = impl_] { impl->io.run(); });
}

BaspGuard::~BaspGuard() {
  // Close the relayed connections too, so that peers see the node go (a process exit would do
  // it; a node stopped inside a running process must as well). Their aborted handlers run
  // before the stop posted after them.
  asio::post(impl_->io, [impl = impl_] {
    boost::system::error_code ignored;
    impl->acceptor.close(ignored);
    impl->log_timer.cancel();
    for (auto& weak : impl->links)
      if (auto link = weak.lock()) link->close();
    impl->links.clear();
    asio::post(impl->io, [impl] { impl->io.stop(); });
  });
  if (impl_->thread.joinable()) impl_->thread.join();
}

uint16_t BaspGuard::port() const { return impl_->acceptor.local_endpoint().port(); }

BaspGuard::Stats BaspGuard::stats() const {
  Stats s;
  s.accepted = impl_->accepted.load();
  s.refused_over_limit = impl_->refused.load();
  s.refused_per_address = impl_->refused_per_address.load();
  s.evicted_pre_handshake = impl_->evicted.load();
  s.closed_bad_header = impl_->bad_header.load();
  s.closed_handshake_timeout = impl_->timed_out.load();
  s.live = impl_->live.load();
  return s;
}

}  // namespace ce
