#include "actors/cloud/cloud_inference.hpp"

#include <caf/all.hpp>

#include <chrono>
#include <deque>
#include <vector>

#include "actors/cloud/gathering.hpp"
#include "actors/log.hpp"
#include "model/cloud_compute.hpp"

namespace ce {
namespace {

using reply_promise = caf::typed_response_promise<bool, std::vector<char>>;

// A job waiting for the steps that reach its position.
struct Waiting {
  InferJob job;
  reply_promise promise;
  uint64_t compute_us = 0;  // time of the steps it took part in
};

using clock_type = Gathering::clock_type;

struct CloudInferenceState {
  std::shared_ptr<const Model> model;
  int64_t split = 0;
  CloudBatching batching;
  std::deque<Waiting> queue;
  bool step_sent = false;
  uint64_t step_generation = 0;  // of the step message in flight: a gathering's timer that lost the race is stale
  bool awaiting_returns = false;  // a step is held back for returning sessions
  clock_type::time_point gather_started, gather_until;
  Gathering gathering{CloudBatching{}.gather};  // from the batching config at spawn
  std::vector<float> scratch;  // the batched step's, kept between steps
  CloudCompute::RowBudget row_budget{CloudBatching{}.catch_up_chunk};  // from the batching config at spawn
  CloudStats::Batching stats;
  static inline const char* name = "cloud_inference";
};

using self_ptr = cloud_inference_actor::stateful_pointer<CloudInferenceState>;

CloudCompute::Request compute_request(CloudCompute* context, const wire::InferRequest& req) {
  return {context, req.position, req.sampling, req.history, req.scored_token};
}

std::vector<char> error_reply(const wire::InferRequest& req, const std::string& why) {
  CE_LOG(warning, "cloud", "session " << std::hex << req.session_id << std::dec << " position " << req.position
                                      << ": " << why);
  return wire::encode(wire::ErrorReply{error::bad_request, why, req.session_id, req.request_id});
}

std::vector<char> token_reply(const wire::InferRequest& req, const TokenChoice& choice, uint64_t us) {
  return wire::encode(wire::InferReply{req.session_id, req.request_id, req.position, choice.token, choice.confidence,
                                       us, req.sampling.logprobs >= 0, choice.logprobs});
}

void send_step(self_ptr self, std::chrono::microseconds delay) {
  auto& st = self->state;
  st.step_sent = true;
  const auto generation = ++st.step_generation;
  // Behind every job already in the mailbox: each step sees all of them.
  if (delay.count() > 0)
    self->delayed_send(self, delay, step_atom::value, generation);
  else
    self->send(self, step_atom::value, generation);
}

void schedule_step(self_ptr self) {
  auto& st = self->state;
  if (st.queue.empty()) return;
  const auto now = clock_type::now();
  const bool full = static_cast<int>(st.queue.size()) >= st.batching.max_sessions;
  if (st.awaiting_returns) {  // a job came in while gathering: step now if nobody else is expected soon
    if (!full && now < st.gather_until && st.gathering.wait_ms(now) > 0) return;
    st.awaiting_returns = false;
    return send_step(self, {});  // the gathering's timer is stale now
  }
  if (st.step_sent) return;
  const double wait = full ? 0 : st.gathering.wait_ms(now);
  const auto delay = std::chrono::microseconds(static_cast<int64_t>(wait * 1000));
  st.awaiting_returns = delay.count() > 0;
  if (st.awaiting_returns) st.gather_started = now;
  st.gather_until = now + delay;
  send_step(self, delay);
}

caf::result<bool, std::vector<char>> on_job(self_ptr self, InferJob& job) {
  auto& st = self->state;
  const auto& req = job.request;
  try {
    if (req.kind == wire::InferKind::naive_split) {  // the stateless baseline: no context to batch with
      const auto t0 = std::chrono::steady_clock::now();
      const auto choice = naive_split_infer(*st.model, st.split, reinterpret_cast<const float*>(req.inline_payload.data()),
                                            req.inline_count, req.sampling, req.history, req.scored_token);
      const auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
      return {true, token_reply(req, choice, static_cast<uint64_t>(us.count()))};
    }
    if (!job.new_rows.empty()) job.compute->append(job.new_rows);
    CloudCompute::check(compute_request(job.compute.get(), req));
  } catch (const std::exception& e) {
    return {false, error_reply(req, e.what())};
  }
  st.gathering.job_arrived(req.session_id, clock_type::now());
  auto promise = self->make_response_promise<bool, std::vector<char>>();
  st.queue.push_back({std::move(job), promise, 0});
  schedule_step(self);
  return promise;
}

// One batched step: the oldest jobs of the oldest job's layer range (split contexts and cloud-only
// ones run different layers), at most max_sessions of them.
void on_step(self_ptr self, uint64_t generation) {
  auto& st = self->state;
  if (generation != st.step_generation) return;  // a gathering's timer: the step ran already
  st.step_sent = false;
  if (st.gather_started != clock_type::time_point{}) {  // this step waited for returning sessions
    ++st.stats.gathers;
    st.stats.gather_seconds += std::chrono::duration<double>(clock_type::now() - st.gather_started).count();
    st.gather_started = {};
  }
  st.awaiting_returns = false;
  if (st.queue.empty()) return;
  const int64_t layers = st.queue.front().job.compute->layer_begin();
  std::vector<Waiting> batch;
  std::deque<Waiting> rest;
  for (auto& w : st.queue) {
    if (static_cast<int>(batch.size()) < st.batching.max_sessions && w.job.compute->layer_begin() == layers)
      batch.push_back(std::move(w));
    else
      rest.push_back(std::move(w));
  }
  st.queue = std::move(rest);
  std::vector<CloudCompute::Request> requests;
  for (const auto& w : batch)
    requests.push_back(compute_request(w.job.compute.get(), w.job.request));
  std::vector<int64_t> computed_before;
  for (const auto& r : requests) computed_before.push_back(r.context->computed());
  const int64_t max_rows = st.row_budget.max_rows(batch.size());
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::optional<TokenChoice>> tokens;
  std::string failure;
  try {
    tokens = CloudCompute::step(requests, max_rows, st.scratch);
  } catch (const std::exception& e) {
    failure = e.what();
  }
  const auto us = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count());
  auto& stats = st.stats;
  ++stats.steps;
  stats.sessions += batch.size();
  stats.max_sessions = std::max<uint64_t>(stats.max_sessions, batch.size());
  stats.step_seconds += static_cast<double>(us) * 1e-6;
  int64_t answered_rows = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const int64_t rows = requests[i].context->computed() - computed_before[i];
    stats.rows += static_cast<uint64_t>(rows);
    if (failure.empty() && tokens[i]) answered_rows += rows;
  }
  st.row_budget.record(batch.size(), answered_rows);
  std::vector<uint64_t> answered_sessions;
  for (size_t i = 0; i < batch.size(); ++i) {
    auto& w = batch[i];
    w.compute_us += us;
    if (!failure.empty()) {
      w.promise.deliver(false, error_reply(w.job.request, "batched cloud step failed: " + failure));
    } else if (tokens[i]) {
      w.promise.deliver(true, token_reply(w.job.request, *tokens[i], w.compute_us));
      answered_sessions.push_back(w.job.request.session_id);
    } else {
      st.queue.push_back(std::move(w));  // position not reached yet: its next chunk in a later step
    }
  }
  st.gathering.step_done(answered_sessions, static_cast<double>(us) / 1000.0, clock_type::now());
  schedule_step(self);
}

cloud_inference_actor::behavior_type cloud_inference(self_ptr self, std::shared_ptr<const Model> model, int64_t split,
                                                     CloudBatching batching) {
  self->state.model = std::move(model);
  self->state.split = split;
  self->state.batching = batching;
  self->state.row_budget = CloudCompute::RowBudget(batching.catch_up_chunk);
  self->state.gathering = Gathering(batching.gather);
  return {
      [=](compute_atom, InferJob& job) { return on_job(self, job); },
      [=](step_atom, uint64_t generation) { on_step(self, generation); },
      [=](stats_atom) {
        auto s = self->state.stats;
        s.queue_depth = self->state.queue.size();
        return s;
      },
  };
}

}  // namespace

cloud_inference_actor spawn_cloud_inference(caf::actor_system& system, std::shared_ptr<const Model> model,
                                            int64_t split, CloudBatching batching) {
  return system.spawn<caf::detached>(cloud_inference, std::move(model), split, batching);
}

}  // namespace ce
