#include "tools/bench/load.hpp"

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <utility>

#include "actors/atoms.hpp"
#include "actors/edge/placement.hpp"
#include "actors/http/stats_json.hpp"
#include "model/early_exit_runner.hpp"
#include "model/runtime.hpp"
#include "model/split_plan.hpp"

namespace ce::bench {
namespace {

using clock_type = std::chrono::steady_clock;

double ms_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
}

// One simulated edge session against the cloud: the frames an edge's uploader sends.
class Session {
 public:
  Session(caf::actor_system& system, cloud_front_actor cloud, uint64_t id, std::chrono::milliseconds deadline)
      : self_(system), cloud_(std::move(cloud)), id_(id), deadline_(deadline) {}

  // Uploads rows [uploaded, position + 1) and asks for the token after `position`: both frames go
  // out back to back (the cloud takes them in order), then the two replies are read. Returns the
  // infer round trip in ms, or a negative number with `error` set.
  double ask(const LoadTrace& trace, uint32_t position, std::string& error) {
    const auto t0 = clock_type::now();
    bool uploaded_ok = true;
    std::optional<decltype(self_->request(cloud_, deadline_, frame_atom::value, std::vector<char>{}))> upload;
    if (uploaded_ < position + 1) {
      wire::UploadChunk chunk;
      chunk.session_id = id_;
      chunk.chunk_id = ++chunks_;
      chunk.first_position = uploaded_;
      chunk.count = position + 1 - uploaded_;
      const auto* p = reinterpret_cast<const uint8_t*>(trace.states.data() + size_t{uploaded_} * trace.dim);
      chunk.payload.assign(p, p + size_t{chunk.count} * trace.dim * 2);
      upload.emplace(self_->request(cloud_, deadline_, frame_atom::value, wire::encode(chunk)));
      uploaded_ = position + 1;
    }
    wire::InferRequest req;
    req.session_id = id_;
    req.request_id = ++requests_;
    req.position = position;
    auto infer = self_->request(cloud_, deadline_, frame_atom::value, wire::encode(req));
    if (upload)
      upload->receive([&](const std::vector<char>& frame) { uploaded_ok = expect<wire::UploadAck>(frame, error); },
                      [&](caf::error& e) { uploaded_ok = fail(error, "upload: " + self_->system().render(e)); });
    bool answered = false;
    infer.receive([&](const std::vector<char>& frame) { answered = expect<wire::InferReply>(frame, error); },
                  [&](caf::error& e) { answered = fail(error, "infer: " + self_->system().render(e)); });
    return uploaded_ok && answered ? ms_since(t0) : -1;
  }

  void bye() {
    self_->request(cloud_, deadline_, frame_atom::value, wire::encode(wire::Bye{id_}))
        .receive([](const std::vector<char>&) {}, [](caf::error&) {});
  }

 private:
  template <class Expected>
  static bool expect(const std::vector<char>& frame, std::string& error) {
    auto d = wire::decode(frame, {});
    if (d.ok && std::holds_alternative<Expected>(d.message)) return true;
    if (d.ok && std::holds_alternative<wire::ErrorReply>(d.message))
      return fail(error, std::get<wire::ErrorReply>(d.message).text);
    return fail(error, d.ok ? "unexpected reply" : d.error_text);
  }
  static bool fail(std::string& error, const std::string& why) {
    if (error.empty()) error = why;
    return false;
  }

  caf::scoped_actor self_;
  cloud_front_actor cloud_;
  uint64_t id_;
  std::chrono::milliseconds deadline_;
  uint32_t uploaded_ = 0;
  uint64_t chunks_ = 0, requests_ = 0;
};

}  // namespace

uint32_t LoadTrace::offloaded_count(uint32_t first_positions) const {
  const auto end = offloaded.begin() + std::min<size_t>(first_positions, offloaded.size());
  return static_cast<uint32_t>(std::count(offloaded.begin(), end, uint8_t{1}));
}

LoadTrace make_trace(const std::shared_ptr<const Model>& model, const std::vector<int32_t>& tokens, uint32_t prompt,
                     double threshold) {
  const auto& c = model->config();
  const auto plan = SplitPlan::from_config(c, c.default_split);
  if (prompt < 1 || prompt > tokens.size()) throw std::invalid_argument("load trace: prompt outside the text");
  LoadTrace t;
  t.hello.model_id = c.name;
  t.hello.weights_hash = model->weights_hash();
  t.hello.split_layer = static_cast<uint32_t>(plan.split);
  t.hello.hidden_dim = static_cast<uint32_t>(c.dim);
  t.hello.client_name = "ce-bench-load";
  t.dim = static_cast<uint32_t>(c.dim);
  t.prompt = prompt;
  EarlyExitRunner runner(model, plan.split);
  ExitRule rule;
  rule.threshold = threshold;
  t.offloaded.assign(tokens.size(), 0);
  auto out = runner.advance(std::vector<int32_t>(tokens.begin(), tokens.begin() + prompt), rule);
  for (size_t p = prompt - 1; p < tokens.size(); ++p) {
    t.offloaded[p] = out.resolved ? 0 : 1;
    if (p + 1 < tokens.size()) out = runner.advance({tokens[p + 1]}, rule);
  }
  runner.flush();
  const auto rows = runner.take_completed();
  t.states.assign(rows.f16(), rows.f16() + size_t{rows.count()} * t.dim);
  t.offloaded.resize(rows.count());
  return t;
}

namespace {

// Reaches a cloud and has it welcome the trace's model.
cloud_front_actor link_cloud(caf::actor_system& system, const LoadTrace& trace, const CloudAddress& address,
                             std::chrono::milliseconds deadline) {
  auto handle = system.middleman().remote_actor<cloud_front_actor>(address.host, address.port);
  if (!handle) throw std::runtime_error("cannot reach the cloud at " + address.name() + ": " + system.render(handle.error()));
  const cloud_front_actor cloud = *handle;
  caf::scoped_actor self{system};
  std::string why;
  self->request(cloud, deadline, frame_atom::value, wire::encode(trace.hello))
      .receive(
          [&](const std::vector<char>& frame) {
            auto d = wire::decode(frame, {});
            if (!d.ok || !std::holds_alternative<wire::Welcome>(d.message))
              why = d.ok && std::holds_alternative<wire::ErrorReply>(d.message)
                        ? std::get<wire::ErrorReply>(d.message).text
                        : "unexpected reply to Hello";
          },
          [&](caf::error& e) { why = system.render(e); });
  if (!why.empty()) throw std::runtime_error("the cloud at " + address.name() + " refused the Hello: " + why);
  return cloud;
}

}  // namespace

LoadResult run_load(const LoadTrace& trace, const LoadOptions& o) {
  if (o.clouds.empty()) throw std::invalid_argument("load: no cloud to load");
  caf::actor_system_config cfg;
  cfg.load<caf::io::middleman>();
  cfg.set("logger.verbosity", caf::atom("quiet"));
  cfg.set("scheduler.policy", caf::atom("sharing"));
  caf::actor_system system{cfg};
  std::vector<cloud_front_actor> clouds;
  std::vector<PlacementCandidate> candidates;
  for (const auto& address : o.clouds) {
    clouds.push_back(link_cloud(system, trace, address, o.deadline));
    candidates.push_back({address.name(), 1.0, true, false});
  }
  const auto cloud_of = [&](uint64_t session) { return rank_nodes(session, candidates).front(); };
  LoadResult result;
  result.sessions = o.sessions;
  result.sessions_per_cloud.assign(clouds.size(), 0);
  std::mutex mu;
  std::vector<double> latencies, first_latencies, next_latencies;
  std::atomic<uint64_t> errors{0};
  const auto record = [&](double ms, const std::string& error, bool first) {
    std::lock_guard<std::mutex> lock(mu);
    if (ms >= 0) {
      latencies.push_back(ms);
      (first ? first_latencies : next_latencies).push_back(ms);
    } else if (result.first_error.empty()) {
      result.first_error = error;
    }
  };
  const auto t0 = clock_type::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < o.sessions; ++i)
    threads.emplace_back([&, i] {
      const uint64_t id = o.session_base + static_cast<uint64_t>(i);
      Session s(system, clouds[static_cast<size_t>(cloud_of(id))], id, o.deadline);
      const uint32_t end = o.positions ? std::min(o.positions, trace.positions()) : trace.positions();
      bool first = true;
      for (uint32_t p = trace.prompt - 1; p < end; ++p) {
        if (!trace.offloaded[p]) continue;
        std::string error;
        const double ms = s.ask(trace, p, error);
        if (ms < 0) ++errors;
        record(ms, error, std::exchange(first, false));
      }
      s.bye();
    });
  if (o.catch_up > 0) {
    threads.emplace_back([&] {
      const uint64_t id = o.session_base + static_cast<uint64_t>(o.sessions);
      Session s(system, clouds[static_cast<size_t>(cloud_of(id))], id, o.deadline);
      std::string error;
      const uint32_t last = std::min(o.catch_up, trace.positions()) - 1;
      result.catch_up_ms = s.ask(trace, last, error);
      if (result.catch_up_ms < 0) ++errors, record(-1, error, true);
      s.bye();
    });
  }
  for (int i = 0; i < o.sessions; ++i) result.sessions_per_cloud[static_cast<size_t>(cloud_of(o.session_base + i))]++;
  for (auto& t : threads) t.join();
  result.seconds = ms_since(t0) / 1e3;
  result.requests = latencies.size();
  result.errors = errors;
  result.tokens_per_s = result.seconds > 0 ? static_cast<double>(result.requests) / result.seconds : 0;
  result.p50_ms = percentile(latencies, 0.5);
  result.p99_ms = percentile(latencies, 0.99);
  result.max_ms = percentile(latencies, 1.0);
  result.first_p50_ms = percentile(first_latencies, 0.5);
  result.first_max_ms = percentile(first_latencies, 1.0);
  result.next_p50_ms = percentile(next_latencies, 0.5);
  result.next_p99_ms = percentile(next_latencies, 0.99);
  return result;
}

}  // namespace ce::bench
