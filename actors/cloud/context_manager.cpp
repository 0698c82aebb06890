#include "actors/cloud/context_manager.hpp"

#include <caf/all.hpp>

#include <algorithm>
#include <deque>
#include <optional>
#include <map>
#include <set>

#include "actors/log.hpp"
#include "messages/codec.hpp"
#include "model/cloud_compute.hpp"
#include "model/split_plan.hpp"

namespace ce {
namespace {

using clock_type = std::chrono::steady_clock;
using ContextKey = std::pair<caf::node_id, uint64_t>;

struct ParkedInfer {
  wire::InferRequest request;
  caf::typed_response_promise<std::vector<char>> promise;
};

struct Context {
  std::shared_ptr<CloudCompute> compute;
  PositionRows new_rows;                       // uploaded, not yet handed to cloud_inference; ends at
                                               // the positions held
  uint32_t computed = 0;                       // positions whose KV is filled
  bool busy = false;                           // a job is with cloud_inference
  std::optional<uint32_t> truncate_after_job;  // a Truncate that came while the job held compute
  uint32_t held() const { return new_rows.end(); }
  bool token_ids() const { return new_rows.kind() == RowKind::token_ids; }  // a cloud-only context
  std::deque<ParkedInfer> parked;              // waiting for uploads or for the running job
  uint64_t last_request_id = 0;
  std::vector<char> last_reply;                // for an idempotent retry of the last request
  clock_type::time_point last_activity = clock_type::now();
};

struct ManagerState {
  std::shared_ptr<const Model> model;
  SplitPlan plan;
  NodeConfig config;
  cloud_inference_actor inference;
  wire::Limits limits;
  std::set<caf::node_id> welcomed;
  std::set<caf::actor_addr> watched;  // senders of frames, watched for their node's link going down
  std::map<caf::node_id, std::string> client_names;  // from each edge's Hello
  std::map<std::string, uint64_t> infer_requests;    // per client name, for /metrics
  std::map<ContextKey, Context> contexts;
  std::set<ContextKey> ended;   // evicted or closed: a later request gets unknown_session at once
  std::set<ContextKey> refused;  // first upload refused as overloaded: its requests get overloaded at once
  // Infer requests that overtook the first upload of their session; they wait up to the
  // request deadline for it.
  std::map<ContextKey, std::deque<ParkedInfer>> early;
  uint64_t evictions = 0;
  uint64_t positions_received = 0;  // uploaded positions taken into a context, over all contexts
  uint64_t positions_repeated = 0;  // uploaded positions a context already held (re-sends)
  uint64_t sessions_refused = 0;    // new contexts refused at the count or memory cap
  uint64_t edges_welcomed = 0, edges_refused = 0;
  uint64_t kv_bytes_per_position = 0;
  uint64_t truncates = 0;
  uint64_t positions_rolled_back = 0;  // computed positions that truncates dropped
  bool draining = false;  // stopping (SIGTERM): open contexts go on, new ones are refused
  static inline const char* name = "context_manager";
};

using self_ptr = context_manager_actor::stateful_pointer<ManagerState>;

std::vector<char> error_frame(error code, const std::string& text, uint64_t session = 0, uint64_t request = 0) {
  return wire::encode(wire::ErrorReply{code, text, session, request});
}

uint64_t context_bytes(const ManagerState& st, const Context& c) {
  return c.new_rows.bytes().size() + static_cast<uint64_t>(c.computed) * st.kv_bytes_per_position;
}

uint64_t total_bytes(const ManagerState& st) {
  uint64_t total = 0;
  for (auto& [k, c] : st.contexts) total += context_bytes(st, c);
  return total;
}

void end_context(self_ptr self, const ContextKey& key, const std::string& why) {
  auto it = self->state.contexts.find(key);
  if (it == self->state.contexts.end()) return;
  for (auto& p : it->second.parked)
    p.promise.deliver(error_frame(error::unknown_session, "session ended: " + why, key.second,
                                  p.request.request_id));
  CE_LOG(info, "context", "session " << hex(key.second) << " " << why << " (" << it->second.held() << " positions)");
  self->state.contexts.erase(it);
  if (self->state.ended.size() > 100000) self->state.ended.clear();  // bound the tombstones
  self->state.ended.insert(key);
  self->state.evictions++;
}

void arm_idle_timer(self_ptr self, const ContextKey& key, std::chrono::milliseconds after) {
  self->delayed_send(self, after, idle_atom::value, key.first, key.second);
}

void dispatch(self_ptr self, const ContextKey& key);
void drop_computed(self_ptr self, Context& c, uint32_t keep);

// The job failed part-way: the cloud cannot tell which of its uploads the compute state took in,
// so the context is ended. Its request gets the failure; requests queued behind it and later
// ones get unknown_session at once, which makes the edge rebuild the context from its log.
void fail_context(self_ptr self, const ContextKey& key, const std::string& why) {
  CE_LOG(warning, "context", "session " << hex(key.second) << " failed: " << why);
  end_context(self, key, "failed: " + why);
}

void run_job(self_ptr self, const ContextKey& key, Context& c, ParkedInfer parked) {
  c.busy = true;
  InferJob job{c.compute, c.new_rows.take_front(c.new_rows.count()), parked.request};
  const uint32_t position = parked.request.position;
  const uint64_t request_id = parked.request.request_id;
  auto promise = parked.promise;
  self->request(self->state.inference, caf::infinite, compute_atom::value, std::move(job))
      .then(
          [=](bool computed, std::vector<char>& reply) mutable {
            auto it = self->state.contexts.find(key);
            if (!computed) {
              promise.deliver(std::move(reply));
              if (it != self->state.contexts.end()) fail_context(self, key, "its inference job failed");
              return;
            }
            if (it != self->state.contexts.end()) {
              auto& ctx = it->second;
              ctx.busy = false;
              ctx.computed = std::max(ctx.computed, position + 1);
              ctx.last_request_id = request_id;
              ctx.last_reply = reply;
              ctx.last_activity = clock_type::now();
              if (auto keep = std::exchange(ctx.truncate_after_job, std::nullopt)) drop_computed(self, ctx, *keep);
            }
            promise.deliver(std::move(reply));
            dispatch(self, key);
          },
          [=](caf::error& e) mutable {
            const std::string why = self->system().render(e);
            promise.deliver(error_frame(error::internal, "cloud inference failed: " + why, key.second, request_id));
            if (self->state.contexts.count(key)) fail_context(self, key, "cloud inference failed: " + why);
          });
}

// The compute state's part of a truncation (between jobs only: a running job holds the state).
void drop_computed(self_ptr self, Context& c, uint32_t keep) {
  if (c.computed > keep) {  // the last reply answered a dropped position: no retry may get it
    c.last_request_id = 0;
    c.last_reply.clear();
  }
  self->state.positions_rolled_back += static_cast<uint64_t>(c.compute->truncate(keep));
  c.computed = std::min(c.computed, keep);
}

// Drops the context's positions from `keep` on (a wrong speculation of its edge). Requests for
// them will never be asked again: they are answered `cancelled`. The uploaded rows go now, so
// that the rows replacing them are taken in at once; the compute state's part waits for the end
// of a running job (run_job).
void drop_positions(self_ptr self, Context& c, uint32_t keep) {
  for (auto it = c.parked.begin(); it != c.parked.end();) {
    if (it->request.position < keep) {
      ++it;
      continue;
    }
    it->promise.deliver(error_frame(error::cancelled,
                                    "position " + std::to_string(it->request.position) + " was truncated",
                                    it->request.session_id, it->request.request_id));
    it = c.parked.erase(it);
  }
  c.new_rows.truncate(keep);
  if (c.busy)
    c.truncate_after_job = std::min(keep, c.truncate_after_job.value_or(keep));
  else
    drop_computed(self, c, keep);
}

// Starts the first parked request whose positions are all uploaded, if no job is running.
void dispatch(self_ptr self, const ContextKey& key) {
  auto it = self->state.contexts.find(key);
  if (it == self->state.contexts.end()) return;
  auto& c = it->second;
  if (c.busy || c.parked.empty()) return;
  auto& next = c.parked.front();
  if (next.request.position >= c.held()) return;  // its rows are still on the way
  ParkedInfer p = std::move(next);
  c.parked.pop_front();
  if (p.request.position < c.computed) {
    if (p.request.request_id == c.last_request_id && !c.last_reply.empty()) {
      p.promise.deliver(c.last_reply);  // a retry: same answer, no second KV append
    } else {
      p.promise.deliver(error_frame(error::bad_request,
                                    "InferRequest.position " + std::to_string(p.request.position) +
                                        " was already answered (" + std::to_string(c.computed) + " computed)",
                                    key.second, p.request.request_id));
    }
    return dispatch(self, key);
  }
  run_job(self, key, c, std::move(p));
}

// What an edge weighs when it places a session here (Welcome, LoadReport).
wire::Load current_load(const ManagerState& st) {
  wire::Load load;
  load.live_contexts = static_cast<uint32_t>(st.contexts.size());
  load.max_contexts = static_cast<uint32_t>(std::min<int64_t>(st.config.max_contexts, UINT32_MAX));
  for (const auto& [key, c] : st.contexts) load.queued_requests += static_cast<uint32_t>(c.parked.size());
  for (const auto& [key, parked] : st.early) load.queued_requests += static_cast<uint32_t>(parked.size());
  load.context_bytes = total_bytes(st);
  load.memory_cap_bytes = st.config.memory_cap_bytes();
  load.draining = st.draining;
  return load;
}

std::vector<char> on_hello(self_ptr self, const caf::node_id& node, const wire::Hello& h) {
  auto& st = self->state;
  const auto& cfg = st.model->config();
  std::string why;
  error code = error::model_mismatch;
  if (h.protocol_version != wire::protocol_version) {
    code = error::version_mismatch;
    why = "protocol version " + std::to_string(h.protocol_version) + " (cloud speaks " +
          std::to_string(wire::protocol_version) + ")";
  } else if (h.weights_hash != st.model->weights_hash()) {
    why = "weights hash " + h.weights_hash + " (cloud serves " + cfg.name + " with hash " + st.model->weights_hash() + ")";
  } else if (h.split_layer != st.plan.split) {
    why = "split layer " + std::to_string(h.split_layer) + " (cloud holds layers from " + std::to_string(st.plan.split) + ")";
  } else if (h.hidden_dim != cfg.dim) {
    why = "hidden dim " + std::to_string(h.hidden_dim) + " (model has " + std::to_string(cfg.dim) + ")";
  } else if (h.dtype != wire::Dtype::f16) {
    why = std::string("wire dtype ") + wire::to_string(h.dtype) + " (cloud takes f16)";
  }
  if (!why.empty()) {
    CE_LOG(warning, "context", "refused edge '" << h.client_name << "': " << why);
    st.edges_refused++;
    return error_frame(code, "refused: " + why);
  }
  st.welcomed.insert(node);
  // Client names are the edges' own words: bound how many distinct ones the metrics keep.
  constexpr size_t max_named_clients = 256;
  st.client_names[node] =
      st.infer_requests.count(h.client_name) || st.infer_requests.size() < max_named_clients ? h.client_name : "other";
  st.infer_requests.emplace(st.client_names[node], 0);
  CE_LOG(info, "context", "welcomed edge '" << h.client_name << "'");
  st.edges_welcomed++;
  wire::Welcome w;
  w.model_id = cfg.name;
  w.weights_hash = st.model->weights_hash();
  w.split_layer = static_cast<uint32_t>(st.plan.split);
  w.hidden_dim = static_cast<uint32_t>(cfg.dim);
  w.idle_timeout_ms = static_cast<uint64_t>(st.config.idle_timeout.count());
  w.max_positions = static_cast<uint32_t>(cfg.max_seq);
  w.load = current_load(st);
  return wire::encode(w);
}

std::vector<char> on_upload(self_ptr self, const caf::node_id& node, wire::UploadChunk& chunk) {
  auto& st = self->state;
  const ContextKey key{node, chunk.session_id};
  const bool tokens = chunk.dtype == wire::Dtype::token_ids;
  if (!tokens && chunk.dtype != wire::Dtype::f16)
    return error_frame(error::bad_request, "UploadChunk.dtype must be f16 (or token_ids for cloud-only)",
                       chunk.session_id);
  // The rows enter the cloud here, in the one form they keep down to its compute.
  const auto kind = tokens ? RowKind::token_ids : RowKind::states_f16;
  const uint32_t row_bytes = tokens ? 4 : static_cast<uint32_t>(st.model->config().dim) * 2;
  PositionRows rows;
  try {
    rows = PositionRows(kind, chunk.first_position, chunk.count, row_bytes, std::move(chunk.payload));
  } catch (const std::exception& e) {
    return error_frame(error::bad_request, std::string("UploadChunk.payload: ") + e.what(), chunk.session_id);
  }
  auto it = st.contexts.find(key);
  if (it == st.contexts.end()) {
    if (chunk.first_position != 0)
      return error_frame(error::unknown_session,
                         "no context for session " + hex(chunk.session_id) + " (a new context starts at position 0)",
                         chunk.session_id);
    const uint64_t need = rows.bytes().size();
    if (st.draining || st.contexts.size() >= static_cast<size_t>(st.config.max_contexts) ||
        total_bytes(st) + need > st.config.memory_cap_bytes()) {
      CE_LOG(warning, "context", "refused session " << hex(chunk.session_id) << ": "
                                                     << (st.draining ? "draining, " : "") << st.contexts.size()
                                                     << " contexts, " << total_bytes(st) << " bytes held");
      st.sessions_refused++;
      const std::string why = st.draining ? "cloud is draining (stopping): place the session on another node"
                                          : "cloud at its context or memory cap; try later";
      // Requests of this session would otherwise wait a deadline for a context that never comes.
      if (st.refused.size() > 100000) st.refused.clear();  // bound the tombstones
      st.refused.insert(key);
      if (auto early = st.early.find(key); early != st.early.end()) {
        for (auto& p : early->second)
          p.promise.deliver(error_frame(error::overloaded, why, key.second, p.request.request_id));
        st.early.erase(early);
      }
      return error_frame(error::overloaded, why, chunk.session_id);
    }
    st.ended.erase(key);
    st.refused.erase(key);
    Context c;
    c.new_rows = PositionRows::empty_at(kind, row_bytes, 0);
    c.compute = std::make_shared<CloudCompute>(st.model, tokens ? 0 : st.plan.split);
    if (auto early = st.early.find(key); early != st.early.end()) {
      c.parked = std::move(early->second);
      st.early.erase(early);
    }
    it = st.contexts.emplace(key, std::move(c)).first;
    arm_idle_timer(self, key, st.config.idle_timeout);
    CE_LOG(debug, "context", "session " << hex(chunk.session_id) << " opened");
  }
  auto& c = it->second;
  c.last_activity = clock_type::now();
  if (tokens != c.token_ids())
    return error_frame(error::bad_request, "UploadChunk.dtype differs from the context's earlier uploads",
                       chunk.session_id);
  // A re-sent chunk may overlap what is held: only its new tail counts.
  const uint32_t repeated = std::min(rows.count(), c.held() > rows.first_position() ? c.held() - rows.first_position() : 0u);
  rows.take_front(repeated);
  st.positions_repeated += repeated;
  if (!rows.empty()) {
    try {
      c.new_rows.append(rows);  // the one contiguity check: a gap is refused
    } catch (const std::exception& e) {
      return error_frame(error::bad_request, std::string("UploadChunk: ") + e.what(), chunk.session_id);
    }
    st.positions_received += rows.count();
  }
  wire::UploadAck ack{key.second, 0, c.held()};
  dispatch(self, key);
  return wire::encode(ack);
}

std::vector<char> on_truncate(self_ptr self, const caf::node_id& node, const wire::Truncate& t) {
  auto it = self->state.contexts.find({node, t.session_id});
  if (it == self->state.contexts.end())
    return error_frame(error::unknown_session, "no context for session " + hex(t.session_id), t.session_id);
  auto& c = it->second;
  c.last_activity = clock_type::now();
  self->state.truncates++;
  drop_positions(self, c, t.positions);
  return wire::encode(wire::UploadAck{t.session_id, 0, c.held()});
}

caf::result<std::vector<char>> on_infer(self_ptr self, const caf::node_id& node, wire::InferRequest& req) {
  auto& st = self->state;
  st.infer_requests[st.client_names[node]]++;
  const ContextKey key{node, req.session_id};
  try {  // a bad token of the request's sampling is the request's fault: refused alone, the context kept
    check_choice(req.sampling, req.history, req.scored_token, st.model->config().vocab_size);
  } catch (const std::exception& e) {
    return error_frame(error::bad_request, std::string("InferRequest: ") + e.what(), req.session_id, req.request_id);
  }
  if (req.kind == wire::InferKind::naive_split) {
    // Stateless baseline: no context, the whole sequence comes inline.
    auto rp = self->make_response_promise<std::vector<char>>();
    self->request(st.inference, caf::infinite, compute_atom::value, InferJob{nullptr, {}, std::move(req)})
        .then([=](bool, std::vector<char>& reply) mutable { rp.deliver(std::move(reply)); },
              [=](caf::error& e) mutable { rp.deliver(error_frame(error::internal, self->system().render(e))); });
    return rp;
  }
  auto it = st.contexts.find(key);
  if (it == st.contexts.end()) {
    if (st.ended.count(key))
      return error_frame(error::unknown_session, "session " + hex(req.session_id) + " was evicted or closed",
                         req.session_id, req.request_id);
    if (st.refused.count(key))
      return error_frame(error::overloaded, "session " + hex(req.session_id) + " was refused: cloud at its cap",
                         req.session_id, req.request_id);
    auto rp = self->make_response_promise<std::vector<char>>();
    st.early[key].push_back({std::move(req), rp});
    self->delayed_send(self, st.config.request_deadline, unknown_atom::value, key.first, key.second);
    return rp;
  }
  auto& c = it->second;
  c.last_activity = clock_type::now();
  if ((req.kind == wire::InferKind::cloud_only) != c.token_ids())
    return error_frame(error::bad_request, "InferRequest.kind does not match the context's uploads", req.session_id,
                       req.request_id);
  auto rp = self->make_response_promise<std::vector<char>>();
  c.parked.push_back({std::move(req), rp});
  dispatch(self, key);
  return rp;
}

context_manager_actor::behavior_type context_manager(self_ptr self, std::shared_ptr<const Model> model,
                                                     SplitPlan plan, NodeConfig config,
                                                     cloud_inference_actor inference) {
  auto& st = self->state;
  const auto& mc = model->config();
  st.plan = std::move(plan);
  st.limits = wire::limits_for(static_cast<uint32_t>(mc.dim), static_cast<uint32_t>(mc.max_seq));
  st.kv_bytes_per_position = static_cast<uint64_t>(2 * mc.n_kv_heads * mc.head_dim() * 4 * (mc.n_layers - st.plan.split));
  st.model = std::move(model);
  st.config = std::move(config);
  st.inference = std::move(inference);
  self->set_down_handler([=](caf::down_msg& dm) {
    self->state.watched.erase(dm.source);
    // A sender that merely ended (a client's short-lived actor) says nothing of its node's link.
    if (dm.reason != caf::exit_reason::remote_link_unreachable) return;
    const caf::node_id node = dm.source.node();
    if (!self->state.welcomed.erase(node)) return;
    std::vector<ContextKey> gone;
    for (const auto& [key, c] : self->state.contexts)
      if (key.first == node) gone.push_back(key);
    CE_LOG(info, "context", "edge '" << self->state.client_names[node] << "' disconnected ("
                                     << self->system().render(dm.reason) << "): ending its " << gone.size() << " contexts");
    for (const auto& key : gone) end_context(self, key, "ended: its edge disconnected");
  });
  return {
      [=](frame_atom, const std::vector<char>& bytes) -> caf::result<std::vector<char>> {
        auto sender = self->current_sender();
        if (!sender) return error_frame(error::bad_request, "anonymous frames are not served");
        const caf::node_id node = sender->node();
        auto decoded = wire::decode(bytes, self->state.limits);
        if (!decoded.ok) {
          CE_LOG(warning, "context", "bad frame from " << caf::to_string(node) << ": " << decoded.error_text);
          return error_frame(decoded.code, decoded.error_text);
        }
        auto& msg = decoded.message;
        // A welcomed edge's contexts are of no use once its link is gone (a returning edge replays
        // its sessions): watching its senders ends them at once instead of at the idle timeout.
        if (self->state.watched.insert(sender->address()).second) self->monitor(sender);
        if (auto* hello = std::get_if<wire::Hello>(&msg)) return on_hello(self, node, *hello);
        if (!self->state.welcomed.count(node))
          return error_frame(error::bad_request, std::string(wire::kind_name(msg)) + " before Hello");
        if (auto* chunk = std::get_if<wire::UploadChunk>(&msg)) return on_upload(self, node, *chunk);
        if (auto* req = std::get_if<wire::InferRequest>(&msg)) return on_infer(self, node, *req);
        if (auto* t = std::get_if<wire::Truncate>(&msg)) {
          auto reply = on_truncate(self, node, *t);
          dispatch(self, {node, t->session_id});
          return reply;
        }
        if (auto* query = std::get_if<wire::LoadQuery>(&msg))
          return wire::encode(wire::LoadReport{query->sent_us, current_load(self->state)});
        if (auto* bye = std::get_if<wire::Bye>(&msg)) {
          end_context(self, {node, bye->session_id}, "closed by Bye");
          return wire::encode(wire::Bye{bye->session_id});  // echoed as the acknowledgement
        }
        return error_frame(error::bad_request, std::string(wire::kind_name(msg)) + " is not a request");
      },
      [=](drain_atom) {
        if (!self->state.draining)
          CE_LOG(info, "context", "draining: no new sessions; " << self->state.contexts.size() << " open");
        self->state.draining = true;
      },
      [=](idle_atom, const caf::node_id& node, uint64_t session) {
        const ContextKey key{node, session};
        auto it = self->state.contexts.find(key);
        if (it == self->state.contexts.end()) return;
        const auto idle = std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - it->second.last_activity);
        const auto timeout = self->state.config.idle_timeout;
        if (idle >= timeout && !it->second.busy) {
          end_context(self, key, "evicted after inactivity");
          return;
        }
        arm_idle_timer(self, key, std::max(timeout - idle, std::chrono::milliseconds(10)));
      },
      [=](unknown_atom, const caf::node_id& node, uint64_t session) {
        auto it = self->state.early.find({node, session});
        if (it == self->state.early.end()) return;
        for (auto& p : it->second)
          p.promise.deliver(error_frame(error::unknown_session, "session " + hex(session) + " is unknown", session,
                                        p.request.request_id));
        self->state.early.erase(it);
      },
      [=](stats_atom) {
        const auto& st = self->state;
        CloudStats s;
        s.live = st.contexts.size();
        s.evicted = st.evictions;
        s.bytes = total_bytes(st);
        s.positions_received = st.positions_received;
        s.positions_repeated = st.positions_repeated;
        s.sessions_refused = st.sessions_refused;
        s.edges_welcomed = st.edges_welcomed;
        s.edges_refused = st.edges_refused;
        s.truncates = st.truncates;
        s.positions_rolled_back = st.positions_rolled_back;
        return s;
      },
      [=](clients_atom) {
        ClientRequests out;
        for (const auto& [name, count] : self->state.infer_requests) out.counts.emplace_back(name, count);
        return out;
      },
  };
}

}  // namespace

context_manager_actor spawn_context_manager(caf::actor_system& system, std::shared_ptr<const Model> model,
                                            const SplitPlan& plan, const NodeConfig& config,
                                            const cloud_inference_actor& cloud_inference) {
  return system.spawn(context_manager, std::move(model), plan, config, cloud_inference);
}

}  // namespace ce
