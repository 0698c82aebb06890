#pragma once
// The HTTP API's browser side, without httplib (so tests and other code need not include it):
//   - the web page served at / on an edge (actors/http/web/index.html, compiled in by
//     actors/http/web/embed.cmake as a raw string literal: one static file, no build step);
//   - the CORS policy of ce.http.cors-origins: which Origin gets Access-Control-Allow-Origin.
// web_routes.hpp wires both into the server (only http_api.cpp includes it).
#include <string>
#include <string_view>
#include <vector>

namespace ce {

// The page at / (text/html; charset=utf-8).
std::string_view web_page_html();

// What a CORS response or preflight says (besides the origin).
constexpr const char* kCorsAllowMethods = "GET, POST, OPTIONS";
constexpr const char* kCorsAllowHeaders = "Authorization, Content-Type, X-Request-Id";
constexpr const char* kCorsExposeHeaders = "X-Request-Id, Retry-After";
constexpr const char* kCorsMaxAge = "600";  // seconds a browser may cache a preflight

class CorsPolicy {
 public:
  // ce.http.cors-origins as parse_cors_origins reads it (throws ConfigError on a bad entry).
  explicit CorsPolicy(const std::string& origins);
  bool enabled() const { return !origins_.empty(); }
  bool any() const { return any_; }
  // Access-Control-Allow-Origin for a request's Origin header: "*" when any origin may, the origin
  // itself when it is listed (compared without case), "" when it gets no CORS headers.
  std::string allow_origin(const std::string& origin) const;

 private:
  std::vector<std::string> origins_;
  bool any_ = false;
};

}  // namespace ce
