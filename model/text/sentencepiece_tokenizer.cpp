#include "model/text/sentencepiece_tokenizer.hpp"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>

#include "model/model_config.hpp"

namespace ce {
namespace {

const std::string kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

// A protobuf wire-format reader over one message's bytes; enough for ModelProto.
class ProtoReader {
 public:
  // Owns its bytes: nested messages are read from temporaries.
  ProtoReader(std::string data, const std::string& file)
      : data_(std::move(data)), p_(data_.data()), end_(p_ + data_.size()), file_(file) {}
  bool next(uint32_t& field, uint32_t& wire) {
    if (p_ >= end_) return false;
    uint64_t key = varint();
    field = static_cast<uint32_t>(key >> 3);
    wire = static_cast<uint32_t>(key & 7);
    return true;
  }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ >= end_) fail();
      uint8_t b = static_cast<uint8_t>(*p_++);
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    fail();
  }
  std::string bytes() {
    uint64_t n = varint();
    if (n > static_cast<uint64_t>(end_ - p_)) fail();
    std::string s(p_, p_ + n);
    p_ += n;
    return s;
  }
  float fixed32() {
    if (end_ - p_ < 4) fail();
    uint32_t u = 0;
    for (int i = 0; i < 4; ++i) u |= static_cast<uint32_t>(static_cast<uint8_t>(p_[i])) << (8 * i);
    p_ += 4;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  void skip(uint32_t wire) {
    switch (wire) {
      case 0: varint(); break;
      case 1: advance(8); break;
      case 2: bytes(); break;
      case 5: advance(4); break;
      default: fail();
    }
  }

 private:
  void advance(size_t n) {
    if (static_cast<size_t>(end_ - p_) < n) fail();
    p_ += n;
  }
  [[noreturn]] void fail() const { throw ModelError(file_ + ": not a SentencePiece model (bad protobuf)"); }
  std::string data_;
  const char* p_;
  const char* end_;
  std::string file_;
};

size_t utf8_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead >> 5) == 0x6) return 2;
  if ((lead >> 4) == 0xe) return 3;
  if ((lead >> 3) == 0x1e) return 4;
  return 1;  // invalid lead byte: treat as one byte, byte fallback covers it
}

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_file) {
  std::ifstream in(model_file, std::ios::binary);
  if (!in) throw ModelError(model_file + ": cannot open tokenizer model");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  parse(bytes, model_file);
}

void SentencePieceTokenizer::parse(const std::string& bytes, const std::string& file) {
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
  ProtoReader top(bytes, file);
  uint32_t field, wire;
  int model_type = 1;
  while (top.next(field, wire)) {
    if (field == 1 && wire == 2) {  // repeated SentencePiece pieces
      ProtoReader pr(top.bytes(), file);
      Piece piece;
      while (pr.next(field, wire)) {
        if (field == 1 && wire == 2) piece.text = pr.bytes();
        else if (field == 2 && wire == 5) piece.score = pr.fixed32();
        else if (field == 3 && wire == 0) piece.type = static_cast<PieceType>(pr.varint());
        else pr.skip(wire);
      }
      pieces_.push_back(std::move(piece));
    } else if (field == 2 && wire == 2) {  // TrainerSpec
      ProtoReader tr(top.bytes(), file);
      while (tr.next(field, wire)) {
        if (wire != 0) { tr.skip(wire); continue; }
        const auto v = tr.varint();
        if (field == 3) model_type = static_cast<int>(v);
        else if (field == 35) byte_fallback_ = v != 0;
        else if (field == 40) unk_id_ = static_cast<int32_t>(v);
        else if (field == 41) bos_id_ = static_cast<int32_t>(v);
        else if (field == 42) eos_id_ = static_cast<int32_t>(v);
      }
    } else if (field == 3 && wire == 2) {  // NormalizerSpec
      ProtoReader nr(top.bytes(), file);
      while (nr.next(field, wire)) {
        if (wire != 0) { nr.skip(wire); continue; }
        const bool v = nr.varint() != 0;
        if (field == 3) add_dummy_prefix_ = v;
        else if (field == 4) remove_extra_whitespaces_ = v;
        else if (field == 5) escape_whitespaces_ = v;
      }
    } else {
      top.skip(wire);
    }
  }
  if (pieces_.empty()) throw ModelError(file + ": tokenizer model has no pieces");
  if (model_type != 2) throw ModelError(file + ": only BPE SentencePiece models are supported");
  for (int32_t id = 0; id < static_cast<int32_t>(pieces_.size()); ++id) {
    const auto& p = pieces_[static_cast<size_t>(id)];
    if (p.type == PieceType::normal || p.type == PieceType::user_defined) ids_.emplace(p.text, id);
    if (p.type == PieceType::user_defined) user_defined_.push_back(p.text);
    if (p.type == PieceType::byte && p.text.size() == 6 && p.text.rfind("<0x", 0) == 0)
      byte_ids_[std::stoi(p.text.substr(3, 2), nullptr, 16)] = id;
  }
  std::sort(user_defined_.begin(), user_defined_.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  for (auto id : {unk_id_, bos_id_, eos_id_})
    if (id >= static_cast<int32_t>(pieces_.size())) throw ModelError(file + ": special token id out of range");
}

std::string SentencePieceTokenizer::normalize(const std::string& text) const {
  std::string s = text;
  if (remove_extra_whitespaces_) {
    std::string collapsed;
    bool space = true;  // drops leading spaces
    for (char c : s) {
      if (c == ' ') {
        if (!space) collapsed += c;
        space = true;
      } else {
        collapsed += c;
        space = false;
      }
    }
    while (!collapsed.empty() && collapsed.back() == ' ') collapsed.pop_back();
    s = collapsed;
  }
  if (s.empty()) return s;
  if (add_dummy_prefix_) s = " " + s;
  if (!escape_whitespaces_) return s;
  std::string out;
  for (char c : s) out += c == ' ' ? kSpace : std::string(1, c);
  return out;
}

std::vector<int32_t> SentencePieceTokenizer::encode_word(const std::vector<std::string>& chars) const {
  std::vector<std::string> symbols = chars;
  // BPE: repeatedly merge the adjacent pair whose union is the best-scored piece (leftmost on ties).
  while (symbols.size() > 1) {
    float best = -1e30f;
    size_t best_at = symbols.size();
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto it = ids_.find(symbols[i] + symbols[i + 1]);
      if (it == ids_.end() || pieces_[static_cast<size_t>(it->second)].type != PieceType::normal) continue;
      const float score = pieces_[static_cast<size_t>(it->second)].score;
      if (score > best) {
        best = score;
        best_at = i;
      }
    }
    if (best_at == symbols.size()) break;
    symbols[best_at] += symbols[best_at + 1];
    symbols.erase(symbols.begin() + static_cast<long>(best_at) + 1);
  }
  std::vector<int32_t> ids;
  for (const auto& sym : symbols) {
    auto it = ids_.find(sym);
    if (it != ids_.end()) {
      ids.push_back(it->second);
    } else if (byte_fallback_) {
      for (unsigned char b : sym) ids.push_back(byte_ids_[b] >= 0 ? byte_ids_[b] : unk_id_);
    } else {
      ids.push_back(unk_id_);
    }
  }
  return ids;
}

std::vector<int32_t> SentencePieceTokenizer::encode(const std::string& text) const {
  const std::string s = normalize(text);
  // Pieces never span a word start (the visible space) or a user-defined symbol, so the text is
  // encoded word by word, each word once (a cache keeps long texts linear).
  std::vector<int32_t> ids;
  std::vector<std::string> word;
  std::unordered_map<std::string, std::vector<int32_t>> cache;
  auto flush = [&] {
    if (word.empty()) return;
    std::string key;
    for (auto& c : word) key += c;
    auto it = cache.find(key);
    if (it == cache.end()) it = cache.emplace(key, encode_word(word)).first;
    ids.insert(ids.end(), it->second.begin(), it->second.end());
    word.clear();
  };
  for (size_t i = 0; i < s.size();) {
    bool matched = false;
    for (const auto& u : user_defined_)
      if (s.compare(i, u.size(), u) == 0) {
        flush();
        ids.push_back(ids_.at(u));
        i += u.size();
        matched = true;
        break;
      }
    if (matched) continue;
    size_t n = std::min(utf8_length(static_cast<unsigned char>(s[i])), s.size() - i);
    if (s.compare(i, kSpace.size(), kSpace) == 0) flush();
    word.push_back(s.substr(i, n));
    i += n;
  }
  flush();
  return ids;
}

std::string SentencePieceTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (auto id : ids) {
    if (id < 0 || id >= vocab_size()) throw ModelError("tokenizer: id " + std::to_string(id) + " outside the vocabulary");
    const auto& p = pieces_[static_cast<size_t>(id)];
    switch (p.type) {
      case PieceType::control:
      case PieceType::unused: break;
      case PieceType::unknown: out += " \xE2\x81\x87 "; break;
      case PieceType::byte: out += static_cast<char>(std::stoi(p.text.substr(3, 2), nullptr, 16)); break;
      default: out += p.text;
    }
  }
  std::string text;
  for (size_t i = 0; i < out.size();) {
    if (out.compare(i, kSpace.size(), kSpace) == 0) {
      text += ' ';
      i += kSpace.size();
    } else {
      text += out[i++];
    }
  }
  if (add_dummy_prefix_ && !text.empty() && text[0] == ' ') text.erase(0, 1);
  return text;
}

}  // namespace ce
