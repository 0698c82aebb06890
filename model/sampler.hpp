#pragma once
// Token choice (the rule is documented at SamplingParams, model/sampling.hpp). The draw depends
// only on (seed, position) and the logits, so edge, cloud and a local run pick the same token for
// the same logits wherever the position is computed.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "model/sampling.hpp"

namespace ce {

// The one token choice of the runtime (edge exits, the cloud's final layer, the naïve split, local
// runs): the token after input.position under `params` (or input.scored_token), the greedy
// confidence the exit rule compares with θ, and the logprobs when params.logprobs >= 0. Throws
// ModelError for a logit_bias, history or scored token outside the vocabulary.
TokenChoice choose_token(const at::Tensor& logits, const SamplingParams& params, const ChoiceInput& input);  // (vocab)
// choose_token's token for `position` with no history.
int64_t pick_token(const at::Tensor& logits, const SamplingParams& params, uint64_t position);  // (vocab)

// The greedy choice of one row of logits: the argmax (the first on ties) and its softmax
// probability, 1 / sum(exp(logit - max)): the confidence every exit rule compares with θ.
TokenChoice greedy_choice(const float* logits, int64_t vocab);
TokenChoice greedy_choice(const at::Tensor& logits);  // (vocab), any float dtype
// greedy_choice of each row of (T, vocab) fp32 logits (ce-eval's sweep).
std::vector<TokenChoice> greedy_choices(const at::Tensor& logits);

// log_softmax of `logits` at `token`, and the `top` most likely tokens (ties: lower id first).
Logprobs logprobs_of(const float* logits, int64_t vocab, int32_t token, int32_t top);

}  // namespace ce
