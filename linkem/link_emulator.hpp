#pragma once
// A userspace TCP link emulator: a proxy on 127.0.0.1 that forwards every accepted
// connection to one target and adds one-way delay, jitter and a bandwidth limit to each
// direction. It stands in for `tc netem`, which this kernel lacks.
//
// Model, per direction of each connection (the two directions are independent links):
//   * The proxy reads chunks of up to 64 KiB. A chunk of n bytes read at time t occupies
//     the link from max(t, end of the previous chunk's transmission) for n*8/bandwidth
//     seconds (serialization time; no pacing when bandwidth is 0 = unlimited).
//   * It is released (written to the other side) at
//       max(end of its transmission + delay + U[0, jitter], previous chunk's release),
//     so jitter never reorders bytes. A lone message of n bytes therefore takes
//     delay + n*8/bandwidth (+ jitter), and a long transfer runs at ≈ bandwidth.
//   * At most 64 MiB may wait in one direction; beyond that the proxy stops reading that
//     side (TCP backpressure reaches the sender) until the queue drains below 32 MiB.
//   * EOF from one side is passed on as a FIN (shutdown of the sending half) once the
//     bytes queued before it have been delivered; a read or write error closes both
//     sockets at once. A connection is dropped when both directions have finished.
//   * The connection to the target is opened when a client is accepted, without delay; if
//     it fails the client socket is closed.
//   * Sockets use TCP_NODELAY so that small messages are not held back by Nagle.
//   * Sockets are close-on-exec from their creation: processes the host starts (tests fork
//     nodes while emulators run) hold no copy, which would keep a connection open after the
//     emulator closed it (its peer would see neither FIN nor RST).
//
// Blackhole: bytes are HELD, never dropped (TCP would retransmit them; dropping bytes out
// of the middle of a stream would corrupt framing, which no real network does). While on,
// nothing is written in either direction and no further data is read (it stays in the
// kernel buffers, and senders eventually block, as behind a dead link); connections stay
// open and new ones are still accepted and connected. When switched off, the held bytes
// are forwarded in order: a chunk that was read while the blackhole was on is stamped as
// if read at the moment it was lifted; chunks already queued keep their release times
// (those that are overdue go out at once). A write already under way when the blackhole is
// switched on (at most one chunk per direction) still completes.
//
// Threading: all network work runs on one background thread (one io_context). Every public
// member may be called from any other thread; none may be called from inside the
// emulator's own thread (it makes no callbacks into user code, so this cannot arise).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace ce::linkem {

struct LinkProfile {
  std::string name;
  double delay_ms = 0;        // one-way propagation delay
  double jitter_ms = 0;       // extra delay drawn uniformly from [0, jitter_ms] per chunk
  double bandwidth_mbit = 0;  // 10^6 bit/s; 0 = unlimited
};

// Reads a strict INI profile:
//
//   ; comment            # comment (also after a value, following whitespace)
//   [link]
//   name = wan           ; bare word or "quoted"; default: the file's name without .ini
//   delay = 20ms         ; us, ms or s (a unit is required); default 0ms
//   jitter = 0ms         ; same units; default 0ms
//   bandwidth = 100mbit  ; bit, kbit, mbit or gbit (powers of 1000), or "unlimited";
//                        ; 0 with a unit also means unlimited; default unlimited
//
// The [link] section is required and is the only section; unknown keys, duplicate keys,
// keys outside [link], missing or unknown units and negative values are errors. Throws
// std::runtime_error "FILE:LINE: key 'KEY': ..." (or "FILE: ..." for a file that cannot be
// read or lacks [link]).
LinkProfile load_profile(const std::string& ini_path);

// The value parsers load_profile uses, for command lines: "20ms" -> 20, "1.5s" -> 1500,
// "250us" -> 0.25; "100mbit" -> 100, "512kbit" -> 0.512, "unlimited" -> 0. Throw
// std::runtime_error naming the text on a bad number or unit or a negative value.
double parse_duration_ms(const std::string& text);
double parse_bandwidth_mbit(const std::string& text);

// "wan: delay 20ms, jitter 0ms, bandwidth 100mbit" (bandwidth "unlimited" when 0).
std::string describe(const LinkProfile& profile);

// Throws std::invalid_argument unless delay and jitter are in [0, 3600000] ms and bandwidth
// is 0 (unlimited) or in [0.001, 10^6] mbit (1 kbit/s .. 1 Tbit/s).
void check_profile(const LinkProfile& profile);

class LinkEmulator {
 public:
  // Checks the profile (std::invalid_argument), resolves target_host now and binds
  // 127.0.0.1:listen_port (0 = ephemeral); std::runtime_error if either fails (e.g. the
  // port is taken). Then starts the background thread. Connections to the target are made
  // per accepted client.
  LinkEmulator(LinkProfile profile, std::string target_host, uint16_t target_port,
               uint16_t listen_port = 0);
  // Stops accepting, closes every connection (queued bytes are discarded), joins the thread.
  ~LinkEmulator();
  LinkEmulator(const LinkEmulator&) = delete;
  LinkEmulator& operator=(const LinkEmulator&) = delete;

  uint16_t port() const;  // the listening port

  // Applies to chunks read from now on; chunks already queued keep their release times.
  // Throws std::invalid_argument (see check_profile) and then changes nothing.
  void set_profile(const LinkProfile& profile);
  LinkProfile profile() const;

  // See "Blackhole" above: on holds all bytes (connections stay open), off releases them.
  void blackhole(bool on);
  bool blackholed() const;

  // Closes every open connection now, both sockets, with a reset (SO_LINGER 0): the client
  // and the target see ECONNRESET or EOF. Queued bytes are discarded. Returns once done.
  // The listener stays open: new connections are accepted as before.
  void cut();

  uint64_t bytes_forwarded() const;  // bytes written to either side, both directions
  std::size_t connections() const;   // connections currently open
  uint64_t bytes_queued() const;     // bytes read but not yet forwarded, all connections

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ce::linkem
