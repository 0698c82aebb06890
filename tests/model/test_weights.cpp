// Weights: names and shapes from the config, save/load round trip, and loading errors that name
// the tensor at fault.
#include <boost/test/unit_test.hpp>

#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

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

BOOST_AUTO_TEST_SUITE_END()
