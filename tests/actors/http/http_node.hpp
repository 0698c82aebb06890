#pragma once
// A node serving the HTTP API for the HTTP tests, over a tiny random model with the shipped
// tokenizer: one process holding cloud and edge linked over loopback (or one role alone), or, with
// cloud_delay_ms, an edge whose cloud runs apart behind an emulated link of that delay each way
// (every cloud token then takes at least twice the delay).
#include <boost/test/unit_test.hpp>

#include <httplib.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "actors/http/http_api.hpp"
#include "actors/node/node.hpp"
#include "linkem/link_emulator.hpp"
#include "tests/actors/fixtures.hpp"

namespace ce::test {

inline const std::string http_tokenizer_file = std::string(CE_SOURCE_DIR) + "/data/brown/tokenizer-2048.model";

struct HttpNodeOptions {
  Role role = Role::both;
  bool with_cloud = true;     // an edge waits for its cloud link before serving
  double cloud_delay_ms = 0;  // > 0: the cloud runs apart behind a link of this delay (role edge)
};

struct HttpNode {
  TempDir dir;
  std::unique_ptr<Node> cloud;
  std::unique_ptr<linkem::LinkEmulator> link;
  std::unique_ptr<Node> node;
  std::unique_ptr<HttpApi> api;

  explicit HttpNode(const std::function<void(NodeConfig&)>& tweak = {}, HttpNodeOptions o = {}) {
    const auto model = write_model(dir, collab_config(2048), 11, http_tokenizer_file);
    auto c = node_config(o.cloud_delay_ms > 0 ? Role::edge : o.role, model);
    c.max_tokens = 16;
    if (o.cloud_delay_ms > 0) {
      cloud = std::make_unique<Node>(node_config(Role::cloud, model));
      linkem::LinkProfile delayed;
      delayed.delay_ms = o.cloud_delay_ms;
      link = std::make_unique<linkem::LinkEmulator>(delayed, "127.0.0.1", cloud->cloud_port());
      c.cloud_port = link->port();
    }
    if (tweak) tweak(c);
    node = std::make_unique<Node>(c);
    if (c.role != Role::cloud && o.with_cloud) BOOST_REQUIRE(node->wait_for_cloud(std::chrono::seconds(10)));
    api = std::make_unique<HttpApi>(*node);
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", api->port());
    c.set_read_timeout(60, 0);
    return c;
  }
  httplib::Result post(const nlohmann::json& body, const httplib::Headers& headers = {}) const {
    return client().Post("/v1/completions", headers, body.dump(), "application/json");
  }
  nlohmann::json get_json(const std::string& path) const {
    auto r = client().Get(path.c_str());
    BOOST_REQUIRE(r);
    BOOST_TEST(r->status == 200);
    return nlohmann::json::parse(r->body);
  }
};

}  // namespace ce::test
