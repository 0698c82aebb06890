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

struct ModelConfig {
  std::string name = "cecollm";
  int64_t dim = 256;              // hidden_size
  int64_t n_layers = 8;           // num_hidden_layers
  int64_t n_heads = 4;            // num_attention_heads
  int64_t n_kv_heads = 4;         // num_key_value_heads (grouped-query attention)
  int64_t ffn_dim = 688;          // intermediate_size
  int64_t vocab_size = 1024;
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;         // rms_norm_eps
  int64_t max_seq = 1024;         // max_position_embeddings
  bool tie_word_embeddings = false;
  // Early exits: an exit at e reads the hidden state after layers [0, e).
  std::vector<int64_t> exit_layers{2, 4};
  bool tie_exit_heads = false;    // exit heads share lm_head.weight
  double default_threshold = 0.8; // θ picked on the validation split
  int64_t default_split = 4;      // edge holds layers [0, default_split)
  int64_t bos_id = 1;
  int64_t eos_id = 2;

  int64_t head_dim() const { return dim / n_heads; }
  // Throws ModelError naming the first bad field.
  void validate() const;
};

ModelConfig load_model_config(const std::string& path);
void save_model_config(const ModelConfig& config, const std::string& path);
// Sets early_exit.default_threshold in the config.json at `path` and keeps every other field as
// it stands, fields this project does not read included. The result is checked to load, written
// to a temporary file and renamed over the original: a failure leaves the old file whole.
void write_default_threshold(const std::string& path, double threshold);

}  // namespace ce
