#include "actors/node/basp_guard.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio.hpp>
#include <mutex>
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
      if (header_fill_ < kHeaderSize) break;
      header_fill_ = 0;
      const uint8_t op = header_[0];
      const uint32_t payload = read_be32(&header_[4]);
      if (headers_ == 0 && op != kClientHandshake) return "first BASP message is not a client handshake";
      if (op < kClientHandshake || op > kLastOperation) return "unknown BASP operation " + std::to_string(op);
      if (header_[1] != 0 || header_[2] != 0) return "nonzero BASP header padding";
      if (payload > max_payload_)
        return "BASP payload of " + std::to_string(payload) + " bytes claimed (cap " + std::to_string(max_payload_) + ")";
      payload_left_ = payload;
      ++headers_;
    }
    return "";
  }
  uint64_t headers() const { return headers_; }

 private:
  uint32_t max_payload_;
  std::array<uint8_t, kHeaderSize> header_{};
  size_t header_fill_ = 0;
  uint64_t payload_left_ = 0;
  uint64_t headers_ = 0;
};

}  // namespace

struct BaspGuard::Impl : std::enable_shared_from_this<BaspGuard::Impl> {
  Options options;
  // Declared before io: links still queued in io when it is destroyed update them.
  std::atomic<uint64_t> accepted{0}, refused{0}, bad_header{0}, timed_out{0};
  std::atomic<int> live{0};
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::thread thread;
  struct Link;
  std::vector<std::weak_ptr<Link>> links;  // io thread only: closed when the guard goes

  // One relayed connection: client <-> CAF.
  struct Link : std::enable_shared_from_this<Link> {
    Impl& guard;
    tcp::socket client, upstream;
    asio::steady_timer handshake_timer;
    BaspFraming framing;
    std::array<uint8_t, 64 * 1024> from_client{}, from_upstream{};
    bool closed = false, handshake_done = false;
    std::string peer;

    Link(Impl& g, tcp::socket socket)
        : guard(g), client(std::move(socket)), upstream(g.io), handshake_timer(g.io), framing(g.options.max_payload) {
      boost::system::error_code ec;
      auto ep = client.remote_endpoint(ec);
      peer = ec ? "?" : ep.address().to_string() + ":" + std::to_string(ep.port());
    }
    ~Link() { guard.live--; }

    void start() {
      auto self = shared_from_this();
      handshake_timer.expires_after(guard.options.handshake_timeout);
      handshake_timer.async_wait([self](boost::system::error_code ec) {
        if (ec || self->handshake_done || self->closed) return;
        self->guard.timed_out++;
        CE_LOG(warning, "guard", "closed " << self->peer << ": no handshake within "
                                           << self->guard.options.handshake_timeout.count() << " ms");
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
      boost::system::error_code ignored;
      handshake_timer.cancel();
      client.close(ignored);
      upstream.close(ignored);
    }
    void read_client() {
      auto self = shared_from_this();
      client.async_read_some(asio::buffer(from_client), [self](boost::system::error_code ec, size_t n) {
        if (ec || self->closed) return self->close();
        if (self->guard.options.inspect_basp) {
          if (auto why = self->framing.check(self->from_client.data(), n); !why.empty()) {
            self->guard.bad_header++;
            CE_LOG(warning, "guard", "closed " << self->peer << ": " << why);
            return self->close();
          }
          if (self->framing.headers() > 0) self->handshake_done = true;
        } else {
          self->handshake_done = true;  // TLS: the first bytes arrived
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

  void accept() {
    auto self = shared_from_this();
    acceptor.async_accept([self](boost::system::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !self->acceptor.is_open()) return;
      if (!ec) {
        if (self->live.load() >= self->options.max_connections) {
          self->refused++;
          CE_LOG(warning, "guard", "refused a connection: " << self->options.max_connections
                                                             << " live (ce.listen.max-connections)");
          boost::system::error_code ignored;
          socket.close(ignored);
        } else {
          self->live++;
          self->accepted++;
          auto link = std::make_shared<Link>(*self, std::move(socket));
          self->links.erase(std::remove_if(self->links.begin(), self->links.end(),
                                           [](const std::weak_ptr<Link>& l) { return l.expired(); }),
                            self->links.end());
          self->links.push_back(link);
          link->start();
        }
      }
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
    for (auto& weak : impl->links)
      if (auto link = weak.lock()) link->close();
    impl->links.clear();
    asio::post(impl->io, [impl] { impl->io.stop(); });
  });
  if (impl_->thread.joinable()) impl_->thread.join();
}

uint16_t BaspGuard::port() const { return impl_->acceptor.local_endpoint().port(); }

BaspGuard::Stats BaspGuard::stats() const {
  return {impl_->accepted.load(), impl_->refused.load(), impl_->bad_header.load(), impl_->timed_out.load(),
          impl_->live.load()};
}

}  // namespace ce
