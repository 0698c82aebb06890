#pragma once
// Token choice: greedy at temperature 0, else seeded temperature + top-p (nucleus) sampling.
// The draw depends only on (seed, position), so edge, cloud and a local run pick the same token
// for the same logits wherever the position is computed.
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "model/sampling.hpp"

namespace ce {

int64_t pick_token(const at::Tensor& logits, const SamplingParams& params, uint64_t position);  // logits: (vocab)

}  // namespace ce
