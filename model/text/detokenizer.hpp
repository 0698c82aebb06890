#pragma once
// Text of a response as its tokens come, for every front end (CLI, ce-generate, HTTP). Decodes
// context + generated tokens as a whole, so that a piece reads as it does after the prompt
// (SentencePiece drops the leading space of a sequence's first piece, and a character may span
// several byte-fallback tokens), and hands out only what is final.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ce {

class Tokenizer;

class Detokenizer {
 public:
  // `context`: the tokens before the first pushed one (the prompt, BOS included or not).
  Detokenizer(const Tokenizer& tokenizer, std::vector<int32_t> context);

  void push(int32_t token);
  // The continuation so far: decode(context + pushed) past decode(context). May end inside a
  // UTF-8 character that the next token completes.
  const std::string& text() const { return text_; }
  // What text() gained since the last call, up to its last whole UTF-8 character.
  std::string take_ready();

 private:
  const Tokenizer& tokenizer_;
  std::vector<int32_t> sequence_;
  std::string context_text_;
  std::string text_;
  size_t handed_out_ = 0;
};

// The longest prefix of `text` that does not end inside a UTF-8 character (a stray byte counts
// as whole: nothing will complete it).
size_t complete_utf8_prefix(const std::string& text);

}  // namespace ce
