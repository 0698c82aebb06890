#pragma once
// Token choice: greedy at temperature 0, else seeded temperature + top-p (nucleus) sampling.
// The draw depends only on (seed, position), so edge, cloud and a local run pick the same token
// for the same logits wherever the position is computed.
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "model/sampling.hpp"

namespace ce {

int64_t pick_token(const at::Tensor& logits, const SamplingParams& params, uint64_t position);  // logits: (vocab)

// The one token choice of the runtime (edge exits, the cloud's final layer, the naïve split): the
// token for `position` under `params` and the greedy confidence the exit rule compares with θ.
TokenChoice choose_token(const at::Tensor& logits, const SamplingParams& params, uint64_t position);  // (vocab)

}  // namespace ce
