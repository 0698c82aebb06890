#include "model/kv_cache.hpp"

#include <torch/torch.h>

namespace ce {

KvCache::KvCache(const ModelConfig& c, int64_t layer_begin, int64_t layer_end)
    : layer_begin_(layer_begin),
      layer_end_(layer_end),
      n_kv_heads_(c.n_kv_heads),
      head_dim_(c.head_dim()),
      max_seq_(c.max_seq) {
  if (layer_begin < 0 || layer_end > c.n_layers || layer_begin > layer_end)
    throw ModelError("kv cache: bad layer range [" + std::to_string(layer_begin) + ", " +
                     std::to_string(layer_end) + ")");
  layers_.resize(static_cast<size_t>(layer_end - layer_begin));
}

KvCache::Layer& KvCache::at_layer(int64_t layer) {
  if (layer < layer_begin_ || layer >= layer_end_)
    throw ModelError("kv cache: layer " + std::to_string(layer) + " not held by this cache");
  return layers_[static_cast<size_t>(layer - layer_begin_)];
}

int64_t KvCache::length(int64_t layer) const {
  return const_cast<KvCache*>(this)->at_layer(layer).length;
}

std::pair<at::Tensor, at::Tensor> KvCache::append(int64_t layer, const at::Tensor& k, const at::Tensor& v) {
  auto& l = at_layer(layer);
  const int64_t t = k.size(1);
  const int64_t needed = l.length + t;
  if (needed > max_seq_)
    throw ModelError("kv cache: sequence of " + std::to_string(needed) + " positions exceeds max_seq " +
                     std::to_string(max_seq_));
  const int64_t capacity = l.k.defined() ? l.k.size(1) : 0;
  if (needed > capacity) {
    // Grow geometrically so a long session costs O(n) copies, and a short one little memory.
    int64_t grown = std::max<int64_t>(64, capacity);
    while (grown < needed) grown *= 2;
    grown = std::min(grown, max_seq_);
    auto nk = torch::empty({n_kv_heads_, grown, head_dim_}, k.options());
    auto nv = torch::empty({n_kv_heads_, grown, head_dim_}, v.options());
    if (l.length) {
      nk.narrow(1, 0, l.length).copy_(l.k.narrow(1, 0, l.length));
      nv.narrow(1, 0, l.length).copy_(l.v.narrow(1, 0, l.length));
    }
    l.k = nk;
    l.v = nv;
  }
  l.k.narrow(1, l.length, t).copy_(k);
  l.v.narrow(1, l.length, t).copy_(v);
  l.length = needed;
  return {l.k.narrow(1, 0, needed), l.v.narrow(1, 0, needed)};
}

int64_t KvCache::bytes() const {
  int64_t total = 0;
  for (auto& l : layers_)
    if (l.k.defined()) total += l.k.nbytes() + l.v.nbytes();
  return total;
}

void KvCache::clear() {
  for (auto& l : layers_) l = Layer{};
}

}  // namespace ce
