#pragma once
// Keys and values of one session for a contiguous range of layers. Owned by the session (edge
// generation or cloud context), never by the model. Each layer keeps its own length, because an
// early-exited token fills the deeper layers later (deferred, in a batch with a later token).
#include <ATen/core/Tensor.h>

#include <vector>

#include "model/model_config.hpp"

namespace ce {

class KvCache {
 public:
  KvCache(const ModelConfig& config, int64_t layer_begin, int64_t layer_end);

  int64_t layer_begin() const { return layer_begin_; }
  int64_t layer_end() const { return layer_end_; }
  int64_t length(int64_t layer) const;  // positions [0, length) are cached for this layer

  // Stores keys/values (n_kv_heads, T, head_dim) for positions [length, length + T) and returns
  // views of all cached positions (n_kv_heads, length + T, head_dim).
  std::pair<at::Tensor, at::Tensor> append(int64_t layer, const at::Tensor& k, const at::Tensor& v);
  // Bytes held by the cache tensors (capacity, not only the used part).
  int64_t bytes() const;
  void clear();

 private:
  struct Layer {
    at::Tensor k, v;  // (n_kv_heads, capacity, head_dim)
    int64_t length = 0;
  };
  Layer& at_layer(int64_t layer);
  int64_t layer_begin_, layer_end_, n_kv_heads_, head_dim_, max_seq_;
  std::vector<Layer> layers_;
};

}  // namespace ce
