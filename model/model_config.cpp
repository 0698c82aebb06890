#include "model/model_config.hpp"

#include <algorithm>
#include <cmath>
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
  require(n_heads > 0 && (head_size > 0 || dim % n_heads == 0),
          "hidden_size " + std::to_string(dim) + " is not divisible by num_attention_heads " +
              std::to_string(n_heads));
  require(head_size >= 0, "head_dim must be positive");
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
  require(bos_id >= -1 && bos_id < vocab_size, "bos_token_id outside the vocabulary");
  require(eos_id >= 0 && eos_id < vocab_size, "eos_token_id outside the vocabulary");
  for (auto id : more_eos_ids) require(id >= 0 && id < vocab_size, "eos_token_id outside the vocabulary");
  if (rope_scaling.kind != RopeScaling::Kind::none) require(rope_scaling.factor > 0, "rope_scaling.factor must be positive");
  if (rope_scaling.kind == RopeScaling::Kind::llama3)
    require(rope_scaling.high_freq_factor > rope_scaling.low_freq_factor && rope_scaling.low_freq_factor > 0 &&
                rope_scaling.original_max_position > 0,
            "rope_scaling (llama3) needs high_freq_factor > low_freq_factor > 0 and original_max_position_embeddings > 0");
}

bool ModelConfig::is_eos(int64_t token) const {
  return token == eos_id || std::find(more_eos_ids.begin(), more_eos_ids.end(), token) != more_eos_ids.end();
}

std::string ModelConfig::extensions() const {
  std::string out;
  const auto add = [&](const char* what) { out += std::string(out.empty() ? "" : ", ") + what; };
  if (head_size > 0 && head_size * n_heads != dim) add("head_dim");
  if (rope_scaling.kind != RopeScaling::Kind::none) add("rope_scaling");
  if (qkv_bias || output_bias) add("attention biases");
  if (mlp_bias) add("mlp biases");
  return out;
}

std::vector<double> rope_inverse_frequencies(const ModelConfig& c) {
  const int64_t hd = c.head_dim();
  std::vector<double> inv(static_cast<size_t>(hd / 2));
  for (int64_t i = 0; i < hd / 2; ++i)
    inv[static_cast<size_t>(i)] = 1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / static_cast<double>(hd));
  const auto& s = c.rope_scaling;
  switch (s.kind) {
    case RopeScaling::Kind::none: break;
    case RopeScaling::Kind::linear:  // positions divided by the factor: the same as every frequency
      for (auto& f : inv) f /= s.factor;
      break;
    case RopeScaling::Kind::llama3: {
      // Long wavelengths (beyond the original context / low_freq_factor) are slowed by the
      // factor, short ones (below original / high_freq_factor) kept, the band between blended.
      const double original = static_cast<double>(s.original_max_position);
      const double low_wavelen = original / s.low_freq_factor, high_wavelen = original / s.high_freq_factor;
      for (auto& f : inv) {
        const double wavelen = 2 * M_PI / f;
        if (wavelen > low_wavelen) {
          f /= s.factor;
        } else if (wavelen >= high_wavelen) {
          const double smooth = (original / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
          f = (1 - smooth) * f / s.factor + smooth * f;
        }
      }
      break;
    }
  }
  return inv;
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

// The Hugging Face architectures whose math this decoder implements, by model_type.
struct Architecture {
  const char* model_type;
  const char* class_name;
  bool qkv_bias;  // built into the architecture (Qwen2), not a config field
};
constexpr Architecture architectures[] = {
    {"llama", "LlamaForCausalLM", false},
    {"mistral", "MistralForCausalLM", false},
    {"qwen2", "Qwen2ForCausalLM", true},
};

const Architecture& architecture_of(const json& j, const std::string& path) {
  std::string type = "llama";
  read_field(j, "model_type", type, path, false);
  for (const auto& a : architectures)
    if (type == a.model_type) {
      auto names = j.find("architectures");
      if (names != j.end() && names->is_array())
        for (const auto& n : *names)
          if (!n.is_string() || n.get<std::string>() != a.class_name)
            throw ModelError(path + ": architectures lists " + n.dump() + "; model_type '" + type + "' needs " +
                             a.class_name);
      return a;
    }
  std::string known;
  for (const auto& a : architectures) known += std::string(known.empty() ? "" : ", ") + a.model_type;
  throw ModelError(path + ": model_type '" + type + "' is not supported (supported: " + known + ")");
}

// Fields that change the math and that this decoder does not implement: refused, not ignored.
void refuse_unsupported(const json& j, const std::string& path) {
  auto act = j.find("hidden_act");
  if (act != j.end() && (!act->is_string() || act->get<std::string>() != "silu"))
    throw ModelError(path + ": hidden_act " + act->dump() + " is not supported (only silu)");
  for (const char* key : {"quantization_config", "attn_logit_softcapping", "final_logit_softcapping"}) {
    auto it = j.find(key);
    if (it != j.end() && !it->is_null()) throw ModelError(path + ": field '" + key + "' is not supported");
  }
}

RopeScaling rope_scaling_of(const json& j, const std::string& path) {
  RopeScaling r;
  auto it = j.find("rope_scaling");
  if (it == j.end() || it->is_null()) return r;
  if (!it->is_object()) throw ModelError(path + ": field 'rope_scaling' must be an object or null");
  const std::string sub = path + " rope_scaling";
  std::string type;
  if (it->contains("rope_type")) read_field(*it, "rope_type", type, sub, true);
  else read_field(*it, "type", type, sub, true);
  if (type == "default") return r;
  if (type == "linear") {
    r.kind = RopeScaling::Kind::linear;
  } else if (type == "llama3") {
    r.kind = RopeScaling::Kind::llama3;
    read_field(*it, "low_freq_factor", r.low_freq_factor, sub, true);
    read_field(*it, "high_freq_factor", r.high_freq_factor, sub, true);
    read_field(*it, "original_max_position_embeddings", r.original_max_position, sub, true);
  } else {
    throw ModelError(path + ": rope_scaling type '" + type + "' is not supported (supported: default, linear, llama3)");
  }
  read_field(*it, "factor", r.factor, sub, true);
  return r;
}

// "bos_token_id"/"eos_token_id": an integer, null (none) or, for eos, a list.
void read_special_ids(const json& j, ModelConfig& c, const std::string& path) {
  auto bos = j.find("bos_token_id");
  if (bos != j.end()) {
    if (bos->is_null()) c.bos_id = -1;
    else read_field(j, "bos_token_id", c.bos_id, path, false);
  }
  auto eos = j.find("eos_token_id");
  if (eos == j.end() || eos->is_null()) return;
  if (!eos->is_array()) {
    read_field(j, "eos_token_id", c.eos_id, path, false);
    return;
  }
  std::vector<int64_t> ids;
  read_field(j, "eos_token_id", ids, path, false);
  if (ids.empty()) throw ModelError(path + ": field 'eos_token_id' is an empty list");
  c.eos_id = ids.front();
  c.more_eos_ids.assign(ids.begin() + 1, ids.end());
}

// generation_config.json beside config.json may name more ids that end a response (Llama 3.x
// Instruct: <|eot_id|> and <|eom_id|> besides <|end_of_text|>); they join more_eos_ids.
void merge_generation_eos(const std::string& config_path, ModelConfig& c) {
  const auto dir = config_path.substr(0, config_path.find_last_of('/') + 1);
  const std::string path = dir + "generation_config.json";
  std::ifstream probe(path);
  if (!probe) return;
  const json j = read_config_json(path);
  auto eos = j.find("eos_token_id");
  if (eos == j.end() || eos->is_null()) return;
  std::vector<int64_t> ids;
  if (eos->is_array()) {
    read_field(j, "eos_token_id", ids, path, false);
  } else {
    int64_t id = 0;
    read_field(j, "eos_token_id", id, path, false);
    ids.push_back(id);
  }
  for (auto id : ids)
    if (!c.is_eos(id)) c.more_eos_ids.push_back(id);
}

}  // namespace

ModelConfig load_model_config(const std::string& path) {
  const json j = read_config_json(path);
  ModelConfig c;
  const auto& arch = architecture_of(j, path);
  c.model_type = arch.model_type;
  refuse_unsupported(j, path);
  read_field(j, "hidden_size", c.dim, path, true);
  read_field(j, "num_hidden_layers", c.n_layers, path, true);
  read_field(j, "num_attention_heads", c.n_heads, path, true);
  c.n_kv_heads = c.n_heads;
  read_field(j, "num_key_value_heads", c.n_kv_heads, path, false);
  if (j.contains("head_dim") && !j["head_dim"].is_null()) read_field(j, "head_dim", c.head_size, path, true);
  read_field(j, "intermediate_size", c.ffn_dim, path, true);
  read_field(j, "vocab_size", c.vocab_size, path, true);
  read_field(j, "rope_theta", c.rope_theta, path, false);
  c.rope_scaling = rope_scaling_of(j, path);
  read_field(j, "rms_norm_eps", c.norm_eps, path, false);
  read_field(j, "max_position_embeddings", c.max_seq, path, false);
  // A sliding window shorter than the context would change attention beyond it: contexts are
  // capped at the window instead, where the full attention computed here is exact.
  if (j.contains("sliding_window") && !j["sliding_window"].is_null() &&
      !(j.contains("use_sliding_window") && j["use_sliding_window"].is_boolean() && !j["use_sliding_window"].get<bool>())) {
    int64_t window = 0;
    read_field(j, "sliding_window", window, path, true);
    if (window > 0) c.max_seq = std::min(c.max_seq, window);
  }
  read_field(j, "tie_word_embeddings", c.tie_word_embeddings, path, false);
  bool attention_bias = false;
  read_field(j, "attention_bias", attention_bias, path, false);
  c.qkv_bias = arch.qkv_bias || attention_bias;
  c.output_bias = attention_bias;
  read_field(j, "mlp_bias", c.mlp_bias, path, false);
  read_special_ids(j, c, path);
  merge_generation_eos(path, c);
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
  const Architecture* arch = nullptr;
  for (const auto& a : architectures)
    if (c.model_type == a.model_type) arch = &a;
  if (!arch) throw ModelError(path + ": model_type '" + c.model_type + "' cannot be saved");
  json eos = c.eos_id;
  if (!c.more_eos_ids.empty()) {
    std::vector<int64_t> ids{c.eos_id};
    ids.insert(ids.end(), c.more_eos_ids.begin(), c.more_eos_ids.end());
    eos = ids;
  }
  json j = {
      {"architectures", {arch->class_name}},
      {"model_type", arch->model_type},
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
      {"bos_token_id", c.bos_id >= 0 ? json(c.bos_id) : json(nullptr)},
      {"eos_token_id", eos},
      {"early_exit",
       {{"exit_layers", c.exit_layers},
        {"tie_exit_heads", c.tie_exit_heads},
        {"default_threshold", c.default_threshold},
        {"default_split", c.default_split}}},
  };
  if (c.exit_layers.empty()) j.erase("early_exit");  // a plain checkpoint, as published
  if (c.head_size > 0) j["head_dim"] = c.head_size;
  if (c.output_bias) j["attention_bias"] = true;
  if (c.mlp_bias) j["mlp_bias"] = true;
  else if (c.qkv_bias && !arch->qkv_bias) throw ModelError(path + ": q/k/v biases without an o_proj bias need model_type qwen2");
  const auto& r = c.rope_scaling;
  if (r.kind == RopeScaling::Kind::linear) j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", r.factor}};
  if (r.kind == RopeScaling::Kind::llama3)
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", r.factor},
                         {"low_freq_factor", r.low_freq_factor},
                         {"high_freq_factor", r.high_freq_factor},
                         {"original_max_position_embeddings", r.original_max_position}};
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
