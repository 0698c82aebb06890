#include "actors/cloud/cloud_inference.hpp"

#include <caf/all.hpp>

#include <chrono>

#include "actors/log.hpp"
#include "model/cloud_compute.hpp"

namespace ce {
namespace {

struct CloudInferenceState {
  std::shared_ptr<const Model> model;
  int64_t split = 0;
  static inline const char* name = "cloud_inference";
};

caf::result<bool, std::vector<char>> run_job(const CloudInferenceState& st, InferJob& job) {
  const auto& req = job.request;
  const auto t0 = std::chrono::steady_clock::now();
  SamplingParams sampling{req.temperature, req.top_p, req.seed};
  TokenChoice choice;
  try {
    if (req.kind == wire::InferKind::naive_split) {
      choice = naive_split_infer(*st.model, st.split, reinterpret_cast<const float*>(req.inline_payload.data()),
                                 req.inline_count, sampling);
    } else {
      if (!job.new_rows.empty()) job.compute->append(job.new_rows);
      choice = job.compute->infer(req.position, sampling);
    }
  } catch (const std::exception& e) {
    CE_LOG(warning, "cloud", "session " << std::hex << req.session_id << std::dec << " position " << req.position
                                        << ": " << e.what());
    return {false, wire::encode(wire::ErrorReply{error::bad_request, e.what(), req.session_id, req.request_id})};
  }
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
  return {true, wire::encode(wire::InferReply{req.session_id, req.request_id, req.position, choice.token,
                                             choice.confidence, static_cast<uint64_t>(us)})};
}

cloud_inference_actor::behavior_type cloud_inference(
    cloud_inference_actor::stateful_pointer<CloudInferenceState> self, std::shared_ptr<const Model> model,
    int64_t split) {
  self->state.model = std::move(model);
  self->state.split = split;
  return {
      [=](compute_atom, InferJob& job) { return run_job(self->state, job); },
  };
}

}  // namespace

cloud_inference_actor spawn_cloud_inference(caf::actor_system& system, std::shared_ptr<const Model> model,
                                            int64_t split) {
  return system.spawn<caf::detached>(cloud_inference, std::move(model), split);
}

}  // namespace ce
