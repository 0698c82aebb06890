#pragma once
// One line per event on stderr: time, level, component, then the event with its session and
// position. Thread-safe; the level comes from ce.log.level.
#include <cstdint>
#include <sstream>
#include <string>

#include "config/node_config.hpp"

namespace ce {

void set_log_level(LogLevel level);
bool log_enabled(LogLevel level);
void log_line(LogLevel level, const std::string& component, const std::string& text);

// The request this thread is serving (the HTTP API sets it for the span of one request, from
// X-Request-Id or generated): log_line ends each of the thread's lines with " req=ID" while it is
// set. Empty: none.
void set_log_request_id(std::string id);
const std::string& log_request_id();

// A session id as log lines show it (hex, as the edge and the cloud both print it).
std::string hex(uint64_t id);

// Usage: CE_LOG(info, "uploader", "session " << id << " acked " << n);
#define CE_LOG(level, component, expr)                                    \
  do {                                                                    \
    if (::ce::log_enabled(::ce::LogLevel::level)) {                       \
      std::ostringstream ce_log_stream_;                                  \
      ce_log_stream_ << expr;                                             \
      ::ce::log_line(::ce::LogLevel::level, component, ce_log_stream_.str()); \
    }                                                                     \
  } while (false)

}  // namespace ce
