#include "model/kv_cache.hpp"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace ce {

namespace {

// Storage freed by caches, by size, for the next cache that grows to that size. Without it a new
// session's cache took fresh pages from the OS (glibc returns freed blocks of 128 KiB and more, or
// trims them off its heap), and on the VM the benchmarks ran on each first touch of a page cost
// microseconds: a 16-position catch-up in a new context of the shipped model, fp32 weights, ran at
// 0.095 ms a position against 0.046 with the pages reused (AMD EPYC, one thread), and a cloud's
// sessions come and go with caches of the same few sizes (64 positions doubling up to max_seq).
// Bounded, so that a burst of long sessions leaves at most KvCache::kRecycledBytes behind.
class Recycled {
 public:
  float* take(size_t floats) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(floats);
      if (it != free_.end() && !it->second.empty()) {
        float* buffer = it->second.back();
        it->second.pop_back();
        bytes_ -= static_cast<int64_t>(floats * sizeof(float));
        return buffer;
      }
    }
    return new float[floats];  // not zeroed: only [0, length) of a layer is ever read
  }
  void give(float* buffer, size_t floats) {
    const auto size = static_cast<int64_t>(floats * sizeof(float));
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (bytes_ + size <= KvCache::kRecycledBytes) {
        free_[floats].push_back(buffer);
        bytes_ += size;
        return;
      }
    }
    delete[] buffer;
  }
  int64_t bytes() {
    const std::lock_guard<std::mutex> lock(mutex_);
    return bytes_;
  }
  void release() {
    std::unordered_map<size_t, std::vector<float*>> held;
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      held.swap(free_);
      bytes_ = 0;
    }
    for (auto& [floats, buffers] : held)
      for (float* buffer : buffers) delete[] buffer;
  }

 private:
  std::mutex mutex_;
  std::unordered_map<size_t, std::vector<float*>> free_;
  int64_t bytes_ = 0;
};

// Never destroyed: a cache held by a static object may go after the statics of this file.
Recycled& recycled() {
  static auto* store = new Recycled;
  return *store;
}

}  // namespace

void KvCache::Recycle::operator()(float* buffer) const {
  if (buffer) recycled().give(buffer, floats);
}

int64_t KvCache::recycled_bytes() { return recycled().bytes(); }
void KvCache::release_recycled() { recycled().release(); }

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
    const auto floats = static_cast<size_t>(grown * row_floats_);
    for (auto* buffer : {&l.k, &l.v}) {
      std::unique_ptr<float[], Recycle> bigger(recycled().take(floats), Recycle{floats});
      if (kept > 0) std::memcpy(bigger.get(), buffer->get(), kept * sizeof(float));
      *buffer = std::move(bigger);  // the smaller one goes back to the recycled storage
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

}  // namespace ce
