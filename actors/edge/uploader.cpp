#include "actors/edge/uploader.hpp"

#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>

#include <algorithm>
#include <map>
#include <set>

#include "actors/edge/placement.hpp"
#include "actors/errors.hpp"
#include "actors/log.hpp"

namespace ce {
namespace {

using clock_type = std::chrono::steady_clock;
constexpr uint32_t max_chunks_in_flight = 2;  // enough to keep a link busy while acks return
constexpr int no_node = -1;

// One cloud node and the link to it.
struct CloudLink {
  CloudAddress address;
  std::string name;  // host:port
  cloud_front_actor actor;
  bool connected = false;
  bool connecting = false;
  uint64_t epoch = 0;  // bumped at every (re)connect and loss: replies from an older link are ignored
  std::chrono::milliseconds backoff{100};
  wire::Load load;                  // as last reported
  uint32_t placed_since_report = 0;  // sessions placed here since that report (it lags)
  bool refused_since_report = false;  // answered `overloaded` since: no new sessions until the next report
  bool load_query_out = false;
  uint64_t placed = 0;
  uint64_t failed_attempts = 0;  // (re)connects that failed since the link was last up
};

struct SessionLog {
  PositionRows rows;    // every row handed over, from position 0 (kept for re-sends)
  bool started = false; // rows holds the session's first rows
  int node = no_node;   // the cloud that holds (or is getting) the session's context
  std::set<int> excluded;  // nodes that refused the session or missed a deadline for it
  uint32_t sent = 0;    // positions sent on the current node's link
  uint32_t sent_ever = 0;  // most positions sent on any link: what a move or resync sends again
  uint32_t acked = 0;   // positions the cloud confirmed holding
  uint32_t in_flight = 0;
  uint64_t bytes_sent = 0;
  uint64_t bytes_wasted = 0;  // of bytes_sent, rows of positions truncated after they went out
  uint64_t epoch = 0;   // bumped by a truncate or a placement: replies to chunks sent before it say
                        // nothing of the rows as they are now
  uint64_t placement = 0;  // bumped by each placement (move, resync): chunks of an earlier one are
                           // no longer in flight
  bool failed = false;  // a chunk was lost (timeout): the cloud's copy is incomplete
  bool refused = false; // no cloud takes the session: send no more until a resync or a new link
  backlog_listener_actor owner;  // the edge_inference that feeds this session (told what is released)
  uint32_t released_reported = 0;
  std::vector<caf::typed_response_promise<uint64_t, uint64_t>> byes;
};

// An infer request on its way to a cloud, kept until answered so that it can follow its session
// to another node.
struct Forwarded {
  uint64_t session = 0;
  uint32_t position = 0;  // the request asks for the token after it
  std::vector<char> frame;
  caf::typed_response_promise<std::vector<char>> promise;
  int node = no_node;
  uint64_t attempt = 0;  // replies to an earlier attempt are ignored
  int timeouts = 0;      // attempts that missed the deadline
};

struct UploaderState {
  NodeConfig config;
  wire::Hello hello;
  exit_decider_actor decider;
  std::vector<CloudLink> links;  // in ce.cloud.nodes order
  bool any_connected = false;    // what the exit decider was last told
  uint64_t next_chunk_id = 1;
  std::map<uint64_t, SessionLog> sessions;
  std::map<uint64_t, Forwarded> forwarded;
  uint64_t next_forward = 1, next_attempt = 1;
  uint64_t failovers = 0, replayed_positions = 0;
  static inline const char* name = "uploader";
};

using self_ptr = uploader_actor::stateful_pointer<UploaderState>;

CloudLink* link_of(self_ptr self, const SessionLog& log) {
  return log.node == no_node ? nullptr : &self->state.links[static_cast<size_t>(log.node)];
}

bool linked(self_ptr self, const SessionLog& log) {
  auto* link = link_of(self, log);
  return link && link->connected;
}

void pump(self_ptr self, uint64_t session, bool urgent);
void send_forwarded(self_ptr self, uint64_t key);

// Backpressure is counted by the producer (edge_inference), which knows at once what it handed
// over; the uploader tells it how many of a session's positions no longer count against
// ce.upload.queue-limit: those the cloud acknowledged, or all of them when none will be sent
// (no link, a lost chunk, a refusal), so that a dead link never holds the edge.
void report_released(self_ptr self, uint64_t session, SessionLog& log) {
  if (!log.owner) return;
  const bool sending = linked(self, log) && !log.failed && !log.refused;
  const uint32_t released = sending ? std::min(log.acked, log.rows.end()) : log.rows.end();
  if (released == log.released_reported) return;
  log.released_reported = released;
  self->send(log.owner, backlog_atom::value, session, released);
}

void tell_decider(self_ptr self) {
  auto& st = self->state;
  const bool any = std::any_of(st.links.begin(), st.links.end(), [](const CloudLink& l) { return l.connected; });
  if (any == st.any_connected) return;
  st.any_connected = any;
  self->send(st.decider, cloud_state_atom::value, any);
}

// The node a session goes to now: the best of its rendezvous ranking among the linked nodes it
// has not been excluded from; no_node when there is none.
int choose_node(self_ptr self, uint64_t session, const SessionLog& log) {
  const auto& links = self->state.links;
  std::vector<PlacementCandidate> candidates;
  for (size_t i = 0; i < links.size(); ++i) {
    const auto& l = links[i];
    candidates.push_back({l.name, load_weight(l.load, l.placed_since_report),
                          l.connected && !log.excluded.count(static_cast<int>(i)),
                          l.load.full() || l.refused_since_report});
  }
  auto order = rank_nodes(session, candidates);
  return order.empty() ? no_node : order.front();
}

// Puts a session on `node` (no_node: none for now) and re-sends its log there from position 0;
// the cloud takes a repeated prefix as repeated, a new node builds the context from it.
void assign(self_ptr self, uint64_t session, SessionLog& log, int node, const std::string& why) {
  auto& st = self->state;
  const int from = log.node;
  log.node = node;
  log.sent = 0;
  log.acked = 0;
  log.in_flight = 0;
  log.epoch++;
  log.placement++;
  log.failed = false;
  log.refused = node == no_node;
  if (node != no_node) {
    auto& link = st.links[static_cast<size_t>(node)];
    if (from != node) {
      link.placed_since_report++;
      link.placed++;
    }
    st.replayed_positions += std::min(log.sent_ever, log.rows.end());
    if (from != no_node && from != node) {
      st.failovers++;
      CE_LOG(info, "uploader", "session " << hex(session) << " moved from cloud " << st.links[static_cast<size_t>(from)].name
                                          << " to " << link.name << " (" << why << "); replaying "
                                          << log.rows.end() << " positions");
    }
  } else if (from != no_node) {
    CE_LOG(warning, "uploader", "session " << hex(session) << ": no cloud can take it (" << why << ")");
  }
  pump(self, session, true);
  report_released(self, session, log);
}

// Moves a session away from `from` (lost, refusing it, or late for it) to the next node of its
// ranking; `exclude` keeps it off `from` even once that node is linked again. Its requests in
// flight there follow it, or fail when no node is left. Does nothing if the session has moved on.
void move_session(self_ptr self, uint64_t session, int from, bool exclude, const std::string& why) {
  auto& st = self->state;
  auto it = st.sessions.find(session);
  if (it == st.sessions.end() || it->second.node != from) return;
  auto& log = it->second;
  if (exclude) log.excluded.insert(from);
  assign(self, session, log, choose_node(self, session, log), why);
  for (auto& [key, f] : st.forwarded)
    if (f.session == session && f.node == from) f.node = no_node;  // re-sent below
  std::vector<uint64_t> resend;
  for (auto& [key, f] : st.forwarded)
    if (f.session == session && f.node == no_node) resend.push_back(key);
  for (auto key : resend) send_forwarded(self, key);
}

void finish_byes(self_ptr self, uint64_t session) {
  auto it = self->state.sessions.find(session);
  if (it == self->state.sessions.end()) return;
  auto& log = it->second;
  if (log.byes.empty()) return;
  const bool drained = log.acked >= log.rows.end() || log.failed || log.refused || !linked(self, log);
  if (!drained) return;
  if (linked(self, log))
    self->request(link_of(self, log)->actor, self->state.config.request_deadline, frame_atom::value,
                  wire::encode(wire::Bye{session}))
        .then([](const std::vector<char>&) {},
              [=](caf::error& e) {
                // The context then ends at the cloud's idle timeout instead.
                CE_LOG(info, "uploader", "session " << hex(session) << ": Bye not acknowledged: " << self->system().render(e));
              });
  for (auto& rp : log.byes) rp.deliver(log.bytes_sent, log.bytes_wasted);
  CE_LOG(debug, "uploader", "session " << hex(session) << " closed after " << log.bytes_sent << " bytes");
  self->state.sessions.erase(it);
}

void send_chunk(self_ptr self, uint64_t session, SessionLog& log) {
  auto& link = *link_of(self, log);
  const uint32_t count = std::min<uint32_t>(log.rows.end() - log.sent, static_cast<uint32_t>(self->state.config.upload_batch));
  wire::UploadChunk chunk;
  chunk.session_id = session;
  chunk.chunk_id = self->state.next_chunk_id++;
  chunk.first_position = log.sent;
  chunk.count = count;
  chunk.dtype = log.rows.kind() == RowKind::token_ids ? wire::Dtype::token_ids : wire::Dtype::f16;
  chunk.payload = log.rows.slice(log.sent, count).bytes();
  log.sent += count;
  log.sent_ever = std::max(log.sent_ever, log.sent);
  log.in_flight++;
  log.bytes_sent += chunk.payload.size();
  const int node = log.node;
  const uint64_t link_epoch = link.epoch, session_epoch = log.epoch, placement = log.placement;
  self->request(link.actor, self->state.config.request_deadline, frame_atom::value, wire::encode(chunk))
      .then(
          [=](const std::vector<char>& reply) {
            auto it = self->state.sessions.find(session);
            if (it == self->state.sessions.end() || it->second.placement != placement ||
                self->state.links[static_cast<size_t>(node)].epoch != link_epoch)
              return;
            auto& l = it->second;
            l.in_flight--;
            auto decoded = wire::decode(reply, {});
            // A chunk sent before a truncate speaks of rows the cloud no longer has: its ack or
            // refusal says nothing about the log as it is now.
            if (decoded.ok && l.epoch == session_epoch) {
              if (auto* ack = std::get_if<wire::UploadAck>(&decoded.message)) {
                if (ack->held_positions > l.sent) {
                  // The cloud claims rows that were never sent on this link: its context is not
                  // this session's (Petals #587): rebuild it rather than trust it.
                  CE_LOG(warning, "uploader", "session " << hex(session) << ": cloud holds " << ack->held_positions
                                                          << " positions, " << l.sent << " sent: rebuilding");
                  return move_session(self, session, node, true, "its context disagrees with the log");
                }
                l.acked = std::max(l.acked, ack->held_positions);
              } else if (auto* err = std::get_if<wire::ErrorReply>(&decoded.message)) {
                CE_LOG(warning, "uploader", "session " << hex(session) << " upload refused by "
                                                       << self->state.links[static_cast<size_t>(node)].name << ": "
                                                       << to_string(err->code) << ": " << err->text);
                if (err->code == error::overloaded) {
                  self->state.links[static_cast<size_t>(node)].refused_since_report = true;
                  return move_session(self, session, node, true, "refused as overloaded");
                }
                l.acked = l.rows.end();  // nothing more will be accepted for this context
                l.refused = true;
              }
            }
            report_released(self, session, l);
            pump(self, session, false);
            finish_byes(self, session);
          },
          [=](caf::error& e) {
            auto it = self->state.sessions.find(session);
            if (it == self->state.sessions.end() || it->second.placement != placement ||
                self->state.links[static_cast<size_t>(node)].epoch != link_epoch)
              return;
            it->second.in_flight--;
            if (it->second.epoch != session_epoch) return pump(self, session, false);
            it->second.failed = true;
            report_released(self, session, it->second);
            CE_LOG(warning, "uploader", "session " << hex(session) << " upload failed: " << self->system().render(e));
            finish_byes(self, session);
          });
}

// Sends queued rows: at most a window of chunks in flight, or everything at once when an infer
// request waits on them (urgent).
void pump(self_ptr self, uint64_t session, bool urgent) {
  auto it = self->state.sessions.find(session);
  if (it == self->state.sessions.end()) return;
  auto& log = it->second;
  if (!linked(self, log) || log.refused) return;
  while (log.sent < log.rows.end() && (urgent || log.in_flight < max_chunks_in_flight)) send_chunk(self, session, log);
}

// Answers a forwarded request with the cloud's reply frame, or the local failure standing in for it.
template <class Reply>
void answer_forwarded(self_ptr self, uint64_t key, Reply reply) {
  auto& st = self->state;
  auto it = st.forwarded.find(key);
  if (it == st.forwarded.end()) return;
  auto promise = it->second.promise;
  const uint64_t session = it->second.session;
  st.forwarded.erase(it);
  promise.deliver(std::move(reply));
  // A session that uploads nothing (the naive-split baseline inlines its rows) has no Bye to end
  // its entry: it ends with its last request.
  auto log = st.sessions.find(session);
  if (log != st.sessions.end() && !log->second.started && log->second.byes.empty() &&
      std::none_of(st.forwarded.begin(), st.forwarded.end(), [&](const auto& f) { return f.second.session == session; }))
    st.sessions.erase(log);
}

// After move_session took a request's session off `node`: the request follows it if it found
// another node (and has not been re-sent already), else it gets `otherwise`.
template <class Reply>
void follow_or_answer(self_ptr self, uint64_t key, uint64_t attempt, int node, Reply otherwise) {
  auto it = self->state.forwarded.find(key);
  if (it == self->state.forwarded.end() || it->second.attempt != attempt) return;  // re-sent or answered
  auto session = self->state.sessions.find(it->second.session);
  if (session != self->state.sessions.end() && session->second.node != node && linked(self, session->second))
    return send_forwarded(self, key);
  answer_forwarded(self, key, std::move(otherwise));
}

// Sends a forwarded request to its session's node, placing the session first if it has none.
void send_forwarded(self_ptr self, uint64_t key) {
  auto& st = self->state;
  auto& f = st.forwarded.at(key);
  auto& log = st.sessions[f.session];
  if (!linked(self, log)) assign(self, f.session, log, choose_node(self, f.session, log), "its node is gone");
  if (!linked(self, log)) {
    if (!std::any_of(st.links.begin(), st.links.end(), [](const CloudLink& l) { return l.connected; }))
      return answer_forwarded(self, key, make_error(error::cloud_unreachable, "no link to any cloud"));
    return answer_forwarded(self, key, make_error(error::overloaded,
                                                  "no linked cloud takes this session (each refused it or was late)"));
  }
  pump(self, f.session, true);  // the rows the request needs go first, on the same link
  f.node = log.node;
  f.attempt = st.next_attempt++;
  const int node = f.node;
  const uint64_t attempt = f.attempt;
  const uint64_t session = f.session;
  self->request(st.links[static_cast<size_t>(node)].actor, st.config.request_deadline, frame_atom::value, f.frame)
      .then(
          [=](std::vector<char>& reply) {
            auto it = self->state.forwarded.find(key);
            if (it == self->state.forwarded.end() || it->second.attempt != attempt) return;
            auto decoded = wire::decode(reply, {});
            if (decoded.ok && std::holds_alternative<wire::ErrorReply>(decoded.message) &&
                std::get<wire::ErrorReply>(decoded.message).code == error::overloaded) {
              // The node refused the session's context: the next node of its ranking may take it.
              self->state.links[static_cast<size_t>(node)].refused_since_report = true;
              it->second.node = no_node;
              move_session(self, session, node, true, "refused as overloaded");
              return follow_or_answer(self, key, attempt, node, std::move(reply));
            }
            answer_forwarded(self, key, std::move(reply));
          },
          [=](caf::error& e) {
            auto it = self->state.forwarded.find(key);
            if (it == self->state.forwarded.end() || it->second.attempt != attempt) return;
            const bool timeout = e == caf::sec::request_timeout;
            // A node late for one request may be overloaded or stuck: with several nodes the
            // request is tried once more on the next (its deadline at the edge allows for one
            // retry); a stuck node as a whole is found by its missing load reports.
            if (timeout && it->second.timeouts++ == 0 && self->state.links.size() > 1) {
              it->second.node = no_node;
              move_session(self, session, node, true, "missed the request deadline");
              return follow_or_answer(self, key, attempt, node, make_error(error::timeout, self->system().render(e)));
            }
            answer_forwarded(self, key,
                             make_error(timeout ? error::timeout : error::cloud_unreachable, self->system().render(e)));
          });
}

void connect(self_ptr self, int node);

void link_lost(self_ptr self, int node, const std::string& why) {
  auto& st = self->state;
  auto& link = st.links[static_cast<size_t>(node)];
  if (link.connected) {
    CE_LOG(warning, "uploader", "cloud " << link.name << " lost: " << why);
    link.failed_attempts = 0;
  } else if (link.failed_attempts++ % 12 == 0) {  // the first failed attempt, then about once a minute
    CE_LOG(info, "uploader", "cloud " << link.name << " not linked (attempt " << link.failed_attempts << "): " << why);
  }
  const bool was_connected = link.connected;
  link.connected = false;
  link.connecting = false;
  link.load_query_out = false;
  if (link.actor) self->demonitor(link.actor.address());
  link.actor = nullptr;
  link.epoch++;
  tell_decider(self);
  if (was_connected) {
    // Every session on the node moves to the next node of its ranking, its requests with it; with
    // no node left they stay unplaced until a link comes back, and the edge goes on alone.
    std::vector<uint64_t> moving;
    for (auto& [id, log] : st.sessions)
      if (log.node == node) moving.push_back(id);
    for (auto id : moving) move_session(self, id, node, false, "cloud " + link.name + " lost: " + why);
    for (auto it = st.sessions.begin(); it != st.sessions.end();) {
      auto id = (it++)->first;
      finish_byes(self, id);
    }
  }
  self->delayed_send(self, link.backoff, link_atom::value, node);
  link.backoff = std::min(link.backoff * 2, std::chrono::milliseconds(5000));
}

void on_welcome(self_ptr self, int node, cloud_front_actor cloud, const wire::Load& load) {
  auto& st = self->state;
  auto& link = st.links[static_cast<size_t>(node)];
  link.actor = cloud;
  link.connected = true;
  link.connecting = false;
  link.backoff = std::chrono::milliseconds(100);
  link.epoch++;
  link.load_query_out = false;  // a query of the previous link is answered into its epoch, ignored
  link.failed_attempts = 0;
  link.load = load;
  link.placed_since_report = 0;
  link.refused_since_report = false;
  self->monitor(cloud);
  tell_decider(self);
  CE_LOG(info, "uploader", "connected to cloud " << link.name << " (" << load.live_contexts << " contexts"
                                                  << (load.draining ? ", draining" : "") << ")");
  // Sessions no node could take get one now (a lone cloud that comes back gets its sessions back,
  // replayed from their logs: it may have lost every context).
  std::vector<uint64_t> unplaced;
  for (auto& [id, log] : st.sessions)
    if (log.node == no_node) unplaced.push_back(id);
  for (auto id : unplaced) {
    auto& log = st.sessions[id];
    log.excluded.clear();  // a new link: refusals of the old one may no longer hold
    assign(self, id, log, choose_node(self, id, log), "a cloud came up");
  }
}

void handshake(self_ptr self, int node, cloud_front_actor cloud) {
  self->request(cloud, std::chrono::seconds(5), frame_atom::value, wire::encode(self->state.hello))
      .then(
          [=](const std::vector<char>& reply) {
            auto decoded = wire::decode(reply, {});
            if (decoded.ok && std::holds_alternative<wire::Welcome>(decoded.message)) {
              on_welcome(self, node, cloud, std::get<wire::Welcome>(decoded.message).load);
              return;
            }
            std::string why = decoded.ok && std::holds_alternative<wire::ErrorReply>(decoded.message)
                                  ? std::get<wire::ErrorReply>(decoded.message).text
                                  : "unexpected reply to Hello";
            auto& link = self->state.links[static_cast<size_t>(node)];
            CE_LOG(error, "uploader", "cloud " << link.name << " refused this edge: " << why);
            link.backoff = std::chrono::milliseconds(5000);  // a mismatch will not fix itself soon
            link_lost(self, node, why);
          },
          [=](caf::error& e) { link_lost(self, node, "handshake failed: " + self->system().render(e)); });
}

void connect(self_ptr self, int node) {
  auto& link = self->state.links[static_cast<size_t>(node)];
  if (link.connected || link.connecting) return;
  link.connecting = true;
  auto mm = self->state.config.tls_enabled() ? self->system().openssl_manager().actor_handle()
                                             : self->system().middleman().actor_handle();
  self->request(mm, std::chrono::seconds(5), caf::connect_atom::value, link.address.host, link.address.port)
      .then(
          [=](const caf::node_id&, caf::strong_actor_ptr& ptr, const std::set<std::string>&) {
            if (!ptr) return link_lost(self, node, "no actor published at the cloud port");
            // The Hello below checks what the peer is; the handle's type is the wire contract.
            handshake(self, node, caf::actor_cast<cloud_front_actor>(ptr));
          },
          [=](caf::error& e) {
            self->state.links[static_cast<size_t>(node)].connecting = false;
            CE_LOG(debug, "uploader", "connect to " << self->state.links[static_cast<size_t>(node)].name
                                                    << " failed: " << self->system().render(e));
            link_lost(self, node, self->system().render(e));
          });
}

// Asks every linked cloud for its load; one that does not answer within three intervals is taken
// as lost (a stopped process keeps its sockets open: only silence tells).
void query_loads(self_ptr self) {
  auto& st = self->state;
  const auto interval = st.config.cloud_load_interval;
  for (size_t i = 0; i < st.links.size(); ++i) {
    auto& link = st.links[i];
    if (!link.connected || link.load_query_out) continue;
    link.load_query_out = true;
    const int node = static_cast<int>(i);
    const uint64_t epoch = link.epoch;
    self->request(link.actor, interval * 3, frame_atom::value, wire::encode(wire::LoadQuery{0}))
        .then(
            [=](const std::vector<char>& reply) {
              auto& l = self->state.links[static_cast<size_t>(node)];
              if (l.epoch != epoch) return;
              l.load_query_out = false;
              auto decoded = wire::decode(reply, {});
              if (!decoded.ok || !std::holds_alternative<wire::LoadReport>(decoded.message)) return;  // an older cloud
              l.load = std::get<wire::LoadReport>(decoded.message).load;
              l.placed_since_report = 0;
              l.refused_since_report = false;
            },
            [=](caf::error& e) {
              auto& l = self->state.links[static_cast<size_t>(node)];
              if (l.epoch != epoch) return;
              l.load_query_out = false;
              link_lost(self, node, "no load report within " + std::to_string((interval * 3).count()) +
                                        " ms: " + self->system().render(e));
            });
  }
  self->delayed_send(self, interval, load_atom::value);
}

uploader_actor::behavior_type uploader(self_ptr self, NodeConfig config, wire::Hello hello, exit_decider_actor decider) {
  auto& st = self->state;
  st.config = std::move(config);
  st.hello = std::move(hello);
  st.decider = std::move(decider);
  for (const auto& address : st.config.cloud_addresses()) {
    CloudLink link;
    link.address = address;
    link.name = address.name();
    st.links.push_back(std::move(link));
  }
  self->set_down_handler([=](caf::down_msg& dm) {
    auto& links = self->state.links;
    for (size_t i = 0; i < links.size(); ++i)
      if (links[i].actor && dm.source == links[i].actor.address())
        link_lost(self, static_cast<int>(i), self->system().render(dm.reason));
  });
  for (size_t i = 0; i < st.links.size(); ++i) self->send(self, link_atom::value, static_cast<int>(i));
  self->delayed_send(self, st.config.cloud_load_interval, load_atom::value);
  return {
      [=](link_atom, int node) { connect(self, node); },
      [=](load_atom) { query_loads(self); },
      [=](upload_atom, uint64_t session, const PositionRows& rows) {
        auto& log = self->state.sessions[session];
        if (!log.started) {
          log.rows = PositionRows::empty_at(rows.kind(), rows.row_bytes(), 0);
          log.started = true;
        }
        try {
          log.rows.append(rows);
        } catch (const std::exception& e) {  // a bug of the producer: the cloud must never see it
          CE_LOG(error, "uploader", "session " << hex(session) << ": " << e.what());
          return;
        }
        if (!log.owner) log.owner = caf::actor_cast<backlog_listener_actor>(self->current_sender());
        if (log.node == no_node && !log.refused) {
          assign(self, session, log, choose_node(self, session, log), "new session");
          return;
        }
        pump(self, session, false);
        report_released(self, session, log);
      },
      [=](resync_atom, uint64_t session) {
        // The cloud lost this session's context (evicted or restarted): rebuild it from the log.
        auto it = self->state.sessions.find(session);
        if (it == self->state.sessions.end()) return;
        CE_LOG(info, "uploader", "session " << hex(session) << " re-sent from its log (" << it->second.rows.end()
                                            << " positions)");
        auto& log = it->second;
        assign(self, session, log, linked(self, log) ? log.node : choose_node(self, session, log), "resync");
      },
      [=](infer_atom, uint64_t session, uint32_t position, std::vector<char>& frame) -> caf::result<std::vector<char>> {
        auto& st = self->state;
        if (!std::any_of(st.links.begin(), st.links.end(), [](const CloudLink& l) { return l.connected; })) {
          for (size_t i = 0; i < st.links.size(); ++i) connect(self, static_cast<int>(i));
          return make_error(error::cloud_unreachable, "no link to any cloud");
        }
        auto rp = self->make_response_promise<std::vector<char>>();
        const uint64_t key = st.next_forward++;
        st.forwarded.emplace(key, Forwarded{session, position, std::move(frame), rp});
        send_forwarded(self, key);
        return rp;
      },
      [=](truncate_atom, uint64_t session, uint32_t positions) {
        auto it = self->state.sessions.find(session);
        if (it == self->state.sessions.end() || positions >= it->second.rows.end()) return;
        auto& log = it->second;
        // Requests for the dropped positions are answered here as the cloud answers them after a
        // Truncate: were the session to move, they must not go to its next node behind the replay
        // (they would be computed there, ahead of the requests of the path that replaced them).
        std::vector<uint64_t> stale;
        for (const auto& [key, f] : self->state.forwarded)
          if (f.session == session && f.position >= positions) stale.push_back(key);
        for (auto key : stale)
          answer_forwarded(self, key, wire::encode(wire::ErrorReply{error::cancelled,
                                                                    "position was truncated at the edge", session, 0}));
        const bool cloud_has_more = log.sent > positions;
        log.rows.truncate(positions);
        log.epoch++;
        log.acked = std::min(log.acked, positions);
        log.released_reported = std::min(log.released_reported, positions);
        if (!cloud_has_more) return;  // the wrong rows never left: nothing to tell the cloud
        log.bytes_wasted += static_cast<uint64_t>(log.sent - positions) * log.rows.row_bytes();
        log.sent = positions;
        if (!linked(self, log) || log.refused) return;  // a replay sends from the log anyway
        // Sent behind the chunks already on the way and before the ones that replace them: the
        // cloud sees the same order.
        self->request(link_of(self, log)->actor, self->state.config.request_deadline, frame_atom::value,
                      wire::encode(wire::Truncate{session, positions}))
            .then(
                [=](const std::vector<char>& reply) {
                  auto decoded = wire::decode(reply, {});
                  if (decoded.ok && std::holds_alternative<wire::UploadAck>(decoded.message)) return;
                  // An unknown session is rebuilt by the edge's next request; anything else is logged.
                  CE_LOG(info, "uploader", "session " << hex(session) << ": Truncate answered with "
                                                      << (decoded.ok ? wire::kind_name(decoded.message) : decoded.error_text));
                },
                [=](caf::error& e) {
                  CE_LOG(info, "uploader", "session " << hex(session) << ": Truncate not acknowledged: "
                                                      << self->system().render(e));
                });
      },
      [=](bye_atom, uint64_t session) -> caf::result<uint64_t, uint64_t> {
        auto it = self->state.sessions.find(session);
        if (it == self->state.sessions.end()) return {uint64_t{0}, uint64_t{0}};
        auto rp = self->make_response_promise<uint64_t, uint64_t>();
        it->second.byes.push_back(rp);
        pump(self, session, true);
        finish_byes(self, session);
        return rp;
      },
      [=](stats_atom) {
        const auto& st = self->state;
        LinkStats stats;
        stats.connected = st.any_connected;
        stats.failovers = st.failovers;
        stats.replayed_positions = st.replayed_positions;
        for (const auto& l : st.links) stats.nodes.push_back({l.name, l.connected, l.load, 0, l.placed});
        for (const auto& [id, log] : st.sessions) {
          stats.queued_positions += log.rows.end() - log.acked;
          if (log.node != no_node) stats.nodes[static_cast<size_t>(log.node)].open_sessions++;
        }
        return stats;
      },
  };
}

}  // namespace

uploader_actor spawn_uploader(caf::actor_system& system, const NodeConfig& config, const wire::Hello& hello,
                              const exit_decider_actor& exit_decider) {
  return system.spawn(uploader, config, hello, exit_decider);
}

}  // namespace ce
