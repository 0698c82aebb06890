#pragma once
// The HTTP API's admission of completions: at most `running` at once; beyond them, up to
// `waiting` requests wait in a FIFO (an earlier arrival always starts first) for at most a
// timeout. Header-only (ce_http's sources are listed in actors/CMakeLists.txt; this keeps that
// list as it is). Thread-safe: every HTTP worker thread calls acquire/release.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>

namespace ce {

class WaitQueue {
 public:
  enum class Outcome {
    admitted,     // a slot is held: call release() when the response is done
    queue_full,   // `waiting` requests wait already
    timed_out,    // waited the whole timeout without a slot
    abandoned,    // still_wanted() said no (the client left) or the queue was closed
  };

  WaitQueue(int running, int waiting) : max_running_(running), max_waiting_(waiting) {}

  // Takes a slot at once when one is free and nobody waits; else waits in line. still_wanted is
  // asked every `poll` while waiting (the HTTP API: is the client still connected?). *waited gets
  // the time spent in line.
  Outcome acquire(std::chrono::steady_clock::duration timeout, const std::function<bool()>& still_wanted,
                  std::chrono::steady_clock::duration* waited = nullptr,
                  std::chrono::steady_clock::duration poll = std::chrono::milliseconds(100)) {
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    const auto deadline = start + timeout;
    std::unique_lock<std::mutex> lock(mutex_);
    if (waited) *waited = {};
    if (closed_) return Outcome::abandoned;
    if (running_ < max_running_ && line_.empty()) {
      ++running_;
      return Outcome::admitted;
    }
    if (static_cast<int>(line_.size()) >= max_waiting_) return Outcome::queue_full;
    const uint64_t ticket = next_ticket_++;
    line_.push_back(ticket);
    Outcome outcome = Outcome::admitted;
    for (;;) {
      if (closed_) {
        outcome = Outcome::abandoned;
        break;
      }
      if (line_.front() == ticket && running_ < max_running_) break;
      const auto now = clock::now();
      if (now >= deadline) {
        outcome = Outcome::timed_out;
        break;
      }
      if (still_wanted) {
        lock.unlock();
        const bool wanted = still_wanted();
        lock.lock();
        if (!wanted) {
          outcome = Outcome::abandoned;
          break;
        }
        if (line_.front() == ticket && running_ < max_running_) break;
      }
      changed_.wait_until(lock, std::min(deadline, clock::now() + poll));
    }
    for (auto it = line_.begin(); it != line_.end(); ++it)
      if (*it == ticket) {
        line_.erase(it);
        break;
      }
    if (outcome == Outcome::admitted) ++running_;
    if (waited) *waited = clock::now() - start;
    changed_.notify_all();  // the next in line may now be at the front (and a slot may be free)
    return outcome;
  }

  void release() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      --running_;
    }
    changed_.notify_all();
  }

  // Everyone waiting gives up (abandoned), and later calls too: the server is stopping.
  void close() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      closed_ = true;
    }
    changed_.notify_all();
  }

  int running() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return running_;
  }
  int waiting() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int>(line_.size());
  }
  int max_running() const { return max_running_; }
  int max_waiting() const { return max_waiting_; }

 private:
  const int max_running_;
  const int max_waiting_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  int running_ = 0;
  std::deque<uint64_t> line_;  // tickets in arrival order
  uint64_t next_ticket_ = 0;
  bool closed_ = false;
};

}  // namespace ce
