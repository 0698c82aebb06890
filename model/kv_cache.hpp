#pragma once
// Keys and values of one session for a contiguous range of layers. Owned by the session (edge
// generation or cloud context), never by the model: the decoder is shared by every session and
// thread, so each session brings its cache (a step's scratch is the thread's: Decoder::thread_scratch).
// Each layer keeps its own length, because an early-exited token fills the deeper layers later
// (deferred, in a batch with a later token). Torch-free.
#include <cstdint>
#include <memory>
#include <vector>

#include "model/model_config.hpp"

namespace ce {

class KvCache {
 public:
  KvCache(const ModelConfig& config, int64_t layer_begin, int64_t layer_end);

  int64_t layer_begin() const { return layer_begin_; }
  int64_t layer_end() const { return layer_end_; }
  int64_t length(int64_t layer) const;  // positions [0, length) are cached for this layer

  // Stores keys and values of positions [length, length + n), each (n, kv_heads, head_dim).
  // Throws ModelError past max_seq. Storage grows geometrically (a long session costs O(n) copies,
  // a short one little memory).
  void append(int64_t layer, const float* keys, const float* values, int64_t n);
  // The layer's cached positions, (length, kv_heads, head_dim) row-major; valid until the next
  // append to that layer.
  const float* keys(int64_t layer) const;
  const float* values(int64_t layer) const;

  // Bytes held by the cache (capacity, not only the used part).
  int64_t bytes() const;
  void clear();
  // Forgets the layer's positions from `length` on (no-op when it holds no more): a rolled-back
  // speculation. Storage is kept for the positions that replace them.
  void truncate(int64_t layer, int64_t length);

  // Storage a cache let go of (it grew, was cleared or destroyed), kept in this process for the
  // next cache that grows to the same size, at most kRecycledBytes (kv_cache.cpp says why).
  static constexpr int64_t kRecycledBytes = int64_t{64} << 20;
  static int64_t recycled_bytes();
  static void release_recycled();  // frees all of it

 private:
  // Hands a buffer of `floats` floats back to the recycled storage.
  struct Recycle {
    // Constructors, not a default member initializer or argument, which a nested class cannot use
    // for its enclosing class's members (GCC PR 96645).
    Recycle() : floats(0) {}
    explicit Recycle(size_t floats_) : floats(floats_) {}
    void operator()(float* buffer) const;
    size_t floats;
  };
  struct Layer {
    std::unique_ptr<float[], Recycle> k, v;  // (capacity, kv_heads, head_dim); past length: uninitialised
    int64_t capacity = 0, length = 0;
  };
  const Layer& at_layer(int64_t layer) const;
  int64_t layer_begin_, layer_end_, row_floats_, max_seq_;
  std::vector<Layer> layers_;
};

}  // namespace ce
