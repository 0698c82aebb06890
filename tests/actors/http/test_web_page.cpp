// The HTTP API's browser side (issue 22) over real sockets: the web page at / (compiled in from
// actors/http/web/index.html) and CORS (ce.http.cors-origins): allowed origins get
// Access-Control-Allow-Origin on every response, streams and errors included; OPTIONS preflights
// get 204 with the methods and headers the API takes; nothing of it without the key. The page in a
// real browser: tests/integration/test_web_page.sh.
#include <boost/test/unit_test.hpp>

#include <httplib.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "actors/http/http_api.hpp"
#include "actors/http/web.hpp"
#include "actors/node/node.hpp"
#include "tests/actors/fixtures.hpp"
#include "tests/actors/http/http_node.hpp"

using namespace ce;
using namespace ce::test;
using json = nlohmann::json;

namespace {


// One process holding cloud and edge (or one role) and the HTTP API (http_node.hpp).
struct WebServer : HttpNode {
  explicit WebServer(const std::string& cors_origins, Role role = Role::both, const std::string& api_key = "")
      : HttpNode(
            [&](NodeConfig& c) {
              c.max_tokens = 8;
              c.http_cors_origins = cors_origins;
              c.http_api_key = api_key;
            },
            {role}) {}
};

std::string file_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  BOOST_REQUIRE_MESSAGE(in, "cannot read " << path);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

const json completion = {{"prompt", "The jury said"}, {"max_tokens", 4}};

// What a preflight of a completion from `origin` asks.
httplib::Headers preflight_headers(const std::string& origin) {
  return {{"Origin", origin},
          {"Access-Control-Request-Method", "POST"},
          {"Access-Control-Request-Headers", "authorization,content-type,x-request-id"}};
}

}  // namespace

BOOST_AUTO_TEST_SUITE(web_page)

BOOST_AUTO_TEST_CASE(the_page_is_served_at_the_root_of_an_edge) {
  WebServer s("");
  auto r = s.client().Get("/");
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 200);
  BOOST_TEST(r->get_header_value("Content-Type") == "text/html; charset=utf-8");
  // Byte for byte the source file: the build embeds it whole (no truncation, no escaping).
  const std::string file = file_text(std::string(CE_SOURCE_DIR) + "/actors/http/web/index.html");
  BOOST_TEST(r->body.size() == file.size());
  BOOST_TEST((r->body == file));
  BOOST_TEST((std::string(web_page_html()) == file));
  // Self-contained: nothing loaded from elsewhere (no CDN, no fonts), and it streams completions.
  for (const char* outside : {"src=\"http", "href=\"http", "src=\"//", "href=\"//", "@import", "url(", "stylesheet"})
    BOOST_TEST(r->body.find(outside) == std::string::npos, "the page loads something: " << outside);
  for (const char* part : {"v1/completions", "stream: true", "x_ce", "id=\"finish\"", "tok ", "Authorization"})
    BOOST_TEST(r->body.find(part) != std::string::npos, "the page lacks " << part);
  // / needs no API key (the page asks for one; the API behind it still does).
  WebServer keyed("", Role::both, "sekrit");
  r = keyed.client().Get("/");
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 200);
  r = keyed.client().Post("/v1/completions", completion.dump(), "application/json");
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 401);
}

BOOST_AUTO_TEST_CASE(a_cloud_node_serves_no_page) {
  WebServer s("", Role::cloud);
  auto r = s.client().Get("/");
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 404);
  BOOST_TEST(s.client().Get("/health")->status == 200);
}

BOOST_AUTO_TEST_CASE(no_cors_headers_without_the_key) {
  WebServer s("");
  httplib::Headers origin = {{"Origin", "http://app.example"}};
  for (const char* path : {"/", "/health", "/metrics", "/v1/models"}) {
    auto r = s.client().Get(path, origin);
    BOOST_REQUIRE(r);
    BOOST_TEST(r->status == 200);
    BOOST_TEST(!r->has_header("Access-Control-Allow-Origin"), path);
  }
  auto r = s.client().Post("/v1/completions", origin, completion.dump(), "application/json");
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 200);
  BOOST_TEST(!r->has_header("Access-Control-Allow-Origin"));
  // No preflight answer either: OPTIONS stays unrouted, as before the key existed.
  r = s.client().Options("/v1/completions", preflight_headers("http://app.example"));
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 404);
  BOOST_TEST(!r->has_header("Access-Control-Allow-Origin"));
  BOOST_TEST(!r->has_header("Access-Control-Allow-Methods"));
}

BOOST_AUTO_TEST_CASE(listed_origins_get_cors_headers_and_others_none) {
  WebServer s("https://App.example:8443/, http://localhost:5173", Role::both, "sekrit");
  const httplib::Headers key = {{"Authorization", "Bearer sekrit"}};
  auto with = [&](httplib::Headers h, const std::string& origin) {
    h.emplace("Origin", origin);
    return h;
  };
  // A listed origin (compared without case) gets its own origin back, Vary and the exposed headers.
  auto r = s.client().Get("/health", with({}, "http://localhost:5173"));
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 200);
  BOOST_TEST(r->get_header_value("Access-Control-Allow-Origin") == "http://localhost:5173");
  BOOST_TEST(r->get_header_value("Vary") == "Origin");
  BOOST_TEST(r->get_header_value("Access-Control-Expose-Headers").find("X-Request-Id") != std::string::npos);
  BOOST_TEST(r->get_header_value_count("Access-Control-Allow-Origin") == 1u);
  r = s.client().Get("/v1/models", with(key, "https://app.example:8443"));
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 200);
  BOOST_TEST(r->get_header_value("Access-Control-Allow-Origin") == "https://app.example:8443");
  // Another origin, another port or scheme of a listed host, or no Origin at all: no CORS headers.
  for (const char* other : {"http://evil.example", "https://app.example", "http://app.example:8443",
                            "http://localhost:5174", "null"}) {
    r = s.client().Get("/health", with({}, other));
    BOOST_REQUIRE(r);
    BOOST_TEST(r->status == 200);
    BOOST_TEST(!r->has_header("Access-Control-Allow-Origin"), other);
  }
  r = s.client().Get("/health");
  BOOST_REQUIRE(r);
  BOOST_TEST(!r->has_header("Access-Control-Allow-Origin"));

  // Preflight from a listed origin: 204, no body, the methods and the headers the API reads.
  r = s.client().Options("/v1/completions", preflight_headers("http://localhost:5173"));
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 204);
  BOOST_TEST(r->body.empty());
  BOOST_TEST(r->get_header_value("Access-Control-Allow-Origin") == "http://localhost:5173");
  const std::string methods = r->get_header_value("Access-Control-Allow-Methods");
  for (const char* m : {"GET", "POST", "OPTIONS"}) BOOST_TEST(methods.find(m) != std::string::npos, m);
  const std::string headers = r->get_header_value("Access-Control-Allow-Headers");
  for (const char* h : {"Authorization", "Content-Type", "X-Request-Id"}) BOOST_TEST(headers.find(h) != std::string::npos, h);
  BOOST_TEST(!r->get_header_value("Access-Control-Max-Age").empty());
  BOOST_TEST(!r->has_header("Content-Length"));
  // ...for any path (a browser preflights each one it calls), and without the API key.
  r = s.client().Options("/tokenize", preflight_headers("https://app.example:8443"));
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 204);
  BOOST_TEST(r->get_header_value("Access-Control-Allow-Origin") == "https://app.example:8443");
  // Preflight from another origin: 403, no CORS headers (the browser then refuses the call).
  r = s.client().Options("/v1/completions", preflight_headers("http://evil.example"));
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 403);
  BOOST_TEST(!r->has_header("Access-Control-Allow-Origin"));
  BOOST_TEST(!r->has_header("Access-Control-Allow-Methods"));
  BOOST_TEST(json::parse(r->body)["error"]["code"] == "cors_origin_not_allowed");

  // The calls themselves: a completion, a streamed one, and errors (so that the page can show
  // them) carry the header too; the keep-alive connection then serves the next request.
  auto c = s.client();
  r = c.Post("/v1/completions", with(key, "http://localhost:5173"), completion.dump(), "application/json");
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 200);
  BOOST_TEST(r->get_header_value("Access-Control-Allow-Origin") == "http://localhost:5173");
  json streamed = completion;
  streamed["stream"] = true;
  r = c.Post("/v1/completions", with(key, "http://localhost:5173"), streamed.dump(), "application/json");
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 200);
  BOOST_TEST(r->get_header_value("Content-Type") == "text/event-stream");
  BOOST_TEST(r->get_header_value("Access-Control-Allow-Origin") == "http://localhost:5173");
  BOOST_TEST(r->body.find("data: [DONE]") != std::string::npos);
  r = c.Post("/v1/completions", with({}, "http://localhost:5173"), completion.dump(), "application/json");
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 401);
  BOOST_TEST(r->get_header_value("Access-Control-Allow-Origin") == "http://localhost:5173");
  r = c.Get("/nowhere", with({}, "http://localhost:5173"));
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 404);
  BOOST_TEST(r->get_header_value("Access-Control-Allow-Origin") == "http://localhost:5173");
  r = c.Post("/v1/completions", with(key, "http://evil.example"), completion.dump(), "application/json");
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 200);
  BOOST_TEST(!r->has_header("Access-Control-Allow-Origin"));
}

BOOST_AUTO_TEST_CASE(a_star_allows_every_origin) {
  WebServer s("*");
  auto r = s.client().Get("/health", {{"Origin", "http://anything.example:1234"}});
  BOOST_REQUIRE(r);
  BOOST_TEST(r->get_header_value("Access-Control-Allow-Origin") == "*");
  BOOST_TEST(!r->has_header("Vary"));
  r = s.client().Options("/v1/completions", preflight_headers("null"));
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 204);
  BOOST_TEST(r->get_header_value("Access-Control-Allow-Origin") == "*");
  BOOST_TEST(r->get_header_value("Access-Control-Allow-Headers").find("Authorization") != std::string::npos);
  // A plain OPTIONS (no Origin): 204 with Allow, no CORS headers.
  r = s.client().Options("/v1/completions");
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 204);
  BOOST_TEST(r->get_header_value("Allow") == "GET, POST, OPTIONS");
  BOOST_TEST(!r->has_header("Access-Control-Allow-Origin"));
  // A cloud node's /health and /metrics too.
  WebServer cloud("*", Role::cloud);
  r = cloud.client().Get("/metrics", {{"Origin", "http://dash.example"}});
  BOOST_REQUIRE(r);
  BOOST_TEST(r->status == 200);
  BOOST_TEST(r->get_header_value("Access-Control-Allow-Origin") == "*");
}

BOOST_AUTO_TEST_CASE(the_cors_key_is_checked) {
  BOOST_TEST(parse_cors_origins("").empty());
  BOOST_TEST((parse_cors_origins("*") == std::vector<std::string>{"*"}));
  BOOST_TEST((parse_cors_origins(" HTTPS://App.Example:8443/,http://localhost:5173  http://[::1]:80") ==
              std::vector<std::string>{"https://app.example:8443", "http://localhost:5173", "http://[::1]:80"}));
  for (const char* bad : {"app.example", "ftp://app.example", "https://app.example/path", "https://", "https://:80",
                          "*, https://app.example", "https://user@app.example", "http://a.example?x"})
    BOOST_CHECK_THROW(parse_cors_origins(bad), ConfigError);
  // Through a config file and --set, with the key's own checks.
  auto c = parse_node_config_text(
      "[ce]\nrole = \"edge\"\nmodel.path = \"m\"\n[ce.http]\ncors-origins = \"https://a.example, https://b.example\"\n",
      "t.ini", "/tmp");
  BOOST_TEST(c.http_cors_origins == "https://a.example, https://b.example");
  BOOST_TEST(NodeConfig().http_cors_origins.empty());  // the default: no CORS
  try {
    apply_override(c, "ce.http.cors-origins=a.example", "/tmp");
    BOOST_FAIL("a bare host was accepted");
  } catch (const ConfigError& e) {
    BOOST_TEST(std::string(e.what()).find("ce.http.cors-origins") != std::string::npos, e.what());
  }
  BOOST_TEST(config_keys_help().find("ce.http.cors-origins") != std::string::npos);
  BOOST_TEST(describe(c).find("cors-origins") != std::string::npos);
  // The policy itself.
  CorsPolicy none("");
  BOOST_TEST(!none.enabled());
  BOOST_TEST(none.allow_origin("http://a.example").empty());
  CorsPolicy listed("https://a.example");
  BOOST_TEST(listed.allow_origin("https://A.example") == "https://A.example");
  BOOST_TEST(listed.allow_origin("https://a.example.evil").empty());
  BOOST_TEST(listed.allow_origin("").empty());
  BOOST_TEST(CorsPolicy("*").allow_origin("http://x.example") == "*");
}

BOOST_AUTO_TEST_SUITE_END()
