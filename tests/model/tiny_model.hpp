#pragma once
// Helpers shared by the model tests: tiny random configs and weights, scratch directories, and
// raw-file writers. Everything here is deterministic (seeded).
#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "model/kernels.hpp"
#include "model/model_config.hpp"
#include "model/runtime.hpp"
#include "model/weights.hpp"
#include "tests/test_files.hpp"

namespace ce::test {

// The precision a model stored as `stored` ("fp32", "fp16", "bf16", "int8") is held in at load
// (WeightPrecision::as_stored): as stored, except that the portable kernels (a CPU without AVX2, or
// CE_KERNELS=portable) hold halves as fp32.
inline std::string held_as_stored(const std::string& stored) {
  return kernels::isa() == "portable" && (stored == "fp16" || stored == "bf16") ? "fp32" : stored;
}

// A tiny LLaMA: dim 32, 4 heads of 8, 2 KV heads (GQA), 4 layers with exits after 1, 2 and 3,
// the edge holds [0, 2).
inline ModelConfig tiny_config(int64_t n_kv_heads = 2) {
  ModelConfig c;
  c.name = "tiny";
  c.dim = 32;
  c.n_layers = 4;
  c.n_heads = 4;
  c.n_kv_heads = n_kv_heads;
  c.ffn_dim = 64;
  c.vocab_size = 96;
  c.max_seq = 64;
  c.rope_theta = 10000.0;
  c.norm_eps = 1e-5;
  c.exit_layers = {1, 2, 3};
  c.default_split = 2;
  c.default_threshold = 0.5;
  c.bos_id = 1;
  c.eos_id = 2;
  return c;
}

// random_weights(), then every matrix rescaled to standard deviation `matrix_std` (random_weights
// uses 0.02, which makes near-uniform logits), the output heads (lm_head, exits.K.head) to
// `head_std` when it is positive, and, when `random_norms`, every norm weight set to
// 1 + 0.2 * N(0, 1) so a norm applied with the wrong weight vector is visible.
// Small layer matrices with large heads give O(1) hidden states and peaked, varied confidences.
inline std::shared_ptr<Weights> scaled_weights(const ModelConfig& c, uint64_t seed, double matrix_std,
                                               bool random_norms = false, double head_std = 0) {
  auto w = random_weights(c, seed);
  at::manual_seed(seed + 1000);
  for (auto& [name, t] : w->named_tensors()) {
    const bool head = name == "lm_head.weight" || (Weights::is_exit_tensor(name) && t.dim() == 2);
    const bool bias = name.find(".bias") != std::string::npos;
    if (t.dim() == 2 || bias)
      t.mul_((head && head_std > 0 ? head_std : matrix_std) / 0.02);
    else if (random_norms)
      t.copy_(1.0 + 0.2 * at::randn(t.sizes()));
  }
  return w;
}

inline std::shared_ptr<const Model> tiny_model(const ModelConfig& c, uint64_t seed, double matrix_std = 0.1,
                                               bool random_norms = true, double head_std = 1.0) {
  return Model::from_weights(scaled_weights(c, seed, matrix_std, random_norms, head_std));
}


// A safetensors file from a raw header text and data section (for malformed-file tests).
inline std::string safetensors_bytes(const std::string& header, const std::string& data,
                                     uint64_t header_len_override = UINT64_MAX) {
  const uint64_t n = header_len_override == UINT64_MAX ? header.size() : header_len_override;
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}


inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// Token ids from a small deterministic generator, all in [lo, vocab).
inline std::vector<int64_t> some_tokens(int64_t n, int64_t vocab, uint64_t seed, int64_t lo = 3) {
  std::vector<int64_t> t;
  uint64_t s = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (int64_t i = 0; i < n; ++i) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    t.push_back(lo + static_cast<int64_t>((s >> 33) % static_cast<uint64_t>(vocab - lo)));
  }
  return t;
}

inline at::Tensor token_tensor(const std::vector<int64_t>& ids) {
  return at::tensor(ids, at::TensorOptions().dtype(at::kLong));
}

}  // namespace ce::test
