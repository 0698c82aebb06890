#include "actors/log.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <utility>

namespace ce {
namespace {
std::atomic<int> current_level{static_cast<int>(LogLevel::info)};
std::mutex write_mutex;
thread_local std::string request_id;
}  // namespace

void set_log_request_id(std::string id) { request_id = std::move(id); }
const std::string& log_request_id() { return request_id; }

void set_log_level(LogLevel level) { current_level = static_cast<int>(level); }
bool log_enabled(LogLevel level) { return static_cast<int>(level) <= current_level.load(); }

void log_line(LogLevel level, const std::string& component, const std::string& text) {
  using namespace std::chrono;
  const auto now = system_clock::now();
  const auto t = system_clock::to_time_t(now);
  const auto ms = duration_cast<milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%H:%M:%S", &tm);
  std::lock_guard<std::mutex> lock(write_mutex);
  std::fprintf(stderr, "%s.%03lld %-7s [%s] %s%s%s\n", stamp, static_cast<long long>(ms), to_string(level),
               component.c_str(), text.c_str(), request_id.empty() ? "" : " req=", request_id.c_str());
}

std::string hex(uint64_t id) {
  std::ostringstream s;
  s << std::hex << id;
  return s.str();
}

}  // namespace ce
