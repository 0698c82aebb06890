#pragma once
// Real ce-node processes for the integration tests: a cloud started from a config (SIGTERM on
// destruction, or kill -9 on demand), an edge driven line by line over pipes, and a tiny model
// deployment on disk.
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/actors/fixtures.hpp"
#include "tests/loopback.hpp"

namespace ce::test {

inline const std::string bin = std::string(CE_BINARY_DIR) + "/tools/";
inline const std::string tokenizer_file = std::string(CE_SOURCE_DIR) + "/data/brown/tokenizer-2048.model";

inline std::string run_capture(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  BOOST_REQUIRE(p);
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  pclose(p);
  return out;
}

// A TCP port that was free a moment ago (for a cloud that must come back on the same port).
inline uint16_t free_port() {
  uint16_t port = 0;
  close(listen_loopback(&port));
  return port;
}

// Resident memory of a process in bytes (VmRSS), 0 if it is gone.
inline uint64_t resident_bytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  return 0;
}

// A cloud ce-node child process; stopped with SIGTERM (its clean shutdown path) on destruction.
struct CloudProcess {
  pid_t pid = -1;
  uint16_t port = 0;
  uint16_t http_port = 0;
  // log_file: where its stderr (the log) goes; empty = the test's own stderr.
  CloudProcess(const std::string& config, const std::string& ready_file, const std::string& log_file = "") {
    std::remove(ready_file.c_str());
    pid = fork();
    if (pid == 0) {
      if (!log_file.empty()) {
        int log = open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (log >= 0) dup2(log, STDERR_FILENO);
      }
      execl((bin + "ce-node").c_str(), "ce-node", "--config", config.c_str(), "--ready-file", ready_file.c_str(),
            static_cast<char*>(nullptr));
      _exit(127);
    }
    for (int i = 0; i < 300 && port == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      std::ifstream in(ready_file);
      unsigned p = 0, h = 0;
      if (in >> p >> h) {
        port = static_cast<uint16_t>(p);
        http_port = static_cast<uint16_t>(h);
      }
    }
    BOOST_REQUIRE_MESSAGE(port != 0, "cloud node did not come up");
  }
  bool alive() const { return pid > 0 && waitpid(pid, nullptr, WNOHANG) == 0; }
  int stop(int signal = SIGTERM) {
    if (pid <= 0) return -1;
    kill(pid, signal);
    int status = 0;
    waitpid(pid, &status, 0);
    pid = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  ~CloudProcess() { stop(); }
};

// An edge ce-node reading prompts on stdin (--stdin --json --trace): one trace line per token
// ("pos P token T SOURCE layer L conf C"), then one JSON line per response.
struct EdgeProcess {
  pid_t pid = -1;
  int to_child = -1, from_child = -1;
  std::string pending;

  EdgeProcess(const std::string& config, const std::vector<std::string>& extra_args, const std::string& log_file) {
    int in[2], out[2];
    // Close-on-exec, so that processes started later (a restarted cloud) do not hold our ends open.
    BOOST_REQUIRE(pipe2(in, O_CLOEXEC) == 0 && pipe2(out, O_CLOEXEC) == 0);
    pid = fork();
    if (pid == 0) {
      dup2(in[0], STDIN_FILENO);
      dup2(out[1], STDOUT_FILENO);
      int log = open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (log >= 0) dup2(log, STDERR_FILENO);
      close(in[1]);
      close(out[0]);
      std::vector<std::string> args = {"ce-node", "--config", config, "--stdin", "--json", "--trace"};
      args.insert(args.end(), extra_args.begin(), extra_args.end());
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv((bin + "ce-node").c_str(), argv.data());
      _exit(127);
    }
    close(in[0]);
    close(out[1]);
    to_child = in[1];
    from_child = out[0];
  }
  void send_prompt(const std::string& prompt) {
    const std::string line = prompt + "\n";
    BOOST_REQUIRE(write(to_child, line.data(), line.size()) == static_cast<ssize_t>(line.size()));
  }
  // The next line of output, or false when none comes within the timeout.
  bool read_line(std::string& line, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      if (auto nl = pending.find('\n'); nl != std::string::npos) {
        line = pending.substr(0, nl);
        pending.erase(0, nl + 1);
        return true;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd p{from_child, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[4096];
      const auto n = read(from_child, buf, sizeof buf);
      if (n <= 0) return false;
      pending.append(buf, static_cast<size_t>(n));
    }
  }
  // Reads trace lines until `tokens` tokens have been reported (or the time is up); returns how many.
  int read_tokens(int tokens, std::chrono::milliseconds timeout) {
    std::string line;
    int traced = 0;
    while (traced < tokens && read_line(line, timeout)) traced += line.rfind("pos ", 0) == 0;
    return traced;
  }
  // Reads up to the response's JSON line; counts the trace lines seen on the way.
  bool read_response(std::string& json_line, std::chrono::milliseconds timeout, int* traced = nullptr) {
    std::string line;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (read_line(line, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()))) {
      if (!line.empty() && line[0] == '{') {
        json_line = line;
        return true;
      }
      if (traced && line.rfind("pos ", 0) == 0) ++*traced;
    }
    return false;
  }
  // Closes stdin and returns the exit status (1 when any response had an error).
  int finish() {
    if (pid <= 0) return -1;
    close(to_child);
    to_child = -1;
    int status = 0;
    waitpid(pid, &status, 0);
    pid = -1;
    close(from_child);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  ~EdgeProcess() {
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    if (to_child >= 0) close(to_child);
  }
};

struct Deployment {
  TempDir dir;
  std::string model_path;
  explicit Deployment(const ModelConfig& model = collab_config(2048)) {
    model_path = write_model(dir, model, 5, tokenizer_file);
  }
  std::string write_config(const std::string& name, const std::string& body) const {
    const std::string path = dir.file(name);
    std::ofstream(path) << "[ce]\nmodel.path = \"" << model_path << "\"\nthreads = 1\n" << body;
    return path;
  }
};

}  // namespace ce::test
