#include "actors/edge/uploader.hpp"

#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <caf/openssl/all.hpp>

#include <algorithm>
#include <map>

#include "actors/errors.hpp"
#include "actors/log.hpp"

namespace ce {
namespace {

constexpr uint32_t max_chunks_in_flight = 2;  // enough to keep a link busy while acks return

struct SessionLog {
  PositionRows rows;    // every row handed over, from position 0 (kept for re-sends)
  bool started = false; // rows holds the session's first rows
  uint32_t sent = 0;    // positions sent on the current link
  uint32_t acked = 0;   // positions the cloud confirmed holding
  uint32_t in_flight = 0;
  uint64_t bytes_sent = 0;
  uint64_t bytes_wasted = 0;  // of bytes_sent, rows of positions truncated after they went out
  uint64_t epoch = 0;   // bumped by a truncate or a resync: replies to chunks sent before it say
                        // nothing of the rows as they are now
  bool failed = false;  // a chunk was lost (timeout): the cloud's copy is incomplete
  bool refused = false; // the cloud refused an upload (overloaded, lost context): send no more until a resync
  backlog_listener_actor owner;  // the edge_inference that feeds this session (told what is released)
  uint32_t released_reported = 0;
  std::vector<caf::typed_response_promise<uint64_t, uint64_t>> byes;
};

struct UploaderState {
  NodeConfig config;
  wire::Hello hello;
  exit_decider_actor decider;
  cloud_front_actor cloud;
  bool connected = false;
  bool connecting = false;
  uint64_t link_epoch = 0;  // acks from an older link are ignored
  std::chrono::milliseconds backoff{100};
  uint64_t next_chunk_id = 1;
  std::map<uint64_t, SessionLog> sessions;
  // Infer requests forwarded on the current link, answered at once with cloud_unreachable if the
  // link drops (a dead peer's replies would otherwise be awaited until the deadline).
  std::map<uint64_t, caf::typed_response_promise<std::vector<char>>> forwarded;
  uint64_t next_forward = 1;
  static inline const char* name = "uploader";
};

using self_ptr = uploader_actor::stateful_pointer<UploaderState>;

void pump(self_ptr self, uint64_t session, bool urgent);

// Backpressure is counted by the producer (edge_inference), which knows at once what it handed
// over; the uploader tells it how many of a session's positions no longer count against
// ce.upload.queue-limit: those the cloud acknowledged, or all of them when none will be sent
// (no link, a lost chunk, a refusal), so that a dead link never holds the edge.
void report_released(self_ptr self, uint64_t session, SessionLog& log) {
  if (!log.owner) return;
  const bool sending = self->state.connected && !log.failed && !log.refused;
  const uint32_t released = sending ? std::min(log.acked, log.rows.end()) : log.rows.end();
  if (released == log.released_reported) return;
  log.released_reported = released;
  self->send(log.owner, backlog_atom::value, session, released);
}

void finish_byes(self_ptr self, uint64_t session) {
  auto it = self->state.sessions.find(session);
  if (it == self->state.sessions.end()) return;
  auto& log = it->second;
  if (log.byes.empty()) return;
  const bool drained = log.acked >= log.rows.end() || log.failed || log.refused || !self->state.connected;
  if (!drained) return;
  if (self->state.connected)
    self->request(self->state.cloud, self->state.config.request_deadline, frame_atom::value,
                  wire::encode(wire::Bye{session}))
        .then([](const std::vector<char>&) {},
              [=](caf::error& e) {
                // The context then ends at the cloud's idle timeout instead.
                CE_LOG(info, "uploader", "session " << std::hex << session << std::dec
                                                    << ": Bye not acknowledged: " << self->system().render(e));
              });
  for (auto& rp : log.byes) rp.deliver(log.bytes_sent, log.bytes_wasted);
  CE_LOG(debug, "uploader", "session " << std::hex << session << std::dec << " closed after " << log.bytes_sent
                                        << " bytes");
  self->state.sessions.erase(it);
}

void send_chunk(self_ptr self, uint64_t session, SessionLog& log) {
  const uint32_t count = std::min<uint32_t>(log.rows.end() - log.sent, static_cast<uint32_t>(self->state.config.upload_batch));
  wire::UploadChunk chunk;
  chunk.session_id = session;
  chunk.chunk_id = self->state.next_chunk_id++;
  chunk.first_position = log.sent;
  chunk.count = count;
  chunk.dtype = log.rows.kind() == RowKind::token_ids ? wire::Dtype::token_ids : wire::Dtype::f16;
  chunk.payload = log.rows.slice(log.sent, count).bytes();
  log.sent += count;
  log.in_flight++;
  log.bytes_sent += chunk.payload.size();
  const uint64_t epoch = self->state.link_epoch, session_epoch = log.epoch;
  self->request(self->state.cloud, self->state.config.request_deadline, frame_atom::value, wire::encode(chunk))
      .then(
          [=](const std::vector<char>& reply) {
            auto it = self->state.sessions.find(session);
            if (it == self->state.sessions.end() || epoch != self->state.link_epoch) return;
            auto& l = it->second;
            l.in_flight--;
            auto decoded = wire::decode(reply, {});
            // A chunk sent before a truncate or a resync speaks of rows the cloud no longer has
            // (or will get again): its ack or refusal says nothing about the log as it is now.
            if (decoded.ok && session_epoch == l.epoch) {
              if (auto* ack = std::get_if<wire::UploadAck>(&decoded.message)) {
                l.acked = std::max(l.acked, ack->held_positions);
              } else if (auto* err = std::get_if<wire::ErrorReply>(&decoded.message)) {
                CE_LOG(warning, "uploader", "session " << std::hex << session << std::dec << " upload refused: "
                                                       << to_string(err->code) << ": " << err->text);
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
            if (it == self->state.sessions.end() || epoch != self->state.link_epoch) return;
            it->second.in_flight--;
            if (session_epoch != it->second.epoch) return pump(self, session, false);
            it->second.failed = true;
            report_released(self, session, it->second);
            CE_LOG(warning, "uploader", "session " << std::hex << session << std::dec
                                                   << " upload failed: " << self->system().render(e));
            finish_byes(self, session);
          });
}

// Sends queued rows: at most a window of chunks in flight, or everything at once when an infer
// request waits on them (urgent).
void pump(self_ptr self, uint64_t session, bool urgent) {
  auto& st = self->state;
  auto it = st.sessions.find(session);
  if (it == st.sessions.end() || !st.connected) return;
  auto& log = it->second;
  if (log.refused) return;
  while (log.sent < log.rows.end() && (urgent || log.in_flight < max_chunks_in_flight)) send_chunk(self, session, log);
}

void connect(self_ptr self);

void link_lost(self_ptr self, const std::string& why) {
  auto& st = self->state;
  if (st.connected) CE_LOG(warning, "uploader", "cloud link lost: " << why);
  st.connected = false;
  st.connecting = false;
  st.cloud = nullptr;
  st.link_epoch++;
  self->send(st.decider, cloud_state_atom::value, false);
  for (auto& [id, log] : st.sessions) {
    log.in_flight = 0;
    report_released(self, id, log);  // with no link the edge answers alone: never hold it
  }
  for (auto it = st.sessions.begin(); it != st.sessions.end();) {
    auto id = (it++)->first;
    finish_byes(self, id);
  }
  auto forwarded = std::move(st.forwarded);
  st.forwarded.clear();
  for (auto& [id, rp] : forwarded) rp.deliver(make_error(error::cloud_unreachable, "cloud link lost: " + why));
  self->delayed_send(self, st.backoff, link_atom::value);
  st.backoff = std::min(st.backoff * 2, std::chrono::milliseconds(5000));
}

void on_welcome(self_ptr self, cloud_front_actor cloud) {
  auto& st = self->state;
  st.cloud = cloud;
  st.connected = true;
  st.connecting = false;
  st.backoff = std::chrono::milliseconds(100);
  st.link_epoch++;
  self->monitor(cloud);
  self->send(st.decider, cloud_state_atom::value, true);
  CE_LOG(info, "uploader", "connected to cloud " << st.config.cloud_host << ":" << st.config.cloud_port);
  // A new link may lead to a cloud that lost every context: re-send each open session from its log.
  for (auto& [id, log] : st.sessions) {
    log.sent = 0;
    log.acked = 0;
    log.refused = false;
    pump(self, id, false);
  }
}

void handshake(self_ptr self, cloud_front_actor cloud) {
  self->request(cloud, std::chrono::seconds(5), frame_atom::value, wire::encode(self->state.hello))
      .then(
          [=](const std::vector<char>& reply) {
            auto decoded = wire::decode(reply, {});
            if (decoded.ok && std::holds_alternative<wire::Welcome>(decoded.message)) {
              on_welcome(self, cloud);
              return;
            }
            std::string why = decoded.ok && std::holds_alternative<wire::ErrorReply>(decoded.message)
                                  ? std::get<wire::ErrorReply>(decoded.message).text
                                  : "unexpected reply to Hello";
            CE_LOG(error, "uploader", "cloud refused this edge: " << why);
            self->state.backoff = std::chrono::milliseconds(5000);  // a mismatch will not fix itself soon
            link_lost(self, why);
          },
          [=](caf::error& e) { link_lost(self, "handshake failed: " + self->system().render(e)); });
}

void connect(self_ptr self) {
  auto& st = self->state;
  if (st.connected || st.connecting) return;
  st.connecting = true;
  auto mm = st.config.tls_enabled() ? self->system().openssl_manager().actor_handle()
                                     : self->system().middleman().actor_handle();
  self->request(mm, std::chrono::seconds(5), caf::connect_atom::value, st.config.cloud_host, st.config.cloud_port)
      .then(
          [=](const caf::node_id&, caf::strong_actor_ptr& ptr, const std::set<std::string>&) {
            if (!ptr) {
              link_lost(self, "no actor published at the cloud port");
              return;
            }
            // The Hello below checks what the peer is; the handle's type is the wire contract.
            handshake(self, caf::actor_cast<cloud_front_actor>(ptr));
          },
          [=](caf::error& e) {
            self->state.connecting = false;
            CE_LOG(debug, "uploader", "connect to " << self->state.config.cloud_host << ":"
                                                    << self->state.config.cloud_port
                                                    << " failed: " << self->system().render(e));
            link_lost(self, self->system().render(e));
          });
}

uploader_actor::behavior_type uploader(self_ptr self, NodeConfig config, wire::Hello hello, exit_decider_actor decider) {
  self->state.config = std::move(config);
  self->state.hello = std::move(hello);
  self->state.decider = std::move(decider);
  self->set_down_handler([=](caf::down_msg& dm) {
    if (self->state.cloud && dm.source == self->state.cloud.address())
      link_lost(self, self->system().render(dm.reason));
  });
  self->send(self, link_atom::value);
  return {
      [=](link_atom) { connect(self); },
      [=](upload_atom, uint64_t session, const PositionRows& rows) {
        auto& log = self->state.sessions[session];
        if (!log.started) {
          log.rows = PositionRows::empty_at(rows.kind(), rows.row_bytes(), 0);
          log.started = true;
        }
        try {
          log.rows.append(rows);
        } catch (const std::exception& e) {  // a bug of the producer: the cloud must never see it
          CE_LOG(error, "uploader", "session " << std::hex << session << std::dec << ": " << e.what());
          return;
        }
        if (!log.owner) log.owner = caf::actor_cast<backlog_listener_actor>(self->current_sender());
        pump(self, session, false);
        report_released(self, session, log);
      },
      [=](resync_atom, uint64_t session) {
        // The cloud lost this session's context (evicted or restarted): rebuild it from the log.
        auto it = self->state.sessions.find(session);
        if (it == self->state.sessions.end()) return;
        CE_LOG(info, "uploader", "session " << std::hex << session << std::dec << " re-sent from its log ("
                                            << it->second.rows.end() << " positions)");
        it->second.sent = 0;
        it->second.acked = 0;
        it->second.epoch++;
        it->second.failed = false;
        it->second.refused = false;
        pump(self, session, true);
      },
      [=](infer_atom, uint64_t session, std::vector<char>& frame) -> caf::result<std::vector<char>> {
        auto& st = self->state;
        if (!st.connected) {
          if (!st.connecting) connect(self);
          return make_error(error::cloud_unreachable, "no link to the cloud");
        }
        pump(self, session, true);
        auto rp = self->make_response_promise<std::vector<char>>();
        const uint64_t key = st.next_forward++;
        st.forwarded.emplace(key, rp);
        // The cloud's reply frame, or the local failure that stood in for it.
        auto answer = [=](auto reply) {
          auto it = self->state.forwarded.find(key);
          if (it == self->state.forwarded.end()) return;  // already failed with the link
          it->second.deliver(std::move(reply));
          self->state.forwarded.erase(it);
        };
        self->request(st.cloud, st.config.request_deadline, frame_atom::value, std::move(frame))
            .then([=](std::vector<char>& reply) { answer(std::move(reply)); },
                  [=](caf::error& e) {
                    answer(make_error(e == caf::sec::request_timeout ? error::timeout : error::cloud_unreachable,
                                      self->system().render(e)));
                  });
        return rp;
      },
      [=](truncate_atom, uint64_t session, uint32_t positions) {
        auto it = self->state.sessions.find(session);
        if (it == self->state.sessions.end() || positions >= it->second.rows.end()) return;
        auto& log = it->second;
        const bool cloud_has_more = log.sent > positions;
        log.rows.truncate(positions);
        log.epoch++;
        log.acked = std::min(log.acked, positions);
        log.released_reported = std::min(log.released_reported, positions);
        if (!cloud_has_more) return;  // the wrong rows never left: nothing to tell the cloud
        log.bytes_wasted += static_cast<uint64_t>(log.sent - positions) * log.rows.row_bytes();
        log.sent = positions;
        if (!self->state.connected || log.refused) return;  // a resync re-sends from the log anyway
        // Sent behind the chunks already on the way and before the ones that replace them: the
        // cloud sees the same order.
        self->request(self->state.cloud, self->state.config.request_deadline, frame_atom::value,
                      wire::encode(wire::Truncate{session, positions}))
            .then(
                [=](const std::vector<char>& reply) {
                  auto decoded = wire::decode(reply, {});
                  if (decoded.ok && std::holds_alternative<wire::UploadAck>(decoded.message)) return;
                  // An unknown session is rebuilt by the edge's next request; anything else is logged.
                  CE_LOG(info, "uploader", "session " << std::hex << session << std::dec << ": Truncate answered with "
                                                      << (decoded.ok ? wire::kind_name(decoded.message) : decoded.error_text));
                },
                [=](caf::error& e) {
                  CE_LOG(info, "uploader", "session " << std::hex << session << std::dec
                                                      << ": Truncate not acknowledged: " << self->system().render(e));
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
        LinkStats stats{self->state.connected, 0};
        for (auto& [id, log] : self->state.sessions) stats.queued_positions += log.rows.end() - log.acked;
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
