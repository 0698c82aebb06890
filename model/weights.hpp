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
  at::Tensor wq, wk, wv, wo;         // (q_dim, dim), (kv_dim, dim), (kv_dim, dim), (dim, q_dim) as nn.Linear stores them
  at::Tensor bq, bk, bv, bo;         // (q_dim), (kv_dim), (kv_dim), (dim) fp32; undefined without biases
  at::Tensor ffn_norm;               // (dim)
  at::Tensor w_gate, w_up, w_down;   // (ffn, dim), (ffn, dim), (dim, ffn)
  at::Tensor b_gate, b_up, b_down;   // (ffn), (ffn), (dim) fp32; undefined without mlp biases
};

struct ExitWeights {
  at::Tensor norm;  // (dim)
  at::Tensor head;  // (vocab, dim), may alias lm_head
};

// Which tensors a process holds: the edge its layers, the embedding and its exits; the cloud its
// layers and the final head. Tensors outside stay on disk (the file is mapped, never read whole).
struct ModelParts {
  bool embed = true;
  int64_t layer_begin = 0, layer_end = -1;  // layer_end -1: to the last layer
  bool exits = true;
  bool final_head = true;

  static ModelParts all() { return {}; }
  static ModelParts edge(int64_t split) { return {true, 0, split, true, false}; }
  static ModelParts cloud(int64_t split) { return {false, split, -1, false, true}; }
  bool holds_layer(int64_t layer, int64_t n_layers) const {
    return layer >= layer_begin && layer < (layer_end < 0 ? n_layers : layer_end);
  }
};

struct Weights {
  ModelConfig config;
  ModelParts parts;       // what is loaded; the rest of the tensors below are undefined
  at::Tensor embed;       // (vocab, dim)
  std::vector<LayerWeights> layers;
  at::Tensor final_norm;  // (dim)
  at::Tensor lm_head;     // (vocab, dim), may alias embed
  std::map<int64_t, ExitWeights> exits;  // keyed by exit layer
  std::string hash;       // identifies the checkpoint, whatever parts are loaded (weights_digest)
  // The matrices a quantized checkpoint stores as int8 (and loading kept so): each one's block
  // scales, (rows, ceil(cols / 32)) fp32, keyed by the matrix's data.
  std::map<const void*, at::Tensor> block_scales;

  // Every stored tensor by its file name; tied tensors appear once, under their owner's name.
  TensorMap named_tensors() const;
  // Names of exit-head parameters (what EE-Tuning trains with --freeze-backbone).
  static bool is_exit_tensor(const std::string& name);
};

// The names and shapes a config requires, in file order.
std::map<std::string, std::vector<int64_t>> expected_tensor_shapes(const ModelConfig& config);

// A quantized checkpoint (ce-model --quantize-out) stores a weight matrix NAME as int8 values NAME
// (I8, rows x cols) and NAME + kBlockScaleSuffix (F32, rows x ceil(cols / 32)): value = q * the
// scale of its block of 32, kernels::quantize_q8's layout, so that loading keeps both as mapped.
// The embedding and the norms stay as stored.
constexpr const char* kBlockScaleSuffix = "_scale";

// value = q * the scale of its block: an int8 matrix (rows, cols) and its scales widened to fp32.
at::Tensor dequantize_block_scaled(const at::Tensor& values, const at::Tensor& scales);

// Writes `dir`'s model to `out` with every weight matrix but the embedding quantized that way
// (config and tokenizer files copied); returns the bytes of the weights file.
int64_t write_quantized_checkpoint(const std::string& dir, const std::string& out);

// What loading does with F16/BF16 (and int8) matrices: widen them to fp32 (training, and an
// explicit fp32 request; int8 as value times block scale), or keep them as stored so that memory
// holds the file's bytes once. Norms are always fp32 (they are tiny and feed fp32 arithmetic).
enum class StoredType { widen_to_fp32, keep };

// Builds Weights from a tensor map (every tensor of the checkpoint, loaded or not: the digest covers
// them all); every missing, extra or misshaped tensor is an error naming `source` and the tensor.
std::shared_ptr<Weights> weights_from_tensors(const ModelConfig& config, const TensorMap& tensors,
                                              const std::string& source,
                                              StoredType stored = StoredType::widen_to_fp32,
                                              const ModelParts& parts = ModelParts::all());

// Every tensor of a model directory, as views of the mapped files: `dir`/model.safetensors, or the
// shards listed by `dir`/model.safetensors.index.json (each listed shard must exist and hold
// exactly the tensors the index assigns to it). `source` is set to the file(s) read, for errors.
TensorMap read_checkpoint_tensors(const std::string& dir, std::string* source = nullptr);

// Loads `dir`/config.json and the checkpoint's tensors (one file or shards), `parts` of them.
std::shared_ptr<Weights> load_weights(const std::string& dir, StoredType stored = StoredType::widen_to_fp32,
                                      const ModelParts& parts = ModelParts::all());

// Small normal init (std 0.02, norms at 1) from a seed; used by tests and as ce-train's start.
std::shared_ptr<Weights> random_weights(const ModelConfig& config, uint64_t seed);

// How save_weights writes a checkpoint: the matrices' type (norms and biases stay fp32 unless bf16
// is asked: published checkpoints store everything in one type), and one file or `shards` files
// model-0000K-of-0000N.safetensors with model.safetensors.index.json, as Hugging Face publishes.
struct SaveOptions {
  at::ScalarType dtype = at::kHalf;
  int shards = 1;
  bool all_in_dtype = false;  // norms and biases in dtype too (as a published bf16 checkpoint)
};

// Writes config.json and the weights into `dir`.
void save_weights(const Weights& weights, const std::string& dir, const SaveOptions& options = {});

// Hex digest of the tensors' names, shapes and values rounded to fp16: every value of a checkpoint
// of up to 64 M values; of a larger one, evenly spaced blocks of each large tensor (a few pages each:
// the digest of a mapped 2.5 GB checkpoint reads ~10 MB, so an edge that loads half of it does not
// page in the rest). The same for an fp32 checkpoint and its fp16 export.
std::string weights_digest(const TensorMap& tensors);

}  // namespace ce
