#pragma once
// A running cecollm node: one per machine, its role from the config. Loads the model once,
// checks the split against it, starts CAF (middleman for remote links) and the role's actors:
//   cloud: context_manager (published by CAF on an ephemeral loopback port, reached through the
//          BaspGuard relay on ce.listen.host:port) + cloud_inference
//   edge:  exit_decider + uploader (connects to ce.cloud.host:port) + edge_inference
//   both:  all five in one process; the edge links to the local cloud over loopback.
#include <caf/fwd.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "actors/cloud/protocol.hpp"
#include "actors/edge/protocol.hpp"
#include "actors/node/basp_guard.hpp"
#include "config/node_config.hpp"

namespace ce {

class Model;

class Node {
 public:
  explicit Node(NodeConfig config);  // throws std::runtime_error with a clear message
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // The node's config with the model's defaults filled in: split_layer is the split in use and
  // exit_threshold the θ in use, whatever the file left to the model.
  const NodeConfig& config() const { return config_; }
  const Model& model() const { return *model_; }
  std::shared_ptr<const Model> model_ptr() const { return model_; }
  caf::actor_system& system();
  uint16_t cloud_port() const { return cloud_port_; }  // the public port (cloud roles)

  // Edge roles: the uploader (tests feed it rows directly). Cloud roles: cloud_inference.
  uploader_actor uploader() const;
  cloud_inference_actor cloud_inference() const;

  // Edge roles: true once the cloud link is up (polls the uploader until `timeout`).
  bool wait_for_cloud(std::chrono::milliseconds timeout);
  // Edge roles: runs one response, calling on_token for each token as it comes; on_token returning
  // false ends the response early (FinishReason::cancelled; a token already under way may still
  // arrive in the result). Blocking; safe to call from several threads at once.
  GenerateResult generate(GenerateRequest request, const std::function<bool(const TokenEvent&)>& on_token = {},
                          std::chrono::milliseconds timeout = std::chrono::minutes(10));
  // Cloud roles: the context manager's counts.
  CloudStats cloud_stats();
  // Cloud roles: takes no new sessions (edges place them elsewhere) and waits until the open
  // ones have ended, `timeout` has passed or keep_waiting() (asked between checks, which it may
  // pace by blocking up to ~100 ms) says no more; true when none is left.
  bool drain(std::chrono::milliseconds timeout, const std::function<bool()>& keep_waiting = {});
  // Cloud roles: connections on the public port, as its guard counts them.
  BaspGuard::Stats listener_stats() const;
  // Cloud roles: infer requests served per client (the name in each edge's Hello).
  std::vector<std::pair<std::string, uint64_t>> cloud_requests_by_client();
  // Edge roles: the cloud link and the positions queued for upload, not yet acknowledged.
  LinkStats link_stats();

 private:
  struct Actors;
  NodeConfig config_;
  std::shared_ptr<const Model> model_;
  std::unique_ptr<caf::actor_system_config> caf_config_;
  std::unique_ptr<caf::actor_system> system_;
  std::unique_ptr<Actors> actors_;
  std::unique_ptr<BaspGuard> guard_;  // cloud roles: the public listener in front of CAF's
  uint16_t cloud_port_ = 0;
};

}  // namespace ce
