#pragma once
// The one early-exit LLaMA decoder. Edge, cloud and full runs are the same call over different
// layer ranges: forward(hidden, start, [0, split)) on the edge, [split, L) on the cloud.
#include <ATen/core/Tensor.h>

#include <memory>

#include "model/kv_cache.hpp"
#include "model/sampling.hpp"
#include "model/weights.hpp"

namespace ce {


class Decoder {
 public:
  explicit Decoder(std::shared_ptr<const Weights> weights);

  const ModelConfig& config() const { return weights_->config; }
  const Weights& weights() const { return *weights_; }

  at::Tensor embed(const at::Tensor& tokens) const;  // (T) int64 -> (T, dim)

  // Runs layers [layer_begin, layer_end) over positions [start, start + T).
  // hidden: (T, dim). Every layer of the range must have cached exactly `start` positions.
  at::Tensor forward(const at::Tensor& hidden, int64_t start, int64_t layer_begin, int64_t layer_end,
                     KvCache& kv) const;

  // Training form: (B, T, dim) from position 0, causal, no cache; differentiable.
  at::Tensor forward_no_cache(const at::Tensor& hidden, int64_t layer_begin, int64_t layer_end) const;

  at::Tensor exit_logits(int64_t exit_layer, const at::Tensor& hidden) const;  // (..., dim) -> (..., vocab)
  at::Tensor final_logits(const at::Tensor& hidden) const;                     // (..., dim) -> (..., vocab)

  static TokenChoice choose_greedy(const at::Tensor& logits);  // logits: (vocab)

 private:
  // x: (B, T, dim); returns (B, T, dim). past_k/past_v given only with a cache.
  at::Tensor layer_forward(int64_t layer, const at::Tensor& x, int64_t start, KvCache* kv) const;
  at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w) const;
  at::Tensor rope(const at::Tensor& x, int64_t start) const;  // x: (B, H, T, hd)

  std::shared_ptr<const Weights> weights_;
  at::Tensor cos_, sin_;  // (max_seq, head_dim)
};

}  // namespace ce
