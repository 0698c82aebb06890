#pragma once
// The exit rule and mode policy, as pure logic: what to do with a token once the edge has run
// its exits. The exit_decider actor holds one of these; unit-tested without a model.
#include <cstdint>

#include "config/node_config.hpp"
#include "model/early_exit_runner.hpp"

namespace ce {

struct Policy {
  InferenceMode mode = InferenceMode::collaborative;
  double threshold = 0.8;
};

enum class Action { emit_local, ask_cloud };

struct Decision {
  Action action = Action::emit_local;
  int32_t token = -1;   // for emit_local
  int32_t layer = -1;
  float confidence = 0;
};

// Collaborative: a token resolved at an edge exit (confidence >= θ) stays local; else the cloud.
// Standalone: the first confident exit, else the last edge exit. Baselines always ask the cloud.
Decision decide(const Policy& policy, const StepOutcome& outcome);

// The local token that stands in when the cloud cannot answer (standalone fallback).
Decision fallback(const StepOutcome& outcome);

// The mode a new response runs in: a collaborative policy whose cloud link is down degrades to
// standalone up front rather than timing out token by token; the baselines keep their mode.
InferenceMode effective_mode(InferenceMode configured, bool cloud_up);

}  // namespace ce
