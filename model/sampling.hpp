#pragma once
// How a token is chosen from logits: the parameters only (torch-free; the choice itself is
// model/sampler.hpp). Greedy at temperature 0, else seeded temperature + top-p sampling.
#include <cstdint>

namespace ce {

struct SamplingParams {
  float temperature = 0;  // 0: greedy
  float top_p = 1;
  uint64_t seed = 0;
};

// A chosen token and the confidence the exit rule reads (the greedy softmax maximum, whatever
// the sampling).
struct TokenChoice {
  int32_t token = -1;
  float confidence = 0;
};

}  // namespace ce
