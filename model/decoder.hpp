#pragma once
// The one early-exit LLaMA decoder. Edge, cloud and full runs are the same call over different
// layer ranges: forward(hidden, start, [0, split)) on the edge, [split, L) on the cloud.
//
// Inference (forward, exit_logits, final_logits) runs model/kernels.hpp on the weights in the
// precision the decoder was built with, in the session's own buffers (KvCache): no libtorch op
// and no allocation inside a layer. Training (forward_no_cache, the *_train heads) is libtorch
// with autograd on the same Weights, which must then be fp32.
#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <vector>

#include "model/kv_cache.hpp"
#include "model/runtime.hpp"
#include "model/sampling.hpp"
#include "model/weights.hpp"

namespace ce {

class Decoder {
 public:
  // as_stored: the matrices as `weights` holds them (fp32, fp16 or bf16); otherwise converted once
  // here (int8: one scale per 32 values, see kernels::quantize_q8).
  explicit Decoder(std::shared_ptr<const Weights> weights, WeightPrecision precision = WeightPrecision::as_stored);
  ~Decoder();

  const ModelConfig& config() const { return weights_->config; }
  // The weights as loaded; matrices the decoder converted to another precision are not kept here
  // (undefined tensors), only in the decoder's packed form.
  const Weights& weights() const { return *weights_; }
  // The precision the matrices are used in ("fp32", "fp16", "bf16", "int8"), and their bytes.
  std::string precision() const;
  int64_t matrix_bytes() const;

  at::Tensor embed(const at::Tensor& tokens) const;  // (T) int64 -> (T, dim) fp32

  // Runs layers [layer_begin, layer_end) over positions [start, start + T).
  // hidden: (T, dim) fp32. Every layer of the range must have cached exactly `start` positions.
  // Returns the last `outputs` rows (all T when -1), (outputs, dim). The other rows' outputs are
  // read by nothing (a catch-up answering for its last position, before the final head), so the
  // range's last layer computes only their keys and values: every position's cache is filled, and
  // no query, attention, output projection or FFN runs for them. Only a caller that goes on from
  // none of those rows may ask for fewer (not one that runs the next layers from them).
  at::Tensor forward(const at::Tensor& hidden, int64_t start, int64_t layer_begin, int64_t layer_end, KvCache& kv,
                     int64_t outputs = -1) const;

  // One session's rows in a batched step: hidden (T, dim) fp32 at positions [start, start + T) of
  // its own cache; outputs as in forward() above.
  struct DecodeStep {
    at::Tensor hidden;
    int64_t start = 0;
    KvCache* kv = nullptr;
    int64_t outputs = -1;
  };
  // Several sessions' rows through layers [layer_begin, layer_end) as one batch: norms, projections
  // and FFN over all rows at once (each weight read once for the whole batch), RoPE and attention
  // per session over its own cache (ragged: no padding to the longest). Each step is checked as
  // forward() checks it; a cache may appear once. Returns each step's last rows (outputs_i, dim), in order.
  // `scratch` is the caller's (a scheduler's), grown as needed and kept between calls.
  std::vector<at::Tensor> forward(const std::vector<DecodeStep>& steps, int64_t layer_begin, int64_t layer_end,
                                  std::vector<float>& scratch) const;
  // The calling thread's scratch for the forward above, for callers that run one session alone (a
  // cloud context's infer, a lone early-exit runner; the one-session forward takes it too): shared
  // by all of them on the thread, as a scheduler's is by its sessions. A session's own would hold
  // its largest prefill's rows for its life (2.7 MB for a 256-position catch-up of the shipped
  // model), and a new one would pay for those pages again (on the Zen 5 VM a first touch costs
  // microseconds a page: a 256-position catch-up in a new context ran at 0.075 ms a position, 0.023
  // with the pages already there).
  static std::vector<float>& thread_scratch();

  at::Tensor exit_logits(int64_t exit_layer, const at::Tensor& hidden) const;  // (..., dim) -> (..., vocab)
  at::Tensor final_logits(const at::Tensor& hidden) const;                     // (..., dim) -> (..., vocab)

  // Training form: (B, T, dim) from position 0, causal, no cache; differentiable.
  at::Tensor forward_no_cache(const at::Tensor& hidden, int64_t layer_begin, int64_t layer_end) const;
  at::Tensor exit_logits_train(int64_t exit_layer, const at::Tensor& hidden) const;  // differentiable
  at::Tensor final_logits_train(const at::Tensor& hidden) const;

 private:
  struct Packed;
  // Rows [row, row + rows) of a batch: one session's, at positions [start, start + rows) of kv, of
  // which the last `outputs` go on past the range's last layer (see forward()).
  struct Segment {
    int64_t row, rows, start;
    KvCache* kv;
    int64_t outputs;
  };
  // Throws ModelError naming what is wrong with a step; returns the rows its caller reads (outputs,
  // or all of them for -1).
  int64_t check_step(const at::Tensor& hidden, int64_t start, int64_t layer_begin, int64_t layer_end,
                     const KvCache& kv, int64_t outputs) const;
  // The layers over x (sum of rows, dim) in place; scratch_of(n) gives n floats of scratch.
  void run_layers(float* x, const Segment* segments, size_t n_segments, int64_t layer_begin, int64_t layer_end,
                  const std::function<float*(size_t)>& scratch_of) const;
  // x: (B, T, dim) -> (B, T, dim), libtorch, no cache (training).
  at::Tensor layer_forward_train(int64_t layer, const at::Tensor& x) const;
  at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w) const;
  at::Tensor rope(const at::Tensor& x) const;  // x: (B, H, T, hd), from position 0
  void require_fp32(const char* what) const;
  void release_converted_matrices();
  at::Tensor head_logits(const void* head, const at::Tensor& hidden) const;

  std::shared_ptr<const Weights> weights_;
  std::unique_ptr<const Packed> packed_;
  at::Tensor cos_, sin_;  // (max_seq, head_dim), rotate_half layout, for training
};

}  // namespace ce
