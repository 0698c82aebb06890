#pragma once
// Token choice: greedy at temperature 0, else seeded temperature + top-p (nucleus) sampling.
// The draw depends only on (seed, position), so edge, cloud and a local run pick the same token
// for the same logits wherever the position is computed.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "model/sampling.hpp"

namespace ce {

int64_t pick_token(const at::Tensor& logits, const SamplingParams& params, uint64_t position);  // logits: (vocab)

// The greedy choice of one row of logits: the argmax (the first on ties) and its softmax
// probability, 1 / sum(exp(logit - max)): the confidence every exit rule compares with θ.
TokenChoice greedy_choice(const float* logits, int64_t vocab);
TokenChoice greedy_choice(const at::Tensor& logits);  // (vocab), any float dtype
// greedy_choice of each row of (T, vocab) fp32 logits (ce-eval's sweep).
std::vector<TokenChoice> greedy_choices(const at::Tensor& logits);

// The one token choice of the runtime (edge exits, the cloud's final layer, the naïve split): the
// token for `position` under `params` and the greedy confidence the exit rule compares with θ.
TokenChoice choose_token(const at::Tensor& logits, const SamplingParams& params, uint64_t position);  // (vocab)

}  // namespace ce
