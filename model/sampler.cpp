#include "model/sampler.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>

#include "model/kernels.hpp"
#include "model/model_config.hpp"

namespace ce {
namespace {

void check_token(int64_t token, int64_t vocab, const char* what) {
  if (token < 0 || token >= vocab)
    throw ModelError(std::string(what) + " token " + std::to_string(token) + " is outside the vocabulary [0, " +
                     std::to_string(vocab) + ")");
}

// Steps 1 and 2 of the rule: logit_bias, then the penalties, in place.
void adjust(std::vector<float>& logits, const SamplingParams& p, const TokenHistory& history) {
  const auto vocab = static_cast<int64_t>(logits.size());
  for (const auto& b : p.logit_bias) {
    check_token(b.token, vocab, "logit_bias");
    logits[static_cast<size_t>(b.token)] += b.bias;
  }
  if (!p.penalizes()) return;
  for (const auto& u : history.uses) {
    check_token(u.token, vocab, "history");
    float& l = logits[static_cast<size_t>(u.token)];
    if (p.repetition_penalty != 1 && (u.in_prompt || u.output_count > 0))
      l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
    if (u.output_count > 0) l -= p.presence_penalty + p.frequency_penalty * static_cast<float>(u.output_count);
  }
}

int32_t argmax(const std::vector<float>& logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

// Step 4: softmax at the temperature, top_k, min_p, top_p, one draw.
int32_t draw(const std::vector<float>& logits, const SamplingParams& p, std::mt19937_64& rng) {
  const float top = *std::max_element(logits.begin(), logits.end());
  std::vector<double> probs(logits.size());
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) total += probs[i] = std::exp(double(logits[i] - top) / p.temperature);
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  auto more_likely = [&](int32_t a, int32_t b) { return probs[a] > probs[b] || (probs[a] == probs[b] && a < b); };
  size_t kept = order.size();
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < kept) {
    kept = static_cast<size_t>(p.top_k);
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(kept), order.end(), more_likely);
  } else if (p.top_p < 1 || p.min_p > 0) {
    std::sort(order.begin(), order.end(), more_likely);
  }
  // probs are relative to the most likely (exp(0) = 1 for it): min_p compares with them directly.
  if (p.min_p > 0)
    while (kept > 1 && probs[order[kept - 1]] < p.min_p) --kept;
  double mass = 0;
  for (size_t i = 0; i < kept; ++i) mass += probs[order[i]];
  if (p.top_p < 1) {
    double prefix = 0;
    size_t i = 0;
    while (i < kept && prefix < p.top_p * mass) prefix += probs[order[i++]];
    kept = std::max<size_t>(i, 1);
    mass = 0;
    for (size_t j = 0; j < kept; ++j) mass += probs[order[j]];
  }
  std::uniform_real_distribution<double> u(0, mass);
  const double r = u(rng);
  double run = 0;
  for (size_t i = 0; i < kept; ++i) {
    run += probs[order[i]];
    if (r < run) return order[i];
  }
  return order[kept - 1];
}

}  // namespace

TokenHistory TokenHistory::of(const int32_t* tokens, size_t count, size_t prompt_length) {
  std::vector<std::pair<int32_t, bool>> seen;  // (token, from the output)
  seen.reserve(count);
  for (size_t i = 0; i < count; ++i) seen.emplace_back(tokens[i], i >= prompt_length);
  std::sort(seen.begin(), seen.end());
  TokenHistory h;
  for (const auto& [token, output] : seen) {
    if (h.uses.empty() || h.uses.back().token != token) h.uses.push_back({token, 0, false});
    auto& u = h.uses.back();
    if (output)
      ++u.output_count;
    else
      u.in_prompt = true;
  }
  return h;
}

Logprobs logprobs_of(const float* logits, int64_t vocab, int32_t token, int32_t top) {
  const float max = *std::max_element(logits, logits + vocab);
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(double(logits[i]) - max);
  const double lse = max + std::log(sum);
  Logprobs out;
  out.logprob = static_cast<float>(logits[token] - lse);
  const auto n = std::min<int64_t>(std::max<int32_t>(top, 0), vocab);
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + n, order.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  for (int64_t i = 0; i < n; ++i) out.top.push_back({order[i], static_cast<float>(logits[order[i]] - lse)});
  return out;
}

TokenChoice greedy_choice(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  return {static_cast<int32_t>(best), 1.0f / kernels::sum_exp(logits, vocab, logits[best]), {}};
}

TokenChoice greedy_choice(const at::Tensor& logits) {
  auto row = logits.to(torch::kFloat).contiguous();
  return greedy_choice(row.data_ptr<float>(), row.numel());
}

std::vector<TokenChoice> greedy_choices(const at::Tensor& logits) {
  auto rows = logits.to(torch::kFloat).contiguous();
  const int64_t t = rows.size(0), vocab = rows.size(1);
  std::vector<TokenChoice> out;
  out.reserve(static_cast<size_t>(t));
  for (int64_t i = 0; i < t; ++i) out.push_back(greedy_choice(rows.data_ptr<float>() + i * vocab, vocab));
  return out;
}

void check_choice(const SamplingParams& params, const TokenHistory& history, int32_t scored_token, int64_t vocab) {
  for (const auto& b : params.logit_bias) check_token(b.token, vocab, "logit_bias");
  for (const auto& u : history.uses) check_token(u.token, vocab, "history");
  if (scored_token >= 0) check_token(scored_token, vocab, "scored");
}

TokenChoice choose_token(const at::Tensor& logits, const SamplingParams& params, const ChoiceInput& input) {
  const auto row = logits.to(torch::kFloat).contiguous();
  const float* raw = row.data_ptr<float>();
  const int64_t vocab = row.numel();
  auto choice = greedy_choice(raw, vocab);  // the confidence is always the unadjusted head's
  if (input.scored_token >= 0) {
    check_token(input.scored_token, vocab, "scored");
    choice.token = input.scored_token;
  } else if (params.temperature > 0 || params.adjusts_logits()) {
    std::vector<float> adjusted(raw, raw + vocab);
    adjust(adjusted, params, input.history);
    if (params.temperature <= 0) {
      choice.token = argmax(adjusted);
    } else {
      std::mt19937_64 rng(params.seed * 0x9E3779B97F4A7C15ull + input.position);
      choice.token = draw(adjusted, params, rng);
    }
  }
  if (params.logprobs >= 0)
    choice.logprobs = logprobs_of(raw, vocab, choice.token, std::min(params.logprobs, SamplingParams::max_top_logprobs));
  return choice;
}

int64_t pick_token(const at::Tensor& logits, const SamplingParams& params, uint64_t position) {
  return choose_token(logits, params, ChoiceInput{position, {}, -1}).token;
}

}  // namespace ce
