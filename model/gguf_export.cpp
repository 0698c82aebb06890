#include "model/gguf_export.hpp"

#include <torch/torch.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>

#include "model/rotary_layout.hpp"
#include "model/text/sentencepiece_tokenizer.hpp"
#include "model/weights.hpp"

namespace ce {
namespace {

// GGUF's numbering (ggml.h / gguf.h): metadata value types and tensor types.
enum class Value : uint32_t { u32 = 4, i32 = 5, f32 = 6, boolean = 7, string = 8, array = 9 };
enum class Tensor : uint32_t { f32 = 0, f16 = 1, q8_0 = 8 };
// general.file_type: LLAMA_FTYPE_ALL_F32, MOSTLY_F16, MOSTLY_Q8_0.
uint32_t file_type(GgufType t) { return t == GgufType::f32 ? 0 : t == GgufType::f16 ? 1 : 7; }
constexpr uint64_t kAlignment = 32;
constexpr int64_t kQ8_0Block = 32;

// Little-endian bytes in the order GGUF wants them (x86-64 is little-endian).
class Bytes {
 public:
  template <class T>
  void put(T v) {
    const auto* p = reinterpret_cast<const char*>(&v);
    data_.insert(data_.end(), p, p + sizeof v);
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    data_.insert(data_.end(), s.begin(), s.end());
  }
  void put_raw(const void* p, size_t n) {
    data_.insert(data_.end(), static_cast<const char*>(p), static_cast<const char*>(p) + n);
  }
  void pad_to(uint64_t alignment) { data_.resize((data_.size() + alignment - 1) / alignment * alignment, 0); }
  size_t size() const { return data_.size(); }
  const std::vector<char>& data() const { return data_; }

 private:
  std::vector<char> data_;
};

struct Metadata {
  Bytes bytes;
  uint64_t count = 0;
  void key(const std::string& k, Value type) {
    bytes.put_string(k);
    bytes.put(static_cast<uint32_t>(type));
    ++count;
  }
  void u32(const std::string& k, uint32_t v) { key(k, Value::u32), bytes.put(v); }
  void f32(const std::string& k, float v) { key(k, Value::f32), bytes.put(v); }
  void boolean(const std::string& k, bool v) { key(k, Value::boolean), bytes.put<uint8_t>(v); }
  void string(const std::string& k, const std::string& v) { key(k, Value::string), bytes.put_string(v); }
  template <class T>
  void array(const std::string& k, Value item, const std::vector<T>& items, std::function<void(const T&)> put) {
    key(k, Value::array);
    bytes.put(static_cast<uint32_t>(item));
    bytes.put<uint64_t>(items.size());
    for (const auto& v : items) put(v);
  }
};

// ggml's quantize_row_q8_0_ref: per block of 32, d = max|x| / 127 stored as fp16, q = round(x / d).
std::vector<char> q8_0_bytes(const at::Tensor& matrix) {
  const auto f = matrix.to(at::kFloat).contiguous();
  const float* x = f.data_ptr<float>();
  const int64_t n = f.numel();
  std::vector<char> out;
  out.reserve(static_cast<size_t>(n / kQ8_0Block * (2 + kQ8_0Block)));
  for (int64_t b = 0; b < n; b += kQ8_0Block) {
    float top = 0;
    for (int64_t i = 0; i < kQ8_0Block; ++i) top = std::max(top, std::fabs(x[b + i]));
    const float d = top / 127.0f, inv = d != 0 ? 1.0f / d : 0.0f;
    const at::Half half(d);
    out.insert(out.end(), reinterpret_cast<const char*>(&half), reinterpret_cast<const char*>(&half) + 2);
    for (int64_t i = 0; i < kQ8_0Block; ++i) out.push_back(static_cast<char>(static_cast<int8_t>(std::round(x[b + i] * inv))));
  }
  return out;
}

struct Entry {
  std::string name;
  at::Tensor values;  // (rows, cols) or (cols)
  Tensor type;
};

Tensor matrix_type(GgufType wanted, const at::Tensor& m) {
  switch (wanted) {
    case GgufType::f32: return Tensor::f32;
    case GgufType::f16: return Tensor::f16;
    case GgufType::q8_0: return m.size(-1) % kQ8_0Block == 0 ? Tensor::q8_0 : Tensor::f16;
  }
  return Tensor::f32;
}

std::vector<char> tensor_bytes(const Entry& e) {
  if (e.type == Tensor::q8_0) return q8_0_bytes(e.values);
  const auto t = e.values.to(e.type == Tensor::f16 ? at::kHalf : at::kFloat).contiguous();
  const auto* p = static_cast<const char*>(t.data_ptr());
  return std::vector<char>(p, p + t.nbytes());
}

std::vector<Entry> entries(const Weights& w, GgufType type) {
  const auto& c = w.config;
  std::vector<Entry> out;
  const auto matrix = [&](const std::string& name, const at::Tensor& m) { out.push_back({name, m, matrix_type(type, m)}); };
  const auto norm = [&](const std::string& name, const at::Tensor& v) { out.push_back({name, v, Tensor::f32}); };
  matrix("token_embd.weight", w.embed);
  for (size_t i = 0; i < w.layers.size(); ++i) {
    const auto& l = w.layers[i];
    const std::string b = "blk." + std::to_string(i) + ".";
    norm(b + "attn_norm.weight", l.attn_norm);
    matrix(b + "attn_q.weight", rotate_half_to_interleaved(l.wq, c.n_heads));
    matrix(b + "attn_k.weight", rotate_half_to_interleaved(l.wk, c.n_kv_heads));
    matrix(b + "attn_v.weight", l.wv);
    matrix(b + "attn_output.weight", l.wo);
    norm(b + "ffn_norm.weight", l.ffn_norm);
    matrix(b + "ffn_gate.weight", l.w_gate);
    matrix(b + "ffn_up.weight", l.w_up);
    matrix(b + "ffn_down.weight", l.w_down);
  }
  norm("output_norm.weight", w.final_norm);
  if (!c.tie_word_embeddings) matrix("output.weight", w.lm_head);
  return out;
}

void put_metadata(Metadata& m, const Weights& w, const SentencePieceTokenizer& tok, GgufType type) {
  const auto& c = w.config;
  m.string("general.architecture", "llama");
  m.string("general.name", c.name);
  m.u32("general.file_type", file_type(type));
  m.u32("general.alignment", kAlignment);
  m.u32("llama.context_length", static_cast<uint32_t>(c.max_seq));
  m.u32("llama.embedding_length", static_cast<uint32_t>(c.dim));
  m.u32("llama.block_count", static_cast<uint32_t>(c.n_layers));
  m.u32("llama.feed_forward_length", static_cast<uint32_t>(c.ffn_dim));
  m.u32("llama.attention.head_count", static_cast<uint32_t>(c.n_heads));
  m.u32("llama.attention.head_count_kv", static_cast<uint32_t>(c.n_kv_heads));
  m.u32("llama.rope.dimension_count", static_cast<uint32_t>(c.head_dim()));
  m.u32("llama.vocab_size", static_cast<uint32_t>(c.vocab_size));
  m.f32("llama.rope.freq_base", static_cast<float>(c.rope_theta));
  m.f32("llama.attention.layer_norm_rms_epsilon", static_cast<float>(c.norm_eps));
  std::vector<int32_t> ids(static_cast<size_t>(tok.vocab_size()));
  for (int32_t i = 0; i < tok.vocab_size(); ++i) ids[static_cast<size_t>(i)] = i;
  m.string("tokenizer.ggml.model", "llama");
  m.array<int32_t>("tokenizer.ggml.tokens", Value::string, ids, [&](const int32_t& i) { m.bytes.put_string(tok.piece(i)); });
  m.array<int32_t>("tokenizer.ggml.scores", Value::f32, ids, [&](const int32_t& i) { m.bytes.put(tok.score(i)); });
  m.array<int32_t>("tokenizer.ggml.token_type", Value::i32, ids,
                   [&](const int32_t& i) { m.bytes.put(static_cast<int32_t>(tok.type(i))); });
  m.u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(tok.bos_id()));
  m.u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(tok.eos_id()));
  m.u32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(tok.unk_id()));
  m.boolean("tokenizer.ggml.add_bos_token", true);
  m.boolean("tokenizer.ggml.add_eos_token", false);
}

}  // namespace

GgufType gguf_type_from_string(const std::string& name) {
  if (name == "f32") return GgufType::f32;
  if (name == "f16") return GgufType::f16;
  if (name == "q8_0") return GgufType::q8_0;
  throw ModelError("GGUF type '" + name + "' unknown (choices: f32, f16, q8_0)");
}

void write_gguf(const Weights& w, const SentencePieceTokenizer& tok, GgufType type, const std::string& path) {
  if (const auto extended = w.config.extensions(); !extended.empty())
    throw ModelError("GGUF export: the format cannot express this model's " + extended);
  if (!w.block_scales.empty())  // its matrices would be written as bare int8 values, without their scales
    throw ModelError("GGUF export: the model stores int8 matrices (ce-model --quantize-out); export the float "
                     "checkpoint, with --gguf-type q8_0 for llama.cpp's int8");
  if (tok.vocab_size() != w.config.vocab_size)
    throw ModelError(path + ": the tokenizer has " + std::to_string(tok.vocab_size()) + " pieces, the model " +
                     std::to_string(w.config.vocab_size));
  const auto tensors = entries(w, type);
  Metadata meta;
  put_metadata(meta, w, tok, type);

  Bytes head;
  head.put_raw("GGUF", 4);
  head.put<uint32_t>(3);
  head.put<uint64_t>(tensors.size());
  head.put<uint64_t>(meta.count);
  head.put_raw(meta.bytes.data().data(), meta.bytes.size());
  std::vector<std::vector<char>> data;
  uint64_t offset = 0;
  for (const auto& e : tensors) {
    data.push_back(tensor_bytes(e));
    head.put_string(e.name);
    head.put<uint32_t>(static_cast<uint32_t>(e.values.dim()));
    for (int64_t d = e.values.dim() - 1; d >= 0; --d) head.put<uint64_t>(static_cast<uint64_t>(e.values.size(d)));
    head.put(static_cast<uint32_t>(e.type));
    head.put<uint64_t>(offset);
    offset += (data.back().size() + kAlignment - 1) / kAlignment * kAlignment;
  }
  head.pad_to(kAlignment);

  std::ofstream out(path, std::ios::binary);
  if (!out) throw ModelError(path + ": cannot write");
  out.write(head.data().data(), static_cast<std::streamsize>(head.size()));
  for (const auto& d : data) {
    out.write(d.data(), static_cast<std::streamsize>(d.size()));
    const std::vector<char> pad((kAlignment - d.size() % kAlignment) % kAlignment, 0);
    out.write(pad.data(), static_cast<std::streamsize>(pad.size()));
  }
  if (!out) throw ModelError(path + ": write failed");
}

}  // namespace ce
