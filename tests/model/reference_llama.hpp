#pragma once
// An independent reference of the Hugging Face LLaMA forward pass (plus exit heads), written as
// plain loops over std::vector with double accumulation. libtorch is used only once, to copy the
// weights out of ce::Weights; none of the computation goes through it.
#include <cstdint>
#include <vector>

#include "model/weights.hpp"

namespace ce::test {

using Vec = std::vector<double>;
using Rows = std::vector<Vec>;  // one row per position

// Deliberately wrong variants, used to show that the comparison would catch those mistakes.
struct RefVariant {
  bool interleaved_rope = false;  // rotate pairs (2i, 2i+1) instead of halves (rotate_half)
  bool gqa_modulo = false;        // head h reads kv head h % n_kv instead of h / (n_heads / n_kv)
  // Not a mistake: the int8 decoder's arithmetic, every product's input quantized per 32-value
  // block as llama.cpp's Q8_0 activations (run on weights already rounded to int8).
  bool q8_activations = false;
};

class ReferenceLlama {
 public:
  explicit ReferenceLlama(const Weights& w, RefVariant variant = {});

  Rows embed(const std::vector<int64_t>& tokens) const;
  // Runs layers [begin, end) over the whole sequence x (positions 0..T-1), causal attention.
  Rows layers(Rows x, int64_t begin, int64_t end) const;
  Vec final_logits(const Vec& h) const;
  Vec exit_logits(int64_t exit_layer, const Vec& h) const;

 private:
  struct Matrix {
    int64_t out = 0, in = 0;
    std::vector<float> w;  // row-major (out, in), as nn.Linear stores it
    std::vector<float> bias;  // (out), empty without
    bool q8_input = false;  // RefVariant::q8_activations
    Vec apply(const Vec& x) const;
  };
  struct Layer {
    std::vector<float> attn_norm, ffn_norm;
    Matrix wq, wk, wv, wo, gate, up, down;
  };
  struct Exit {
    std::vector<float> norm;
    Matrix head;
  };
  Vec rms_norm(const Vec& x, const std::vector<float>& w) const;
  void rope(Vec& x, int64_t n_heads, int64_t position) const;  // in place, x holds n_heads heads
  double inverse_frequency(int64_t pair) const;  // HF's rope_init_fn, rope_scaling applied
  Rows layer(const Layer& l, const Rows& x) const;

  ModelConfig c_;
  RefVariant variant_;
  std::vector<float> embed_;  // (vocab, dim)
  std::vector<Layer> layers_;
  std::vector<float> final_norm_;
  Matrix lm_head_;
  std::vector<std::pair<int64_t, Exit>> exits_;
};

}  // namespace ce::test
