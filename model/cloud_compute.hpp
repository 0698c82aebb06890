#pragma once
// The compute half of a cloud context: the KV cache of the cloud's layers and the uploaded
// states whose KV is not filled yet. Filling is lazy: an infer fills every missing position up to
// the one asked in a single batch. Torch-free header; the context manager owns these.
#include <cstdint>
#include <memory>
#include <vector>

#include "model/position_rows.hpp"
#include "model/runtime.hpp"
#include "model/sampling.hpp"

namespace ce {

class CloudCompute {
 public:
  // layer_begin: the split (hidden-state uploads) or 0 (cloud-only: token uploads).
  CloudCompute(std::shared_ptr<const Model> model, int64_t layer_begin);
  ~CloudCompute();

  // Appends uploaded positions [held(), held() + n): fp16 states for a split context, token ids for
  // a cloud-only one. Throws ModelError on the wrong kind, a gap or overlap, non-finite states, ids
  // outside the vocabulary, or more than max_seq positions.
  void append(const PositionRows& rows);
  int64_t held() const;      // positions uploaded
  int64_t computed() const;  // positions whose KV is filled
  // Token after `position`; requires position < held() and position >= computed().
  TokenChoice infer(uint32_t position, const SamplingParams& sampling);
  int64_t bytes() const;     // memory held (KV capacity + pending states)

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Naïve split baseline: no cache; runs the cloud layers over the whole sequence (fp32 rows
// (count, dim) of positions [0, count)) and returns the token after the last position.
TokenChoice naive_split_infer(const Model& model, int64_t layer_begin, const float* rows, uint32_t count,
                              const SamplingParams& sampling);

}  // namespace ce
