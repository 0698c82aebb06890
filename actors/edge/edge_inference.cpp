#include "actors/edge/edge_inference.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <limits>
#include <optional>
#include <tuple>
#include <map>
#include <random>
#include <utility>

#include "actors/log.hpp"
#include "messages/codec.hpp"
#include "model/early_exit_runner.hpp"
#include "model/split_plan.hpp"

namespace ce {
namespace {

using clock_type = std::chrono::steady_clock;

double ms_since(clock_type::time_point t) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t).count();
}

// Where a response is in its life; what it waits for decides which message moves it on.
enum class ResponseState {
  starting,        // waiting for the exit decider's policy
  deciding,        // between a step and what comes next (go_on decides)
  computing,       // a step is due or running on the edge
  awaiting_cloud,  // nothing to compute until the cloud answers (the path is as long as allowed)
  held,            // the next step waits for the upload backlog to halve
  closing,         // the last rows and the Bye are with the uploader
};

// A token chosen but not shown yet, on the response's path. Tokens are shown in order, each once
// it is settled: the edge's own at once, the cloud's when it answers. While a cloud token is
// outstanding the edge goes on (speculation) with its guess: the token its last exit picks under
// the same rule, which the cloud confirms most of the time; a different answer rolls back what
// followed the guess.
struct Tentative {
  int32_t position = 0;        // the token is the one after `position`
  int32_t token = -1;          // what the edge feeds after `position`: its own choice or, for a
                               // cloud token, its guess (-1: none, cloud-only)
  TokenSource source = TokenSource::edge_exit;  // edge_exit: decided here; cloud: asked
  int32_t layer = -1;
  float confidence = 0;
  Logprobs logprobs;           // edge_exit: the exit's
  Decision fallback;           // cloud tokens: the last exit's choice, standing in if the cloud fails
  uint64_t request_id = 0;     // cloud tokens: the request out for it
  int round = 0;               // cloud tokens: 1 + the latest round answered when it was asked
  bool answered = false;
  int32_t answer = -1;         // the cloud's token, once answered
  float answer_confidence = 0;
  Logprobs answer_logprobs;
  std::string failure;         // non-empty: the request failed (why)
};

struct Generation {
  uint64_t id = 0;
  uint64_t session = 0;
  GenerateRequest request;
  Policy policy;
  ExitRule rule;
  std::unique_ptr<EarlyExitRunner> runner;  // absent in cloud-only mode
  std::deque<Tentative> path;               // chosen, not yet shown, in position order
  int max_ahead = 0;                        // most tokens on the path before the edge waits
  int max_requests = 0;                     // most cloud tokens of the path with a request out
  PositionRows unsent;  // split states past the last request of an unconfirmed path: the cloud
                        // needs them only if the guesses before them hold (flush_rows)
  std::vector<float> naive_states;          // naïve split: fp32 split states of all positions
  uint64_t next_request_id = 1;
  uint64_t resync_floor = 0;  // requests below this id went out before the resync: re-asked, not failed
  uint64_t guesses = 0;       // for ce.speculation.test-miss-every
  ResponseState state = ResponseState::starting;
  bool cloud_lost = false;  // the cloud failed this response: the rest runs on the edge
  uint32_t shipped = 0;     // positions handed to the uploader
  uint32_t released = 0;    // of those, positions the uploader no longer holds against the limit
  bool paused = false;      // shipped - released passed ce.upload.queue-limit and has not halved yet
  bool cancel_requested = false;  // the listener wants no more tokens
  int echo_pending = 0;           // echo: prompt positions the cloud is scoring (the session stays open)
  std::vector<StepOutcome> echo_outcomes;  // echo: the edge's scoring of each prompt position
  GenerateResult result;
  clock_type::time_point started, token_started, blocked_since;

  // Positions of the shown sequence (prompt + shown tokens): the next shown token goes there.
  int32_t shown_end() const { return static_cast<int32_t>(request.prompt.size() + result.tokens.size()); }
};

struct EdgeState {
  std::shared_ptr<const Model> model;
  SplitPlan plan;
  NodeConfig config;
  uploader_actor uploader;
  exit_decider_actor decider;
  std::map<uint64_t, std::unique_ptr<Generation>> generations;
  uint64_t next_generation = 1;
  std::mt19937_64 rng{std::random_device{}()};
  std::vector<uint64_t> due;  // responses whose next step waits for the next batched step
  bool batch_sent = false;    // a (step_atom) is in the mailbox
  std::vector<float> scratch;  // the batched step's, kept between steps
  // Moving averages of a cloud round trip (for the exit decider's latency budget), of the cloud's
  // compute in it and of an edge step, and the link's own delay: running further ahead of the cloud
  // than the positions the request's time on the wire lets the edge compute gains no time and
  // wastes compute (speculation_depth).
  double round_trip_ms = 0, cloud_ms = 0, step_ms = 0;
  WireDelay wire;
  GuessOdds guess_odds;  // how often the cloud confirms the last exit's guess, by its confidence
  // How long a cloud request may take, as the uploader serves it: with several clouds it may try
  // a second node after the first missed ce.request.deadline, and the edge waits for both.
  std::chrono::milliseconds cloud_request_deadline{0};
  RunAhead run_ahead = RunAhead::wire;  // ce.speculation.run-ahead, resolved once (NodeConfig::run_ahead)
  static inline const char* name = "edge_inference";
};

using self_ptr = edge_inference_actor::stateful_pointer<EdgeState>;

Generation* find(self_ptr self, uint64_t id) {
  auto it = self->state.generations.find(id);
  return it == self->state.generations.end() ? nullptr : it->second.get();
}

// Backpressure: the edge pauses as soon as what it handed over and the uploader still holds
// passes ce.upload.queue-limit, and resumes once that has halved (hysteresis), so a slow link
// slows the edge instead of growing memory, whatever the lag of the uploader's messages.
void update_pause(Generation& g, uint32_t limit) {
  const uint32_t backlog = g.shipped - std::min(g.released, g.shipped);
  if (!g.paused && backlog > limit) {
    g.paused = true;
    CE_LOG(debug, "edge", "session " << std::hex << g.session << std::dec << " upload backlog " << backlog
                                     << " positions: pausing");
  } else if (g.paused && backlog <= limit / 2) {
    g.paused = false;
  }
}

void hand_to_uploader(self_ptr self, Generation& g, PositionRows rows) {
  g.shipped += rows.count();
  update_pause(g, static_cast<uint32_t>(self->state.config.upload_queue_limit));
  self->send(self->state.uploader, upload_atom::value, g.session, std::move(rows));
}

// The positions the cloud may get now: all of them while no guess waits for its answer, else
// those up to the last cloud token asked for (its request needs them); the rest of a guessed
// path goes up once the guesses before it are confirmed, or never if one is wrong.
uint32_t upload_limit(const Generation& g) {
  bool guessing = false;
  uint32_t limit = 0;
  for (const auto& e : g.path) {
    if (e.source != TokenSource::cloud) continue;
    guessing = true;
    if (e.request_id != 0) limit = static_cast<uint32_t>(e.position + 1);
  }
  return guessing ? limit : std::numeric_limits<uint32_t>::max();
}

// Hands the completed rows the cloud may get (at least those before `at_least`) to the uploader.
void flush_rows(self_ptr self, Generation& g, uint32_t at_least = 0) {
  const uint32_t limit = std::max(upload_limit(g), at_least);
  if (g.unsent.empty() || g.unsent.first_position() >= limit) return;
  hand_to_uploader(self, g, g.unsent.take_front(limit - g.unsent.first_position()));
}

// Takes newly completed split-layer rows from the runner: kept for the naïve baseline's requests,
// else queued for the uploader (flush_rows).
void ship_rows(self_ptr self, Generation& g) {
  const auto& mode = strategy_for(g.policy.mode);
  const bool naive = mode.inlines_states;
  auto rows = g.runner->take_completed(naive ? &g.naive_states : nullptr);
  if (rows.empty() || naive || !mode.uploads) return;
  if (g.unsent.row_bytes() == 0) g.unsent = PositionRows::empty_at(rows.kind(), rows.row_bytes(), rows.first_position());
  g.unsent.append(rows);
  flush_rows(self, g);
}

void upload_tokens(self_ptr self, Generation& g, uint32_t first, const std::vector<int32_t>& tokens) {
  hand_to_uploader(self, g, PositionRows::token_ids(first, tokens));
}

void finish(self_ptr self, Generation& g);
void settle(self_ptr self, Generation& g);
void deliver(self_ptr self, uint64_t id);

// Ends a response with an error instead of tokens.
void fail(self_ptr self, Generation& g, const std::string& why) {
  g.result.error = why;
  deliver(self, g.id);
}

void deliver(self_ptr self, uint64_t id) {
  auto* g = find(self, id);
  if (!g) return;
  g->result.stats.total_ms = ms_since(g->started);
  auto& s = g->result.stats;
  CE_LOG(info, "edge", "response " << id << " session " << std::hex << g->session << std::dec << " done: "
                                   << s.generated << " tokens, " << s.cloud_tokens << " from cloud, "
                                   << s.degraded_tokens << " degraded, " << s.bytes_uploaded << " B uploaded, "
                                   << s.rolled_back << "/" << s.speculated << " speculated positions rolled back, "
                                   << s.total_ms << " ms");
  if (!g->result.error.empty()) g->result.finish_reason = FinishReason::error;
  if (g->request.listener) self->send(g->request.listener, done_atom::value, std::move(g->result));
  self->state.generations.erase(id);
}

// Why a response would end with `token` as its count-th token, after position `position`.
std::optional<FinishReason> ends_with(self_ptr self, const Generation& g, int32_t token, int32_t position,
                                      size_t count) {
  const auto& c = self->state.model->config();
  if (g.request.stop_at_eos && c.is_eos(token)) return FinishReason::eos;
  if (g.cancel_requested) return FinishReason::cancelled;
  if (count >= static_cast<size_t>(g.request.max_tokens)) return FinishReason::length;
  if (position + 2 >= c.max_seq) return FinishReason::context;
  return std::nullopt;
}

// Shows a settled token to the listener; true when it ended the response.
bool show(self_ptr self, Generation& g, int32_t position, int32_t token, TokenSource source, int32_t layer,
          float confidence, const Logprobs& logprobs) {
  auto& r = g.result;
  r.tokens.push_back(token);
  r.sources.push_back(source);
  r.layers.push_back(layer);
  const bool wants_logprobs = g.request.sampling.logprobs >= 0;
  if (wants_logprobs) r.logprobs.push_back(logprobs);
  r.stats.generated++;
  r.stats.cloud_tokens += source == TokenSource::cloud;
  r.stats.degraded_tokens += source == TokenSource::degraded;
  // Per-token latency as the user sees it: from the previous token (or the request) to this one,
  // pauses for upload backpressure included.
  r.stats.token_ms.push_back(ms_since(g.token_started));
  g.token_started = clock_type::now();
  if (g.request.listener)
    self->send(g.request.listener, token_atom::value,
               TokenEvent{g.id, position + 1, token, source, layer, confidence, wants_logprobs ? logprobs : Logprobs{}});
  const auto end = ends_with(self, g, token, position, r.tokens.size());
  if (!end) return false;
  r.finish_reason = *end;
  finish(self, g);
  return true;
}

void update_average(double& average, double sample) {
  average = average == 0 ? sample : 0.8 * average + 0.2 * sample;
}

// How many tokens the path may hold before the edge waits (exit_policy.hpp). The wire's time is
// WireDelay's windowed minimum, without the cloud's compute and queueing: they grow when the edge
// competes for the cloud's cores, and counting them fed back. Where the two share cores
// (ce.speculation.run-ahead = wire: a node of role both, or ce-bench's two nodes each on all of a
// 2-core machine), running ahead over the whole round trip took the cores the answers needed: on
// loopback speculation took 1.32x the time of waiting for each answer (20 prompts), as it had once
// taken 1.36x with the wire's mean as its time. With a core each (round-trip, as on two machines) it
// takes 0.68x on loopback and 0.55x on LAN, standing at 0.38x and 0.40x of the cloud tokens; the wire
// alone left it there at 1.00x / 0.60x the time and 1.00x / 0.85x the stands. The wire and the
// cloud's compute without the rest of the round trip (the upload before the request, the answer
// waiting in the mailbox behind a step) left it standing at 0.80x / 0.74x.
int speculation_depth(const EdgeState& st, const Generation& g) {
  return speculation_depth(st.run_ahead, g.max_ahead,
                           st.wire, st.cloud_ms, LinkTiming{st.round_trip_ms, st.step_ms});
}

// Computes the next position now, waits for the cloud, or is held by backpressure.
void go_on(self_ptr self, Generation& g) {
  if (g.state == ResponseState::computing || g.state == ResponseState::closing) return;
  bool waits = false;
  if (!g.path.empty()) {
    const auto& last = g.path.back();
    waits = last.token < 0 || static_cast<int>(g.path.size()) > speculation_depth(self->state, g) ||
            ends_with(self, g, last.token, last.position, g.result.tokens.size() + g.path.size());
  }
  auto& stats = g.result.stats;
  if (waits) {
    if (g.state != ResponseState::awaiting_cloud) {
      g.state = ResponseState::awaiting_cloud;
      stats.blocking_round_trips++;
      g.blocked_since = clock_type::now();
    }
    return;
  }
  if (g.state == ResponseState::awaiting_cloud) stats.blocked_ms += ms_since(g.blocked_since);
  if (g.paused) {
    if (g.state != ResponseState::held) stats.backpressure_pauses++;
    g.state = ResponseState::held;
    return;
  }
  g.state = ResponseState::computing;
  self->send(self, step_atom::value, g.id);
}

// Drops what the runner computed after the position it keeps (a wrong guess), and the uploads of
// it: the uploader truncates its log and tells the cloud, which cancels its requests past it.
void rewind_to(self_ptr self, Generation& g, int32_t keep) {
  if (!g.runner || g.runner->positions() <= keep) return;
  g.result.stats.rolled_back += static_cast<int>(g.runner->positions() - keep);
  g.runner->rewind(keep);
  const auto rows = static_cast<uint32_t>(g.runner->completed_positions());
  g.unsent.truncate(rows);
  if (g.shipped <= rows) return;
  g.shipped = rows;
  g.released = std::min(g.released, rows);
  update_pause(g, static_cast<uint32_t>(self->state.config.upload_queue_limit));
  self->send(self->state.uploader, truncate_atom::value, g.session, rows);
}

void on_cloud_failure(self_ptr self, Generation& g, uint64_t request_id, const std::string& why);
void on_cloud_reply(self_ptr self, Generation& g, uint64_t request_id, const std::vector<char>& reply, double round_trip);

void on_echo_reply(self_ptr self, Generation& g, int32_t position, const std::vector<char>* reply, const std::string& failure);

// The tokens of positions [0, position] on the response's path: the prompt, the shown tokens, then
// the path's (guesses included: the cloud decides as if they held).
std::vector<int32_t> sequence_through(const Generation& g, int32_t position) {
  std::vector<int32_t> seq(g.request.prompt);
  seq.insert(seq.end(), g.result.tokens.begin(), g.result.tokens.end());
  for (const auto& e : g.path) seq.push_back(e.token);
  seq.resize(std::min(seq.size(), static_cast<size_t>(position) + 1));
  return seq;
}

// Asks the cloud for the token after `position` (or, echo, to score `scored_token` there); returns
// the request's id.
uint64_t ask_cloud(self_ptr self, Generation& g, int32_t position, int32_t scored_token = -1) {
  wire::InferRequest req;
  req.session_id = g.session;
  req.request_id = g.next_request_id++;
  g.result.stats.cloud_requests++;
  req.position = static_cast<uint32_t>(position);
  req.sampling = g.request.sampling;
  req.scored_token = scored_token;
  if (g.request.sampling.penalizes() && scored_token < 0) {
    const auto seq = sequence_through(g, position);
    req.history = TokenHistory::of(seq.data(), seq.size(), g.request.prompt.size());
  }
  const auto& mode = strategy_for(g.policy.mode);
  req.kind = mode.kind;
  if (mode.inlines_states) {
    req.inline_dtype = wire::Dtype::f32;
    req.inline_count = static_cast<uint32_t>(position + 1);
    const auto* rows = g.naive_states.data();  // positions [0, position]: an echo asks before the last
    const auto floats = static_cast<size_t>(position + 1) * static_cast<size_t>(self->state.model->config().dim);
    req.inline_payload.assign(reinterpret_cast<const uint8_t*>(rows), reinterpret_cast<const uint8_t*>(rows + floats));
    g.result.stats.bytes_inline += req.inline_payload.size();
  }
  const auto sent = clock_type::now();
  const uint64_t id = g.id, request_id = req.request_id;
  self->request(self->state.uploader, self->state.cloud_request_deadline,
                infer_atom::value, g.session, req.position, wire::encode(req))
      .then(
          [=](const std::vector<char>& reply) {
            auto* g = find(self, id);
            if (!g) return;
            try {  // a rollback rewinds the runner: a bug there ends this response, not the actor
              if (scored_token >= 0) return on_echo_reply(self, *g, position, &reply, "");
              on_cloud_reply(self, *g, request_id, reply, ms_since(sent));
            } catch (const std::exception& e) {
              fail(self, *g, e.what());
            }
          },
          [=](caf::error& e) {
            auto* g = find(self, id);
            if (!g) return;
            g->result.stats.wait_ms += ms_since(sent);
            try {
              if (scored_token >= 0) return on_echo_reply(self, *g, position, nullptr, self->system().render(e));
              on_cloud_failure(self, *g, request_id, self->system().render(e));
            } catch (const std::exception& ex) {
              fail(self, *g, ex.what());
            }
          });
  return request_id;
}

// The path's cloud token that request `request_id` is out for; null once it is gone (rolled
// back, asked again, or the response is closing).
Tentative* asked_by(Generation& g, uint64_t request_id) {
  if (g.state == ResponseState::closing) return nullptr;
  for (auto& e : g.path)
    if (e.source == TokenSource::cloud && e.request_id == request_id) return &e;
  return nullptr;
}

void on_cloud_failure(self_ptr self, Generation& g, uint64_t request_id, const std::string& why) {
  auto* e = asked_by(g, request_id);
  if (!e) return;
  e->failure = why.empty() ? "failed" : why;
  settle(self, g);
}

void on_cloud_reply(self_ptr self, Generation& g, uint64_t request_id, const std::vector<char>& reply,
                    double round_trip) {
  auto* e = asked_by(g, request_id);
  if (!e) return;  // a request overtaken by a rollback: its answer is stale
  auto decoded = wire::decode(reply, {});
  if (!decoded.ok) return on_cloud_failure(self, g, request_id, "undecodable reply: " + decoded.error_text);
  if (auto* err = std::get_if<wire::ErrorReply>(&decoded.message)) {
    const bool resent_since = request_id < g.resync_floor;
    if (err->code == error::unknown_session && strategy_for(g.policy.mode).uploads &&
        (g.result.stats.resyncs == 0 || resent_since)) {
      // Evicted for inactivity or a restarted cloud: rebuild the context (once), ask again; requests
      // that went out before the rebuild are asked again too.
      if (!resent_since) {
        g.result.stats.resyncs++;
        self->send(self->state.uploader, resync_atom::value, g.session);
        g.resync_floor = g.next_request_id;
      }
      e->request_id = ask_cloud(self, g, e->position);
      return;
    }
    return on_cloud_failure(self, g, request_id, std::string(to_string(err->code)) + ": " + err->text);
  }
  auto* ans = std::get_if<wire::InferReply>(&decoded.message);
  if (!ans || ans->request_id != request_id) return on_cloud_failure(self, g, request_id, "unexpected reply");
  // The cloud is another machine: its token must name a vocabulary entry, for this position.
  const int64_t vocab = self->state.model->config().vocab_size;
  if (ans->token < 0 || ans->token >= vocab || ans->position != static_cast<uint32_t>(e->position))
    return on_cloud_failure(self, g, request_id,
                            "cloud answered token " + std::to_string(ans->token) + " for position " +
                                std::to_string(ans->position) + " (want a token in [0, " + std::to_string(vocab) +
                                ") for position " + std::to_string(e->position) + ")");
  const double cloud_ms = static_cast<double>(ans->cloud_compute_us) / 1000.0;
  update_average(self->state.round_trip_ms, round_trip);
  update_average(self->state.cloud_ms, std::min(cloud_ms, round_trip));
  self->state.wire.record(round_trip, cloud_ms);
  self->send(self->state.decider, timing_atom::value, LinkTiming{self->state.round_trip_ms, self->state.step_ms});
  g.result.stats.cloud_ms += cloud_ms;
  g.result.stats.wait_ms += std::max(0.0, round_trip - cloud_ms);
  if (e->fallback.token >= 0) self->state.guess_odds.record(e->fallback.confidence, ans->token == e->fallback.token);
  // Round trips in sequence: the latest round answered (a request's round follows the answer it
  // waited for).
  auto& rounds = g.result.stats.critical_round_trips;
  rounds = std::max(rounds, e->round);
  e->answered = true;
  e->answer = ans->token;
  e->answer_confidence = ans->confidence;
  e->answer_logprobs = std::move(ans->logprobs);
  settle(self, g);
}

// One failure ends cloud use for this response: waiting out the deadline token after token
// would stall it. The next response asks the cloud again.
void lose_cloud(Generation& g, int32_t position, const std::string& why) {
  if (g.cloud_lost) return;
  g.cloud_lost = true;
  CE_LOG(warning, "edge", "session " << std::hex << g.session << std::dec << " position " << position
                                     << ": cloud unavailable (" << why
                                     << "); the edge's last exit stands in for the rest of this response");
}

// Sends the requests of the path's first ce.speculation.max-requests cloud tokens (one without
// speculation), with the rows they need. Later guesses wait: each is right only if all before it
// are, so asking for them early would mostly upload rows of a path about to be dropped. The edge
// still computes past them (up to speculation_depth): its rows stay on the edge until the window
// reaches them, and when the guesses before hold, the edge has not stood meanwhile. Standing at the
// first unasked guess instead blocked 0.58 of the cloud tokens' round trips on the WAN link against
// 0.39, for 0.43x the time of waiting for each answer against 0.40x, at the same upload bytes.
void ask_within_window(self_ptr self, Generation& g) {
  if (g.cloud_lost) return;
  int asked = 0;
  double path_chance = 1;  // that the guesses before this one all hold, as measured (GuessOdds)
  for (auto& e : g.path) {
    if (e.source != TokenSource::cloud) continue;
    if (asked++ >= g.max_requests || path_chance < self->state.config.speculation_min_path_confidence) break;
    path_chance *= self->state.guess_odds.chance(e.fallback.confidence);
    if (e.request_id != 0) continue;
    flush_rows(self, g, static_cast<uint32_t>(e.position + 1));
    e.request_id = ask_cloud(self, g, e.position);
    e.round = g.result.stats.critical_round_trips + 1;
  }
}

// Shows the settled tokens at the front of the path: the edge's own, the cloud's as they come
// (or, once the cloud failed, the last exit's in its place). A token that differs from the guess
// the edge went on with rolls back everything after it.
void settle(self_ptr self, Generation& g) {
  while (!g.path.empty() && g.state != ResponseState::closing) {
    const Tentative e = g.path.front();
    int32_t token = e.token, layer = e.layer;
    float confidence = e.confidence;
    TokenSource source = e.source;
    Logprobs logprobs = e.logprobs;
    if (e.source == TokenSource::cloud) {
      if (!e.failure.empty()) lose_cloud(g, e.position, e.failure);
      if (g.cloud_lost) {
        if (e.fallback.token < 0) {  // cloud-only has no edge exit to fall back on
          g.result.error = "cloud-only response failed at position " + std::to_string(e.position) + ": " +
                           (e.failure.empty() ? std::string("cloud lost earlier in this response") : e.failure);
          CE_LOG(warning, "edge", g.result.error);
          finish(self, g);
          return;
        }
        std::tie(token, layer, confidence, source) =
            std::make_tuple(e.fallback.token, e.fallback.layer, e.fallback.confidence, TokenSource::degraded);
        logprobs = e.fallback.logprobs;
      } else if (!e.answered) {
        break;
      } else {
        std::tie(token, layer, confidence) =
            std::make_tuple(e.answer, static_cast<int32_t>(self->state.plan.n_layers), e.answer_confidence);
        logprobs = e.answer_logprobs;
      }
      if (token != e.token) {
        g.result.stats.misses += g.max_ahead > 0;
        g.path.resize(1);
        rewind_to(self, g, e.position + 1);
      } else if (g.runner) {
        g.runner->confirm(e.position + 1);
      }
    }
    g.path.pop_front();
    if (show(self, g, e.position, token, source, layer, confidence, logprobs)) return;
  }
  if (g.state == ResponseState::closing) return;
  ask_within_window(self, g);
  go_on(self, g);
}

// The token after outcome.position, decided from the edge's exits: shown at once if confident
// (and nothing before it waits), else asked of the cloud with the last exit's choice as the guess.
void choose(self_ptr self, Generation& g, const StepOutcome& outcome) {
  const auto d = decide(g.policy, outcome);
  Tentative t;
  t.position = outcome.position;
  if (d.action == Action::emit_local) {
    std::tie(t.token, t.layer, t.confidence) = std::make_tuple(d.token, d.layer, d.confidence);
    t.logprobs = d.logprobs;
  } else {
    t.source = TokenSource::cloud;
    t.fallback = fallback(outcome);
    t.token = t.fallback.token;
    const int miss_every = self->state.config.speculation_test_miss_every;
    if (g.max_ahead > 0 && miss_every > 0 && ++g.guesses % static_cast<uint64_t>(miss_every) == 0)
      t.token = static_cast<int32_t>((t.token + 1) % self->state.model->config().vocab_size);  // a forced miss
  }  // the request goes out from settle(), within the path's window of requests
  g.path.push_back(std::move(t));
  settle(self, g);
}

// Cloud-only (no edge layers): the cloud decides the token after `position`; it has no guess.
void ask_only_cloud(self_ptr self, Generation& g, int32_t position) {
  Tentative t;
  t.position = position;
  t.source = TokenSource::cloud;
  t.request_id = ask_cloud(self, g, position);
  t.round = g.result.stats.critical_round_trips + 1;
  g.path.push_back(std::move(t));
  settle(self, g);
}

// Echo: each prompt position's logprobs of the next prompt token, under the head that would decide
// that position for a generated token (decide(), as choose() does): an edge exit's at once, the
// cloud's by a scoring request. The session stays open until every score is in (close()).
void start_echo(self_ptr self, Generation& g) {
  const auto& prompt = g.request.prompt;
  const size_t scored = prompt.size() - 1;
  g.result.prompt_logprobs.resize(scored);
  if (g.runner) g.echo_outcomes = EarlyExitRunner::score(self->state.model, self->state.plan.split, prompt, g.rule);
  for (size_t p = 0; p < scored; ++p) {
    if (g.runner) {
      const auto d = decide(g.policy, g.echo_outcomes[p]);
      if (d.action == Action::emit_local) {
        g.result.prompt_logprobs[p] = {d.logprobs, TokenSource::edge_exit, d.layer};
        continue;
      }
    }
    ++g.echo_pending;
    ask_cloud(self, g, static_cast<int32_t>(p), prompt[p + 1]);
  }
}

void close(self_ptr self, Generation& g);

// The cloud's score of prompt position `position` (reply), or why there is none (failure): the
// edge's last exit stands in (degraded), as for a generated token; cloud-only has no exit to ask.
void on_echo_reply(self_ptr self, Generation& g, int32_t position, const std::vector<char>* reply, const std::string& failure) {
  auto& entry = g.result.prompt_logprobs.at(static_cast<size_t>(position));
  const int32_t want = g.request.prompt.at(static_cast<size_t>(position) + 1);
  std::string why = failure.empty() ? "failed" : failure;
  if (reply) {
    auto decoded = wire::decode(*reply, {});
    const auto* ans = decoded.ok ? std::get_if<wire::InferReply>(&decoded.message) : nullptr;
    const auto* err = decoded.ok ? std::get_if<wire::ErrorReply>(&decoded.message) : nullptr;
    if (ans && ans->has_logprobs && ans->token == want && ans->position == static_cast<uint32_t>(position)) {
      entry = {std::move(ans->logprobs), TokenSource::cloud, static_cast<int32_t>(self->state.plan.n_layers)};
      why.clear();
    } else {
      why = !decoded.ok ? "undecodable reply: " + decoded.error_text
            : err      ? std::string(to_string(err->code)) + ": " + err->text
                       : "the reply scores another token or position";
    }
  }
  --g.echo_pending;
  if (!why.empty()) {
    if (g.echo_outcomes.empty())
      return fail(self, g, "echo: the cloud could not score prompt position " + std::to_string(position) + ": " + why);
    const auto stand_in = fallback(g.echo_outcomes[static_cast<size_t>(position)]);
    entry = {stand_in.logprobs, TokenSource::degraded, stand_in.layer};
  }
  if (g.echo_pending == 0 && g.state == ResponseState::closing) close(self, g);
}

void start(self_ptr self, Generation& g) {
  const auto& cfg = self->state.model->config();
  g.started = g.token_started = clock_type::now();
  g.rule.threshold = g.policy.threshold;
  g.rule.sampling = g.request.sampling;
  // Baselines run no exits: naïve split sends every token, and its edge runs all edge layers.
  const auto& mode = strategy_for(g.policy.mode);
  // A mode whose exits cannot resolve still evaluates them: the last one stands in if the cloud fails.
  if (!mode.exits_resolve) g.rule.threshold = ExitRule::never_exit;
  const bool speculates = mode.may_speculate && g.request.speculate.value_or(self->state.config.speculation_enabled);
  g.max_ahead = speculates ? self->state.config.speculation_max_ahead : 0;
  g.max_requests = speculates ? self->state.config.speculation_max_requests : 1;
  g.result.generation = g.id;
  g.result.stats.mode = g.policy.mode;
  g.result.stats.threshold = g.policy.threshold;
  g.result.stats.prompt_tokens = static_cast<int>(g.request.prompt.size());
  g.result.stats.speculation = speculates;
  g.result.stats.max_ahead = g.max_ahead;
  g.state = ResponseState::deciding;
  if (g.request.prompt.empty() || static_cast<int64_t>(g.request.prompt.size()) >= cfg.max_seq) {
    return fail(self, g, "prompt must hold 1.." + std::to_string(cfg.max_seq - 1) + " tokens");
  }
  const bool echo = g.request.echo && g.request.sampling.logprobs >= 0;
  const bool generates = g.request.max_tokens > 0;
  if (!generates && !echo) return fail(self, g, "max_tokens 0 asks for nothing (only an echo may generate no token)");
  if (!mode.edge_layers) {
    upload_tokens(self, g, 0, g.request.prompt);
    if (echo) start_echo(self, g);
    if (generates) return ask_only_cloud(self, g, g.shown_end() - 1);
    return finish(self, g);
  }
  g.runner = std::make_unique<EarlyExitRunner>(self->state.model, self->state.plan.split);
  const auto t = clock_type::now();
  const auto outcome = g.runner->advance(g.request.prompt, g.rule);
  ship_rows(self, g);
  if (echo) start_echo(self, g);
  g.result.stats.edge_ms += ms_since(t);
  if (generates) return choose(self, g, outcome);
  finish(self, g);
}

// One batched step: every due response that is still computing advances by one token, those
// with edge layers together (EarlyExitRunner::advance over all their runners: one forward per
// layer segment for all of them), cloud-only ones as before. Each is then decided on its own; a
// response waiting for the cloud or held by backpressure is not due and holds no one up. A
// response with tokens on its path feeds the last of them, a checkpoint first, so that a wrong
// guess before it can be rolled back.
void step_due(self_ptr self) {
  auto& st = self->state;
  st.batch_sent = false;
  std::vector<Generation*> batched;
  std::vector<EarlyExitRunner::Advance> batch;
  for (const auto id : std::exchange(st.due, {})) {
    auto* g = find(self, id);
    if (!g || g->state != ResponseState::computing) continue;  // a step only moves a computing response
    g->state = ResponseState::deciding;
    try {
      if (!g->runner) {  // cloud-only: the last token goes up and the cloud decides the next
        const int32_t position = g->shown_end() - 1;
        upload_tokens(self, *g, static_cast<uint32_t>(position), {g->result.tokens.back()});
        ask_only_cloud(self, *g, position);
        continue;
      }
      if (!g->path.empty()) {
        g->runner->checkpoint();
        g->result.stats.speculated++;
      }
    } catch (const std::exception& e) {
      fail(self, *g, e.what());
      continue;
    }
    batched.push_back(g);
    batch.push_back({g->runner.get(), {g->path.empty() ? g->result.tokens.back() : g->path.back().token}, g->rule});
  }
  if (batch.empty()) return;
  const auto t = clock_type::now();
  std::vector<StepOutcome> outcomes;
  try {
    outcomes = EarlyExitRunner::advance(batch, st.scratch);
  } catch (const std::exception& e) {
    for (auto* g : batched) fail(self, *g, e.what());
    return;
  }
  const double ms = ms_since(t);  // each response waited for the whole step
  update_average(st.step_ms, ms);
  for (size_t i = 0; i < batched.size(); ++i) {
    auto& g = *batched[i];
    try {
      ship_rows(self, g);
      g.result.stats.edge_ms += ms;
      choose(self, g, outcomes[i]);
    } catch (const std::exception& e) {
      fail(self, g, e.what());
    }
  }
}

void finish(self_ptr self, Generation& g) {
  if (g.state == ResponseState::awaiting_cloud) g.result.stats.blocked_ms += ms_since(g.blocked_since);
  g.state = ResponseState::closing;
  if (!strategy_for(g.policy.mode).uploads) return close(self, g);
  // The last token's state goes up too, so the cloud's context covers the whole response
  // (prompt + generated positions, each exactly once) and a follow-up could continue from it.
  // What the edge computed past it (a response cancelled while it ran ahead) is dropped first.
  if (!g.result.tokens.empty() && g.result.error.empty()) {
    const int32_t last = g.result.tokens.back();
    if (g.runner) {
      const auto t = clock_type::now();
      rewind_to(self, g, g.shown_end());
      if (g.runner->positions() < g.shown_end()) {
        ExitRule run_only = g.rule;
        run_only.evaluate_exits = false;
        g.runner->advance({last}, run_only);
      }
      g.runner->flush();
      ship_rows(self, g);
      flush_rows(self, g, std::numeric_limits<uint32_t>::max());
      g.result.stats.edge_ms += ms_since(t);
    } else {
      upload_tokens(self, g, static_cast<uint32_t>(g.shown_end() - 1), {last});
    }
  }
  close(self, g);
}

// Ends the session on the cloud (Bye) and delivers the result, once no echo score is outstanding
// (on_echo_reply calls again when the last one is in).
void close(self_ptr self, Generation& g) {
  if (g.echo_pending > 0) return;
  if (!strategy_for(g.policy.mode).uploads) return deliver(self, g.id);
  const uint64_t id = g.id;
  self->request(self->state.uploader, self->state.config.request_deadline * 2, bye_atom::value, g.session)
      .then(
          [=](uint64_t bytes, uint64_t wasted) {
            if (auto* g = find(self, id)) {
              g->result.stats.bytes_uploaded = bytes;
              g->result.stats.bytes_wasted = wasted;
            }
            deliver(self, id);
          },
          [=](caf::error& e) {
            CE_LOG(warning, "edge", "response " << id << ": the uploader did not close the session: "
                                                << self->system().render(e));
            deliver(self, id);
          });
}

edge_inference_actor::behavior_type edge_inference(self_ptr self, std::shared_ptr<const Model> model,
                                                   SplitPlan plan, NodeConfig config, uploader_actor uploader,
                                                   exit_decider_actor decider) {
  auto& st = self->state;
  st.plan = std::move(plan);
  st.model = std::move(model);
  st.config = std::move(config);
  st.cloud_request_deadline = st.config.request_deadline * (st.config.cloud_addresses().size() > 1 ? 2 : 1) +
                              std::chrono::milliseconds(100);
  st.run_ahead = st.config.run_ahead();
  if (st.config.speculation_enabled && st.config.mode == InferenceMode::collaborative)
    CE_LOG(info, "edge", "speculation on: up to " << st.config.speculation_max_ahead << " tokens ahead, over "
                             << (st.run_ahead == RunAhead::round_trip ? "the whole round trip" : "the wire's time only")
                             << " (ce.speculation.run-ahead = " << to_string(st.config.speculation_run_ahead) << ")");
  st.uploader = std::move(uploader);
  st.decider = std::move(decider);
  return {
      [=](generate_atom, GenerateRequest& request) {
        auto g = std::make_unique<Generation>();
        g->id = self->state.next_generation++;
        g->session = self->state.rng() | 1;  // never 0
        g->request = std::move(request);
        const uint64_t id = g->id;
        self->state.generations.emplace(id, std::move(g));
        self->request(self->state.decider, std::chrono::seconds(5), policy_atom::value)
            .then(
                [=](const Policy& decided) {
                  auto* g = find(self, id);
                  if (!g) return;
                  g->policy.mode = g->request.mode.value_or(decided.mode);
                  g->policy.threshold = g->request.threshold.value_or(decided.threshold);
                  try {
                    start(self, *g);
                  } catch (const std::exception& e) {
                    fail(self, *g, e.what());
                  }
                },
                [=](caf::error& e) {
                  if (auto* g = find(self, id)) fail(self, *g, "exit decider did not answer: " + self->system().render(e));
                });
      },
      [=](backlog_atom, uint64_t session, uint32_t released) {
        for (auto& [id, g] : self->state.generations) {
          if (g->session != session) continue;
          g->released = std::max(g->released, released);
          update_pause(*g, static_cast<uint32_t>(self->state.config.upload_queue_limit));
          if (!g->paused && g->state == ResponseState::held) {
            g->state = ResponseState::deciding;
            go_on(self, *g);
          }
        }
      },
      [=](cancel_atom, uint64_t id) {
        auto* g = find(self, id);
        if (!g || g->cancel_requested) return;
        g->cancel_requested = true;  // honoured at the next token; one paused for backpressure ends now
        if (g->state == ResponseState::held) {
          g->result.finish_reason = FinishReason::cancelled;
          finish(self, *g);
        }
      },
      [=](step_atom, uint64_t id) {
        // Due for the next batched step, which runs after every message already in the mailbox.
        self->state.due.push_back(id);
        if (self->state.batch_sent) return;
        self->state.batch_sent = true;
        self->send(self, step_atom::value);
      },
      [=](step_atom) { step_due(self); },
  };
}

}  // namespace

const char* to_string(FinishReason r) {
  switch (r) {
    case FinishReason::length: return "length";
    case FinishReason::eos: return "eos";
    case FinishReason::context: return "context";
    case FinishReason::cancelled: return "cancelled";
    case FinishReason::error: return "error";
  }
  return "?";
}

const char* to_string(TokenSource s) {
  switch (s) {
    case TokenSource::edge_exit: return "edge";
    case TokenSource::cloud: return "cloud";
    case TokenSource::degraded: return "degraded";
  }
  return "?";
}

edge_inference_actor spawn_edge_inference(caf::actor_system& system, std::shared_ptr<const Model> model,
                                          const SplitPlan& plan, const NodeConfig& config, const uploader_actor& uploader,
                                          const exit_decider_actor& exit_decider) {
  return system.spawn<caf::detached>(edge_inference, std::move(model), plan, config, uploader, exit_decider);
}

}  // namespace ce
