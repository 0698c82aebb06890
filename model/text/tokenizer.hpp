#pragma once
// What every front end needs of a tokenizer: text to ids and back, and the special ids. Two
// implementations: SentencePiece's tokenizer.model (our own models, Llama 2 as published) and
// Hugging Face's tokenizer.json (byte-level BPE of Llama 3, Qwen, SmolLM; SentencePiece-style BPE
// of Llama 2, TinyLlama, Mistral).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace ce {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Ids of `text` as the model reads it; special-token strings in the text ("<|eot_id|>") are
  // matched whole where the tokenizer declares them; nothing is added (no BOS): see adds_bos().
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;
  // Text of `ids`, special tokens included as their strings. Throws ModelError on an id outside
  // [0, vocab_size()).
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when the tokenizer has none
  virtual int32_t eos_id() const = 0;  // -1 when the tokenizer has none
  // Whether a plain prompt starts with bos_id() (Llama: yes; Qwen: no).
  virtual bool adds_bos() const = 0;
};

// A plain prompt as the model reads it: the model's BOS first where the tokenizer adds one and the
// model has one (bos_id >= 0), then encode(text).
std::vector<int32_t> encode_prompt(const Tokenizer& tokenizer, int64_t bos_id, const std::string& text);

// Opens `path`: a model directory (tokenizer.json preferred, else tokenizer.model), a
// tokenizer.json file or a SentencePiece tokenizer.model file. Throws ModelError naming the file.
std::unique_ptr<Tokenizer> open_tokenizer(const std::string& path);

}  // namespace ce
