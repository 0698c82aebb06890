// ce-linkem: a TCP proxy that emulates a network link (delay, jitter, bandwidth) between two
// cecollm nodes, controlled by commands on stdin. The work lives in ce_linkem.
#include <pthread.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <iostream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

#include "tools/cli.hpp"
#include "linkem/link_emulator.hpp"

namespace {

const char* const kSummary =
    "Forwards every TCP connection accepted on 127.0.0.1:PORT to HOST:PORT through an\n"
    "emulated link: each direction gets the one-way delay, a uniform jitter in [0, jitter]\n"
    "that never reorders bytes, and a bandwidth limit (serialization time per chunk).\n"
    "Prints the listening port alone on the first line of stdout, then runs until SIGINT\n"
    "or SIGTERM. With neither --profile nor the value flags the link adds nothing.\n"
    "\n"
    "Commands on stdin, one per line; each is answered by one line on stdout, 'ok ...' or\n"
    "'error ...' (the end of stdin does not stop the program):\n"
    "  blackhole on|off   on: forward nothing, hold the bytes (connections stay open);\n"
    "                     off: deliver the held bytes in order\n"
    "  cut                close every open connection with a reset (new ones are accepted)\n"
    "  profile FILE       switch to the profile in FILE (applies to bytes read from now on)\n"
    "  delay D, jitter D, bandwidth R\n"
    "                     change one value of the current profile\n"
    "  stats              'stats connections=N bytes_forwarded=N bytes_queued=N\n"
    "                     blackhole=on|off profile=NAME delay_ms=X jitter_ms=X bandwidth_mbit=X'\n"
    "                     (bandwidth_mbit=0: unlimited)\n"
    "  help               list the commands\n"
    "\n"
    "Durations: a number and us, ms or s (20ms, 1.5s). Rates: a number and bit, kbit, mbit or\n"
    "gbit (powers of 1000), or 'unlimited'. Profile files ([link] with name, delay, jitter,\n"
    "bandwidth): bench/links/*.ini.";

const char* const kCommands =
    "commands: blackhole on|off, cut, profile FILE, delay D, jitter D, bandwidth R, stats, help";

std::string stats_line(const ce::linkem::LinkEmulator& emu) {
  auto p = emu.profile();
  std::ostringstream out;
  out << "stats connections=" << emu.connections() << " bytes_forwarded=" << emu.bytes_forwarded()
      << " bytes_queued=" << emu.bytes_queued() << " blackhole=" << (emu.blackholed() ? "on" : "off")
      << " profile=" << p.name << " delay_ms=" << p.delay_ms << " jitter_ms=" << p.jitter_ms
      << " bandwidth_mbit=" << p.bandwidth_mbit;
  return out.str();
}

// One stdin command; returns the answer line.
std::string handle(ce::linkem::LinkEmulator& emu, const std::string& line) {
  std::istringstream in(line);
  std::string cmd, arg;
  in >> cmd;
  std::getline(in, arg);
  // trim the argument (a profile path may contain spaces inside, not at the ends)
  arg.erase(0, arg.find_first_not_of(" \t\r"));
  arg.erase(arg.find_last_not_of(" \t\r") + 1);
  try {
    if (cmd == "blackhole") {
      if (arg != "on" && arg != "off") return "error blackhole needs 'on' or 'off'";
      emu.blackhole(arg == "on");
      return "ok blackhole " + arg;
    }
    if (cmd == "cut") {
      if (!arg.empty()) return "error cut takes no argument";
      auto n = emu.connections();
      emu.cut();
      return "ok cut " + std::to_string(n) + " connection(s)";
    }
    if (cmd == "profile") {
      if (arg.empty()) return "error profile needs a FILE";
      auto p = ce::linkem::load_profile(arg);
      emu.set_profile(p);
      return "ok profile " + ce::linkem::describe(p);
    }
    if (cmd == "delay" || cmd == "jitter" || cmd == "bandwidth") {
      if (arg.empty()) return "error " + cmd + " needs a value";
      auto p = emu.profile();
      if (cmd == "delay") p.delay_ms = ce::linkem::parse_duration_ms(arg);
      if (cmd == "jitter") p.jitter_ms = ce::linkem::parse_duration_ms(arg);
      if (cmd == "bandwidth") p.bandwidth_mbit = ce::linkem::parse_bandwidth_mbit(arg);
      emu.set_profile(p);
      return "ok profile " + ce::linkem::describe(p);
    }
    if (cmd == "stats") return stats_line(emu);
    if (cmd == "help") return std::string("ok ") + kCommands;
    return "error unknown command '" + cmd + "' (" + kCommands + ")";
  } catch (const std::exception& e) {
    return std::string("error ") + e.what();
  }
}

struct Shared {
  std::mutex mutex;
  ce::linkem::LinkEmulator* emu = nullptr;  // null once shutting down
};

// Reads stdin with read(2) rather than std::cin so that the process can exit while this
// thread is blocked (no stdio lock is held).
void command_loop(Shared* shared) {
  std::string pending;
  char buffer[4096];
  for (;;) {
    ssize_t n = ::read(STDIN_FILENO, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // end of stdin: keep running until a signal
    pending.append(buffer, static_cast<size_t>(n));
    size_t nl;
    while ((nl = pending.find('\n')) != std::string::npos) {
      std::string line = pending.substr(0, nl);
      pending.erase(0, nl + 1);
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      std::lock_guard<std::mutex> lock(shared->mutex);
      if (!shared->emu) return;
      std::cout << handle(*shared->emu, line) << std::endl;
    }
  }
}

std::pair<std::string, uint16_t> parse_target(const ce::cli::Parser& cli, const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
    cli.fail("--target needs HOST:PORT, got '" + text + "'");
  std::string host = text.substr(0, colon), port_text = text.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (port_text.find_first_not_of("0123456789") != std::string::npos || port_text.size() > 5)
    cli.fail("--target port must be a number in 1..65535, got '" + port_text + "'");
  long port = std::stol(port_text);
  if (port < 1 || port > 65535) cli.fail("--target port must be in 1..65535, got '" + port_text + "'");
  return {host, static_cast<uint16_t>(port)};
}

extern "C" void on_stop_signal(int) {}  // never runs: the signals are blocked and sigwait()ed

}  // namespace

int main(int argc, char** argv) {
  ce::cli::Parser cli("ce-linkem", kSummary);
  cli.add("listen", "PORT", "port to listen on at 127.0.0.1; 0 picks a free one", "0")
      .add("target", "HOST:PORT", "where each accepted connection is forwarded (required)")
      .add("profile", "FILE", "link profile (bench/links/*.ini); --delay/--jitter/--bandwidth override it")
      .add("delay", "DURATION", "one-way delay per direction, e.g. 20ms", "0ms")
      .add("jitter", "DURATION", "extra delay per chunk, uniform in [0, DURATION]; never reorders", "0ms")
      .add("bandwidth", "RATE", "rate per direction, e.g. 100mbit, 512kbit, 1gbit", "unlimited");
  cli.parse(argc, argv);

  const auto [host, target_port] = parse_target(cli, cli.require("target"));
  const long long listen = cli.get_int("listen");
  if (listen < 0 || listen > 65535) cli.fail("--listen must be in 0..65535, got '" + cli.get("listen") + "'");

  ce::linkem::LinkProfile profile;
  profile.name = "flags";
  try {
    if (cli.has("profile")) profile = ce::linkem::load_profile(cli.get("profile"));
    if (cli.has("delay") || !cli.has("profile")) profile.delay_ms = ce::linkem::parse_duration_ms(cli.get("delay"));
    if (cli.has("jitter") || !cli.has("profile")) profile.jitter_ms = ce::linkem::parse_duration_ms(cli.get("jitter"));
    if (cli.has("bandwidth") || !cli.has("profile"))
      profile.bandwidth_mbit = ce::linkem::parse_bandwidth_mbit(cli.get("bandwidth"));
  } catch (const std::exception& e) {
    cli.fail(e.what());
  }

  // SIGINT/SIGTERM are taken by sigwait in this thread; every thread started below inherits
  // the blocked mask. A handler is installed first because a signal whose disposition is
  // SIG_IGN (as for SIGINT in a background job of a non-interactive shell) is discarded
  // and would never reach sigwait. SIGPIPE: a closed stdout must not kill the proxy.
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGPIPE, SIG_IGN);
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  std::unique_ptr<ce::linkem::LinkEmulator> emu;
  try {
    emu = std::make_unique<ce::linkem::LinkEmulator>(profile, host, target_port, static_cast<uint16_t>(listen));
  } catch (const std::exception& e) {
    std::cerr << "ce-linkem: " << e.what() << "\n";
    return 1;
  }
  std::cout << emu->port() << std::endl;
  std::cerr << "ce-linkem: 127.0.0.1:" << emu->port() << " -> " << host << ":" << target_port << " ("
            << ce::linkem::describe(profile) << ")" << std::endl;

  Shared shared;
  shared.emu = emu.get();
  std::thread(command_loop, &shared).detach();

  int received = 0;
  sigwait(&stop_signals, &received);
  {
    std::lock_guard<std::mutex> lock(shared.mutex);
    shared.emu = nullptr;
    emu.reset();
  }
  std::cerr << "ce-linkem: stopped (" << (received == SIGINT ? "SIGINT" : "SIGTERM") << ")" << std::endl;
  std::cout.flush();
  // The command thread may still be blocked in read(2); _exit skips static destructors
  // that could race with it.
  _exit(0);
}
