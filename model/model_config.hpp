#pragma once
// Architecture of an early-exit LLaMA decoder, read from a Hugging Face style config.json.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace ce {

// Every failure to load or run a model is reported with this type; the message names the
// file, field or tensor at fault.
struct ModelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// RoPE frequency scaling of long-context checkpoints (config.json "rope_scaling").
struct RopeScaling {
  enum class Kind { none, linear, llama3 };
  Kind kind = Kind::none;
  double factor = 1.0;
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3 only
  int64_t original_max_position = 8192;                  // llama3: original_max_position_embeddings
};

struct ModelConfig {
  std::string name = "cecollm";
  std::string model_type = "llama";  // llama, mistral or qwen2 (the Hugging Face model_type)
  int64_t dim = 256;              // hidden_size
  int64_t n_layers = 8;           // num_hidden_layers
  int64_t n_heads = 4;            // num_attention_heads
  int64_t n_kv_heads = 4;         // num_key_value_heads (grouped-query attention)
  int64_t ffn_dim = 688;          // intermediate_size
  int64_t vocab_size = 1024;
  int64_t head_size = 0;          // head_dim; 0: hidden_size / num_attention_heads
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool qkv_bias = false;          // q/k/v projections carry a bias (Qwen2, Llama attention_bias)
  bool output_bias = false;       // o_proj carries a bias (Llama attention_bias)
  bool mlp_bias = false;          // gate/up/down projections carry biases (Llama mlp_bias)
  double norm_eps = 1e-5;         // rms_norm_eps
  int64_t max_seq = 1024;         // max_position_embeddings
  bool tie_word_embeddings = false;
  // Early exits: an exit at e reads the hidden state after layers [0, e).
  std::vector<int64_t> exit_layers{2, 4};
  bool tie_exit_heads = false;    // exit heads share lm_head.weight
  double default_threshold = 0.8; // θ picked on the validation split
  int64_t default_split = 4;      // edge holds layers [0, default_split)
  int64_t bos_id = 1;             // -1: the model has none (Qwen)
  int64_t eos_id = 2;
  std::vector<int64_t> more_eos_ids;  // further ids that end a response ("eos_token_id" as a list)

  int64_t head_dim() const { return head_size > 0 ? head_size : dim / n_heads; }
  int64_t q_dim() const { return n_heads * head_dim(); }    // rows of q_proj, columns of o_proj
  int64_t kv_dim() const { return n_kv_heads * head_dim(); }
  bool is_eos(int64_t token) const;
  // The features beyond the original LLaMA layout (head_dim override, rope scaling, biases), named,
  // or "" for a plain LLaMA: exporters to formats without them refuse such a model.
  std::string extensions() const;
  // Throws ModelError naming the first bad field.
  void validate() const;
};

// RoPE's inverse frequency of each pair of a head, (head_dim / 2) values, rope_scaling applied as
// Hugging Face's rope_init_fn computes it.
std::vector<double> rope_inverse_frequencies(const ModelConfig& config);

// Reads a config.json of the Llama family (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)
// and our early_exit section. Anything that changes the math and is not implemented (another
// architecture, rope_scaling type, activation, quantization) is refused, naming it.
ModelConfig load_model_config(const std::string& path);
void save_model_config(const ModelConfig& config, const std::string& path);
// Sets early_exit.default_threshold in the config.json at `path` and keeps every other field as
// it stands, fields this project does not read included. The result is checked to load, written
// to a temporary file and renamed over the original: a failure leaves the old file whole.
void write_default_threshold(const std::string& path, double threshold);

}  // namespace ce
