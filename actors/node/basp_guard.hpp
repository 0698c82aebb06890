#pragma once
// The cloud's front door on the network: a TCP relay (Boost.Asio, its own thread) between the
// public listen address and CAF's listener, which then binds only to an ephemeral loopback port.
//
// Why: CAF 0.17's BASP buffers whatever payload size a peer's header claims (toolchain.md: one
// plaintext connection claiming 4 GB grew a node to ~1 GB; 1,000 garbage connections in our
// fault test grew it by ~390 MB and left it unable to serve). The guard
//   - caps live connections per source address (ce.listen.max-connections-per-address; more
//     from that address are closed at once), so that one address cannot take every slot,
//   - caps live connections (ce.listen.max-connections). At the cap a newcomer takes the slot
//     of a connection that has not completed its handshake yet, if there is one (see
//     admit() in basp_guard.cpp for which); otherwise it is closed at once,
//   - closes a connection whose first BASP header has not arrived within
//     ce.listen.handshake-timeout (idle and half-open floods),
//   - for plaintext links, parses the client-to-cloud BASP framing and closes the connection
//     at the first header that is not a client's (operation 1..6, zero padding) or that claims
//     a payload above the cap, before a byte of it reaches CAF; each field is checked as soon
//     as its bytes are in, so junk shorter than a header is closed at once too.
// With TLS the stream is opaque: only the connection caps and a first-bytes timeout apply (and
// CAF's OpenSSL layer refuses peers without a CA-signed certificate); there "handshake
// completed" means "its first bytes arrived".
// Closures are logged folded per source address: the first in a second with its reason, the
// rest as counts once a second, so a flood costs a line per address per second, not one per
// connection.
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace ce {

class BaspGuard {
 public:
  struct Options {
    std::string listen_host = "127.0.0.1";
    uint16_t listen_port = 0;        // 0: ephemeral
    uint16_t target_port = 0;        // CAF's listener on 127.0.0.1
    bool inspect_basp = true;        // false for TLS (opaque bytes)
    uint32_t max_payload = 16u << 20;
    int max_connections = 64;
    int max_connections_per_address = 8;
    std::chrono::milliseconds handshake_timeout{1000};
  };
  struct Stats {
    uint64_t accepted = 0;             // relayed to CAF
    uint64_t refused_over_limit = 0;   // closed at once: max-connections reached, none to evict
    uint64_t refused_per_address = 0;  // closed at once: max-connections-per-address reached
    uint64_t evicted_pre_handshake = 0;  // closed to make room for a newcomer (no handshake yet)
    uint64_t closed_bad_header = 0;    // not BASP, or a payload claim above the cap
    uint64_t closed_handshake_timeout = 0;
    int live = 0;
  };

  // Binds and starts relaying; throws std::runtime_error naming the address when it cannot.
  explicit BaspGuard(Options options);
  ~BaspGuard();
  BaspGuard(const BaspGuard&) = delete;
  BaspGuard& operator=(const BaspGuard&) = delete;

  uint16_t port() const;
  Stats stats() const;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace ce
