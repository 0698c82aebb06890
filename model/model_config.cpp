#include "model/model_config.hpp"

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

namespace ce {
namespace {

using nlohmann::json;

template <class T>
void read_field(const json& j, const char* key, T& out, const std::string& path, bool required) {
  auto it = j.find(key);
  if (it == j.end()) {
    if (required) throw ModelError(path + ": missing field '" + key + "'");
    return;
  }
  bool integral = true;
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) integral = it->is_number_integer();
  if constexpr (std::is_same_v<T, std::vector<int64_t>>)
    if (it->is_array())
      for (const auto& v : *it) integral = integral && v.is_number_integer();
  if (!integral)
    throw ModelError(path + ": field '" + key + "' must hold integers (" + it->dump() + ")");
  try {
    out = it->get<T>();
  } catch (const json::exception&) {
    throw ModelError(path + ": field '" + key + "' has the wrong type (" + it->type_name() + ")");
  }
}

void require(bool ok, const std::string& what) {
  if (!ok) throw ModelError("model config: " + what);
}

}  // namespace

void ModelConfig::validate() const {
  require(dim > 0, "hidden_size must be positive, got " + std::to_string(dim));
  require(n_layers > 0, "num_hidden_layers must be positive, got " + std::to_string(n_layers));
  require(n_heads > 0 && dim % n_heads == 0,
          "hidden_size " + std::to_string(dim) + " is not divisible by num_attention_heads " +
              std::to_string(n_heads));
  require(head_dim() % 2 == 0, "head dimension must be even for RoPE, got " + std::to_string(head_dim()));
  require(n_kv_heads > 0 && n_heads % n_kv_heads == 0,
          "num_attention_heads " + std::to_string(n_heads) + " is not divisible by num_key_value_heads " +
              std::to_string(n_kv_heads));
  require(ffn_dim > 0, "intermediate_size must be positive");
  require(vocab_size > 1, "vocab_size must be > 1");
  require(rope_theta > 0, "rope_theta must be positive");
  require(norm_eps > 0 && norm_eps < 1, "rms_norm_eps must be in (0, 1)");
  require(max_seq > 0, "max_position_embeddings must be positive");
  int64_t previous = 0;
  for (auto e : exit_layers) {
    require(e >= 1 && e < n_layers, "exit_layers: exit layer " + std::to_string(e) + " outside [1, " +
                                        std::to_string(n_layers - 1) + "]");
    require(e > previous, "exit_layers must be strictly increasing");
    previous = e;
  }
  require(default_threshold >= 0 && default_threshold <= 1.0001,
          "default_threshold must be in [0, 1]");
  require(default_split >= 1 && default_split < n_layers,
          "default_split " + std::to_string(default_split) + " outside [1, " + std::to_string(n_layers - 1) + "]");
  require(bos_id >= 0 && bos_id < vocab_size, "bos_token_id outside the vocabulary");
  require(eos_id >= 0 && eos_id < vocab_size, "eos_token_id outside the vocabulary");
}

namespace {

json read_config_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ModelError(path + ": cannot open model config");
  json j;
  try {
    in >> j;
  } catch (const json::exception& e) {
    throw ModelError(path + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object()) throw ModelError(path + ": top level must be a JSON object");
  return j;
}

}  // namespace

ModelConfig load_model_config(const std::string& path) {
  const json j = read_config_json(path);
  ModelConfig c;
  read_field(j, "hidden_size", c.dim, path, true);
  read_field(j, "num_hidden_layers", c.n_layers, path, true);
  read_field(j, "num_attention_heads", c.n_heads, path, true);
  c.n_kv_heads = c.n_heads;
  read_field(j, "num_key_value_heads", c.n_kv_heads, path, false);
  read_field(j, "intermediate_size", c.ffn_dim, path, true);
  read_field(j, "vocab_size", c.vocab_size, path, true);
  read_field(j, "rope_theta", c.rope_theta, path, false);
  read_field(j, "rms_norm_eps", c.norm_eps, path, false);
  read_field(j, "max_position_embeddings", c.max_seq, path, false);
  read_field(j, "tie_word_embeddings", c.tie_word_embeddings, path, false);
  read_field(j, "bos_token_id", c.bos_id, path, false);
  read_field(j, "eos_token_id", c.eos_id, path, false);
  read_field(j, "_name_or_path", c.name, path, false);
  auto ee = j.find("early_exit");
  if (ee == j.end()) {
    c.exit_layers.clear();  // a plain HF LLaMA: no exits until heads are trained
  } else {
    if (!ee->is_object()) throw ModelError(path + ": field 'early_exit' must be an object");
    std::string sub = path + " early_exit";
    read_field(*ee, "exit_layers", c.exit_layers, sub, true);
    read_field(*ee, "tie_exit_heads", c.tie_exit_heads, sub, false);
    read_field(*ee, "default_threshold", c.default_threshold, sub, false);
    read_field(*ee, "default_split", c.default_split, sub, false);
  }
  if (j.find("early_exit") == j.end() || ee->find("default_split") == ee->end())
    c.default_split = c.exit_layers.empty() ? c.n_layers / 2 : c.exit_layers.back();
  try {
    c.validate();
  } catch (const ModelError& e) {
    throw ModelError(path + ": " + e.what());
  }
  return c;
}

void save_model_config(const ModelConfig& c, const std::string& path) {
  json j = {
      {"architectures", {"LlamaForCausalLM"}},
      {"model_type", "llama"},
      {"_name_or_path", c.name},
      {"hidden_size", c.dim},
      {"num_hidden_layers", c.n_layers},
      {"num_attention_heads", c.n_heads},
      {"num_key_value_heads", c.n_kv_heads},
      {"intermediate_size", c.ffn_dim},
      {"vocab_size", c.vocab_size},
      {"rope_theta", c.rope_theta},
      {"rms_norm_eps", c.norm_eps},
      {"max_position_embeddings", c.max_seq},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"hidden_act", "silu"},
      {"bos_token_id", c.bos_id},
      {"eos_token_id", c.eos_id},
      {"early_exit",
       {{"exit_layers", c.exit_layers},
        {"tie_exit_heads", c.tie_exit_heads},
        {"default_threshold", c.default_threshold},
        {"default_split", c.default_split}}},
  };
  std::ofstream out(path);
  if (!out) throw ModelError(path + ": cannot write model config");
  out << j.dump(2) << "\n";
}

void write_default_threshold(const std::string& path, double threshold) {
  json j = read_config_json(path);
  auto ee = j.find("early_exit");
  if (ee == j.end() || !ee->is_object())
    throw ModelError(path + ": no 'early_exit' section (a model without exits has no threshold)");
  (*ee)["default_threshold"] = threshold;
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    if (!out) throw ModelError(tmp + ": cannot write model config");
    out << j.dump(2) << "\n";
    if (!out.flush()) throw ModelError(tmp + ": write failed");
  }
  try {
    load_model_config(tmp);  // the edited file must still be a valid config
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw ModelError(path + ": cannot replace it with " + tmp);
}

}  // namespace ce
