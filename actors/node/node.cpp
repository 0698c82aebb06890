#include "actors/node/node.hpp"

#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>
#include <unistd.h>

#include <algorithm>
#include <thread>

#include "actors/cloud/cloud_inference.hpp"
#include "actors/cloud/context_manager.hpp"
#include "actors/edge/edge_inference.hpp"
#include "actors/edge/exit_decider.hpp"
#include "actors/edge/uploader.hpp"
#include "actors/errors.hpp"
#include "actors/log.hpp"
#include "actors/node/basp_guard.hpp"
#include "messages/codec.hpp"
#include "model/runtime.hpp"
#include "model/split_plan.hpp"
#include "model/weights.hpp"

namespace ce {

struct Node::Actors {
  context_manager_actor context_manager;
  cloud_inference_actor cloud_inference;
  exit_decider_actor exit_decider;
  uploader_actor uploader;
  edge_inference_actor edge_inference;
};

namespace {

// A query the node could not answer is reported, not dropped: its caller gets the empty value.
void log_dropped(caf::actor_system& system, const char* what, const caf::error& e) {
  CE_LOG(warning, "node", what << " unavailable: " << system.render(e));
}

// What this node's role needs of the checkpoint (ce.model.parts): an edge, its layers, the
// embedding and its exits; a cloud, its layers and the head. The split comes from the config
// (the model's default split when ce.split.layer is 0).
ModelParts parts_to_load(const NodeConfig& config) {
  const bool role_parts = config.model_parts == "role" || (config.model_parts == "auto" && config.role == Role::edge);
  if (!role_parts || config.role == Role::both) return ModelParts::all();
  const auto split = SplitPlan::from_config(load_model_config(config.model_path + "/config.json"), config.split_layer).split;
  return config.role == Role::edge ? ModelParts::edge(split) : ModelParts::cloud(split);
}

std::string host_name() {
  char buf[256] = {0};
  gethostname(buf, sizeof buf - 1);
  return buf;
}

}  // namespace

Node::Node(NodeConfig config) : config_(std::move(config)), actors_(std::make_unique<Actors>()) {
  set_log_level(config_.log_level);
  // ce.threads = 0: all cores for a node of one role; half of them when it computes both halves,
  // whose sections run side by side (collaborative completions on 2 cores, eight at once: ~2,700
  // tokens/s with one thread each, ~1,500 with both wanting two).
  int threads = config_.compute_threads;
  if (threads == 0 && config_.role == Role::both)
    threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency() / 2));
  configure_threads(threads);
  const auto precision = weight_precision_named(config_.model_weights);
  if (!precision) throw std::runtime_error("ce.model.weights = " + config_.model_weights + ": unknown precision");
  model_ = Model::load(config_.model_path, *precision, parts_to_load(config_));
  const auto& mc = model_->config();
  const auto plan = SplitPlan::from_config(mc, config_.split_layer);
  config_.split_layer = plan.split;
  config_.exit_threshold = config_.threshold_override().value_or(mc.default_threshold);
  CE_LOG(info, "node", "role " << to_string(config_.role) << ", model " << mc.name << " (hash "
                               << model_->weights_hash() << ", " << model_->precision() << " weights, "
                               << model_->weight_bytes() / (1 << 20) << " MiB), " << plan.describe());

  caf_config_ = std::make_unique<caf::actor_system_config>();
  caf_config_->load<caf::io::middleman>();
  if (config_.tls_enabled()) {
    // Mutual TLS: CAF's OpenSSL module presents our certificate and accepts only peers whose
    // certificate the CA file vouches for; no unauthenticated byte reaches BASP.
    caf_config_->load<caf::openssl::manager>();
    caf_config_->set("openssl.certificate", config_.tls_certificate);
    caf_config_->set("openssl.key", config_.tls_key);
    caf_config_->set("openssl.cafile", config_.tls_ca);
  }
  register_errors(*caf_config_);
  caf_config_->set("scheduler.max-threads", static_cast<size_t>(config_.actor_threads));
  caf_config_->set("scheduler.policy", caf::atom("sharing"));
  caf_config_->set("logger.console", caf::atom("none"));
  caf_config_->set("logger.file-verbosity", caf::atom("quiet"));
  system_ = std::make_unique<caf::actor_system>(*caf_config_);

  const bool cloud = config_.role == Role::cloud || config_.role == Role::both;
  const bool edge = config_.role == Role::edge || config_.role == Role::both;
  if (cloud) {
    actors_->cloud_inference = spawn_cloud_inference(*system_, model_, plan.split,
                                                     {config_.batch_max_sessions, config_.batch_catch_up_chunk, config_.batch_gather});
    actors_->context_manager = spawn_context_manager(*system_, model_, plan, config_, actors_->cloud_inference);
    // CAF listens on loopback only; the guard owns the public address (see basp_guard.hpp).
    auto port = config_.tls_enabled()
                    ? caf::openssl::publish(actors_->context_manager, 0, "127.0.0.1", true)
                    : system_->middleman().publish(actors_->context_manager, 0, "127.0.0.1", true);
    if (!port) throw std::runtime_error("cannot publish the context manager: " + system_->render(port.error()));
    BaspGuard::Options guard;
    guard.listen_host = config_.listen_host;
    guard.listen_port = config_.listen_port;
    guard.target_port = *port;
    guard.inspect_basp = !config_.tls_enabled();
    // The largest frame the context manager takes, plus room for CAF's own message envelope.
    guard.max_payload = static_cast<uint32_t>(
        wire::limits_for(static_cast<uint32_t>(mc.dim), static_cast<uint32_t>(mc.max_seq)).max_frame_bytes + (3u << 20));
    guard.max_connections = config_.max_connections;
    guard.max_connections_per_address = config_.max_connections_per_address;
    guard.handshake_timeout = config_.handshake_timeout;
    guard_ = std::make_unique<BaspGuard>(guard);
    cloud_port_ = guard_->port();
    CE_LOG(info, "node", "cloud listening on " << config_.listen_host << ":" << cloud_port_
                                               << (config_.tls_enabled() ? " (mutual TLS)" : " (plain TCP)")
                                               << ", at most " << config_.max_connections << " connections, "
                                               << config_.max_connections_per_address << " per address");
  }
  if (edge) {
    if (config_.role == Role::both) {
      config_.cloud_host = config_.listen_host == "0.0.0.0" ? "127.0.0.1" : config_.listen_host;
      config_.cloud_port = cloud_port_;
    }
    wire::Hello hello;
    hello.model_id = mc.name;
    hello.weights_hash = model_->weights_hash();
    hello.split_layer = static_cast<uint32_t>(plan.split);
    hello.hidden_dim = static_cast<uint32_t>(mc.dim);
    hello.client_name = host_name();
    actors_->exit_decider = spawn_exit_decider(*system_, config_);
    actors_->uploader = spawn_uploader(*system_, config_, hello, actors_->exit_decider);
    actors_->edge_inference =
        spawn_edge_inference(*system_, model_, plan, config_, actors_->uploader, actors_->exit_decider);
  }
}

Node::~Node() {
  guard_.reset();  // no new connections while the actors stop
  if (!system_) return;
  auto stop = [](const auto& actor) {
    if (actor) caf::anon_send_exit(actor, caf::exit_reason::user_shutdown);
  };
  stop(actors_->edge_inference);
  stop(actors_->uploader);
  stop(actors_->exit_decider);
  stop(actors_->context_manager);
  stop(actors_->cloud_inference);
  // A detached actor's thread ends only when its last handle is gone: drop ours first.
  *actors_ = Actors{};
  system_.reset();
}

caf::actor_system& Node::system() { return *system_; }
uploader_actor Node::uploader() const { return actors_->uploader; }
cloud_inference_actor Node::cloud_inference() const { return actors_->cloud_inference; }

LinkStats Node::link_stats() {
  LinkStats out;
  if (!actors_->uploader) return out;
  caf::scoped_actor self{*system_};
  self->request(actors_->uploader, std::chrono::seconds(1), stats_atom::value)
      .receive([&](const LinkStats& stats) { out = stats; }, [&](caf::error& e) { log_dropped(*system_, "link stats", e); });
  return out;
}

bool Node::wait_for_cloud(std::chrono::milliseconds timeout) {
  if (!actors_->uploader) return false;
  caf::scoped_actor self{*system_};
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (link_stats().connected) {
      // The decider hears of the link from the uploader; let that message land first.
      self->request(actors_->exit_decider, std::chrono::seconds(1), policy_atom::value)
          .receive([&](const Policy&) {}, [&](caf::error& e) { log_dropped(*system_, "exit decider", e); });
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

GenerateResult Node::generate(GenerateRequest request, const std::function<bool(const TokenEvent&)>& on_token,
                              std::chrono::milliseconds timeout) {
  GenerateResult result;
  if (!actors_->edge_inference) {
    result.error = "this node has no edge role";
    return result;
  }
  caf::scoped_actor self{*system_};
  request.listener = caf::actor_cast<response_listener_actor>(self);
  self->send(actors_->edge_inference, generate_atom::value, std::move(request));
  bool done = false, cancelled = false;
  while (!done) {
    self->receive([&](token_atom, const TokenEvent& ev) {
                    if (cancelled || !on_token || on_token(ev)) return;
                    cancelled = true;
                    self->send(actors_->edge_inference, cancel_atom::value, ev.generation);
                  },
                  [&](done_atom, GenerateResult& r) {
                    result = std::move(r);
                    done = true;
                  },
                  caf::after(timeout) >> [&] {
                    result.error = "no answer from the edge within the response timeout";
                    done = true;
                  });
  }
  return result;
}

std::vector<std::pair<std::string, uint64_t>> Node::cloud_requests_by_client() {
  std::vector<std::pair<std::string, uint64_t>> out;
  if (!actors_->context_manager) return out;
  caf::scoped_actor self{*system_};
  self->request(actors_->context_manager, std::chrono::seconds(5), clients_atom::value)
      .receive([&](ClientRequests& r) { out = std::move(r.counts); },
               [&](caf::error& e) { log_dropped(*system_, "client request counts", e); });
  return out;
}

bool Node::drain(std::chrono::milliseconds timeout, const std::function<bool()>& keep_waiting) {
  if (!actors_->context_manager) return true;
  caf::anon_send(actors_->context_manager, drain_atom::value);
  const auto start = std::chrono::steady_clock::now();
  auto last_note = start;
  for (;;) {
    const auto live = cloud_stats().live;
    const auto now = std::chrono::steady_clock::now();
    if (live == 0) {
      CE_LOG(info, "node", "drained: no open sessions left");
      return true;
    }
    if (now - last_note >= std::chrono::seconds(5)) {
      last_note = now;
      CE_LOG(info, "node", "draining: " << live << " open sessions");
    }
    bool go_on = now - start < timeout;
    if (go_on && keep_waiting) go_on = keep_waiting();
    else if (go_on) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!go_on) {
      CE_LOG(warning, "node", "stopping with " << live << " open sessions: their edges move them to another cloud");
      return false;
    }
  }
}

BaspGuard::Stats Node::listener_stats() const { return guard_ ? guard_->stats() : BaspGuard::Stats{}; }

CloudStats Node::cloud_stats() {
  CloudStats out;
  if (!actors_->context_manager) return out;
  caf::scoped_actor self{*system_};
  self->request(actors_->context_manager, std::chrono::seconds(5), stats_atom::value)
      .receive([&](const CloudStats& s) { out = s; }, [&](caf::error& e) { log_dropped(*system_, "cloud stats", e); });
  // The scheduler answers between its steps (each a few milliseconds).
  self->request(actors_->cloud_inference, std::chrono::seconds(5), stats_atom::value)
      .receive([&](const CloudStats::Batching& b) { out.batching = b; },
               [&](caf::error& e) { log_dropped(*system_, "cloud batching stats", e); });
  return out;
}

}  // namespace ce
