#include "model/text/detokenizer.hpp"

#include "model/text/tokenizer.hpp"

namespace ce {

Detokenizer::Detokenizer(const Tokenizer& tokenizer, std::vector<int32_t> context)
    : tokenizer_(tokenizer), sequence_(std::move(context)), context_text_(tokenizer.decode(sequence_)) {}

void Detokenizer::push(int32_t token) {
  sequence_.push_back(token);
  const std::string full = tokenizer_.decode(sequence_);
  // Decoding more tokens only appends to the context's text; should a tokenizer ever rewrite
  // it, the continuation is what follows the common prefix.
  size_t common = 0;
  while (common < full.size() && common < context_text_.size() && full[common] == context_text_[common]) ++common;
  text_ = full.substr(common);
}

std::string Detokenizer::take_ready() {
  const size_t ready = complete_utf8_prefix(text_);
  if (ready <= handed_out_) return {};
  std::string piece = text_.substr(handed_out_, ready - handed_out_);
  handed_out_ = ready;
  return piece;
}

size_t complete_utf8_prefix(const std::string& text) {
  // Walk back over at most 3 continuation bytes to the last lead byte; keep it only if its
  // character is complete.
  const size_t n = text.size();
  size_t i = n;
  int continuation = 0;
  while (i > 0 && continuation < 4 && (static_cast<unsigned char>(text[i - 1]) & 0xC0) == 0x80) {
    --i;
    ++continuation;
  }
  if (i == 0) return n;
  const auto lead = static_cast<unsigned char>(text[i - 1]);
  size_t need = 1;
  if ((lead & 0xE0) == 0xC0) need = 2;
  else if ((lead & 0xF0) == 0xE0) need = 3;
  else if ((lead & 0xF8) == 0xF0) need = 4;
  else return n;  // ASCII or a stray byte: nothing to wait for
  return static_cast<size_t>(continuation) + 1 >= need ? n : i - 1;
}

}  // namespace ce
