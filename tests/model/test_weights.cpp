// Weights: names and shapes from the config, save/load round trip, and loading errors that name
// the tensor at fault.
#include <boost/test/unit_test.hpp>

#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include "model/early_exit_runner.hpp"
#include "model/runtime.hpp"
#include "model/safetensors.hpp"
#include "model/weights.hpp"
#include "tests/model/tiny_model.hpp"

using namespace ce;
using namespace ce::test;

namespace {

TensorMap good_tensors(const ModelConfig& c) {
  TensorMap t;
  at::manual_seed(3);
  for (auto& [name, shape] : expected_tensor_shapes(c)) t[name] = at::randn(shape) * 0.02;
  return t;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(weights)

BOOST_AUTO_TEST_CASE(expected_shapes_follow_hugging_face_names_and_gqa) {
  const auto c = tiny_config(2);  // dim 32, 4 heads of 8, 2 kv heads: k/v project to 16
  const auto s = expected_tensor_shapes(c);
  using V = std::vector<int64_t>;
  BOOST_TEST(s.at("model.embed_tokens.weight") == (V{96, 32}));
  BOOST_TEST(s.at("model.layers.0.self_attn.q_proj.weight") == (V{32, 32}));
  BOOST_TEST(s.at("model.layers.3.self_attn.k_proj.weight") == (V{16, 32}));
  BOOST_TEST(s.at("model.layers.3.self_attn.v_proj.weight") == (V{16, 32}));
  BOOST_TEST(s.at("model.layers.1.self_attn.o_proj.weight") == (V{32, 32}));
  BOOST_TEST(s.at("model.layers.1.mlp.gate_proj.weight") == (V{64, 32}));
  BOOST_TEST(s.at("model.layers.1.mlp.up_proj.weight") == (V{64, 32}));
  BOOST_TEST(s.at("model.layers.1.mlp.down_proj.weight") == (V{32, 64}));
  BOOST_TEST(s.at("model.layers.2.input_layernorm.weight") == (V{32}));
  BOOST_TEST(s.at("model.layers.2.post_attention_layernorm.weight") == (V{32}));
  BOOST_TEST(s.at("model.norm.weight") == (V{32}));
  BOOST_TEST(s.at("lm_head.weight") == (V{96, 32}));
  BOOST_TEST(s.at("exits.2.norm.weight") == (V{32}));
  BOOST_TEST(s.at("exits.2.head.weight") == (V{96, 32}));
  // 1 embedding + 9 per layer + final norm + lm_head + 2 per exit.
  BOOST_TEST(s.size() == 1u + 9 * 4 + 2 + 2 * 3);
  BOOST_TEST(!s.count("model.layers.4.input_layernorm.weight"));

  auto tied = c;
  tied.tie_word_embeddings = true;
  tied.tie_exit_heads = true;
  const auto st = expected_tensor_shapes(tied);
  BOOST_TEST(!st.count("lm_head.weight"));
  BOOST_TEST(!st.count("exits.1.head.weight"));
  BOOST_TEST(st.count("exits.1.norm.weight"));

  BOOST_TEST(Weights::is_exit_tensor("exits.1.head.weight"));
  BOOST_TEST(!Weights::is_exit_tensor("model.layers.1.mlp.up_proj.weight"));
  BOOST_TEST(!Weights::is_exit_tensor("lm_head.weight"));
}

BOOST_AUTO_TEST_CASE(from_tensors_places_every_tensor) {
  const auto c = tiny_config(2);
  const auto t = good_tensors(c);
  auto w = weights_from_tensors(c, t, "test");
  BOOST_TEST(at::equal(w->embed, t.at("model.embed_tokens.weight")));
  BOOST_TEST(at::equal(w->layers[2].wk, t.at("model.layers.2.self_attn.k_proj.weight")));
  BOOST_TEST(at::equal(w->layers[3].w_down, t.at("model.layers.3.mlp.down_proj.weight")));
  BOOST_TEST(at::equal(w->layers[1].ffn_norm, t.at("model.layers.1.post_attention_layernorm.weight")));
  BOOST_TEST(at::equal(w->exits.at(3).head, t.at("exits.3.head.weight")));
  BOOST_TEST(at::equal(w->lm_head, t.at("lm_head.weight")));
  // named_tensors gives back exactly the file's names and values.
  const auto named = w->named_tensors();
  BOOST_TEST(named.size() == t.size());
  for (auto& [name, tensor] : t) BOOST_TEST(at::equal(named.at(name), tensor), name);
  BOOST_TEST(w->hash == weights_digest(t));
  BOOST_TEST(w->hash.size() == 16u);
}

// Every Hugging Face name lands in its own decoder slot. q/o and gate/up have equal shapes, so
// a swap in the loader's table would survive shape checks and a save/load round trip; this table
// is written out here, independently of the loader's, and checked on the file itself.
BOOST_AUTO_TEST_CASE(every_hugging_face_name_is_pinned_to_its_decoder_slot) {
  auto c = tiny_config(2);
  c.tie_word_embeddings = false;
  c.tie_exit_heads = false;
  TempDir dir;
  save_weights(*weights_from_tensors(c, good_tensors(c), "test"), dir.path(), {at::kFloat});  // norms random too
  const auto file = read_safetensors(dir.file("model.safetensors"));
  auto w = load_weights(dir.path());
  using Slot = at::Tensor LayerWeights::*;
  const std::vector<std::pair<std::string, Slot>> layer_slots = {
      {"input_layernorm.weight", &LayerWeights::attn_norm}, {"self_attn.q_proj.weight", &LayerWeights::wq},
      {"self_attn.k_proj.weight", &LayerWeights::wk},        {"self_attn.v_proj.weight", &LayerWeights::wv},
      {"self_attn.o_proj.weight", &LayerWeights::wo},        {"post_attention_layernorm.weight", &LayerWeights::ffn_norm},
      {"mlp.gate_proj.weight", &LayerWeights::w_gate},       {"mlp.up_proj.weight", &LayerWeights::w_up},
      {"mlp.down_proj.weight", &LayerWeights::w_down}};
  size_t pinned = 0;
  for (int64_t i = 0; i < c.n_layers; ++i)
    for (auto& [leaf, slot] : layer_slots) {
      const std::string name = "model.layers." + std::to_string(i) + "." + leaf;
      const auto& in_slot = w->layers[static_cast<size_t>(i)].*slot;
      BOOST_TEST(at::equal(in_slot, file.at(name)), name);
      // ... and in no other slot of the layer (the random values differ between tensors).
      for (auto& [other_leaf, other_slot] : layer_slots)
        if (other_slot != slot && (w->layers[static_cast<size_t>(i)].*other_slot).sizes() == in_slot.sizes())
          BOOST_TEST(!at::equal(w->layers[static_cast<size_t>(i)].*other_slot, file.at(name)), name << " vs " << other_leaf);
      ++pinned;
    }
  BOOST_TEST(at::equal(w->embed, file.at("model.embed_tokens.weight")));
  BOOST_TEST(at::equal(w->final_norm, file.at("model.norm.weight")));
  BOOST_TEST(at::equal(w->lm_head, file.at("lm_head.weight")));
  BOOST_TEST(!at::equal(w->lm_head, w->embed));
  for (auto e : c.exit_layers) {
    BOOST_TEST(at::equal(w->exits.at(e).norm, file.at("exits." + std::to_string(e) + ".norm.weight")));
    BOOST_TEST(at::equal(w->exits.at(e).head, file.at("exits." + std::to_string(e) + ".head.weight")));
    pinned += 2;
  }
  BOOST_TEST(pinned + 3 == file.size());  // every tensor in the file was checked
}

BOOST_AUTO_TEST_CASE(missing_extra_and_misshaped_tensors_are_named) {
  const auto c = tiny_config(2);
  {
    auto t = good_tensors(c);
    t.erase("model.layers.2.mlp.up_proj.weight");
    const auto e = model_error_text([&] { weights_from_tensors(c, t, "source-x"); });
    BOOST_TEST(contains(e, "model.layers.2.mlp.up_proj.weight"), e);
    BOOST_TEST(contains(e, "source-x"), e);
  }
  {
    auto t = good_tensors(c);
    t["model.layers.9.mlp.up_proj.weight"] = at::zeros({64, 32});
    const auto e = model_error_text([&] { weights_from_tensors(c, t, "source-x"); });
    BOOST_TEST(contains(e, "model.layers.9.mlp.up_proj.weight"), e);
  }
  {
    auto t = good_tensors(c);
    t["model.layers.1.self_attn.k_proj.weight"] = at::zeros({32, 32});  // MHA shape for a GQA config
    const auto e = model_error_text([&] { weights_from_tensors(c, t, "source-x"); });
    BOOST_TEST(contains(e, "model.layers.1.self_attn.k_proj.weight"), e);
  }
  {
    auto t = good_tensors(c);
    t["exits.2.head.weight"] = at::zeros({32, 96});  // transposed
    const auto e = model_error_text([&] { weights_from_tensors(c, t, "source-x"); });
    BOOST_TEST(contains(e, "exits.2.head.weight"), e);
  }
  {
    auto t = good_tensors(c);
    t["model.norm.weight"] = at::zeros({32}, at::kDouble);
    const auto e = model_error_text([&] { weights_from_tensors(c, t, "source-x"); });
    BOOST_TEST(contains(e, "model.norm.weight"), e);
  }
}

BOOST_AUTO_TEST_CASE(non_finite_values_are_rejected) {
  const auto c = tiny_config(2);
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    auto t = good_tensors(c);
    t["model.layers.0.mlp.gate_proj.weight"] = t["model.layers.0.mlp.gate_proj.weight"].clone();
    t["model.layers.0.mlp.gate_proj.weight"][3][5] = bad;
    const auto e = model_error_text([&] { weights_from_tensors(c, t, "source-x"); });
    BOOST_TEST(contains(e, "model.layers.0.mlp.gate_proj.weight"), e);
  }
}

BOOST_AUTO_TEST_CASE(save_and_load_round_trip) {
  const auto c = tiny_config(2);
  auto w = random_weights(c, 9);
  TempDir dir;
  save_weights(*w, dir.path());
  BOOST_TEST(std::filesystem::exists(dir.file("config.json")));
  // Stored as fp16 by default.
  auto stored = read_safetensors(dir.file("model.safetensors"));
  BOOST_TEST(stored.at("model.embed_tokens.weight").scalar_type() == at::kHalf);
  auto back = load_weights(dir.path());
  BOOST_TEST(back->config.exit_layers == c.exit_layers);
  BOOST_TEST(back->config.n_kv_heads == c.n_kv_heads);
  BOOST_TEST(back->embed.scalar_type() == at::kFloat);  // loaded as fp32
  for (auto& [name, t] : w->named_tensors())
    BOOST_TEST(at::equal(back->named_tensors().at(name), t.to(at::kHalf).to(at::kFloat)), name);
  // The digest rounds to fp16, so the fp32 original and its fp16 export share a hash.
  BOOST_TEST(back->hash == w->hash);
  auto model = Model::load(dir.path());
  BOOST_TEST(model->weights_hash() == w->hash);
  BOOST_TEST(model->dir() == dir.path());
  BOOST_TEST(model->tokenizer_path() == dir.path() + "/tokenizer.model");
  BOOST_TEST(model->config().dim == c.dim);

  TempDir exact;
  save_weights(*w, exact.path(), {at::kFloat});
  auto back32 = load_weights(exact.path());
  for (auto& [name, t] : w->named_tensors()) BOOST_TEST(at::equal(back32->named_tensors().at(name), t), name);

  // A different model has a different hash.
  BOOST_TEST(random_weights(c, 10)->hash != w->hash);
}

BOOST_AUTO_TEST_CASE(tied_tensors_are_stored_once_and_alias) {
  auto c = tiny_config(2);
  c.tie_word_embeddings = true;
  c.tie_exit_heads = true;
  auto w = random_weights(c, 2);
  BOOST_TEST(w->lm_head.is_same(w->embed));
  BOOST_TEST(w->exits.at(1).head.is_same(w->lm_head));
  TempDir dir;
  save_weights(*w, dir.path());
  auto stored = read_safetensors(dir.file("model.safetensors"));
  BOOST_TEST(!stored.count("lm_head.weight"));
  BOOST_TEST(!stored.count("exits.1.head.weight"));
  auto back = load_weights(dir.path());
  BOOST_TEST(back->lm_head.is_same(back->embed));
  BOOST_TEST(back->exits.at(2).head.is_same(back->embed));
}

// A Hugging Face LlamaForCausalLM checkpoint (no "early_exit" in config.json, no exit tensors)
// loads unchanged.
BOOST_AUTO_TEST_CASE(plain_hugging_face_checkpoint_loads) {
  TempDir dir;
  write_file(dir.file("config.json"), R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 32,
    "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_hidden_layers": 2, "vocab_size": 50, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
    "max_position_embeddings": 64, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "bos_token_id": 1, "eos_token_id": 2})");
  auto c = load_model_config(dir.file("config.json"));
  BOOST_TEST(c.exit_layers.empty());
  TensorMap t;
  for (auto& [name, shape] : expected_tensor_shapes(c)) t[name] = (at::randn(shape) * 0.02).to(at::kBFloat16);
  BOOST_TEST(t.size() == 1u + 9 * 2 + 2);
  write_safetensors(dir.file("model.safetensors"), t, {{"format", "pt"}});
  auto w = load_weights(dir.path());
  BOOST_TEST(w->exits.empty());
  BOOST_TEST(w->layers.size() == 2u);
  BOOST_TEST(at::equal(w->layers[1].wv, t.at("model.layers.1.self_attn.v_proj.weight").to(at::kFloat)));
}

BOOST_AUTO_TEST_CASE(load_errors_name_the_file_and_tensor) {
  const auto c = tiny_config(2);
  TempDir dir;
  save_weights(*random_weights(c, 1), dir.path());
  const auto file = dir.file("model.safetensors");
  // An exit head missing from the file: error names the file and the tensor.
  auto t = read_safetensors(file);
  t.erase("exits.3.norm.weight");
  write_safetensors(file, t);
  auto e = model_error_text([&] { load_weights(dir.path()); });
  BOOST_TEST(contains(e, file), e);
  BOOST_TEST(contains(e, "exits.3.norm.weight"), e);
  // No weights file at all.
  std::filesystem::remove(file);
  e = model_error_text([&] { load_weights(dir.path()); });
  BOOST_TEST(contains(e, file), e);
  // No config.
  std::filesystem::remove(dir.file("config.json"));
  e = model_error_text([&] { load_weights(dir.path()); });
  BOOST_TEST(contains(e, dir.file("config.json")), e);
}

namespace {

// The quantizer written out from its definition: per block of 32 values of a row, scale =
// max |value| / 127 and q = value / scale rounded to nearest, ties to even (0 for a zero block).
void reference_q8(const at::Tensor& matrix, std::vector<int8_t>& q, std::vector<float>& scales) {
  const auto f = matrix.to(at::kFloat).contiguous();
  const int64_t rows = f.size(0), cols = f.size(1), blocks = (cols + 31) / 32;
  const float* v = f.data_ptr<float>();
  q.assign(static_cast<size_t>(rows * cols), 0);
  scales.assign(static_cast<size_t>(rows * blocks), 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < blocks; ++b) {
      float top = 0;
      for (int64_t k = b * 32; k < std::min(cols, b * 32 + 32); ++k) top = std::max(top, std::fabs(v[r * cols + k]));
      const float scale = top / 127.0f;
      scales[static_cast<size_t>(r * blocks + b)] = scale;
      for (int64_t k = b * 32; k < std::min(cols, b * 32 + 32); ++k)
        q[static_cast<size_t>(r * cols + k)] =
            static_cast<int8_t>(scale > 0 ? std::nearbyint(v[r * cols + k] * (1.0f / scale)) : 0.0f);
    }
}

// The final layer's choices after each of `steps` greedy tokens from a short prompt.
std::vector<std::pair<int32_t, float>> greedy_run(const std::shared_ptr<const Model>& model, int steps) {
  EarlyExitRunner runner(model, model->config().n_layers);
  ExitRule rule;
  rule.threshold = ExitRule::never_exit;
  std::vector<std::pair<int32_t, float>> out;
  std::vector<int32_t> feed{1, 17, 42, 5};
  for (int i = 0; i < steps; ++i) {
    const auto o = runner.advance(feed, rule);
    out.emplace_back(o.token, o.confidence);
    feed = {o.token};
  }
  return out;
}

}  // namespace

// ce-model --quantize-out: every weight matrix but the embedding stored as int8 with one fp32
// scale per 32 values (the quantizer's definition, checked value by value), loaded as int8
// without converting, and decoding exactly as the fp16 file quantized at load does; widened, it
// gives value * scale.
BOOST_AUTO_TEST_CASE(a_quantized_checkpoint_holds_the_int8_matrices_and_decodes_as_int8_at_load) {
  const auto c = tiny_config(2);
  TempDir source, quantized;
  save_weights(*scaled_weights(c, 5, 0.1, true, 1.0), source.path());
  const auto bytes = write_quantized_checkpoint(source.path(), quantized.path());
  BOOST_TEST(std::filesystem::exists(quantized.file("config.json")));
  BOOST_TEST(bytes == static_cast<int64_t>(std::filesystem::file_size(quantized.file("model.safetensors"))));
  const auto original = read_safetensors(source.file("model.safetensors"));
  const auto stored = read_safetensors(quantized.file("model.safetensors"));
  BOOST_TEST((stored.at("model.embed_tokens.weight").scalar_type() == at::kHalf));  // a lookup: as it was
  BOOST_TEST((stored.at("model.norm.weight").scalar_type() == original.at("model.norm.weight").scalar_type()));
  int matrices = 0;
  for (auto& [name, t] : original) {
    if (t.dim() != 2 || name == "model.embed_tokens.weight") continue;
    ++matrices;
    const auto& values = stored.at(name);
    const auto& scales = stored.at(name + kBlockScaleSuffix);
    BOOST_TEST_REQUIRE((values.scalar_type() == at::kChar && scales.scalar_type() == at::kFloat), name);
    std::vector<int8_t> want_q;
    std::vector<float> want_s;
    reference_q8(t, want_q, want_s);
    BOOST_TEST(std::memcmp(values.data_ptr(), want_q.data(), want_q.size()) == 0, name);
    BOOST_TEST(std::memcmp(scales.data_ptr(), want_s.data(), want_s.size() * 4) == 0, name);
  }
  BOOST_TEST(matrices == 4 * 7 + 1 + 3);  // layers, lm_head, exit heads

  const auto as_int8 = Model::load(quantized.path());
  BOOST_TEST(as_int8->precision() == "int8");
  BOOST_TEST(as_int8->weight_bytes() < Model::load(source.path())->weight_bytes() * 6 / 10);  // fp16: 2 bytes a value
  const auto at_load = Model::load(source.path(), WeightPrecision::int8);
  BOOST_TEST(as_int8->weight_bytes() == at_load->weight_bytes());
  BOOST_TEST(greedy_run(as_int8, 12) == greedy_run(at_load, 12));  // the same bits through the same kernels

  const auto widened = load_weights(quantized.path());
  const auto& q = stored.at("model.layers.2.mlp.down_proj.weight");
  const auto& s = stored.at("model.layers.2.mlp.down_proj.weight_scale");
  for (int64_t r = 0; r < q.size(0); ++r)
    for (int64_t k = 0; k < q.size(1); ++k) {
      const float want = static_cast<float>(q[r][k].item<int8_t>()) * s[r][k / 32].item<float>();
      BOOST_TEST_REQUIRE(widened->layers[2].w_down[r][k].item<float>() == want, r << "," << k);
    }
  BOOST_TEST(Model::load(quantized.path(), WeightPrecision::fp32)->precision() == "fp32");
  const auto error = model_error_text([&] { write_quantized_checkpoint(quantized.path(), source.path() + "-again"); });
  BOOST_TEST(contains(error, "already quantized"), error);
  const auto occupied = model_error_text([&] { write_quantized_checkpoint(source.path(), quantized.path()); });
  BOOST_TEST(contains(occupied, "not empty"), occupied);
}

// A quantized file whose scales are missing, misshaped, negative or NaN, a scale beside a matrix
// that is not int8, an int8 norm, or a truncated file: each refused naming the file and tensor.
BOOST_AUTO_TEST_CASE(a_malformed_quantized_checkpoint_is_refused_by_name) {
  const auto c = tiny_config(2);
  TempDir source, quantized;
  save_weights(*random_weights(c, 6), source.path());
  write_quantized_checkpoint(source.path(), quantized.path());
  const auto file = quantized.file("model.safetensors");
  const auto good = read_safetensors(file);
  const std::string matrix = "model.layers.1.self_attn.q_proj.weight", scale = matrix + kBlockScaleSuffix;
  const auto refused = [&](TensorMap t, std::vector<std::string> parts) {
    write_safetensors(file, t);
    const auto e = model_error_text([&] { Model::load(quantized.path()); });
    BOOST_TEST(contains(e, file), e);
    for (const auto& p : parts) BOOST_TEST(contains(e, p), e);
  };
  auto t = good;
  t.erase(scale);
  refused(t, {matrix, scale, "missing"});
  t = good;
  t[scale] = at::ones({32, 2});
  refused(t, {scale, "(32,1)"});
  t = good;
  t[scale] = good.at(scale).clone();
  t[scale][3][0] = -1.0f;
  refused(t, {scale, "negative"});
  t[scale][3][0] = std::numeric_limits<float>::quiet_NaN();
  refused(t, {scale, "NaN"});
  t = good;
  t["model.layers.1.self_attn.k_proj.weight"] = at::zeros({16, 32}, at::kHalf);  // its scale stays
  refused(t, {"model.layers.1.self_attn.k_proj.weight_scale", "not an int8 matrix"});
  t = good;
  t["model.norm.weight"] = at::ones({32}, at::kChar);
  refused(t, {"model.norm.weight", "int8"});
  write_safetensors(file, good);
  std::filesystem::resize_file(file, std::filesystem::file_size(file) - 7);
  const auto e = model_error_text([&] { Model::load(quantized.path()); });
  BOOST_TEST(contains(e, file), e);
}

BOOST_AUTO_TEST_SUITE_END()
