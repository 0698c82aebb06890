#include "actors/edge/edge_inference.hpp"

#include <algorithm>
#include <chrono>
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
  computing,       // a step is due or running on the edge
  awaiting_cloud,  // an InferRequest is out (pending_request names it)
  held,            // the next step waits for the upload backlog to halve
  closing,         // the last rows and the Bye are with the uploader
};

struct Generation {
  uint64_t id = 0;
  uint64_t session = 0;
  GenerateRequest request;
  Policy policy;
  ExitRule rule;
  std::unique_ptr<EarlyExitRunner> runner;  // absent in cloud-only mode
  StepOutcome outcome;                      // of the token being decided
  int32_t position = 0;                     // position whose next token is being decided
  std::vector<float> naive_states;          // naïve split: fp32 split states of all positions
  uint64_t next_request_id = 1;
  uint64_t pending_request = 0;
  ResponseState state = ResponseState::starting;
  bool cloud_lost = false;  // the cloud failed this response: the rest runs on the edge
  uint32_t shipped = 0;     // positions handed to the uploader
  uint32_t released = 0;    // of those, positions the uploader no longer holds against the limit
  bool paused = false;      // shipped - released passed ce.upload.queue-limit and has not halved yet
  bool cancel_requested = false;  // the listener wants no more tokens
  GenerateResult result;
  clock_type::time_point started, token_started;
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

// Hands newly completed split-layer rows to the uploader (collaborative) or keeps them (naïve).
void ship_rows(self_ptr self, Generation& g) {
  const auto& mode = strategy_for(g.policy.mode);
  const bool naive = mode.inlines_states;
  auto rows = g.runner->take_completed(naive ? &g.naive_states : nullptr);
  if (rows.empty() || naive || !mode.uploads) return;
  hand_to_uploader(self, g, std::move(rows));
}

void upload_tokens(self_ptr self, Generation& g, uint32_t first, const std::vector<int32_t>& tokens) {
  hand_to_uploader(self, g, PositionRows::token_ids(first, tokens));
}

void finish(self_ptr self, Generation& g);
void handle(self_ptr self, Generation& g);
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
                                   << s.total_ms << " ms");
  if (!g->result.error.empty()) g->result.finish_reason = FinishReason::error;
  if (g->request.listener) self->send(g->request.listener, done_atom::value, std::move(g->result));
  self->state.generations.erase(id);
}

void emit(self_ptr self, Generation& g, int32_t token, TokenSource source, int32_t layer, float confidence) {
  auto& r = g.result;
  r.tokens.push_back(token);
  r.sources.push_back(source);
  r.layers.push_back(layer);
  r.stats.generated++;
  r.stats.cloud_tokens += source == TokenSource::cloud;
  r.stats.degraded_tokens += source == TokenSource::degraded;
  // Per-token latency as the user sees it: from the previous token (or the request) to this one,
  // pauses for upload backpressure included.
  r.stats.token_ms.push_back(ms_since(g.token_started));
  g.token_started = clock_type::now();
  if (g.request.listener)
    self->send(g.request.listener, token_atom::value,
               TokenEvent{g.id, g.position + 1, token, source, layer, confidence});
  const bool eos = g.request.stop_at_eos && token == self->state.model->config().eos_id;
  const bool full = g.position + 2 >= self->state.model->config().max_seq;
  if (eos || full || g.cancel_requested || r.stats.generated >= g.request.max_tokens) {
    r.finish_reason = eos ? FinishReason::eos
                      : g.cancel_requested ? FinishReason::cancelled
                      : r.stats.generated >= g.request.max_tokens ? FinishReason::length
                                                                   : FinishReason::context;
    finish(self, g);
    return;
  }
  if (g.paused) {
    g.state = ResponseState::held;
    r.stats.backpressure_pauses++;
    return;
  }
  g.state = ResponseState::computing;
  self->send(self, step_atom::value, g.id);
}

void degrade(self_ptr self, Generation& g, const std::string& why) {
  if (!strategy_for(g.policy.mode).edge_layers) {  // cloud-only has no edge exit to fall back on
    g.result.error = "cloud-only response failed at position " + std::to_string(g.position) + ": " + why;
    CE_LOG(warning, "edge", g.result.error);
    finish(self, g);
    return;
  }
  if (!g.cloud_lost)
    CE_LOG(warning, "edge", "session " << std::hex << g.session << std::dec << " position " << g.position
                                       << ": cloud unavailable (" << why
                                       << "); the edge's last exit stands in for the rest of this response");
  // One failure ends cloud use for this response: waiting out the deadline token after token
  // would stall it. The next response asks the cloud again.
  g.cloud_lost = true;
  auto d = fallback(g.outcome);
  emit(self, g, d.token, TokenSource::degraded, d.layer, d.confidence);
}

void ask_cloud(self_ptr self, Generation& g) {
  wire::InferRequest req;
  req.session_id = g.session;
  req.request_id = g.next_request_id++;
  req.position = static_cast<uint32_t>(g.position);
  req.temperature = g.request.sampling.temperature;
  req.top_p = g.request.sampling.top_p;
  req.seed = g.request.sampling.seed;
  const auto& mode = strategy_for(g.policy.mode);
  req.kind = mode.kind;
  if (mode.inlines_states) {
    req.inline_dtype = wire::Dtype::f32;
    req.inline_count = static_cast<uint32_t>(g.position + 1);
    req.inline_payload.assign(reinterpret_cast<const uint8_t*>(g.naive_states.data()),
                              reinterpret_cast<const uint8_t*>(g.naive_states.data() + g.naive_states.size()));
    g.result.stats.bytes_inline += req.inline_payload.size();
  }
  g.pending_request = req.request_id;
  g.state = ResponseState::awaiting_cloud;
  const auto sent = clock_type::now();
  const uint64_t id = g.id, request_id = req.request_id;
  self->request(self->state.uploader, self->state.config.request_deadline + std::chrono::milliseconds(100),
                infer_atom::value, g.session, wire::encode(req))
      .then(
          [=](const std::vector<char>& reply) {
            auto* g = find(self, id);
            if (!g || g->pending_request != request_id) return;
            g->pending_request = 0;
            const double round_trip = ms_since(sent);
            auto decoded = wire::decode(reply, {});
            if (!decoded.ok) return degrade(self, *g, "undecodable reply: " + decoded.error_text);
            if (auto* err = std::get_if<wire::ErrorReply>(&decoded.message)) {
              if (err->code == error::unknown_session && strategy_for(g->policy.mode).uploads &&
                  g->result.stats.resyncs == 0) {
                // Evicted for inactivity or a restarted cloud: rebuild the context (once), ask again.
                g->result.stats.resyncs++;
                self->send(self->state.uploader, resync_atom::value, g->session);
                return ask_cloud(self, *g);
              }
              return degrade(self, *g, std::string(to_string(err->code)) + ": " + err->text);
            }
            auto* ans = std::get_if<wire::InferReply>(&decoded.message);
            if (!ans || ans->request_id != request_id) return degrade(self, *g, "unexpected reply");
            // The cloud is another machine: its token must name a vocabulary entry, for this position.
            const int64_t vocab = self->state.model->config().vocab_size;
            if (ans->token < 0 || ans->token >= vocab || ans->position != static_cast<uint32_t>(g->position))
              return degrade(self, *g, "cloud answered token " + std::to_string(ans->token) + " for position " +
                                           std::to_string(ans->position) + " (want a token in [0, " +
                                           std::to_string(vocab) + ") for position " + std::to_string(g->position) + ")");
            const double cloud_ms = static_cast<double>(ans->cloud_compute_us) / 1000.0;
            g->result.stats.cloud_ms += cloud_ms;
            g->result.stats.wait_ms += std::max(0.0, round_trip - cloud_ms);
            emit(self, *g, ans->token, TokenSource::cloud, static_cast<int32_t>(self->state.plan.n_layers),
                 ans->confidence);
          },
          [=](caf::error& e) {
            auto* g = find(self, id);
            if (!g || g->pending_request != request_id) return;
            g->pending_request = 0;
            g->result.stats.wait_ms += ms_since(sent);
            degrade(self, *g, self->system().render(e));
          });
}

// Decides the token after g.position from g.outcome.
void handle(self_ptr self, Generation& g) {
  g.position = g.outcome.position;
  auto d = decide(g.policy, g.outcome);
  if (d.action == Action::emit_local) return emit(self, g, d.token, TokenSource::edge_exit, d.layer, d.confidence);
  if (g.cloud_lost) return degrade(self, g, "cloud lost earlier in this response");
  ask_cloud(self, g);
}

void run_edge(self_ptr self, Generation& g, const std::vector<int32_t>& tokens) {
  const auto t = clock_type::now();
  g.outcome = g.runner->advance(tokens, g.rule);
  ship_rows(self, g);
  g.result.stats.edge_ms += ms_since(t);
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
  g.result.generation = g.id;
  g.result.stats.mode = g.policy.mode;
  g.result.stats.threshold = g.policy.threshold;
  g.result.stats.prompt_tokens = static_cast<int>(g.request.prompt.size());
  g.state = ResponseState::computing;
  if (g.request.prompt.empty() || static_cast<int64_t>(g.request.prompt.size()) >= cfg.max_seq) {
    return fail(self, g, "prompt must hold 1.." + std::to_string(cfg.max_seq - 1) + " tokens");
  }
  if (!mode.edge_layers) {
    upload_tokens(self, g, 0, g.request.prompt);
    g.position = static_cast<int32_t>(g.request.prompt.size()) - 1;
    return ask_cloud(self, g);
  }
  g.runner = std::make_unique<EarlyExitRunner>(self->state.model, self->state.plan.split);
  run_edge(self, g, g.request.prompt);
  handle(self, g);
}

// Cloud-only (no edge layers): the last token goes up and the cloud decides the next.
void step_cloud_only(self_ptr self, Generation& g) {
  upload_tokens(self, g, static_cast<uint32_t>(g.position + 1), {g.result.tokens.back()});
  g.position += 1;
  ask_cloud(self, g);
}

// One batched step: every due response that is still computing advances by one token, those
// with edge layers together (EarlyExitRunner::advance over all their runners: one forward per
// layer segment for all of them), cloud-only ones as before. Each is then decided on its own; a
// response waiting for the cloud or held by backpressure is not due and holds no one up.
void step_due(self_ptr self) {
  auto& st = self->state;
  st.batch_sent = false;
  std::vector<Generation*> batched;
  std::vector<EarlyExitRunner::Advance> batch;
  for (const auto id : std::exchange(st.due, {})) {
    auto* g = find(self, id);
    if (!g || g->state != ResponseState::computing) continue;  // a step only moves a computing response
    if (!g->runner) {
      try {
        step_cloud_only(self, *g);
      } catch (const std::exception& e) {
        fail(self, *g, e.what());
      }
      continue;
    }
    batched.push_back(g);
    batch.push_back({g->runner.get(), {g->result.tokens.back()}, g->rule});
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
  for (size_t i = 0; i < batched.size(); ++i) {
    auto& g = *batched[i];
    try {
      g.outcome = outcomes[i];
      ship_rows(self, g);
      g.result.stats.edge_ms += ms;
      handle(self, g);
    } catch (const std::exception& e) {
      fail(self, g, e.what());
    }
  }
}

void finish(self_ptr self, Generation& g) {
  g.state = ResponseState::closing;
  if (!strategy_for(g.policy.mode).uploads) return deliver(self, g.id);
  // The last token's state goes up too, so the cloud's context covers the whole response
  // (prompt + generated positions, each exactly once) and a follow-up could continue from it.
  if (!g.result.tokens.empty() && g.result.error.empty()) {
    const int32_t last = g.result.tokens.back();
    if (g.runner) {
      ExitRule run_only = g.rule;
      run_only.evaluate_exits = false;
      const auto t = clock_type::now();
      g.runner->advance({last}, run_only);
      g.runner->flush();
      ship_rows(self, g);
      g.result.stats.edge_ms += ms_since(t);
    } else {
      upload_tokens(self, g, static_cast<uint32_t>(g.position + 1), {last});
    }
  }
  const uint64_t id = g.id;
  self->request(self->state.uploader, self->state.config.request_deadline * 2, bye_atom::value, g.session)
      .then(
          [=](uint64_t bytes) {
            if (auto* g = find(self, id)) g->result.stats.bytes_uploaded = bytes;
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
            g->state = ResponseState::computing;
            self->send(self, step_atom::value, id);
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
