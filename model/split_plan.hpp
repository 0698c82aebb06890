#pragma once
// Which layers and exits each role holds. Computed from the model config and the chosen split,
// never hard-coded: the edge runs [0, split) with the exits inside it, the cloud [split, L).
#include <cstdint>
#include <string>
#include <vector>

#include "model/model_config.hpp"

namespace ce {

struct LayerRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

struct SplitPlan {
  int64_t split = 0;
  int64_t n_layers = 0;
  std::vector<int64_t> edge_exits;  // exits at layers <= split, ascending

  LayerRange edge() const { return {0, split}; }
  LayerRange cloud() const { return {split, n_layers}; }
  std::string describe() const;

  // split == 0 picks the model's default_split. Throws ModelError when the split is outside
  // [1, L-1] or leaves the edge without an exit.
  static SplitPlan from_config(const ModelConfig& config, int64_t split = 0);
};

}  // namespace ce
