#pragma once
// Weights of an early-exit LLaMA, named as Hugging Face LlamaForCausalLM names them, plus exit
// heads (exits.K.norm.weight, exits.K.head.weight). Loaded once per process, shared read-only.
#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/model_config.hpp"
#include "model/safetensors.hpp"

namespace ce {

struct LayerWeights {
  at::Tensor attn_norm;              // (dim)
  at::Tensor wq, wk, wv, wo;         // (out, in) as nn.Linear stores them
  at::Tensor ffn_norm;               // (dim)
  at::Tensor w_gate, w_up, w_down;   // (ffn, dim), (ffn, dim), (dim, ffn)
};

struct ExitWeights {
  at::Tensor norm;  // (dim)
  at::Tensor head;  // (vocab, dim), may alias lm_head
};

struct Weights {
  ModelConfig config;
  at::Tensor embed;       // (vocab, dim)
  std::vector<LayerWeights> layers;
  at::Tensor final_norm;  // (dim)
  at::Tensor lm_head;     // (vocab, dim), may alias embed
  std::map<int64_t, ExitWeights> exits;  // keyed by exit layer
  std::string hash;       // identifies the weights (hex digest of the stored tensors)

  // Every stored tensor by its file name; tied tensors appear once, under their owner's name.
  TensorMap named_tensors() const;
  // Names of exit-head parameters (what EE-Tuning trains with --freeze-backbone).
  static bool is_exit_tensor(const std::string& name);
};

// The names and shapes a config requires, in file order.
std::map<std::string, std::vector<int64_t>> expected_tensor_shapes(const ModelConfig& config);

// What loading does with F16/BF16 matrices: widen them to fp32 (training, and an explicit fp32
// request), or keep them as stored so that memory holds the file's bytes once. Norms are always
// fp32 (they are tiny and feed fp32 arithmetic).
enum class StoredType { widen_to_fp32, keep };

// Builds Weights from a tensor map; every missing, extra or misshaped tensor is an error naming
// `source` and the tensor.
std::shared_ptr<Weights> weights_from_tensors(const ModelConfig& config, const TensorMap& tensors,
                                              const std::string& source,
                                              StoredType stored = StoredType::widen_to_fp32);

// Loads `dir`/config.json and `dir`/model.safetensors.
std::shared_ptr<Weights> load_weights(const std::string& dir, StoredType stored = StoredType::widen_to_fp32);

// Small normal init (std 0.02, norms at 1) from a seed; used by tests and as ce-train's start.
std::shared_ptr<Weights> random_weights(const ModelConfig& config, uint64_t seed);

// Writes config.json and model.safetensors (fp16 unless keep_fp32) into `dir`.
void save_weights(const Weights& weights, const std::string& dir, bool keep_fp32 = false);

// Hex digest of the tensors' names, shapes and fp32 values rounded to fp16.
std::string weights_digest(const TensorMap& tensors);

}  // namespace ce
