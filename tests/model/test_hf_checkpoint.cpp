// Hugging Face checkpoints as published: synthetic models in the real layouts (config.json fields
// of the Llama family, bf16, shards + index, tied or untied), loaded whole or in a role's parts,
// checked against the plain-loop reference; broken layouts are clear errors.
#include <boost/test/unit_test.hpp>

#include <ATen/ATen.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "model/decoder.hpp"
#include "model/runtime.hpp"
#include "model/text/chat_template.hpp"
#include "model/text/tokenizer.hpp"
#include "tests/model/reference_llama.hpp"
#include "tests/model/tiny_model.hpp"

using namespace ce;
using namespace ce::test;
using nlohmann::json;

namespace {

// Llama 3.2 1B's shape scaled down: GQA 8/2, tied embeddings, llama3 rope scaling with the
// published factors (32, 1, 4, 8192) and theta 500000, eos as a list.
ModelConfig llama32_like() {
  ModelConfig c;
  c.name = "llama-3.2-like";
  c.dim = 64;
  c.n_layers = 4;
  c.n_heads = 8;
  c.n_kv_heads = 2;
  c.ffn_dim = 160;
  c.vocab_size = 300;
  c.max_seq = 256;
  c.rope_theta = 500000.0;
  c.rope_scaling = {RopeScaling::Kind::llama3, 32.0, 1.0, 4.0, 8192};
  c.tie_word_embeddings = true;
  c.bos_id = 280;
  c.eos_id = 281;
  c.more_eos_ids = {288, 289};
  c.exit_layers = {};
  c.default_split = 2;
  return c;
}

// Qwen2's extras: q/k/v biases, no BOS, and a head_dim that is not hidden_size / heads.
ModelConfig qwen2_like() {
  ModelConfig c = llama32_like();
  c.name = "qwen2-like";
  c.model_type = "qwen2";
  c.rope_scaling = {};
  c.head_size = 24;
  c.qkv_bias = true;
  c.bos_id = -1;
  c.more_eos_ids = {};
  c.tie_word_embeddings = false;
  return c;
}

// Writes `c` with random weights as a published checkpoint would be and returns the weights
// written (rounded to the stored type, as the reader will see them).
std::shared_ptr<Weights> write_checkpoint(const ModelConfig& c, const std::string& dir, at::ScalarType dtype,
                                          int shards, uint64_t seed) {
  auto w = scaled_weights(c, seed, 0.12, /*random_norms=*/true, /*head_std=*/0.5);
  save_weights(*w, dir, {dtype, shards, /*all_in_dtype=*/true});
  return load_weights(dir, StoredType::widen_to_fp32);
}

double max_diff(const at::Tensor& t, const Rows& r) {
  auto a = t.to(at::kDouble).contiguous();
  double m = 0;
  for (size_t i = 0; i < r.size(); ++i) {
    const double* p = a[static_cast<int64_t>(i)].data_ptr<double>();
    for (size_t j = 0; j < r[i].size(); ++j) m = std::max(m, std::abs(p[j] - r[i][j]));
  }
  return m;
}

// Final logits at every position of `tokens`, decoder (weights as stored) against the reference.
double reference_gap(const Model& model, const Weights& widened, const std::vector<int64_t>& tokens) {
  const auto& d = model.decoder();
  const auto& c = model.config();
  KvCache kv(c, 0, c.n_layers);
  const auto logits = d.final_logits(d.forward(d.embed(token_tensor(tokens)), 0, 0, c.n_layers, kv));
  ReferenceLlama ref(widened);
  Rows expected;
  for (const auto& h : ref.layers(ref.embed(tokens), 0, c.n_layers)) expected.push_back(ref.final_logits(h));
  return max_diff(logits, expected);
}

json read_json(const std::string& path) { return json::parse(read_file(path)); }
void write_json(const std::string& path, const json& j) { write_file(path, j.dump(2)); }

}  // namespace

BOOST_AUTO_TEST_SUITE(hf_checkpoint)

BOOST_AUTO_TEST_CASE(llama32_like_bf16_shards_match_the_reference) {
  TempDir dir;
  const auto c = llama32_like();
  const auto widened = write_checkpoint(c, dir.path(), at::kBFloat16, 2, 3);
  // The layout as published: two shards and an index that places every tensor, no single file.
  BOOST_TEST(std::filesystem::exists(dir.file("model-00001-of-00002.safetensors")));
  BOOST_TEST(std::filesystem::exists(dir.file("model-00002-of-00002.safetensors")));
  BOOST_TEST(!std::filesystem::exists(dir.file("model.safetensors")));
  const auto index = read_json(dir.file("model.safetensors.index.json"));
  BOOST_TEST(index["weight_map"].size() == expected_tensor_shapes(c).size());
  const auto config = read_json(dir.file("config.json"));
  BOOST_TEST(config["rope_scaling"]["rope_type"] == "llama3");
  BOOST_TEST(config["eos_token_id"] == json({281, 288, 289}));
  BOOST_TEST(!config.contains("early_exit"));  // a plain checkpoint: no exits yet

  const auto model = Model::load(dir.path());
  BOOST_TEST(model->precision() == held_as_stored("bf16"));  // kept as stored, widened inside the kernels
  BOOST_TEST(model->config().is_eos(288));
  BOOST_TEST(model->config().is_eos(281));
  BOOST_TEST(!model->config().is_eos(282));
  const auto tokens = some_tokens(40, c.vocab_size, 9, 0);
  const double gap = reference_gap(*model, *widened, tokens);
  BOOST_TEST_MESSAGE("llama-3.2-like bf16: max |logit - reference| = " << gap);
  BOOST_TEST(gap < 2e-3);

  // The comparison sees the rope scaling: a reference without it is far off.
  auto unscaled = std::make_shared<Weights>(*widened);
  unscaled->config.rope_scaling = {};
  ReferenceLlama plain(*unscaled);
  Rows plain_logits;
  for (const auto& h : plain.layers(plain.embed(tokens), 0, c.n_layers)) plain_logits.push_back(plain.final_logits(h));
  const auto& d = model->decoder();
  KvCache kv(c, 0, c.n_layers);
  const auto logits = d.final_logits(d.forward(d.embed(token_tensor(tokens)), 0, 0, c.n_layers, kv));
  BOOST_TEST(max_diff(logits, plain_logits) > 50 * gap);
}

BOOST_AUTO_TEST_CASE(llama2_like_untied_fp16_with_sentencepiece_and_a_chat_template) {
  // Llama 2's layout: untied lm_head, one fp16 file, a SentencePiece tokenizer.model, the chat
  // template in tokenizer_config.json, no rope scaling.
  TempDir dir;
  ModelConfig c;
  c.name = "llama-2-like";
  c.dim = 64;
  c.n_layers = 3;
  c.n_heads = 4;
  c.n_kv_heads = 4;
  c.ffn_dim = 172;
  c.vocab_size = 2048;
  c.max_seq = 128;
  c.exit_layers = {};
  c.default_split = 1;
  const auto widened = write_checkpoint(c, dir.path(), at::kHalf, 1, 12);
  std::filesystem::copy_file(CE_SOURCE_DIR "/data/brown/tokenizer-2048.model", dir.file("tokenizer.model"));
  write_file(dir.file("tokenizer_config.json"),
             json({{"bos_token", "<s>"}, {"eos_token", "</s>"},
                   {"chat_template", "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"}})
                 .dump());
  BOOST_TEST(std::filesystem::exists(dir.file("model.safetensors")));
  const auto model = Model::load(dir.path());
  BOOST_TEST(model->precision() == held_as_stored("fp16"));
  BOOST_TEST(widened->lm_head.defined());
  BOOST_TEST(!widened->lm_head.is_same(widened->embed));
  BOOST_TEST(model->tokenizer_path() == dir.file("tokenizer.model"));  // no tokenizer.json: the SentencePiece file
  const auto tokenizer = open_tokenizer(dir.path());
  BOOST_TEST(tokenizer->vocab_size() == 2048);
  BOOST_TEST(tokenizer->adds_bos());
  BOOST_TEST(contains(read_chat_template(dir.path()), "[INST]"));
  std::vector<int64_t> tokens;
  for (auto id : encode_prompt(*tokenizer, model->config().bos_id, "The jury said that the city")) tokens.push_back(id);
  BOOST_TEST(tokens.front() == 1);
  BOOST_TEST(reference_gap(*model, *widened, tokens) < 2e-3);
}

BOOST_AUTO_TEST_CASE(llama3_rope_scaling_follows_the_published_formula) {
  // Llama 3.1/3.2's published values, head_dim 64: the frequency bands fall where
  // transformers' _compute_llama3_parameters puts them.
  ModelConfig c;
  c.dim = 2048;
  c.n_heads = 32;
  c.rope_theta = 500000.0;
  c.rope_scaling = {RopeScaling::Kind::llama3, 32.0, 1.0, 4.0, 8192};
  const auto scaled = rope_inverse_frequencies(c);
  c.rope_scaling = {};
  const auto plain = rope_inverse_frequencies(c);
  BOOST_REQUIRE_EQUAL(scaled.size(), 32u);
  int kept = 0, divided = 0, blended = 0;
  for (size_t i = 0; i < plain.size(); ++i) {
    const double wavelen = 2 * M_PI / plain[i];
    if (wavelen < 8192.0 / 4) {
      BOOST_TEST(scaled[i] == plain[i]);
      ++kept;
    } else if (wavelen > 8192.0) {
      BOOST_TEST(std::abs(scaled[i] - plain[i] / 32) < 1e-18 + 1e-12 * plain[i]);
      ++divided;
    } else {
      const double smooth = (8192.0 / wavelen - 1) / (4 - 1);
      BOOST_TEST(std::abs(scaled[i] - ((1 - smooth) * plain[i] / 32 + smooth * plain[i])) < 1e-12 * plain[i]);
      ++blended;
    }
  }
  BOOST_TEST_MESSAGE("llama3 bands: kept " << kept << ", blended " << blended << ", divided " << divided);
  BOOST_TEST(kept > 0);
  BOOST_TEST(blended > 0);
  BOOST_TEST(divided > 0);
  c.rope_scaling = {RopeScaling::Kind::linear, 4.0};
  const auto linear = rope_inverse_frequencies(c);
  for (size_t i = 0; i < plain.size(); ++i) BOOST_TEST(std::abs(linear[i] - plain[i] / 4) < 1e-15);
}

BOOST_AUTO_TEST_CASE(qwen2_like_biases_and_head_dim_match_the_reference) {
  TempDir dir;
  const auto c = qwen2_like();
  const auto widened = write_checkpoint(c, dir.path(), at::kBFloat16, 1, 4);
  const auto config = read_json(dir.file("config.json"));
  BOOST_TEST(config["model_type"] == "qwen2");
  BOOST_TEST(config["bos_token_id"].is_null());
  BOOST_TEST(config["head_dim"] == 24);
  const auto model = Model::load(dir.path());
  BOOST_TEST(model->config().bos_id == -1);
  BOOST_TEST(model->config().q_dim() == 8 * 24);
  BOOST_TEST(widened->layers[0].bq.defined());
  BOOST_TEST(!widened->layers[0].bo.defined());  // Qwen2: no o_proj bias
  const double gap = reference_gap(*model, *widened, some_tokens(30, c.vocab_size, 2, 0));
  BOOST_TEST_MESSAGE("qwen2-like: max |logit - reference| = " << gap);
  BOOST_TEST(gap < 2e-3);
  // The biases matter: zeroing them moves the logits well past the tolerance.
  auto unbiased = std::make_shared<Weights>(*widened);
  for (auto& l : unbiased->layers) {
    l.bq = at::zeros_like(l.bq);
    l.bk = at::zeros_like(l.bk);
    l.bv = at::zeros_like(l.bv);
  }
  BOOST_TEST(reference_gap(*model, *unbiased, some_tokens(30, c.vocab_size, 2, 0)) > 50 * gap);
}

BOOST_AUTO_TEST_CASE(llama_attention_bias_covers_o_proj_and_mlp_bias_the_ffn) {
  TempDir dir;
  auto c = llama32_like();
  c.qkv_bias = c.output_bias = true;  // LlamaConfig attention_bias: true
  c.mlp_bias = true;
  const auto widened = write_checkpoint(c, dir.path(), at::kFloat, 1, 5);
  const auto config = read_json(dir.file("config.json"));
  BOOST_TEST(config["attention_bias"] == true);
  BOOST_TEST(config["mlp_bias"] == true);
  BOOST_TEST(widened->layers[1].bo.defined());
  BOOST_TEST(widened->layers[1].b_down.defined());
  const auto tokens = some_tokens(20, c.vocab_size, 4, 0);
  const auto model = Model::load(dir.path());
  const double gap = reference_gap(*model, *widened, tokens);
  BOOST_TEST(gap < 1e-4);
  // Each bias counts: dropping the FFN's (or the o_proj's) moves the logits past the tolerance.
  for (auto drop : {&LayerWeights::b_gate, &LayerWeights::b_up, &LayerWeights::b_down, &LayerWeights::bo}) {
    auto without = std::make_shared<Weights>(*widened);
    for (auto& l : without->layers) l.*drop = at::zeros_like(l.*drop);
    BOOST_TEST(reference_gap(*model, *without, tokens) > 100 * gap);
  }
}

BOOST_AUTO_TEST_CASE(edge_and_cloud_parts_load_only_their_tensors_and_compose_to_the_full_run) {
  TempDir dir;
  const auto c = llama32_like();
  write_checkpoint(c, dir.path(), at::kBFloat16, 2, 6);
  const int64_t split = 2;
  const auto full = Model::load(dir.path());
  const auto edge = Model::load(dir.path(), WeightPrecision::as_stored, ModelParts::edge(split));
  const auto cloud = Model::load(dir.path(), WeightPrecision::as_stored, ModelParts::cloud(split));
  // One checkpoint, one identity, whichever parts a process holds.
  BOOST_TEST(edge->weights_hash() == full->weights_hash());
  BOOST_TEST(cloud->weights_hash() == full->weights_hash());
  const auto& ew = edge->decoder().weights();
  const auto& cw = cloud->decoder().weights();
  // The loaded tensors of each part (where the decoder holds them as loaded: a conversion hands
  // each one back once copied).
  if (full->precision() == "bf16") {
    BOOST_TEST(ew.layers[0].wq.defined());
    BOOST_TEST(cw.layers[split].wq.defined());
    BOOST_TEST(cw.lm_head.defined());  // tied: the cloud holds the embedding as its head
  }
  BOOST_TEST(!ew.layers[split].wq.defined());
  BOOST_TEST(!ew.final_norm.defined());
  BOOST_TEST(!cw.layers[0].wq.defined());
  BOOST_TEST(edge->weight_bytes() < full->weight_bytes());
  BOOST_TEST(cloud->weight_bytes() < full->weight_bytes());

  const auto tokens = token_tensor(some_tokens(25, c.vocab_size, 8, 0));
  KvCache kv_full(c, 0, c.n_layers), kv_edge(c, 0, split), kv_cloud(c, split, c.n_layers);
  const auto& fd = full->decoder();
  const auto expected = fd.final_logits(fd.forward(fd.embed(tokens), 0, 0, c.n_layers, kv_full));
  const auto at_split = edge->decoder().forward(edge->decoder().embed(tokens), 0, 0, split, kv_edge);
  const auto got = cloud->decoder().final_logits(cloud->decoder().forward(at_split, 0, split, c.n_layers, kv_cloud));
  BOOST_TEST(max_abs_diff(got, expected) == 0.0);  // the same kernels on the same rows: bit for bit

  // What a part lacks is a clear error, not a crash.
  KvCache kv_wrong(c, 0, c.n_layers);
  BOOST_TEST(contains(model_error_text([&] { edge->decoder().forward(edge->decoder().embed(tokens), 0, 0, 3, kv_wrong); }),
                      "layer 2 is not loaded in this process (it holds layers [0, 2))"));
  BOOST_TEST(contains(model_error_text([&] { edge->decoder().final_logits(at_split); }), "did not load the final norm"));
  // Converted (int8 here), the tied cloud's head is the decoder's own copy: the embedding, which it
  // looks nothing up in, goes too (a clone of it had stayed beside the copy).
  const auto int8_cloud = Model::load(dir.path(), WeightPrecision::int8, ModelParts::cloud(split));
  BOOST_TEST(!int8_cloud->decoder().weights().embed.defined());
  BOOST_TEST(!int8_cloud->decoder().weights().lm_head.defined());
  BOOST_TEST(contains(model_error_text([&] { int8_cloud->decoder().embed(tokens); }), "did not load the token embedding"));
  KvCache kv_int8(c, split, c.n_layers);
  const auto int8_logits = int8_cloud->decoder().final_logits(int8_cloud->decoder().forward(at_split, 0, split, c.n_layers, kv_int8));
  BOOST_TEST(int8_logits.size(1) == c.vocab_size);
  BOOST_TEST(max_abs_diff(int8_logits, expected) < 0.5 * max_abs_diff(expected, at::zeros_like(expected)));
  // Untied, the cloud holds no embedding at all (tied, as stored, it holds it as its head).
  TempDir untied;
  write_checkpoint(qwen2_like(), untied.path(), at::kBFloat16, 1, 6);
  const auto untied_cloud = Model::load(untied.path(), WeightPrecision::as_stored, ModelParts::cloud(split));
  BOOST_TEST(!untied_cloud->decoder().weights().embed.defined());
  BOOST_TEST(contains(model_error_text([&] { untied_cloud->decoder().embed(tokens); }), "did not load the token embedding"));
}

BOOST_AUTO_TEST_CASE(broken_shard_layouts_are_clear_errors) {
  const auto c = llama32_like();
  TempDir good;
  write_checkpoint(c, good.path(), at::kBFloat16, 2, 7);
  const auto copy_to = [&](const TempDir& dir) {
    for (const auto& f : std::filesystem::directory_iterator(good.path()))
      std::filesystem::copy_file(f.path(), dir.path() + "/" + f.path().filename().string());
  };
  const std::string shard1 = "model-00001-of-00002.safetensors", shard2 = "model-00002-of-00002.safetensors";
  {  // a shard the index lists is missing
    TempDir dir;
    copy_to(dir);
    std::filesystem::remove(dir.file(shard2));
    BOOST_TEST(contains(model_error_text([&] { load_weights(dir.path()); }), shard2 + ": shard listed by"));
  }
  {  // the index places a tensor in the other shard (a tensor in the wrong shard, or a lying index)
    TempDir dir;
    copy_to(dir);
    auto index = read_json(dir.file("model.safetensors.index.json"));
    index["weight_map"]["model.norm.weight"] = index["weight_map"]["model.norm.weight"] == shard1 ? shard2 : shard1;
    write_json(dir.file("model.safetensors.index.json"), index);
    const auto e = model_error_text([&] { load_weights(dir.path()); });
    BOOST_TEST(contains(e, "holds tensor 'model.norm.weight' that"), e);
    BOOST_TEST(contains(e, "places in"), e);
  }
  {  // the index lists a tensor that no shard has
    TempDir dir;
    copy_to(dir);
    auto index = read_json(dir.file("model.safetensors.index.json"));
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = shard1;
    write_json(dir.file("model.safetensors.index.json"), index);
    BOOST_TEST(contains(model_error_text([&] { load_weights(dir.path()); }),
                        "lacks tensor 'model.layers.9.mlp.up_proj.weight'"));
  }
  {  // a shard holds a tensor the index does not list
    TempDir dir;
    copy_to(dir);
    auto index = read_json(dir.file("model.safetensors.index.json"));
    index["weight_map"].erase("model.norm.weight");
    write_json(dir.file("model.safetensors.index.json"), index);
    BOOST_TEST(contains(model_error_text([&] { load_weights(dir.path()); }), "does not list"));
  }
  {  // an index entry that escapes the directory
    TempDir dir;
    copy_to(dir);
    auto index = read_json(dir.file("model.safetensors.index.json"));
    index["weight_map"]["model.norm.weight"] = "../elsewhere.safetensors";
    write_json(dir.file("model.safetensors.index.json"), index);
    BOOST_TEST(contains(model_error_text([&] { load_weights(dir.path()); }), "not a file in"));
  }
  {  // an index that is not JSON
    TempDir dir;
    copy_to(dir);
    write_file(dir.file("model.safetensors.index.json"), "{\"weight_map\": ");
    BOOST_TEST(contains(model_error_text([&] { load_weights(dir.path()); }), "not valid JSON"));
  }
}

BOOST_AUTO_TEST_CASE(unsupported_configs_are_refused_by_name) {
  TempDir dir;
  write_checkpoint(llama32_like(), dir.path(), at::kFloat, 1, 8);
  const auto base = read_json(dir.file("config.json"));
  const auto refused = [&](const std::function<void(json&)>& edit, const std::string& expected) {
    json j = base;
    edit(j);
    write_json(dir.file("config.json"), j);
    const auto e = model_error_text([&] { load_model_config(dir.file("config.json")); });
    BOOST_TEST(contains(e, expected), e);
  };
  refused([](json& j) { j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}}; }, "rope_scaling type 'yarn' is not supported");
  refused([](json& j) { j["model_type"] = "gemma"; }, "model_type 'gemma' is not supported");
  refused([](json& j) { j["architectures"] = {"MistralForCausalLM"}; }, "model_type 'llama' needs LlamaForCausalLM");
  refused([](json& j) { j["hidden_act"] = "gelu"; }, "hidden_act \"gelu\" is not supported");
  refused([](json& j) { j["quantization_config"] = {{"quant_method", "awq"}}; }, "'quantization_config' is not supported");
  refused([](json& j) { j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}}; }, "missing field 'low_freq_factor'");
  refused([](json& j) { j["eos_token_id"] = json::array(); }, "'eos_token_id' is an empty list");
  refused([](json& j) { j["eos_token_id"] = {281, 5000}; }, "eos_token_id outside the vocabulary");
  // Mistral's sliding window: contexts are capped at it, where full attention is exact.
  json mistral = base;
  mistral["model_type"] = "mistral";
  mistral["architectures"] = {"MistralForCausalLM"};
  mistral["sliding_window"] = 128;
  write_json(dir.file("config.json"), mistral);
  BOOST_TEST(load_model_config(dir.file("config.json")).max_seq == 128);
}

BOOST_AUTO_TEST_SUITE_END()
