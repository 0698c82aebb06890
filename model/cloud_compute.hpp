#pragma once
// The compute half of a cloud context: the KV cache of the cloud's layers and the uploaded
// states whose KV is not filled yet. Filling is lazy: an infer fills every missing position up to
// the one asked in a single batch. Torch-free header; the context manager owns these.
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
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
  TokenChoice infer(uint32_t position, const SamplingParams& sampling, const TokenHistory& history = {},
                    int32_t scored_token = -1);
  int64_t bytes() const;     // memory held (KV capacity + pending states)
  // Forgets positions from `positions` on, uploaded or computed (a wrong speculation of the edge);
  // no-op past held(). Returns how many computed positions it dropped (wasted cloud work).
  int64_t truncate(uint32_t positions);
  int64_t layer_begin() const;

  // One request of a batched cloud step: fill `context` toward `position` and answer it.
  struct Request {
    Request(CloudCompute* context = nullptr, uint32_t position = 0, SamplingParams sampling = {},
            TokenHistory history = {}, int32_t scored_token = -1)
        : context(context), position(position), sampling(std::move(sampling)), history(std::move(history)),
          scored_token(scored_token) {}
    CloudCompute* context = nullptr;
    uint32_t position = 0;
    SamplingParams sampling;
    TokenHistory history;       // the penalties' (ChoiceInput)
    int32_t scored_token = -1;  // echo: score this token instead of choosing one
  };
  // Throws ModelError naming the problem when `request` cannot be answered (position not uploaded
  // or already answered, a token of its sampling outside the vocabulary); step() assumes every
  // request passed this, so that one bad request cannot fail a batch.
  static void check(const Request& request);
  // One batched forward over several contexts of the same layer range (a cloud's scheduler step):
  // each request's context fills at most `max_rows` of its waiting positions toward its position,
  // and, beside others, at most as many as the others together (but kCatchUpFloor at least): a
  // long catch-up at most doubles a step's rows, so that it cannot stall the others (measured on
  // the 179M-shape model, 8 sessions beside a 1,000-position catch-up in chunks of 64: their p99
  // 30 -> 193 ms), and still runs at full chunks alone. All rows of all contexts go through the
  // cloud layers at once, attention per context. Result i holds the token after request i's
  // position when this step reached it, else nothing (call again). `scratch` is the caller's.
  static constexpr int64_t kCatchUpFloor = 4;

  // The `max_rows` of a scheduler's next step: a full chunk, but for a context alone in the step
  // within kSharedSteps steps of a step shared with others (their next requests are on the way) no
  // more than that step gave the contexts it answered, kCatchUpFloor at least: a long catch-up
  // would otherwise run a full chunk in each gap between their requests and hold their answers
  // (179M-shape model, 8 sessions beside a 1,000-position catch-up: their p99 ~30 ms without it,
  // 125-150 ms with full chunks in the gaps, 52-78 ms with this budget).
  class RowBudget {
   public:
    static constexpr int kSharedSteps = 3;
    explicit RowBudget(int64_t chunk) : chunk_(chunk) {}
    int64_t max_rows(size_t contexts) const;
    // After a step of `contexts` contexts whose answered requests computed `answered_rows` rows.
    void record(size_t contexts, int64_t answered_rows);

   private:
    int64_t chunk_;
    int64_t shared_rows_ = 0;
    int steps_since_shared_ = kSharedSteps + 1;  // no shared step yet
  };
  static std::vector<std::optional<TokenChoice>> step(const std::vector<Request>& requests, int64_t max_rows,
                                                      std::vector<float>& scratch);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Naïve split baseline: no cache; runs the cloud layers over the whole sequence (fp32 rows
// (count, dim) of positions [0, count)) and returns the token after the last position.
TokenChoice naive_split_infer(const Model& model, int64_t layer_begin, const float* rows, uint32_t count,
                              const SamplingParams& sampling, const TokenHistory& history = {},
                              int32_t scored_token = -1);

}  // namespace ce
