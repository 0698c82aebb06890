#pragma once
// Token choice: greedy at temperature 0, else seeded temperature + top-p (nucleus) sampling.
// The draw depends only on (seed, position), so edge, cloud and a local run pick the same token
// for the same logits wherever the position is computed.
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace ce {

struct SamplingParams {
  float temperature = 0;  // 0: greedy
  float top_p = 1;
  uint64_t seed = 0;
};

int64_t pick_token(const at::Tensor& logits, const SamplingParams& params, uint64_t position);  // logits: (vocab)

}  // namespace ce
