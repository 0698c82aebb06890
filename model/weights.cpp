#include "model/weights.hpp"

#include <torch/torch.h>

#include <cstdio>
#include <filesystem>

namespace ce {
namespace {

std::string layer_name(int64_t i, const char* leaf) {
  return "model.layers." + std::to_string(i) + "." + leaf;
}
std::string exit_name(int64_t e, const char* leaf) { return "exits." + std::to_string(e) + "." + leaf; }

}  // namespace

bool Weights::is_exit_tensor(const std::string& name) { return name.rfind("exits.", 0) == 0; }

std::map<std::string, std::vector<int64_t>> expected_tensor_shapes(const ModelConfig& c) {
  const int64_t kv_dim = c.n_kv_heads * c.head_dim();
  std::map<std::string, std::vector<int64_t>> s;
  s["model.embed_tokens.weight"] = {c.vocab_size, c.dim};
  for (int64_t i = 0; i < c.n_layers; ++i) {
    s[layer_name(i, "input_layernorm.weight")] = {c.dim};
    s[layer_name(i, "self_attn.q_proj.weight")] = {c.dim, c.dim};
    s[layer_name(i, "self_attn.k_proj.weight")] = {kv_dim, c.dim};
    s[layer_name(i, "self_attn.v_proj.weight")] = {kv_dim, c.dim};
    s[layer_name(i, "self_attn.o_proj.weight")] = {c.dim, c.dim};
    s[layer_name(i, "post_attention_layernorm.weight")] = {c.dim};
    s[layer_name(i, "mlp.gate_proj.weight")] = {c.ffn_dim, c.dim};
    s[layer_name(i, "mlp.up_proj.weight")] = {c.ffn_dim, c.dim};
    s[layer_name(i, "mlp.down_proj.weight")] = {c.dim, c.ffn_dim};
  }
  s["model.norm.weight"] = {c.dim};
  if (!c.tie_word_embeddings) s["lm_head.weight"] = {c.vocab_size, c.dim};
  for (auto e : c.exit_layers) {
    s[exit_name(e, "norm.weight")] = {c.dim};
    if (!c.tie_exit_heads) s[exit_name(e, "head.weight")] = {c.vocab_size, c.dim};
  }
  return s;
}

std::shared_ptr<Weights> weights_from_tensors(const ModelConfig& c, const TensorMap& tensors,
                                              const std::string& source) {
  const auto expected = expected_tensor_shapes(c);
  for (auto& [name, t] : tensors)
    if (!expected.count(name)) throw ModelError(source + ": unexpected tensor '" + name + "' for this config");
  auto fetch = [&](const std::string& name) {
    auto it = tensors.find(name);
    if (it == tensors.end()) throw ModelError(source + ": missing tensor '" + name + "'");
    const auto& want = expected.at(name);
    if (it->second.sizes().vec() != want) {
      std::string got, exp;
      for (auto d : it->second.sizes()) got += std::to_string(d) + ",";
      for (auto d : want) exp += std::to_string(d) + ",";
      throw ModelError(source + ": tensor '" + name + "' has shape (" + got + ") but the config needs (" + exp + ")");
    }
    auto st = it->second.scalar_type();
    if (st != at::kFloat && st != at::kHalf && st != at::kBFloat16)
      throw ModelError(source + ": tensor '" + name + "' must be F32, F16 or BF16");
    auto f = it->second.to(at::kFloat).contiguous();
    if (!torch::isfinite(f).all().item<bool>())
      throw ModelError(source + ": tensor '" + name + "' holds NaN or infinite values");
    return f;
  };
  auto w = std::make_shared<Weights>();
  w->config = c;
  w->embed = fetch("model.embed_tokens.weight");
  for (int64_t i = 0; i < c.n_layers; ++i) {
    LayerWeights l;
    l.attn_norm = fetch(layer_name(i, "input_layernorm.weight"));
    l.wq = fetch(layer_name(i, "self_attn.q_proj.weight"));
    l.wk = fetch(layer_name(i, "self_attn.k_proj.weight"));
    l.wv = fetch(layer_name(i, "self_attn.v_proj.weight"));
    l.wo = fetch(layer_name(i, "self_attn.o_proj.weight"));
    l.ffn_norm = fetch(layer_name(i, "post_attention_layernorm.weight"));
    l.w_gate = fetch(layer_name(i, "mlp.gate_proj.weight"));
    l.w_up = fetch(layer_name(i, "mlp.up_proj.weight"));
    l.w_down = fetch(layer_name(i, "mlp.down_proj.weight"));
    w->layers.push_back(std::move(l));
  }
  w->final_norm = fetch("model.norm.weight");
  w->lm_head = c.tie_word_embeddings ? w->embed : fetch("lm_head.weight");
  for (auto e : c.exit_layers) {
    ExitWeights x;
    x.norm = fetch(exit_name(e, "norm.weight"));
    x.head = c.tie_exit_heads ? w->lm_head : fetch(exit_name(e, "head.weight"));
    w->exits.emplace(e, std::move(x));
  }
  w->hash = weights_digest(tensors);
  return w;
}

TensorMap Weights::named_tensors() const {
  TensorMap m;
  m["model.embed_tokens.weight"] = embed;
  for (size_t i = 0; i < layers.size(); ++i) {
    const auto& l = layers[i];
    const auto n = static_cast<int64_t>(i);
    m[layer_name(n, "input_layernorm.weight")] = l.attn_norm;
    m[layer_name(n, "self_attn.q_proj.weight")] = l.wq;
    m[layer_name(n, "self_attn.k_proj.weight")] = l.wk;
    m[layer_name(n, "self_attn.v_proj.weight")] = l.wv;
    m[layer_name(n, "self_attn.o_proj.weight")] = l.wo;
    m[layer_name(n, "post_attention_layernorm.weight")] = l.ffn_norm;
    m[layer_name(n, "mlp.gate_proj.weight")] = l.w_gate;
    m[layer_name(n, "mlp.up_proj.weight")] = l.w_up;
    m[layer_name(n, "mlp.down_proj.weight")] = l.w_down;
  }
  m["model.norm.weight"] = final_norm;
  if (!config.tie_word_embeddings) m["lm_head.weight"] = lm_head;
  for (auto& [e, x] : exits) {
    m[exit_name(e, "norm.weight")] = x.norm;
    if (!config.tie_exit_heads) m[exit_name(e, "head.weight")] = x.head;
  }
  return m;
}

std::string weights_digest(const TensorMap& tensors) {
  // FNV-1a over names, shapes and fp16 bytes: the same model gives the same digest whether it
  // was stored as fp32 or fp16, so an fp32 training checkpoint and its fp16 export agree.
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const void* p, size_t n) {
    auto b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  };
  for (auto& [name, t] : tensors) {
    mix(name.data(), name.size());
    for (auto d : t.sizes()) mix(&d, sizeof d);
    auto half = t.detach().to(at::kHalf).contiguous();
    mix(half.data_ptr(), half.nbytes());
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::shared_ptr<Weights> load_weights(const std::string& dir) {
  const auto config = load_model_config(dir + "/config.json");
  const std::string file = dir + "/model.safetensors";
  if (!std::filesystem::exists(file)) throw ModelError(file + ": weights file not found");
  return weights_from_tensors(config, read_safetensors(file), file);
}

std::shared_ptr<Weights> random_weights(const ModelConfig& c, uint64_t seed) {
  c.validate();
  torch::manual_seed(seed);
  TensorMap t;
  for (auto& [name, shape] : expected_tensor_shapes(c)) {
    const bool is_norm = shape.size() == 1;
    t[name] = is_norm ? torch::ones(shape) : torch::randn(shape) * 0.02;
  }
  return weights_from_tensors(c, t, "random init");
}

void save_weights(const Weights& w, const std::string& dir, bool keep_fp32) {
  std::filesystem::create_directories(dir);
  save_model_config(w.config, dir + "/config.json");
  TensorMap out;
  for (auto& [name, t] : w.named_tensors()) out[name] = keep_fp32 ? t.detach() : t.detach().to(at::kHalf);
  write_safetensors(dir + "/model.safetensors", out, {{"format", "pt"}});
}

}  // namespace ce
