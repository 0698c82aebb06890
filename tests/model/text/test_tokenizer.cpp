// Tokenizer: the in-tree SentencePiece BPE encoder gives the ids of the reference spm_encode CLI,
// and decode(encode(text)) == text.
#include <boost/test/unit_test.hpp>

#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "model/text/sentencepiece_tokenizer.hpp"
#include "tests/test_files.hpp"

using namespace ce;
using namespace ce::test;

namespace {

const std::string model_path = CE_SOURCE_DIR "/data/brown/tokenizer-2048.model";
const std::string valid_path = CE_SOURCE_DIR "/data/brown/valid.txt";

const SentencePieceTokenizer& tokenizer() {
  static const SentencePieceTokenizer t(model_path);
  return t;
}

bool have_spm_encode() { return std::system("command -v spm_encode >/dev/null 2>&1") == 0; }

// Ids spm_encode prints for each line of `lines` (one line of ids per input line).
std::vector<std::vector<int32_t>> spm_encode_ids(const std::vector<std::string>& lines) {
  TempDir dir;
  std::string text;
  for (auto& l : lines) text += l + "\n";
  write_file(dir.file("in.txt"), text);
  const std::string cmd = "spm_encode --model='" + model_path + "' --output_format=id < '" + dir.file("in.txt") + "'";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  BOOST_REQUIRE(pipe);
  std::string out;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0) out.append(buf, n);
  BOOST_REQUIRE_EQUAL(::pclose(pipe), 0);
  std::vector<std::vector<int32_t>> ids;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::vector<int32_t> row;
    int32_t id;
    while (ls >> id) row.push_back(id);
    ids.push_back(std::move(row));
  }
  return ids;
}

void check_against_spm(const std::vector<std::string>& lines) {
  const auto want = spm_encode_ids(lines);
  BOOST_REQUIRE_EQUAL(want.size(), lines.size());
  size_t mismatches = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    const auto got = tokenizer().encode(lines[i]);
    if (got != want[i] && ++mismatches <= 5)
      BOOST_ERROR("line " << i << " encodes differently from spm_encode: " << lines[i].substr(0, 80));
  }
  BOOST_TEST(mismatches == 0u);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(tokenizer_suite)

BOOST_AUTO_TEST_CASE(loads_the_brown_model) {
  const auto& t = tokenizer();
  BOOST_TEST(t.vocab_size() == 2048);
  BOOST_TEST(t.bos_id() == 1);
  BOOST_TEST(t.eos_id() == 2);
  BOOST_TEST(t.unk_id() == 3);
  BOOST_TEST(t.encode("\n") == (std::vector<int32_t>{4}));  // the user-defined newline piece
  BOOST_TEST(t.encode("").empty());
  BOOST_TEST(t.decode({}).empty());
  BOOST_TEST(t.decode({1, 2}).empty());  // control pieces decode to nothing
}

BOOST_AUTO_TEST_CASE(matches_spm_encode_on_valid_lines) {
  if (!have_spm_encode()) {
    BOOST_TEST_MESSAGE("spm_encode not installed: comparison with SentencePiece skipped");
    return;
  }
  std::vector<std::string> lines;
  std::istringstream in(read_file(valid_path));
  std::string line;
  while (lines.size() < 200 && std::getline(in, line))
    if (!line.empty()) lines.push_back(line);
  BOOST_REQUIRE_EQUAL(lines.size(), 200u);
  check_against_spm(lines);
}

BOOST_AUTO_TEST_CASE(matches_spm_encode_on_unusual_text) {
  if (!have_spm_encode()) {
    BOOST_TEST_MESSAGE("spm_encode not installed: comparison with SentencePiece skipped");
    return;
  }
  check_against_spm({
      "naïve café — 日本語 🙂",    // byte fallback
      "  two  spaces and trailing  ",  // no whitespace folding (identity normalisation)
      "Digits 1961, $12.50 and 3.14159.",
      "\ttab\tseparated\t",
      "a",
      "Ünïcödé ÀÉÎÕÜ ß ø",
  });
}

BOOST_AUTO_TEST_CASE(decode_encode_round_trips_valid_txt) {
  const auto text = read_file(valid_path);
  BOOST_REQUIRE_GT(text.size(), 100000u);
  const auto ids = tokenizer().encode(text);
  BOOST_TEST(ids.size() < text.size() / 2);  // it does compress
  const auto back = tokenizer().decode(ids);
  BOOST_TEST((back == text));
  if (back != text) {
    size_t i = 0;
    while (i < back.size() && i < text.size() && back[i] == text[i]) ++i;
    BOOST_TEST_MESSAGE("first difference at byte " << i);
  }
}

BOOST_AUTO_TEST_CASE(decode_encode_round_trips_non_ascii) {
  for (const std::string text : {"naïve café — 日本語 🙂\nsecond line\n\n", "  lead and trail  ", "€100 ± 5%",
                                 "\n\nnewlines only\n"}) {
    const auto ids = tokenizer().encode(text);
    BOOST_TEST(tokenizer().decode(ids) == text);
  }
  // Characters never seen in training become byte pieces <0x..>.
  const auto ids = tokenizer().encode("日");
  BOOST_TEST(ids.size() == 3u);  // three UTF-8 bytes
}

BOOST_AUTO_TEST_CASE(bad_files_throw_naming_the_file) {
  TempDir dir;
  auto e = model_error_text([&] { SentencePieceTokenizer t(dir.file("absent.model")); });
  BOOST_TEST(contains(e, dir.file("absent.model")), e);
  write_file(dir.file("empty.model"), "");
  e = model_error_text([&] { SentencePieceTokenizer t(dir.file("empty.model")); });
  BOOST_TEST(contains(e, dir.file("empty.model")), e);
  write_file(dir.file("garbage.model"), std::string(64, '\xff'));
  e = model_error_text([&] { SentencePieceTokenizer t(dir.file("garbage.model")); });
  BOOST_TEST(contains(e, dir.file("garbage.model")), e);
  const auto real = read_file(model_path);
  write_file(dir.file("cut.model"), real.substr(0, real.size() / 3));
  e = model_error_text([&] { SentencePieceTokenizer t(dir.file("cut.model")); });
  BOOST_TEST(contains(e, dir.file("cut.model")), e);
  BOOST_CHECK_THROW(tokenizer().decode({2048}), ModelError);
  BOOST_CHECK_THROW(tokenizer().decode({-1}), ModelError);
}

BOOST_AUTO_TEST_SUITE_END()
