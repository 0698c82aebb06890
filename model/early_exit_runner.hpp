#pragma once
// Token-by-token early-exit inference over layers [0, layer_end) of one session: the edge's
// partition (layer_end = split) or a whole model run locally (layer_end = L).
//
// A token that leaves at an exit still owes the deeper layers of the range: their KV for later
// tokens, and its state at layer_end (the split-layer state the cloud needs). Those rows wait in
// `pending_` at the depth where they stopped and ride along, in one batch, with the next token
// that goes deeper (EE-LLM's KV recomputation); flush() completes them at the end.
// Torch-free header: actors hold it through this interface.
#include <cstdint>
#include <memory>
#include <vector>

#include "model/runtime.hpp"
#include "model/position_rows.hpp"
#include "model/sampling.hpp"

namespace ce {

struct ExitRule {
  // Above any confidence: every exit is evaluated (its choice can stand in as a fallback) and
  // none is taken.
  static constexpr double never_exit = 2.0;

  double threshold = 0.8;      // leave at the first exit whose confidence >= threshold
  bool evaluate_exits = true;  // false: only run layers (filling KV and split states)
  SamplingParams sampling;

  // The exit rule: a token leaves at an exit whose confidence reaches θ.
  bool leaves_at(double confidence) const { return confidence >= threshold; }
};

struct StepOutcome {
  int32_t position = -1;       // position whose next token this decides
  bool resolved = false;       // decided on this node (an exit, or the final layer when layer_end = L)
  int32_t token = -1;
  float confidence = 0;
  int32_t exit_layer = -1;     // exit layer that resolved it; L for the final layer
  int32_t fallback_token = -1; // the deepest evaluated exit's choice (standalone fallback)
  float fallback_confidence = 0;
  int32_t fallback_layer = -1;
  Logprobs logprobs, fallback_logprobs;  // of token / fallback_token, when rule.sampling.logprobs >= 0

  // Standalone's token: the exit (or final layer) that resolved it, else the deepest evaluated exit.
  int32_t standalone_token() const { return resolved ? token : fallback_token; }
  int32_t standalone_layer() const { return resolved ? exit_layer : fallback_layer; }
};

class EarlyExitRunner {
 public:
  EarlyExitRunner(std::shared_ptr<const Model> model, int64_t layer_end);
  ~EarlyExitRunner();

  // Feeds `tokens` at the next positions and decides the token after the last one. A prompt
  // (more than one token) runs to layer_end whole, so its states are complete at once.
  StepOutcome advance(const std::vector<int32_t>& tokens, const ExitRule& rule);
  // Several runners (of one model and layer range, each once) advanced together, as an edge's
  // scheduler steps all of its responses: the rows of all of them go through each layer segment
  // as one batched forward (Decoder::forward over their caches), each runner's exits decide for
  // it alone. Outcome i is what runner i's advance(tokens, rule) would give; a bad item (no
  // runner, no tokens, past max_seq, a runner twice, mixed models) is refused before any runner
  // changes. `scratch` is the caller's.
  struct Advance {
    EarlyExitRunner* runner = nullptr;
    std::vector<int32_t> tokens;
    ExitRule rule;
  };
  static std::vector<StepOutcome> advance(const std::vector<Advance>& batch, std::vector<float>& scratch);
  // Echo (a prompt's own logprobs): outcome p, for each position p of `tokens` but the last, is
  // what advance would decide after position p with tokens[p + 1] as the token (resolved at the
  // first exit whose confidence reaches rule.threshold, or the final layer when layer_end = L;
  // fallback_* the deepest exit of the range), with that token's logprobs under the deciding head
  // and the rule.sampling.logprobs most likely alternatives. A pass of its own, one batched
  // forward of the prompt: no runner changes.
  static std::vector<StepOutcome> score(const std::shared_ptr<const Model>& model, int64_t layer_end,
                                        const std::vector<int32_t>& tokens, const ExitRule& rule);
  // Runs every pending row to layer_end.
  void flush();
  // Split-layer states (fp16) of the rows that reached layer_end since the last call, in position
  // order; `fp32`, when given, gets the same rows unrounded appended (the naïve-split baseline).
  PositionRows take_completed(std::vector<float>* fp32 = nullptr);
  // Speculation (the edge feeds its own guess while the cloud decides): checkpoint() keeps the
  // state before the next fed position (KV lengths, rows waiting at their depth, rows not yet
  // taken), and rewind(p) returns to the checkpoint taken at positions() == p exactly, as if
  // nothing had been fed since, dropping later checkpoints; completed_positions() then says from
  // where the split states must be uploaded again. confirm(p) forgets checkpoints at or before p.
  // rewind throws ModelError when no checkpoint was taken at p.
  void checkpoint();
  void rewind(int64_t positions);
  void confirm(int64_t positions);
  int64_t positions() const;        // tokens fed so far
  int64_t completed_positions() const;  // positions that reached layer_end
  int64_t layer_end() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace ce
