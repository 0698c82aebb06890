#pragma once
// SentencePiece BPE tokenizer, read from a tokenizer.model file (the ModelProto written by
// spm_train). Implemented here rather than linking libsentencepiece: Debian's build embeds its own
// protobuf-lite, which collides with libtorch's protobuf and crashes at start-up.
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/text/tokenizer.hpp"

namespace ce {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // SentencePiece's piece types, numbered as its ModelProto (and GGUF's token_type) numbers them.
  enum class PieceType { normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6 };

  explicit SentencePieceTokenizer(const std::string& model_file);  // throws ModelError naming the file
  std::vector<int32_t> encode(const std::string& text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  // A piece's text as the model file stores it (U+2581 for a space, "<0x0A>" for a byte piece)
  // and its merge score; id must be in [0, vocab_size()).
  const std::string& piece(int32_t id) const { return pieces_.at(static_cast<size_t>(id)).text; }
  float score(int32_t id) const { return pieces_.at(static_cast<size_t>(id)).score; }
  PieceType type(int32_t id) const { return pieces_.at(static_cast<size_t>(id)).type; }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  bool adds_bos() const override { return bos_id_ >= 0; }
  int32_t unk_id() const { return unk_id_; }

 private:
  struct Piece {
    std::string text;
    float score = 0;
    PieceType type = PieceType::normal;
  };
  void parse(const std::string& bytes, const std::string& file);
  std::string normalize(const std::string& text) const;
  std::vector<int32_t> encode_word(const std::vector<std::string>& chars) const;

  std::vector<Piece> pieces_;
  std::unordered_map<std::string, int32_t> ids_;  // normal and user-defined pieces
  std::vector<std::string> user_defined_;         // matched whole, longest first
  int32_t byte_ids_[256];
  int32_t unk_id_ = 0, bos_id_ = 1, eos_id_ = 2;
  bool add_dummy_prefix_ = true, remove_extra_whitespaces_ = true, escape_whitespaces_ = true;
  bool byte_fallback_ = false;
};

}  // namespace ce
