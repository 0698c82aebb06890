#include "model/weights.hpp"

#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/kernels.hpp"

namespace ce {
namespace {

// The one table of a decoder layer's tensors: Hugging Face name, slot, and shape (rows, cols) in
// config sizes. Loading, saving and the expected shapes all read it, so a name cannot be pinned
// to one slot on load and another on save.
enum class Size { none, dim, q_dim, kv_dim, ffn };
// Which configs have the tensor: biases only where the config says so.
enum class Present { always, with_qkv_bias, with_output_bias, with_mlp_bias };

struct LayerTensor {
  const char* leaf;
  at::Tensor LayerWeights::*slot;
  Size rows, cols;
  Present present = Present::always;
};

constexpr LayerTensor layer_tensors[] = {
    {"input_layernorm.weight", &LayerWeights::attn_norm, Size::dim, Size::none},
    {"self_attn.q_proj.weight", &LayerWeights::wq, Size::q_dim, Size::dim},
    {"self_attn.k_proj.weight", &LayerWeights::wk, Size::kv_dim, Size::dim},
    {"self_attn.v_proj.weight", &LayerWeights::wv, Size::kv_dim, Size::dim},
    {"self_attn.o_proj.weight", &LayerWeights::wo, Size::dim, Size::q_dim},
    {"self_attn.q_proj.bias", &LayerWeights::bq, Size::q_dim, Size::none, Present::with_qkv_bias},
    {"self_attn.k_proj.bias", &LayerWeights::bk, Size::kv_dim, Size::none, Present::with_qkv_bias},
    {"self_attn.v_proj.bias", &LayerWeights::bv, Size::kv_dim, Size::none, Present::with_qkv_bias},
    {"self_attn.o_proj.bias", &LayerWeights::bo, Size::dim, Size::none, Present::with_output_bias},
    {"post_attention_layernorm.weight", &LayerWeights::ffn_norm, Size::dim, Size::none},
    {"mlp.gate_proj.weight", &LayerWeights::w_gate, Size::ffn, Size::dim},
    {"mlp.up_proj.weight", &LayerWeights::w_up, Size::ffn, Size::dim},
    {"mlp.down_proj.weight", &LayerWeights::w_down, Size::dim, Size::ffn},
    {"mlp.gate_proj.bias", &LayerWeights::b_gate, Size::ffn, Size::none, Present::with_mlp_bias},
    {"mlp.up_proj.bias", &LayerWeights::b_up, Size::ffn, Size::none, Present::with_mlp_bias},
    {"mlp.down_proj.bias", &LayerWeights::b_down, Size::dim, Size::none, Present::with_mlp_bias},
};

bool present(const LayerTensor& t, const ModelConfig& c) {
  switch (t.present) {
    case Present::always: return true;
    case Present::with_qkv_bias: return c.qkv_bias;
    case Present::with_output_bias: return c.output_bias;
    case Present::with_mlp_bias: return c.mlp_bias;
  }
  return false;
}

std::vector<int64_t> shape_of(const LayerTensor& t, const ModelConfig& c) {
  auto size = [&](Size s) -> int64_t {
    switch (s) {
      case Size::dim: return c.dim;
      case Size::q_dim: return c.q_dim();
      case Size::kv_dim: return c.kv_dim();
      case Size::ffn: return c.ffn_dim;
      case Size::none: break;
    }
    return 0;
  };
  if (t.cols == Size::none) return {size(t.rows)};
  return {size(t.rows), size(t.cols)};
}

// Published checkpoints of older transformers versions store RoPE's inverse frequencies as a
// buffer; they are recomputed from the config, so such tensors are skipped, not refused.
bool is_recomputed_buffer(const std::string& name) {
  const std::string leaf = "rotary_emb.inv_freq";
  return name.size() >= leaf.size() && name.compare(name.size() - leaf.size(), leaf.size(), leaf) == 0;
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
    for (const auto& t : layer_tensors)
      if (present(t, c)) s[layer_name(i, t.leaf)] = shape_of(t, c);
  s[final_norm_name] = {c.dim};
  if (!c.tie_word_embeddings) s[lm_head_name] = {c.vocab_size, c.dim};
  for (auto e : c.exit_layers) {
    s[exit_name(e, "norm.weight")] = {c.dim};
    if (!c.tie_exit_heads) s[exit_name(e, "head.weight")] = {c.vocab_size, c.dim};
  }
  return s;
}

namespace {

// NaN/Inf anywhere in `t`: a value is one exactly when its exponent bits are all set. Read as
// bits in one pass at memory speed (libtorch's isfinite on a mapped 2.5 GB bf16 checkpoint took
// ~25 s and a byte of output per value).
bool all_finite(const at::Tensor& t) {
  const auto c = t.contiguous();
  const auto none_set = [&](auto word, auto exponent) {
    using Word = decltype(word);
    const auto* p = static_cast<const Word*>(c.data_ptr());
    for (int64_t i = 0, n = c.numel(); i < n; ++i)
      if ((p[i] & exponent) == exponent) return false;
    return true;
  };
  switch (c.scalar_type()) {
    case at::kFloat: return none_set(uint32_t{}, uint32_t{0x7f800000});
    case at::kHalf: return none_set(uint16_t{}, uint16_t{0x7c00});
    case at::kBFloat16: return none_set(uint16_t{}, uint16_t{0x7f80});
    default: return torch::isfinite(c).all().item<bool>();
  }
}

bool is_block_scale(const std::string& name) {
  const std::string suffix = kBlockScaleSuffix;
  return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// An int8 matrix's scales, checked: present, F32, one per block of 32 values, finite, >= 0.
const at::Tensor& block_scales_of(const TensorMap& tensors, const std::string& name, const at::Tensor& values,
                                  const std::string& source) {
  const std::string scale_name = name + kBlockScaleSuffix;
  const auto it = tensors.find(scale_name);
  if (it == tensors.end())
    throw ModelError(source + ": tensor '" + name + "' is int8 but its block scales '" + scale_name + "' are missing");
  const auto& scales = it->second;
  const int64_t rows = values.size(0), blocks = kernels::q8_blocks(values.size(1));
  if (scales.scalar_type() != at::kFloat || scales.dim() != 2 || scales.size(0) != rows || scales.size(1) != blocks)
    throw ModelError(source + ": tensor '" + scale_name + "' must be F32 of shape (" + std::to_string(rows) + "," +
                     std::to_string(blocks) + "): one scale per 32 values of '" + name + "'");
  if (!all_finite(scales) || (scales < 0).any().item<bool>())
    throw ModelError(source + ": tensor '" + scale_name + "' holds negative, NaN or infinite scales");
  return scales;
}

}  // namespace

at::Tensor dequantize_block_scaled(const at::Tensor& values, const at::Tensor& scales) {
  const auto per_value = scales.repeat_interleave(kernels::kQ8Block, 1).narrow(1, 0, values.size(1));
  return (values.to(at::kFloat) * per_value).contiguous();
}

std::shared_ptr<Weights> weights_from_tensors(const ModelConfig& c, const TensorMap& tensors,
                                              const std::string& source, StoredType stored, const ModelParts& parts) {
  const auto expected = expected_tensor_shapes(c);
  for (auto& [name, t] : tensors) {
    if (expected.count(name) || is_recomputed_buffer(name)) continue;
    if (is_block_scale(name)) {
      const auto matrix = name.substr(0, name.size() - std::string(kBlockScaleSuffix).size());
      const auto it = tensors.find(matrix);
      if (expected.count(matrix) && it != tensors.end() && it->second.scalar_type() == at::kChar) continue;
      throw ModelError(source + ": tensor '" + name + "' holds block scales, but '" + matrix +
                       "' is not an int8 matrix of this config");
    }
    throw ModelError(source + ": unexpected tensor '" + name + "' for this config");
  }
  for (auto& [name, want] : expected) {  // every tensor, loaded here or not: the header is at hand
    auto it = tensors.find(name);
    if (it == tensors.end()) throw ModelError(source + ": missing tensor '" + name + "'");
    if (it->second.sizes().vec() != want) {
      std::string got, exp;
      for (auto d : it->second.sizes()) got += std::to_string(d) + ",";
      for (auto d : want) exp += std::to_string(d) + ",";
      throw ModelError(source + ": tensor '" + name + "' has shape (" + got + ") but the config needs (" + exp + ")");
    }
    if (it->second.scalar_type() == at::kChar) {
      if (want.size() != 2 || name == embed_name)
        throw ModelError(source + ": tensor '" + name + "' is int8; only weight matrices other than the embedding may be");
      block_scales_of(tensors, name, it->second, source);
    }
  }
  auto w = std::make_shared<Weights>();
  auto fetch = [&](const std::string& name) {
    const auto& t = tensors.at(name);
    const bool keep = stored == StoredType::keep && t.dim() == 2;
    auto st = t.scalar_type();
    if (st == at::kChar) {  // its scales were checked with the shapes above
      const auto& scales = tensors.at(name + kBlockScaleSuffix);
      if (!keep) {
        auto f = dequantize_block_scaled(t, scales);
        release_pages(t);
        return f;
      }
      auto values = t.contiguous();
      w->block_scales[values.data_ptr()] = scales.contiguous();
      return values;
    }
    if (st != at::kFloat && st != at::kHalf && st != at::kBFloat16)
      throw ModelError(source + ": tensor '" + name + "' must be F32, F16, BF16 or (a weight matrix) I8");
    auto f = (keep ? t : t.to(at::kFloat)).contiguous();
    if (!all_finite(f)) throw ModelError(source + ": tensor '" + name + "' holds NaN or infinite values");
    if (f.data_ptr() != t.data_ptr()) release_pages(t);  // widened: the file's copy is not read again
    return f;
  };
  w->config = c;
  w->parts = parts;
  // lm_head serves the final head and tied exit heads; when tied to the embedding, it is the embedding.
  const bool lm_head_needed = parts.final_head || (parts.exits && c.tie_exit_heads && !c.exit_layers.empty());
  if (parts.embed || (lm_head_needed && c.tie_word_embeddings)) w->embed = fetch(embed_name);
  w->layers.resize(static_cast<size_t>(c.n_layers));
  for (int64_t i = 0; i < c.n_layers; ++i)
    if (parts.holds_layer(i, c.n_layers))
      for (const auto& t : layer_tensors)
        if (present(t, c)) w->layers[static_cast<size_t>(i)].*t.slot = fetch(layer_name(i, t.leaf));
  if (parts.final_head) w->final_norm = fetch(final_norm_name);
  if (lm_head_needed) w->lm_head = c.tie_word_embeddings ? w->embed : fetch(lm_head_name);
  if (parts.exits)
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
  const auto put = [&](const std::string& name, const at::Tensor& t) {
    if (t.defined()) m[name] = t;
  };
  put(embed_name, embed);
  for (size_t i = 0; i < layers.size(); ++i)
    for (const auto& t : layer_tensors) put(layer_name(static_cast<int64_t>(i), t.leaf), layers[i].*t.slot);
  put(final_norm_name, final_norm);
  if (!config.tie_word_embeddings) put(lm_head_name, lm_head);
  for (auto& [e, x] : exits) {
    put(exit_name(e, "norm.weight"), x.norm);
    if (!config.tie_exit_heads) put(exit_name(e, "head.weight"), x.head);
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
  // A checkpoint of up to 64 M values is read whole (the digests of our own models stay what they
  // were); a larger one is sampled: every tensor of up to 32 K values whole, larger ones in 16
  // evenly spaced blocks of 2 K values.
  constexpr int64_t block = 2048, blocks = 16, whole_checkpoint = int64_t{64} << 20;
  int64_t total = 0;
  for (auto& [name, t] : tensors) total += t.numel();
  for (auto& [name, t] : tensors) {
    if (is_recomputed_buffer(name)) continue;
    mix(name.data(), name.size());
    for (auto d : t.sizes()) mix(&d, sizeof d);
    const auto flat = t.detach().reshape({-1});
    const int64_t n = flat.numel();
    const auto digest_values = [&](int64_t begin, int64_t count) {
      auto half = flat.narrow(0, begin, count).to(at::kHalf).contiguous();
      mix(half.data_ptr(), half.nbytes());
    };
    if (total <= whole_checkpoint || n <= block * blocks) {
      digest_values(0, n);
    } else {
      for (int64_t i = 0; i < blocks; ++i) digest_values((n - block) * i / (blocks - 1), block);
    }
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

TensorMap read_checkpoint_tensors(const std::string& dir, std::string* source) {
  namespace fs = std::filesystem;
  const std::string single = dir + "/model.safetensors", index_file = dir + "/model.safetensors.index.json";
  if (!fs::exists(index_file)) {
    if (!fs::exists(single)) throw ModelError(single + ": weights file not found (nor " + index_file + ")");
    if (source) *source = single;
    return read_safetensors(single);
  }
  std::ifstream in(index_file);
  nlohmann::json index;
  try {
    in >> index;
  } catch (const nlohmann::json::exception& e) {
    throw ModelError(index_file + ": not valid JSON (" + e.what() + ")");
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw ModelError(index_file + ": no 'weight_map' object");
  std::map<std::string, std::string> shard_of;  // tensor -> shard file name, as the index says
  for (auto& [tensor, file] : index["weight_map"].items()) {
    if (!file.is_string()) throw ModelError(index_file + ": weight_map entry '" + tensor + "' is not a file name");
    const std::string name = file.get<std::string>();
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
      throw ModelError(index_file + ": weight_map entry '" + tensor + "' names '" + name + "', not a file in " + dir);
    shard_of[tensor] = name;
  }
  std::map<std::string, TensorMap> shards;
  for (auto& [tensor, file] : shard_of) {
    if (shards.count(file)) continue;
    const std::string path = dir + "/" + file;
    if (!fs::exists(path)) throw ModelError(path + ": shard listed by " + index_file + " not found");
    shards[file] = read_safetensors(path);
  }
  TensorMap all;
  for (auto& [file, tensors] : shards)
    for (auto& [tensor, t] : tensors) {
      auto listed = shard_of.find(tensor);
      if (listed == shard_of.end())
        throw ModelError(dir + "/" + file + ": holds tensor '" + tensor + "' that " + index_file + " does not list");
      if (listed->second != file)
        throw ModelError(dir + "/" + file + ": holds tensor '" + tensor + "' that " + index_file + " places in " +
                         listed->second);
      all[tensor] = t;
    }
  for (auto& [tensor, file] : shard_of)
    if (!all.count(tensor))
      throw ModelError(dir + "/" + file + ": lacks tensor '" + tensor + "' that " + index_file + " places there");
  if (source) *source = dir + "/" + (shards.size() == 1 ? shards.begin()->first : "model-*.safetensors");
  return all;
}

std::shared_ptr<Weights> load_weights(const std::string& dir, StoredType stored, const ModelParts& parts) {
  const auto config = load_model_config(dir + "/config.json");
  std::string source;
  const auto tensors = read_checkpoint_tensors(dir, &source);
  return weights_from_tensors(config, tensors, source, stored, parts);
}

int64_t write_quantized_checkpoint(const std::string& dir, const std::string& out) {
  namespace fs = std::filesystem;
  if (fs::exists(out) && fs::equivalent(dir, out)) throw ModelError(out + ": the quantized model needs its own directory");
  if (fs::exists(out) && !fs::is_empty(out))  // stale shards there would be read before the new file
    throw ModelError(out + ": exists and is not empty; the quantized model needs an empty or new directory");
  const auto config = load_model_config(dir + "/config.json");
  std::string source;
  const auto tensors = read_checkpoint_tensors(dir, &source);
  for (auto& [name, t] : tensors)
    if (t.scalar_type() == at::kChar) throw ModelError(source + ": already quantized (tensor '" + name + "' is int8)");
  weights_from_tensors(config, tensors, source, StoredType::keep);  // refuses a broken checkpoint by name
  const auto expected = expected_tensor_shapes(config);
  TensorMap quantized;
  for (auto& [name, t] : tensors) {
    if (is_recomputed_buffer(name)) continue;
    if (t.dim() != 2 || name == embed_name || !expected.count(name)) {
      quantized[name] = t;
      continue;
    }
    const auto f = t.to(at::kFloat).contiguous();
    const int64_t rows = f.size(0), cols = f.size(1);
    auto values = at::empty({rows, cols}, at::kChar);
    auto scales = at::empty({rows, kernels::q8_blocks(cols)}, at::kFloat);
    kernels::quantize_q8(f.data_ptr<float>(), rows, cols, values.data_ptr<int8_t>(), scales.data_ptr<float>());
    quantized[name] = values;
    quantized[name + kBlockScaleSuffix] = scales;
  }
  fs::create_directories(out);
  for (const auto& entry : fs::directory_iterator(dir)) {  // config, tokenizer, chat template: as they are
    const auto file = entry.path().filename().string();
    if (entry.is_regular_file() && file.rfind("model", 0) != 0)
      fs::copy_file(entry.path(), fs::path(out) / file, fs::copy_options::overwrite_existing);
  }
  const std::string file = out + "/model.safetensors";
  write_safetensors(file, quantized, {{"format", "pt"}, {"ce.quantization", "int8 weight matrices, one fp32 scale per 32 values"}});
  return static_cast<int64_t>(fs::file_size(file));
}

std::shared_ptr<Weights> random_weights(const ModelConfig& c, uint64_t seed) {
  c.validate();
  torch::manual_seed(seed);
  TensorMap t;
  for (auto& [name, shape] : expected_tensor_shapes(c)) {
    const bool is_norm = shape.size() == 1 && name.find(".bias") == std::string::npos;
    t[name] = is_norm ? torch::ones(shape) : torch::randn(shape) * 0.02;
  }
  return weights_from_tensors(c, t, "random init");
}

void save_weights(const Weights& w, const std::string& dir, const SaveOptions& options) {
  if (options.shards < 1) throw ModelError(dir + ": shards must be at least 1");
  std::filesystem::create_directories(dir);
  save_model_config(w.config, dir + "/config.json");
  TensorMap out;
  for (auto& [name, t] : w.named_tensors())
    out[name] = t.dim() == 2 || options.all_in_dtype ? t.detach().to(options.dtype) : t.detach().to(at::kFloat);
  const std::map<std::string, std::string> metadata{{"format", "pt"}};
  if (options.shards == 1) {
    write_safetensors(dir + "/model.safetensors", out, metadata);
    return;
  }
  // Shards of about equal bytes, tensors in name order (as transformers' save_pretrained fills them).
  int64_t total = 0;
  for (auto& [name, t] : out) total += static_cast<int64_t>(t.nbytes());
  const int64_t per_shard = (total + options.shards - 1) / options.shards;
  std::vector<TensorMap> shards(static_cast<size_t>(options.shards));
  nlohmann::json weight_map = nlohmann::json::object();
  size_t shard = 0;
  int64_t filled = 0;
  char file[64];
  for (auto& [name, t] : out) {
    if (filled >= per_shard && shard + 1 < shards.size()) {
      ++shard;
      filled = 0;
    }
    shards[shard][name] = t;
    filled += static_cast<int64_t>(t.nbytes());
    std::snprintf(file, sizeof file, "model-%05zu-of-%05d.safetensors", shard + 1, options.shards);
    weight_map[name] = file;
  }
  for (size_t i = 0; i < shards.size(); ++i) {
    std::snprintf(file, sizeof file, "model-%05zu-of-%05d.safetensors", i + 1, options.shards);
    write_safetensors(dir + "/" + file, shards[i], metadata);
  }
  const nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  std::ofstream(dir + "/model.safetensors.index.json") << index.dump(2) << "\n";
}

}  // namespace ce
