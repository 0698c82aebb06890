#include "model/kv_cache.hpp"

#include <algorithm>
#include <cstring>

namespace ce {

KvCache::KvCache(const ModelConfig& c, int64_t layer_begin, int64_t layer_end)
    : layer_begin_(layer_begin),
      layer_end_(layer_end),
      row_floats_(c.n_kv_heads * c.head_dim()),
      max_seq_(c.max_seq) {
  if (layer_begin < 0 || layer_end > c.n_layers || layer_begin > layer_end)
    throw ModelError("kv cache: bad layer range [" + std::to_string(layer_begin) + ", " +
                     std::to_string(layer_end) + ")");
  layers_.resize(static_cast<size_t>(layer_end - layer_begin));
}

const KvCache::Layer& KvCache::at_layer(int64_t layer) const {
  if (layer < layer_begin_ || layer >= layer_end_)
    throw ModelError("kv cache: layer " + std::to_string(layer) + " not held by this cache");
  return layers_[static_cast<size_t>(layer - layer_begin_)];
}

int64_t KvCache::length(int64_t layer) const { return at_layer(layer).length; }

void KvCache::append(int64_t layer, const float* keys, const float* values, int64_t n) {
  auto& l = const_cast<Layer&>(at_layer(layer));
  const int64_t needed = l.length + n;
  if (n < 0 || needed > max_seq_)
    throw ModelError("kv cache: sequence of " + std::to_string(needed) + " positions exceeds max_seq " +
                     std::to_string(max_seq_));
  if (n == 0) return;
  if (needed > l.capacity) {
    int64_t grown = std::max<int64_t>(64, l.capacity);
    while (grown < needed) grown *= 2;
    grown = std::min(grown, max_seq_);
    // Not zeroed (new float[], not a vector's resize): only [0, length) is ever read, so zeroing
    // the new capacity (and copying the old beyond the length) was work for nothing, and it made
    // every page of the capacity resident at once.
    const auto kept = static_cast<size_t>(l.length * row_floats_);
    for (auto* buffer : {&l.k, &l.v}) {
      std::unique_ptr<float[]> bigger(new float[static_cast<size_t>(grown * row_floats_)]);
      if (kept > 0) std::memcpy(bigger.get(), buffer->get(), kept * sizeof(float));
      *buffer = std::move(bigger);
    }
    l.capacity = grown;
  }
  const size_t offset = static_cast<size_t>(l.length * row_floats_), count = static_cast<size_t>(n * row_floats_);
  std::memcpy(l.k.get() + offset, keys, count * sizeof(float));
  std::memcpy(l.v.get() + offset, values, count * sizeof(float));
  l.length = needed;
}

const float* KvCache::keys(int64_t layer) const { return at_layer(layer).k.get(); }
const float* KvCache::values(int64_t layer) const { return at_layer(layer).v.get(); }

int64_t KvCache::bytes() const {
  int64_t total = 0;
  for (auto& l : layers_) total += 2 * l.capacity * row_floats_ * static_cast<int64_t>(sizeof(float));
  return total;
}

void KvCache::truncate(int64_t layer, int64_t length) {
  auto& l = const_cast<Layer&>(at_layer(layer));
  if (length < 0) throw ModelError("kv cache: truncate to a negative length " + std::to_string(length));
  l.length = std::min(l.length, length);
}

void KvCache::clear() {
  for (auto& l : layers_) l = Layer{};
}

float* KvCache::scratch(size_t floats) {
  if (scratch_.size() < floats) scratch_.resize(floats);
  return scratch_.data();
}

}  // namespace ce
