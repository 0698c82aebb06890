#pragma once
// Wires web.hpp into the HTTP API's server: the page at / (edge roles) and CORS (both roles).
//   - GET /: the compiled-in page, text/html; charset=utf-8, no API key needed (the page asks for
//     one and sends it with its own requests).
//   - With ce.http.cors-origins set: every response (errors and streams included) to a request
//     whose Origin is allowed carries Access-Control-Allow-Origin (and Vary: Origin unless it is
//     "*") and exposes X-Request-Id and Retry-After; an OPTIONS preflight from an allowed origin
//     gets 204 with the methods and headers the API takes, one from another origin 403. Without
//     it, no CORS headers and OPTIONS stays unrouted (404), as before.
//   - on_response(req, res), when given, sees every response just before its head is written (the
//     HTTP API counts requests there: httplib's logger runs after the write, so a client could
//     read /metrics before its own request was counted).
// Header-only because ce_http's sources are listed in actors/CMakeLists.txt; only
// actors/http/http_api.cpp includes it (it includes httplib.h).
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <string>

#include "actors/http/web.hpp"

namespace ce {

using ResponseHook = std::function<void(const httplib::Request&, const httplib::Response&)>;

inline void install_web_routes(httplib::Server& server, const std::string& cors_origins, bool serve_page,
                               ResponseHook on_response = {}) {
  if (serve_page)
    server.Get("/", [](const httplib::Request&, httplib::Response& res) {
      const auto page = web_page_html();
      res.set_header("Cache-Control", "no-cache");
      res.set_content(page.data(), page.size(), "text/html; charset=utf-8");
    });
  const CorsPolicy cors(cors_origins);
  // Runs on every response just before its head is written (after the error handler).
  server.set_post_routing_handler([cors, on_response](const httplib::Request& req, httplib::Response& res) {
    if (on_response) on_response(req, res);
    if (!cors.enabled()) return;
    if (res.status == 204) res.headers.erase("Content-Length");  // a 204 has none (httplib adds "0")
    const std::string allowed = cors.allow_origin(req.get_header_value("Origin"));
    if (allowed.empty() || res.has_header("Access-Control-Allow-Origin")) return;
    res.set_header("Access-Control-Allow-Origin", allowed);
    if (allowed != "*") res.set_header("Vary", "Origin");
    res.set_header("Access-Control-Expose-Headers", kCorsExposeHeaders);
  });
  if (!cors.enabled()) return;
  server.Options(R"(.*)", [cors](const httplib::Request& req, httplib::Response& res) {
    res.set_header("Allow", kCorsAllowMethods);
    const std::string origin = req.get_header_value("Origin");
    if (!origin.empty() && cors.allow_origin(origin).empty()) {
      res.status = 403;
      const nlohmann::json body = {{"error",
                                    {{"message", "origin " + origin + " is not in ce.http.cors-origins"},
                                     {"type", "invalid_request_error"},
                                     {"param", nullptr},
                                     {"code", "cors_origin_not_allowed"}}}};
      res.set_content(body.dump(), "application/json");
      return;
    }
    res.status = 204;
    if (origin.empty()) return;  // a plain OPTIONS: Allow says it
    res.set_header("Access-Control-Allow-Methods", kCorsAllowMethods);
    res.set_header("Access-Control-Allow-Headers", kCorsAllowHeaders);
    res.set_header("Access-Control-Max-Age", kCorsMaxAge);
  });
}

}  // namespace ce
