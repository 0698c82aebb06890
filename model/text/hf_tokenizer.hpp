#pragma once
// Hugging Face tokenizer.json tokenizer (the BPE models of Llama 2/3, TinyLlama, Mistral, Qwen2/3,
// SmolLM2), with the tokenizer_config.json beside it when there is one. Gives the ids of Hugging
// Face's encode(text, add_special_tokens=false) and the text of its decode(ids,
// skip_special_tokens=false); what a file asks for beyond the supported subset (below) is refused
// with a ModelError naming the file and the field, never approximated.
//
// Supported: model BPE (byte_fallback, unk_token, fuse_unk, ignore_merges, subword prefix/suffix);
// added_tokens (special or not, single_word, lstrip, rstrip, normalized); normalizers Sequence,
// NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip; pre_tokenizers Sequence, Split,
// ByteLevel, Metaspace, Digits; decoders Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip,
// Metaspace. The post_processor only decides adds_bos(): encode() never adds BOS or EOS.
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/text/tokenizer.hpp"

namespace ce {

class HfTokenizer final : public Tokenizer {
 public:
  // Reads `tokenizer_json` and the tokenizer_config.json in its directory (optional). Throws
  // ModelError naming the file and the field at fault.
  explicit HfTokenizer(const std::string& tokenizer_json);
  ~HfTokenizer() override;

  // Input that is not valid UTF-8 is read as Hugging Face reads bytes decoded lossily: each
  // ill-formed sequence becomes U+FFFD.
  std::vector<int32_t> encode(const std::string& text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  // One past the largest id of the vocabulary and the added tokens.
  int32_t vocab_size() const override { return static_cast<int32_t>(token_texts_.size()); }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  bool adds_bos() const override { return adds_bos_; }

  // The id of a token written as the file writes it: an added token's content ("<|eot_id|>") or
  // a vocabulary entry ("Ġthe", "▁the").
  std::optional<int32_t> token_id(const std::string& token) const;
  // The inverse of token_id(); empty for an id that no token has. Throws ModelError outside
  // [0, vocab_size()).
  const std::string& token_text(int32_t id) const;
  // tokenizer_config.json's chat_template (of a list, the one named "default", else the first),
  // else chat_template.jinja beside it; empty when there is none.
  const std::string& chat_template() const { return chat_template_; }

 private:
  // Defined in hf_tokenizer.cpp: the loader, the pipeline's steps and what flows between them.
  struct Loader;
  struct NormalizerStep;
  struct PreTokenizerStep;
  struct DecoderStep;
  struct AddedTokenMatcher;
  struct Segment;
  struct Piece;
  struct Junctions;
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };

  std::string normalize(const std::string& text) const;
  void encode_piece(const Piece& piece, std::vector<int32_t>& ids) const;
  void encode_merged(const std::string& word, std::vector<int32_t>& ids) const;
  std::vector<std::string> independent_chunks(const std::string& word) const;
  std::vector<int32_t> merge_word(const std::string& word) const;

  std::string file_;
  // The BPE model: vocabulary, and merges keyed by the pair of ids they join.
  std::unordered_map<std::string, int32_t> vocab_;
  std::unordered_map<uint64_t, Merge> merges_;
  int32_t byte_token_ids_[256];  // byte_fallback's "<0x41>" tokens; -1 where absent
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  std::string subword_prefix_, word_suffix_;

  // Every id's text (an added token's content over a vocabulary entry); ids no token has are
  // skipped by decode(), as Hugging Face skips them.
  std::vector<std::string> token_texts_;
  std::vector<bool> has_token_;
  std::unordered_map<std::string, int32_t> added_ids_;
  // Added tokens matched in the raw text, and those matched after normalisation.
  std::unique_ptr<AddedTokenMatcher> raw_added_, normalized_added_;

  std::vector<NormalizerStep> normalizers_;
  std::vector<PreTokenizerStep> pre_tokenizers_;
  std::vector<DecoderStep> decoders_;
  bool has_decoder_ = false;  // without one, Hugging Face joins the tokens with spaces

  int32_t bos_id_ = -1, eos_id_ = -1;
  bool adds_bos_ = false;
  std::string chat_template_;

  // Word -> ids, shared by all encode() calls: a text repeats its words.
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> word_cache_;
  // Built on the first long word: where a long word can be cut without changing its tokens.
  mutable std::once_flag junctions_once_;
  mutable std::unique_ptr<const Junctions> junctions_;
};

}  // namespace ce
