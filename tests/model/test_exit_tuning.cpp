// Exits added to a published checkpoint (ce-train --add-exits): the output loads with every split
// of its exits, keeps the backbone byte for byte and every config.json field, starts each exit as
// the final head applied at its layer, and EE-Tuning lowers the exits' loss on held-out text
// without touching the backbone. Refusals name the flag at fault.
#include <boost/test/unit_test.hpp>

#include <ATen/ATen.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "model/decoder.hpp"
#include "model/evaluation.hpp"
#include "model/exit_tuning.hpp"
#include "model/safetensors.hpp"
#include "model/split_plan.hpp"
#include "model/text/tokenizer.hpp"
#include "tests/model/tiny_model.hpp"

using namespace ce;
using namespace ce::test;
using nlohmann::ordered_json;

namespace {

const std::string kBrown = std::string(CE_SOURCE_DIR) + "/data/brown/";

// A Llama-3.2-like checkpoint at toy size (GQA 4/2, llama3 rope scaling, eos list) with the shipped
// 2048-piece tokenizer's vocabulary: as published, without exits.
ModelConfig plain_config(bool tie_word_embeddings) {
  ModelConfig c;
  c.name = "plain-llama";
  c.dim = 64;
  c.n_layers = 6;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_dim = 128;
  c.vocab_size = 2048;
  c.max_seq = 128;
  c.rope_theta = 500000.0;
  c.rope_scaling = {RopeScaling::Kind::llama3, 32.0, 1.0, 4.0, 8192};
  c.tie_word_embeddings = tie_word_embeddings;
  c.bos_id = 1;
  c.eos_id = 2;
  c.more_eos_ids = {3};
  c.exit_layers = {};
  c.default_split = 3;
  return c;
}

// Writes the checkpoint into `dir` as a Hugging Face directory: weights all in `dtype` in `shards`
// files, config.json with fields this project does not read (first among them one out of
// alphabetical order, so a rewrite that sorts keys shows), the tokenizer and a generation config.
void write_source(const std::string& dir, const ModelConfig& c, at::ScalarType dtype, int shards,
                  uint64_t seed) {
  auto w = scaled_weights(c, seed, 0.12, /*random_norms=*/true, /*head_std=*/0.5);
  save_weights(*w, dir, {dtype, shards, /*all_in_dtype=*/true});
  const auto saved = ordered_json::parse(read_file(dir + "/config.json"));
  ordered_json j;
  j["zz_research_field"] = {{"nested", {1, 2, 3}}, {"note", "kept as is"}};
  for (auto& [key, value] : saved.items()) j[key] = value;
  j["torch_dtype"] = dtype == at::kBFloat16 ? "bfloat16" : "float16";
  j["transformers_version"] = "4.45.0";
  j["pad_token_id"] = nullptr;
  write_file(dir + "/config.json", j.dump(2));
  std::filesystem::copy_file(kBrown + "tokenizer-2048.model", dir + "/tokenizer.model");
  write_file(dir + "/generation_config.json",
             R"({"bos_token_id": 1, "eos_token_id": [2, 3], "do_sample": false})");
}

std::vector<int32_t> tokens_of(const std::string& dir, const std::string& text_file, size_t characters) {
  const auto tokenizer = open_tokenizer(dir);
  return tokenizer->encode(read_file(text_file).substr(0, characters));
}

AddExitsOptions untuned(const std::string& from, const std::string& out, std::vector<int64_t> exits,
                        bool own_heads = false) {
  AddExitsOptions o;
  o.from = from;
  o.out = out;
  o.exits.exit_layers = std::move(exits);
  o.exits.own_heads = own_heads;
  o.tuning.steps = 0;
  return o;
}

// Every tensor of `from` is in `to` with the same type, shape and bytes.
void check_backbone_identical(const std::string& from, const std::string& to) {
  const auto source = read_checkpoint_tensors(from), output = read_checkpoint_tensors(to);
  for (const auto& [name, t] : source) {
    BOOST_TEST_CONTEXT(name) {
      BOOST_REQUIRE(output.count(name) == 1u);
      const auto& o = output.at(name);
      BOOST_TEST(o.scalar_type() == t.scalar_type());
      BOOST_TEST(o.sizes() == t.sizes());
      BOOST_TEST(at::equal(o, t));
    }
  }
}

// An exit's logits against the final norm and head applied at the same layer, over a short text.
double exit_gap_to_final_head(const Model& model, int64_t exit_layer, const std::vector<int32_t>& text) {
  const auto& d = model.decoder();
  const auto& c = model.config();
  std::vector<int64_t> ids{c.bos_id};
  ids.insert(ids.end(), text.begin(), text.begin() + 40);
  KvCache kv(c, 0, exit_layer);
  const auto h = d.forward(d.embed(token_tensor(ids)), 0, 0, exit_layer, kv);  // (T, dim)
  return max_abs_diff(d.exit_logits(exit_layer, h), d.final_logits(h));
}

// Mean cross-entropy (nats) of each exit on `tokens`, BOS first, as ce-eval measures it.
std::vector<double> exit_nats(const std::string& dir, const std::vector<int32_t>& tokens) {
  const auto model = Model::load(dir);
  std::vector<int32_t> stream{static_cast<int32_t>(model->config().bos_id)};
  stream.insert(stream.end(), tokens.begin(), tokens.end());
  EvalOptions options;
  options.window = 64;
  options.thresholds = {0.8};
  const auto report = evaluate(*model, stream, options);
  std::vector<double> nats;
  for (size_t k = 0; k < model->config().exit_layers.size(); ++k)
    nats.push_back(report.heads[k].nats_per_token);
  return nats;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(exit_tuning)

BOOST_AUTO_TEST_CASE(tied_exits_keep_the_backbone_and_the_config_and_start_as_the_final_head) {
  TempDir src, out;
  write_source(src.path(), plain_config(/*tie_word_embeddings=*/true), at::kBFloat16, 2, 11);
  const auto result = add_exits(untuned(src.path(), out.path(), {2, 4}));

  BOOST_TEST(result.steps_done == 0);
  BOOST_TEST(result.config.exit_layers == (std::vector<int64_t>{2, 4}));
  BOOST_TEST(result.config.tie_exit_heads);
  BOOST_TEST(result.config.default_split == 4);  // the last exit
  BOOST_TEST(result.config.default_threshold == 0.8);

  // config.json: the source's fields, values and order, plus the early_exit section.
  auto written = ordered_json::parse(read_file(out.file("config.json")));
  const auto section = written["early_exit"];
  BOOST_TEST(section.dump() ==
             R"({"exit_layers":[2,4],"tie_exit_heads":true,"default_threshold":0.8,"default_split":4})");
  written.erase("early_exit");
  BOOST_TEST(written == ordered_json::parse(read_file(src.file("config.json"))));
  BOOST_TEST(written.begin().key() == "zz_research_field");

  // Weights: every source tensor byte for byte, plus one bf16 norm per exit; tied heads add none.
  check_backbone_identical(src.path(), out.path());
  const auto output = read_checkpoint_tensors(out.path());
  BOOST_TEST(output.size() == read_checkpoint_tensors(src.path()).size() + 2);
  for (const char* name : {"exits.2.norm.weight", "exits.4.norm.weight"}) {
    BOOST_REQUIRE(output.count(name) == 1u);
    BOOST_TEST(output.at(name).scalar_type() == at::kBFloat16);
    BOOST_TEST(at::equal(output.at(name), output.at("model.norm.weight")));
  }
  for (const auto& [name, t] : output) BOOST_TEST(!contains(name, "head.weight"), name);
  BOOST_TEST(read_file(out.file("tokenizer.model")) == read_file(src.file("tokenizer.model")));
  BOOST_TEST(read_file(out.file("generation_config.json")) == read_file(src.file("generation_config.json")));

  // The model loads, every exit is a valid split, and each exit is the final head at its layer.
  const auto model = Model::load(out.path());
  BOOST_TEST(model->precision() == held_as_stored("bf16"));
  for (int64_t split : {2, 4}) BOOST_CHECK_NO_THROW(SplitPlan::from_config(model->config(), split));
  BOOST_TEST(SplitPlan::from_config(model->config(), 4).edge_exits == (std::vector<int64_t>{2, 4}));
  const auto text = tokens_of(src.path(), kBrown + "test.txt", 400);
  for (int64_t layer : {2, 4}) BOOST_TEST(exit_gap_to_final_head(*model, layer, text) == 0.0);
}

BOOST_AUTO_TEST_CASE(own_heads_are_copies_of_lm_head_in_its_type) {
  TempDir src, out;
  write_source(src.path(), plain_config(/*tie_word_embeddings=*/false), at::kHalf, 1, 12);
  const auto result = add_exits(untuned(src.path(), out.path(), {1, 3, 5}, /*own_heads=*/true));
  BOOST_TEST(!result.config.tie_exit_heads);
  BOOST_TEST(result.config.default_split == 5);

  check_backbone_identical(src.path(), out.path());
  const auto output = read_checkpoint_tensors(out.path());
  for (int64_t layer : {1, 3, 5}) {
    const std::string head = "exits." + std::to_string(layer) + ".head.weight";
    BOOST_REQUIRE(output.count(head) == 1u);
    BOOST_TEST(output.at(head).scalar_type() == at::kHalf);
    BOOST_TEST(at::equal(output.at(head), output.at("lm_head.weight")));
  }
  const auto model = Model::load(out.path());
  const auto text = tokens_of(src.path(), kBrown + "test.txt", 400);
  for (int64_t layer : {1, 3, 5}) {
    BOOST_CHECK_NO_THROW(SplitPlan::from_config(model->config(), layer));
    BOOST_TEST(exit_gap_to_final_head(*model, layer, text) == 0.0);
  }
}

BOOST_AUTO_TEST_CASE(tuning_lowers_the_held_out_loss_of_every_exit_and_keeps_the_backbone) {
  TempDir src, before, after, after_own;
  write_source(src.path(), plain_config(/*tie_word_embeddings=*/false), at::kBFloat16, 2, 13);
  const auto train = tokens_of(src.path(), kBrown + "valid.txt", 40000);
  const auto held_out = tokens_of(src.path(), kBrown + "test.txt", 8000);
  add_exits(untuned(src.path(), before.path(), {2, 4}));

  auto tuned = untuned(src.path(), after.path(), {2, 4});
  tuned.tuning.steps = 40;
  tuned.tuning.batch = 4;
  tuned.tuning.seq_len = 64;
  tuned.tuning.lr = 0.02;
  tuned.tuning.train_tokens = train;
  tuned.tuning.valid_tokens = held_out;
  int64_t step_reports = 0;
  const auto result = add_exits(tuned, [&](const ExitTuningProgress& p) {
    if (p.kind != ExitTuningProgress::Kind::step) return;
    ++step_reports;
    BOOST_TEST(p.losses.size() == 2u);
    BOOST_TEST(p.tokens_per_second > 0);
  });
  BOOST_TEST(result.steps_done == 40);
  BOOST_TEST(step_reports == 40);
  BOOST_REQUIRE(result.held_out_before.size() == 2u);
  BOOST_REQUIRE(result.held_out_after.size() == 2u);

  check_backbone_identical(src.path(), after.path());
  const auto untuned_nats = exit_nats(before.path(), held_out),
             tuned_nats = exit_nats(after.path(), held_out);
  for (size_t k = 0; k < 2; ++k) {
    BOOST_TEST_MESSAGE("exit " << k << ": held-out nats/token " << untuned_nats[k] << " untuned, "
                               << tuned_nats[k] << " tuned (tuner's own measure " << result.held_out_before[k]
                               << " -> " << result.held_out_after[k] << ")");
    BOOST_TEST(tuned_nats[k] < 0.95 * untuned_nats[k]);
    BOOST_TEST(result.held_out_after[k] < result.held_out_before[k]);
  }

  // Own heads train too (at lr / 10), and leave lm_head and the rest alone.
  auto own = tuned;
  own.out = after_own.path();
  own.exits.own_heads = true;
  own.tuning.steps = 20;
  const auto own_result = add_exits(own);
  check_backbone_identical(src.path(), after_own.path());
  const auto output = read_checkpoint_tensors(after_own.path());
  BOOST_TEST(!at::equal(output.at("exits.2.head.weight"), output.at("lm_head.weight")));
  for (size_t k = 0; k < 2; ++k) BOOST_TEST(own_result.held_out_after[k] < own_result.held_out_before[k]);
}

BOOST_AUTO_TEST_CASE(refusals_name_the_flag_at_fault) {
  TempDir src, out, with_exits, empty;
  write_source(src.path(), plain_config(true), at::kBFloat16, 1, 14);
  const auto error = [&](const AddExitsOptions& o) { return model_error_text([&] { add_exits(o); }); };

  // Exit layers outside [1, L-1] (L = 6) or not increasing.
  BOOST_TEST(contains(error(untuned(src.path(), out.path(), {0, 2})),
                      "--add-exits 0,2: exit layer 0 outside [1, 5]"));
  BOOST_TEST(contains(error(untuned(src.path(), out.path(), {2, 6})), "exit layer 6 outside [1, 5]"));
  BOOST_TEST(contains(error(untuned(src.path(), out.path(), {4, 2})), "strictly increasing"));
  BOOST_TEST(contains(error(untuned(src.path(), out.path(), {2, 2})), "strictly increasing"));
  BOOST_TEST(contains(error(untuned(src.path(), out.path(), {})), "--add-exits: no exit layers"));

  // --from missing or not a model directory.
  BOOST_TEST(contains(error(untuned(src.file("nowhere"), out.path(), {2})), "nowhere: not a directory"));
  BOOST_TEST(
      contains(error(untuned(empty.path(), out.path(), {2})), "no config.json (not a model directory)"));
  std::filesystem::copy_file(src.file("config.json"), empty.file("config.json"));
  BOOST_TEST(contains(error(untuned(empty.path(), out.path(), {2})), "neither model.safetensors"));

  // A source that already has exits: the same list is named as such.
  add_exits(untuned(src.path(), with_exits.path(), {2, 4}));
  const auto same = error(untuned(with_exits.path(), out.path(), {2, 4}));
  BOOST_TEST(contains(same, "already has exits at layers 2,4, the ones asked for: nothing to add"), same);
  const auto other = error(untuned(with_exits.path(), out.path(), {3}));
  BOOST_TEST(contains(other, "already has exits at layers 2,4; --add-exits adds exits"), other);

  // --out: not --from, not a non-empty directory unless forced (which replaces stale shards).
  BOOST_TEST(contains(error(untuned(src.path(), src.path(), {2})), "is the --from directory"));
  BOOST_TEST(contains(error(untuned(src.path(), src.path() + "/.", {2})), "is the --from directory"));
  write_file(out.file("model-00001-of-00002.safetensors"), "stale");
  write_file(out.file("model.safetensors.index.json"), "{}");
  BOOST_TEST(contains(error(untuned(src.path(), out.path(), {2})), "exists and is not empty (--force"));
  auto forced = untuned(src.path(), out.path(), {2});
  forced.force = true;
  add_exits(forced);
  BOOST_TEST(!std::filesystem::exists(out.file("model.safetensors.index.json")));
  BOOST_TEST(!std::filesystem::exists(out.file("model-00001-of-00002.safetensors")));
  BOOST_TEST(Model::load(out.path())->config().exit_layers == (std::vector<int64_t>{2}));

  // An int8 checkpoint (ce-model --quantize-out): its stored matrices are no floats to tune from.
  TempDir quantized, from_int8;
  write_quantized_checkpoint(src.path(), quantized.path());
  const auto int8 = error(untuned(quantized.path(), from_int8.path(), {2}));
  BOOST_TEST(contains(int8, "is int8 (ce-model --quantize-out); add exits to the float checkpoint"), int8);

  // Tuning sizes and text.
  TempDir fresh;
  auto tuning = untuned(src.path(), fresh.path(), {2});
  tuning.tuning.steps = 1;
  tuning.tuning.seq_len = 129;
  BOOST_TEST(contains(error(tuning), "--seq-len 129 outside [2, 128]"));
  tuning.tuning.seq_len = 64;
  tuning.tuning.train_tokens = {5, 6, 7};
  BOOST_TEST(contains(error(tuning), "--train: 3 training tokens, fewer than --seq-len + 1"));
  tuning.tuning.train_tokens.assign(200, 4000);
  BOOST_TEST(contains(error(tuning), "--train: token id 4000 outside the model's vocabulary of 2048"));
}

BOOST_AUTO_TEST_SUITE_END()
