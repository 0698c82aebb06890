#pragma once
// The project-wide error enum. Its numeric value travels on the wire as Error.code
// (see messages/protocol.capnp), so values are never renumbered: append new ones before
// the end and move `last_error` along.

#include <cstdint>

namespace ce {

enum class error : uint8_t {
  none = 0,
  bad_config,
  bad_message,
  unknown_session,
  model_mismatch,
  version_mismatch,
  cloud_unreachable,
  overloaded,
  timeout,
  bad_request,
  internal,
  cancelled,  // a request overtaken by a Truncate of its position (a wrong speculation)
};

// The highest value in use; a wire code above it comes from a newer peer.
inline constexpr error last_error = error::cancelled;

inline const char* to_string(error e) {
  switch (e) {
    case error::none: return "none";
    case error::bad_config: return "bad_config";
    case error::bad_message: return "bad_message";
    case error::unknown_session: return "unknown_session";
    case error::model_mismatch: return "model_mismatch";
    case error::version_mismatch: return "version_mismatch";
    case error::cloud_unreachable: return "cloud_unreachable";
    case error::overloaded: return "overloaded";
    case error::timeout: return "timeout";
    case error::bad_request: return "bad_request";
    case error::internal: return "internal";
    case error::cancelled: return "cancelled";
  }
  return "unknown_error";
}

}  // namespace ce
