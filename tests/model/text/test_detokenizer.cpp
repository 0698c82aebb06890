// Detokenizer: text as tokens come, checked against decoding the whole sequence at once with the
// shipped SentencePiece model, including characters split over byte-fallback tokens.
#include <boost/test/unit_test.hpp>

#include <algorithm>

#include "model/text/detokenizer.hpp"
#include "model/text/sentencepiece_tokenizer.hpp"

using namespace ce;

namespace {

const Tokenizer& tokenizer() {
  static const SentencePieceTokenizer t(CE_SOURCE_DIR "/data/brown/tokenizer-2048.model");
  return t;
}

bool complete_utf8(const std::string& s) { return complete_utf8_prefix(s) == s.size(); }

}  // namespace

BOOST_AUTO_TEST_SUITE(detokenizer)

BOOST_AUTO_TEST_CASE(pieces_add_up_to_the_whole_decode_after_the_prompt) {
  const auto& tok = tokenizer();
  std::vector<int32_t> prompt{tok.bos_id()};
  for (auto id : tok.encode("The jury said")) prompt.push_back(id);
  for (const std::string continuation : {" that the city was fine.", " naïve café — 日本語 🙂\nnext", "\n\n€100 ± 5%"}) {
    // The continuation's tokens, as a model would produce them after the prompt.
    auto whole = tok.encode("The jury said" + continuation);
    std::vector<int32_t> generated(whole.begin() + static_cast<long>(prompt.size() - 1), whole.end());
    Detokenizer d(tok, prompt);
    std::string streamed;
    std::vector<int32_t> sequence = prompt;
    for (auto id : generated) {
      d.push(id);
      sequence.push_back(id);
      const std::string piece = d.take_ready();
      BOOST_TEST_REQUIRE(complete_utf8(piece), "a piece ends inside a character after token " << id);
      streamed += piece;
      // Always a prefix of what decoding everything so far gives past the prompt's text.
      const std::string reference = tok.decode(sequence).substr(tok.decode(prompt).size());
      BOOST_TEST_REQUIRE(d.text() == reference);
      BOOST_TEST_REQUIRE(reference.compare(0, streamed.size(), streamed) == 0);
    }
    BOOST_TEST(streamed == d.text());
    BOOST_TEST(streamed == tok.decode(whole).substr(tok.decode(prompt).size()));
  }
}

BOOST_AUTO_TEST_CASE(a_character_split_over_byte_tokens_waits_for_its_last_byte) {
  const auto& tok = tokenizer();
  const auto ids = tok.encode("日");  // unseen in training: three byte-fallback pieces
  BOOST_REQUIRE(ids.size() == 3u);
  Detokenizer d(tok, {tok.bos_id()});
  d.push(ids[0]);
  BOOST_TEST(d.take_ready() == "");
  d.push(ids[1]);
  BOOST_TEST(d.take_ready() == "");
  d.push(ids[2]);
  BOOST_TEST(d.take_ready() == tok.decode(ids));
  BOOST_TEST(d.take_ready() == "");  // handed out once
}

BOOST_AUTO_TEST_CASE(the_first_piece_keeps_its_space_after_a_prompt) {
  const auto& tok = tokenizer();
  const auto prompt_ids = tok.encode("The jury");
  const auto whole = tok.encode("The jury said");
  BOOST_REQUIRE(whole.size() > prompt_ids.size());
  BOOST_REQUIRE(std::equal(prompt_ids.begin(), prompt_ids.end(), whole.begin()));
  std::vector<int32_t> prompt{tok.bos_id()};
  prompt.insert(prompt.end(), prompt_ids.begin(), prompt_ids.end());
  Detokenizer d(tok, prompt);
  for (size_t i = prompt_ids.size(); i < whole.size(); ++i) d.push(whole[i]);
  BOOST_TEST(d.take_ready() == " said");  // decoding the piece alone would start the text with it
}

BOOST_AUTO_TEST_CASE(utf8_characters_cut_by_a_token_are_held_back) {
  const std::string euro = "\xE2\x82\xAC";  // 3 bytes
  BOOST_TEST(complete_utf8_prefix("abc") == 3u);
  BOOST_TEST(complete_utf8_prefix("ab" + euro) == 5u);
  BOOST_TEST(complete_utf8_prefix("ab" + euro.substr(0, 1)) == 2u);
  BOOST_TEST(complete_utf8_prefix("ab" + euro.substr(0, 2)) == 2u);
  BOOST_TEST(complete_utf8_prefix("\xF0\x9F\x98") == 0u);  // 4-byte emoji missing its last byte
  BOOST_TEST(complete_utf8_prefix("a\x80") == 2u);        // a stray continuation byte is not waited on
}

BOOST_AUTO_TEST_SUITE_END()
