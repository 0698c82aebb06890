#pragma once
// Early exits for a published checkpoint: a Hugging Face Llama-family model directory without an
// early_exit section gets exit heads after the layers asked for, initialised from the final head,
// then EE-Tuned (exit parameters only, the backbone frozen and run as stored, bounded memory).
//
// The output directory is the source with exits added: every backbone tensor byte for byte in its
// stored dtype, the exit tensors in the backbone's dtype (one model.safetensors), config.json with
// every source field kept and an early_exit section added, the tokenizer files copied. Torch-free.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/model_config.hpp"

namespace ce {

// What to add: exit heads after `exit_layers` (strictly increasing, in [1, L-1]).
struct ExitSpec {
  std::vector<int64_t> exit_layers;
  // false: every exit head is lm_head (tie_exit_heads: no head memory beyond the final one's; with
  // tie_word_embeddings that is the embedding). true: each exit its own head, a copy of lm_head.
  bool own_heads = false;
  double default_threshold = 0.8;  // until ce-eval --write-threshold calibrates it
};

struct ExitTuningOptions {
  // Token ids of the training text, no BOS: every window the backbone reads starts with the
  // model's BOS where it has one (config bos_id >= 0), as each of its training documents did.
  std::vector<int32_t> train_tokens;
  // Held-out text, loss per exit reported before and after tuning; empty: the last
  // held_out_fraction of train_tokens is held out instead (and not trained on).
  std::vector<int32_t> valid_tokens;
  double held_out_fraction = 0.05;
  int64_t held_out_windows = 8;  // windows of seq_len scored before and after (0: none)
  int64_t steps = 200;           // optimizer steps; 0 writes the untuned exits
  int64_t batch = 4;             // windows per step
  int64_t seq_len = 256;         // tokens per window: batch * seq_len positions per step
  double lr = 1e-3;              // peak Adam learning rate of the exit norms
  double head_lr = 0;            // of the own heads; 0: lr / 10 (their weights are ~50x smaller)
  uint64_t seed = 1;             // window sampling
};

struct AddExitsOptions {
  std::string from;    // the source model directory (no exits)
  std::string out;     // the new model directory; must not be `from`
  bool force = false;  // write into an existing non-empty `out`
  ExitSpec exits;
  ExitTuningOptions tuning;
};

struct ExitTuningProgress {
  enum class Kind { step, held_out_before, held_out_after };
  Kind kind = Kind::step;
  int64_t step = 0, total_steps = 0;
  std::vector<double> losses;  // mean next-token cross-entropy (nats) per exit, ascending
  double lr = 0;
  double tokens_per_second = 0;  // positions through the backbone and the exits, per second
  // Where the step's time went: the frozen backbone's forward, and the exits' losses and gradients
  // (with a large vocabulary these dominate: ~4 * vocab * dim flops per position and exit).
  double backbone_seconds = 0, exit_seconds = 0;
};

struct AddExitsResult {
  ModelConfig config;  // of the written model
  int64_t steps_done = 0;
  std::vector<double> held_out_before, held_out_after;  // per exit; empty when not measured
  double tokens_per_second = 0;
};

// The source's config, after every refusal: `from` not a model directory, exits outside
// [1, L-1] or not increasing, a source that already has exits, `out` equal to `from`, an existing
// non-empty `out` without `force`, bad tuning sizes. Each ModelError names the flag and path.
ModelConfig check_add_exits(const AddExitsOptions& options);

// Checks, tunes (options.tuning.steps > 0) and writes options.out. Progress is reported before
// and after tuning (held-out losses) and after every step.
AddExitsResult add_exits(const AddExitsOptions& options,
                         const std::function<void(const ExitTuningProgress&)>& progress = {});

}  // namespace ce
