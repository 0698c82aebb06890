#pragma once
// How a token is chosen from logits: the parameters and what a choice reports (torch-free; the
// choice itself is model/sampler.hpp). One rule for every place a token is chosen: edge exits,
// the cloud's final layer, the naïve split, local runs.
#include <cstdint>
#include <vector>

namespace ce {

// A logit_bias entry: added to the token's logit before anything else.
struct TokenBias {
  int32_t token = 0;
  float bias = 0;
};

// The knobs of a response, the same for each of its tokens. The order they act in:
//   1. logit_bias is added;
//   2. penalties (TokenHistory): repetition_penalty divides the positive logit of a token seen in
//      the prompt or the output and multiplies a negative one (CTRL's rule, as vLLM and
//      llama.cpp); presence_penalty is subtracted once from a token present in the output,
//      frequency_penalty once per occurrence there (OpenAI's rule; the prompt does not count);
//   3. temperature 0: the argmax of the adjusted logits (the first on ties); else
//   4. softmax(adjusted / temperature), then top_k (the k most likely), min_p (tokens below
//      min_p × the most likely's probability dropped), top_p (the smallest prefix of the rest whose
//      mass reaches top_p), and one draw from what is left, seeded by (seed, position).
// The confidence the exit rule compares with θ is always the head's own greedy softmax maximum
// (unadjusted): knobs change which token is emitted, not where a token leaves.
struct SamplingParams {
  float temperature = 0;  // 0: greedy
  float top_p = 1;
  uint64_t seed = 0;
  int32_t top_k = 0;            // 0: no limit
  float min_p = 0;              // 0: off
  float repetition_penalty = 1; // 1: off
  float presence_penalty = 0;
  float frequency_penalty = 0;
  std::vector<TokenBias> logit_bias;
  // Logprobs reported with each token: -1 none; N >= 0 the chosen token's log-probability and the
  // N most likely alternatives (at most max_top_logprobs), under the head's unadjusted
  // distribution (log_softmax of its logits, as vLLM's raw logprobs).
  int32_t logprobs = -1;

  static constexpr int32_t max_top_logprobs = 20;

  // Temperature + top-p with a seed, every other knob off.
  static SamplingParams sampled(float temperature, float top_p, uint64_t seed) {
    SamplingParams p;
    p.temperature = temperature;
    p.top_p = top_p;
    p.seed = seed;
    return p;
  }

  bool penalizes() const { return repetition_penalty != 1 || presence_penalty != 0 || frequency_penalty != 0; }
  bool adjusts_logits() const { return penalizes() || !logit_bias.empty(); }
};

// One token seen before the chosen one: whether the prompt has it, and how often the output.
struct TokenUse {
  int32_t token = 0;
  uint32_t output_count = 0;
  bool in_prompt = false;
};

// What the penalties read: the distinct tokens of the sequence so far, sorted by token.
struct TokenHistory {
  std::vector<TokenUse> uses;

  // The history of tokens[0, count), of which the first prompt_length are the prompt.
  static TokenHistory of(const int32_t* tokens, size_t count, size_t prompt_length);
  bool empty() const { return uses.empty(); }
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
};

// A token's log-probability and the most likely alternatives, most likely first.
struct Logprobs {
  float logprob = 0;
  std::vector<TokenLogprob> top;
};

// A chosen token and the confidence the exit rule reads (the greedy softmax maximum, whatever
// the sampling); logprobs filled when SamplingParams::logprobs >= 0.
struct TokenChoice {
  int32_t token = -1;
  float confidence = 0;
  Logprobs logprobs;
};

// What one choice needs besides the logits and the response's knobs.
struct ChoiceInput {
  uint64_t position = 0;      // the choice is the token after `position` (the draw's seed)
  TokenHistory history;       // penalties: the tokens up to `position`
  int32_t scored_token = -1;  // echo: report this token (and its logprob) instead of choosing one
};

// Throws ModelError naming the field when choose_token (model/sampler.hpp) would refuse these (a
// logit_bias, history or scored token outside [0, vocab)): a server checks a request on arrival,
// before it can join a batch or touch a context. Defined in model/sampler.cpp.
void check_choice(const SamplingParams& params, const TokenHistory& history, int32_t scored_token, int64_t vocab);

}  // namespace ce
