#include "model/sampler.hpp"

#include <torch/torch.h>

#include <random>

#include "model/decoder.hpp"

namespace ce {
namespace {

int64_t draw(const at::Tensor& logits, const SamplingParams& p, std::mt19937_64& rng) {
  if (p.temperature <= 0) return logits.argmax(-1).item<int64_t>();
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
  if (params.temperature <= 0) return logits.argmax(-1).item<int64_t>();
  std::mt19937_64 rng(params.seed * 0x9E3779B97F4A7C15ull + position);
  return draw(logits, params, rng);
}

TokenChoice choose_token(const at::Tensor& logits, const SamplingParams& params, uint64_t position) {
  // The token as pick_token draws it (argmax of the logits at T 0); the confidence from the softmax.
  return {static_cast<int32_t>(pick_token(logits, params, position)), Decoder::choose_greedy(logits).confidence};
}

}  // namespace ce
