#pragma once
// Joint training of the backbone and its exit heads (weighted exit losses, optional distillation
// of each exit toward the final layer), and EE-Tuning (exit heads only, backbone frozen).
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/model_config.hpp"

namespace ce {

struct TrainOptions {
  std::vector<int32_t> train_tokens;
  std::vector<int32_t> valid_tokens;
  ModelConfig config;
  std::string init_dir;         // start from this model instead of random weights
  // state.json names the last committed checkpoint (a step-NNNNNNN/ folder with weights and
  // optimizer) and the options that made it; resumed when present, refused when they differ.
  std::string checkpoint_dir;
  int64_t steps = 1000;
  int64_t batch = 16;
  int64_t seq = 256;
  double lr = 3e-3;
  double min_lr_ratio = 0.1;
  int64_t warmup = 100;
  double weight_decay = 0.1;
  double clip = 1.0;
  double exit_weight = 0.5;     // loss weight of each exit (final layer weight 1)
  double distill_weight = 0.0;  // KL(final || exit) weight per exit, final detached
  // CE(exit, final layer's greedy token) weight per exit, final detached. Trained on this target
  // an exit's max softmax estimates the probability that it agrees with the final layer, which is
  // what the exit threshold θ is compared against.
  double greedy_distill_weight = 0.0;
  bool freeze_backbone = false; // EE-Tuning: train exits.* only
  uint64_t seed = 1;
  int64_t eval_every = 200;
  int64_t eval_batches = 8;
  int64_t checkpoint_every = 200;
  int64_t stop_after = 0;       // stop (with a checkpoint) after this many steps in this sitting
};

struct TrainProgress {
  int64_t step = 0, total_steps = 0;
  double lr = 0;
  std::vector<double> losses;  // per exit, then final
  double tokens_per_second = 0;
  double eta_seconds = 0;
  bool is_eval = false;
};

struct TrainResult {
  int64_t steps_done = 0;
  std::vector<double> step_losses;  // total loss of every step of this sitting
  bool finished = false;
};

// The fp32 weights file of the last committed checkpoint in `checkpoint_dir`; throws ModelError
// when there is none.
std::string checkpoint_weights_file(const std::string& checkpoint_dir);

// Trains and returns; the weights are written by save_weights on `out_dir` when non-empty.
TrainResult train(const TrainOptions& options, const std::string& out_dir,
                  const std::function<void(const TrainProgress&)>& progress);

}  // namespace ce
