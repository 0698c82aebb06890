#include "model/weights.hpp"

#include <torch/torch.h>

#include <cstdio>
#include <filesystem>

namespace ce {
namespace {

// The one table of a decoder layer's tensors: Hugging Face name, slot, and shape (rows, cols) in
// config sizes. Loading, saving and the expected shapes all read it, so a name cannot be pinned
// to one slot on load and another on save.
enum class Size { none, dim, kv_dim, ffn };

struct LayerTensor {
  const char* leaf;
  at::Tensor LayerWeights::*slot;
  Size rows, cols;
};

constexpr LayerTensor layer_tensors[] = {
    {"input_layernorm.weight", &LayerWeights::attn_norm, Size::dim, Size::none},
    {"self_attn.q_proj.weight", &LayerWeights::wq, Size::dim, Size::dim},
    {"self_attn.k_proj.weight", &LayerWeights::wk, Size::kv_dim, Size::dim},
    {"self_attn.v_proj.weight", &LayerWeights::wv, Size::kv_dim, Size::dim},
    {"self_attn.o_proj.weight", &LayerWeights::wo, Size::dim, Size::dim},
    {"post_attention_layernorm.weight", &LayerWeights::ffn_norm, Size::dim, Size::none},
    {"mlp.gate_proj.weight", &LayerWeights::w_gate, Size::ffn, Size::dim},
    {"mlp.up_proj.weight", &LayerWeights::w_up, Size::ffn, Size::dim},
    {"mlp.down_proj.weight", &LayerWeights::w_down, Size::dim, Size::ffn},
};

std::vector<int64_t> shape_of(const LayerTensor& t, const ModelConfig& c) {
  auto size = [&](Size s) -> int64_t {
    switch (s) {
      case Size::dim: return c.dim;
      case Size::kv_dim: return c.n_kv_heads * c.head_dim();
      case Size::ffn: return c.ffn_dim;
      case Size::none: break;
    }
    return 0;
  };
  if (t.cols == Size::none) return {size(t.rows)};
  return {size(t.rows), size(t.cols)};
}

constexpr const char* embed_name = "model.embed_tokens.weight";
constexpr const char* final_norm_name = "model.norm.weight";
constexpr const char* lm_head_name = "lm_head.weight";

std::string layer_name(int64_t i, const char* leaf) {
  return "model.layers." + std::to_string(i) + "." + leaf;
}
std::string exit_name(int64_t e, const char* leaf) { return "exits." + std::to_string(e) + "." + leaf; }

}  // namespace

bool Weights::is_exit_tensor(const std::string& name) { return name.rfind("exits.", 0) == 0; }

std::map<std::string, std::vector<int64_t>> expected_tensor_shapes(const ModelConfig& c) {
  std::map<std::string, std::vector<int64_t>> s;
  s[embed_name] = {c.vocab_size, c.dim};
  for (int64_t i = 0; i < c.n_layers; ++i)
    for (const auto& t : layer_tensors) s[layer_name(i, t.leaf)] = shape_of(t, c);
  s[final_norm_name] = {c.dim};
  if (!c.tie_word_embeddings) s[lm_head_name] = {c.vocab_size, c.dim};
  for (auto e : c.exit_layers) {
    s[exit_name(e, "norm.weight")] = {c.dim};
    if (!c.tie_exit_heads) s[exit_name(e, "head.weight")] = {c.vocab_size, c.dim};
  }
  return s;
}

std::shared_ptr<Weights> weights_from_tensors(const ModelConfig& c, const TensorMap& tensors,
                                              const std::string& source, StoredType stored) {
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
    const bool keep = stored == StoredType::keep && want.size() == 2;
    auto f = (keep ? it->second : it->second.to(at::kFloat)).contiguous();
    if (!torch::isfinite(f).all().item<bool>())
      throw ModelError(source + ": tensor '" + name + "' holds NaN or infinite values");
    return f;
  };
  auto w = std::make_shared<Weights>();
  w->config = c;
  w->embed = fetch(embed_name);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    LayerWeights l;
    for (const auto& t : layer_tensors) l.*t.slot = fetch(layer_name(i, t.leaf));
    w->layers.push_back(std::move(l));
  }
  w->final_norm = fetch(final_norm_name);
  w->lm_head = c.tie_word_embeddings ? w->embed : fetch(lm_head_name);
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
  m[embed_name] = embed;
  for (size_t i = 0; i < layers.size(); ++i)
    for (const auto& t : layer_tensors) m[layer_name(static_cast<int64_t>(i), t.leaf)] = layers[i].*t.slot;
  m[final_norm_name] = final_norm;
  if (!config.tie_word_embeddings) m[lm_head_name] = lm_head;
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

std::shared_ptr<Weights> load_weights(const std::string& dir, StoredType stored) {
  const auto config = load_model_config(dir + "/config.json");
  const std::string file = dir + "/model.safetensors";
  if (!std::filesystem::exists(file)) throw ModelError(file + ": weights file not found");
  return weights_from_tensors(config, read_safetensors(file), file, stored);
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
