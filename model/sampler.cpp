#include "model/sampler.hpp"

#include <torch/torch.h>

#include <cmath>
#include <random>


namespace ce {
namespace {

int64_t draw(const at::Tensor& logits, const SamplingParams& p, std::mt19937_64& rng) {
  auto probs = torch::softmax(logits.to(torch::kFloat) / p.temperature, -1);
  auto [sorted, order] = probs.sort(-1, /*descending=*/true);
  if (p.top_p < 1) {
    // Keep the smallest prefix whose mass reaches top_p (always at least one token).
    auto cum = sorted.cumsum(-1);
    auto drop = (cum - sorted) >= p.top_p;
    sorted = sorted.masked_fill(drop, 0);
  }
  auto acc = sorted.accessor<float, 1>();
  double total = 0;
  for (int64_t i = 0; i < acc.size(0); ++i) total += acc[i];
  std::uniform_real_distribution<double> u(0, total);
  double r = u(rng), run = 0;
  for (int64_t i = 0; i < acc.size(0); ++i) {
    run += acc[i];
    if (r < run) return order[i].item<int64_t>();
  }
  return order[0].item<int64_t>();
}

}  // namespace

int64_t pick_token(const at::Tensor& logits, const SamplingParams& params, uint64_t position) {
  if (params.temperature <= 0) return greedy_choice(logits).token;
  std::mt19937_64 rng(params.seed * 0x9E3779B97F4A7C15ull + position);
  return draw(logits, params, rng);
}

TokenChoice greedy_choice(const float* logits, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i)
    if (logits[i] > logits[best]) best = i;
  const float top = logits[best];
  double total = 0;  // float exponentials (each <= 1), summed in double
  for (int64_t i = 0; i < vocab; ++i) total += std::exp(logits[i] - top);
  return {static_cast<int32_t>(best), static_cast<float>(1.0 / total)};
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

TokenChoice choose_token(const at::Tensor& logits, const SamplingParams& params, uint64_t position) {
  // The token as pick_token draws it (the argmax at T 0); the confidence is always the greedy one.
  const auto greedy = greedy_choice(logits);
  if (params.temperature <= 0) return greedy;
  return {static_cast<int32_t>(pick_token(logits, params, position)), greedy.confidence};
}

}  // namespace ce
