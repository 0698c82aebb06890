// Model config: Hugging Face config.json with and without the early_exit object, round trip, and
// validation errors that name the file and the field.
#include <boost/test/unit_test.hpp>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>

#include "model/model_config.hpp"
#include "tests/model/tiny_model.hpp"

using namespace ce;
using namespace ce::test;

namespace {

// A Hugging Face LLaMA config.json; `extra` is spliced in before the closing brace.
std::string hf_config(const std::string& extra = "", const std::string& hidden = R"("hidden_size": 64,)") {
  return "{\n" + hidden + R"(
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "_name_or_path": "tiny-llama",
  "intermediate_size": 172,
  "num_attention_heads": 8,
  "num_key_value_heads": 2,
  "num_hidden_layers": 6,
  "vocab_size": 300,
  "rms_norm_eps": 1e-06,
  "rope_theta": 500000.0,
  "max_position_embeddings": 128,
  "tie_word_embeddings": true,
  "hidden_act": "silu",
  "bos_token_id": 5,
  "eos_token_id": 6,
  "torch_dtype": "float16")" +
         extra + "\n}\n";
}

std::string load_error(const TempDir& dir, const std::string& text) {
  write_file(dir.file("config.json"), text);
  return model_error_text([&] { load_model_config(dir.file("config.json")); });
}

// Replaces the first `"key": value` of the base config.
std::string with_field(const std::string& key, const std::string& value, const std::string& extra = "") {
  auto text = hf_config(extra);
  return std::regex_replace(text, std::regex("\"" + key + "\": [^,\\n]+"), "\"" + key + "\": " + value,
                            std::regex_constants::format_first_only);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(model_config)

BOOST_AUTO_TEST_CASE(plain_hugging_face_config_has_no_exits) {
  TempDir dir;
  write_file(dir.file("config.json"), hf_config());
  const auto c = load_model_config(dir.file("config.json"));
  BOOST_TEST(c.dim == 64);
  BOOST_TEST(c.n_layers == 6);
  BOOST_TEST(c.n_heads == 8);
  BOOST_TEST(c.n_kv_heads == 2);
  BOOST_TEST(c.head_dim() == 8);
  BOOST_TEST(c.ffn_dim == 172);
  BOOST_TEST(c.vocab_size == 300);
  BOOST_TEST(c.norm_eps == 1e-6);
  BOOST_TEST(c.rope_theta == 500000.0);
  BOOST_TEST(c.max_seq == 128);
  BOOST_TEST(c.tie_word_embeddings);
  BOOST_TEST(c.bos_id == 5);
  BOOST_TEST(c.eos_id == 6);
  BOOST_TEST(c.name == "tiny-llama");
  BOOST_TEST(c.exit_layers.empty());
  BOOST_TEST(c.default_split == 3);  // n_layers / 2 without exits
}

BOOST_AUTO_TEST_CASE(num_key_value_heads_defaults_to_heads) {
  TempDir dir;
  auto text = std::regex_replace(hf_config(), std::regex("\"num_key_value_heads\": 2,"), "");
  write_file(dir.file("config.json"), text);
  BOOST_TEST(load_model_config(dir.file("config.json")).n_kv_heads == 8);
}

BOOST_AUTO_TEST_CASE(early_exit_object_is_read) {
  TempDir dir;
  write_file(dir.file("config.json"),
             hf_config(R"(, "early_exit": {"exit_layers": [1, 3, 4], "tie_exit_heads": true,
                           "default_threshold": 0.6, "default_split": 3})"));
  const auto c = load_model_config(dir.file("config.json"));
  BOOST_TEST(c.exit_layers == (std::vector<int64_t>{1, 3, 4}));
  BOOST_TEST(c.tie_exit_heads);
  BOOST_TEST(c.default_threshold == 0.6);
  BOOST_TEST(c.default_split == 3);
  // Without default_split the edge ends at the last exit.
  write_file(dir.file("config.json"), hf_config(R"(, "early_exit": {"exit_layers": [2, 4]})"));
  const auto d = load_model_config(dir.file("config.json"));
  BOOST_TEST(d.default_split == 4);
  BOOST_TEST(!d.tie_exit_heads);
}

BOOST_AUTO_TEST_CASE(writing_the_default_threshold_keeps_every_other_field) {
  TempDir dir;
  const std::string path = dir.file("config.json");
  write_file(path, hf_config(R"(, "early_exit": {"exit_layers": [2, 4], "default_threshold": 0.5, "note": "ours"},
                              "rope_scaling": null, "transformers_version": "4.44.0", "my_field": [1, 2])"));
  const auto before = nlohmann::json::parse(read_file(path));
  write_default_threshold(path, 0.83);
  const auto after = nlohmann::json::parse(read_file(path));
  BOOST_TEST(after["early_exit"]["default_threshold"].get<double>() == 0.83);
  auto expected = before;
  expected["early_exit"]["default_threshold"] = 0.83;
  BOOST_TEST(after == expected, "fields changed or dropped: " << after.dump());
  BOOST_TEST(load_model_config(path).default_threshold == 0.83);
  BOOST_TEST(!std::filesystem::exists(path + ".tmp"));
  // Out of range, or a model without exits: refused, and the file is left as it was.
  const auto kept = read_file(path);
  BOOST_TEST(model_error_text([&] { write_default_threshold(path, 1.7); }).find("default_threshold") !=
             std::string::npos);
  BOOST_TEST(read_file(path) == kept);
  write_file(path, hf_config());
  BOOST_TEST(model_error_text([&] { write_default_threshold(path, 0.5); }).find("early_exit") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(save_then_load_round_trips) {
  auto c = tiny_config(1);
  c.name = "round-trip";
  c.rope_theta = 1234.5;
  c.norm_eps = 3e-6;
  c.tie_word_embeddings = true;
  c.tie_exit_heads = true;
  c.default_threshold = 0.65;
  c.default_split = 3;
  c.exit_layers = {2, 3};
  TempDir dir;
  save_model_config(c, dir.file("config.json"));
  const auto b = load_model_config(dir.file("config.json"));
  BOOST_TEST(b.name == c.name);
  BOOST_TEST(b.dim == c.dim);
  BOOST_TEST(b.n_layers == c.n_layers);
  BOOST_TEST(b.n_heads == c.n_heads);
  BOOST_TEST(b.n_kv_heads == c.n_kv_heads);
  BOOST_TEST(b.ffn_dim == c.ffn_dim);
  BOOST_TEST(b.vocab_size == c.vocab_size);
  BOOST_TEST(b.rope_theta == c.rope_theta);
  BOOST_TEST(b.norm_eps == c.norm_eps);
  BOOST_TEST(b.max_seq == c.max_seq);
  BOOST_TEST(b.tie_word_embeddings == c.tie_word_embeddings);
  BOOST_TEST(b.exit_layers == c.exit_layers);
  BOOST_TEST(b.tie_exit_heads == c.tie_exit_heads);
  BOOST_TEST(b.default_threshold == c.default_threshold);
  BOOST_TEST(b.default_split == c.default_split);
  BOOST_TEST(b.bos_id == c.bos_id);
  BOOST_TEST(b.eos_id == c.eos_id);
}

BOOST_AUTO_TEST_CASE(dim_not_divisible_by_heads_names_fields) {
  TempDir dir;
  const auto e = load_error(dir, with_field("hidden_size", "60"));
  BOOST_TEST(contains(e, dir.file("config.json")), e);
  BOOST_TEST(contains(e, "hidden_size"), e);
  BOOST_TEST(contains(e, "num_attention_heads"), e);
}

BOOST_AUTO_TEST_CASE(kv_heads_not_dividing_heads_names_field) {
  TempDir dir;
  const auto e = load_error(dir, with_field("num_key_value_heads", "3"));
  BOOST_TEST(contains(e, "num_key_value_heads"), e);
}

BOOST_AUTO_TEST_CASE(exit_outside_layer_range_names_field) {
  TempDir dir;
  for (const char* exits : {"[2, 6]", "[0, 2]", "[2, 9]"}) {
    const auto e = load_error(dir, hf_config(std::string(R"(, "early_exit": {"exit_layers": )") + exits + "}"));
    BOOST_TEST(contains(e, dir.file("config.json")), e);
    BOOST_TEST(contains(e, "exit_layers"), exits << ": " << e);
  }
}

BOOST_AUTO_TEST_CASE(non_increasing_exits_name_field) {
  TempDir dir;
  for (const char* exits : {"[2, 2]", "[3, 1]"}) {
    const auto e = load_error(dir, hf_config(std::string(R"(, "early_exit": {"exit_layers": )") + exits + "}"));
    BOOST_TEST(contains(e, dir.file("config.json")), e);
    BOOST_TEST(contains(e, "exit_layers"), exits << ": " << e);
  }
}

BOOST_AUTO_TEST_CASE(wrong_type_names_field) {
  TempDir dir;
  auto e = load_error(dir, with_field("hidden_size", "\"64\""));
  BOOST_TEST(contains(e, dir.file("config.json")), e);
  BOOST_TEST(contains(e, "hidden_size"), e);
  e = load_error(dir, with_field("rope_theta", "\"large\""));
  BOOST_TEST(contains(e, "rope_theta"), e);
  e = load_error(dir, with_field("tie_word_embeddings", "1"));
  BOOST_TEST(contains(e, "tie_word_embeddings"), e);
  e = load_error(dir, with_field("num_hidden_layers", "true"));
  BOOST_TEST(contains(e, "num_hidden_layers"), e);
  e = load_error(dir, hf_config(R"(, "early_exit": {"exit_layers": "2,4"})"));
  BOOST_TEST(contains(e, "exit_layers"), e);
  e = load_error(dir, hf_config(R"(, "early_exit": [2, 4])"));
  BOOST_TEST(contains(e, "early_exit"), e);
}

// An integer field given as a fraction is a wrong type too; silently truncating 4.5 to 4 layers
// would load a different architecture than the file describes.
BOOST_AUTO_TEST_CASE(fractional_integer_field_is_refused) {
  TempDir dir;
  auto e = load_error(dir, with_field("num_hidden_layers", "4.5"));
  BOOST_TEST(contains(e, "num_hidden_layers"), e);
  e = load_error(dir, with_field("hidden_size", "64.5"));
  BOOST_TEST(contains(e, "hidden_size"), e);
  e = load_error(dir, hf_config(R"(, "early_exit": {"exit_layers": [1.5, 3]})"));
  BOOST_TEST(contains(e, "exit_layers"), e);
}

BOOST_AUTO_TEST_CASE(missing_required_field_names_it) {
  TempDir dir;
  auto e = load_error(dir, hf_config("", ""));  // no hidden_size
  BOOST_TEST(contains(e, dir.file("config.json")), e);
  BOOST_TEST(contains(e, "hidden_size"), e);
  e = load_error(dir, std::regex_replace(hf_config(), std::regex("\"vocab_size\": 300,"), ""));
  BOOST_TEST(contains(e, "vocab_size"), e);
  e = load_error(dir, hf_config(R"(, "early_exit": {"default_split": 2})"));
  BOOST_TEST(contains(e, "exit_layers"), e);
}

BOOST_AUTO_TEST_CASE(other_range_errors_name_fields) {
  TempDir dir;
  auto e = load_error(dir, hf_config(R"(, "early_exit": {"exit_layers": [2], "default_split": 6})"));
  BOOST_TEST(contains(e, "default_split"), e);
  e = load_error(dir, with_field("bos_token_id", "300"));
  BOOST_TEST(contains(e, "bos_token_id"), e);
  e = load_error(dir, with_field("eos_token_id", "-1"));
  BOOST_TEST(contains(e, "eos_token_id"), e);
  e = load_error(dir, with_field("rms_norm_eps", "0"));
  BOOST_TEST(contains(e, "rms_norm_eps"), e);
  e = load_error(dir, with_field("vocab_size", "0"));
  BOOST_TEST(contains(e, "vocab_size"), e);
  e = load_error(dir, hf_config(R"(, "early_exit": {"exit_layers": [2], "default_threshold": 1.5})"));
  BOOST_TEST(contains(e, "default_threshold"), e);
}

BOOST_AUTO_TEST_CASE(unreadable_files_name_the_path) {
  TempDir dir;
  auto e = model_error_text([&] { load_model_config(dir.file("absent.json")); });
  BOOST_TEST(contains(e, dir.file("absent.json")), e);
  e = load_error(dir, "{ \"hidden_size\": 64, ");
  BOOST_TEST(contains(e, dir.file("config.json")), e);
  e = load_error(dir, "[64]");
  BOOST_TEST(contains(e, dir.file("config.json")), e);
}

BOOST_AUTO_TEST_CASE(validate_checks_a_built_config) {
  auto c = tiny_config(2);
  BOOST_CHECK_NO_THROW(c.validate());
  c.n_kv_heads = 3;
  BOOST_CHECK_THROW(c.validate(), ModelError);
  c = tiny_config(2);
  c.dim = 36;  // 4 heads of 9: odd head dimension cannot be rotated by RoPE
  BOOST_CHECK_THROW(c.validate(), ModelError);
  c = tiny_config(2);
  c.exit_layers = {1, 4};  // an exit after the last layer is the final layer, not an exit
  BOOST_CHECK_THROW(c.validate(), ModelError);
}

BOOST_AUTO_TEST_SUITE_END()
