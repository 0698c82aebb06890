// GGUF export: the file read back by a reader written here from the format's description
// (ggml's gguf.h): header, metadata, tensor table, alignment; values equal the model's (F32, F16
// within fp16 rounding, Q8_0 within half a quantization step of each block); q and k in the
// interleaved rotary order; the vocabulary as the tokenizer holds it. That llama.cpp itself reads
// the file and decodes the same greedy text is checked by scripts/bench-decode before it times.
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <cstring>
#include <map>

#include "model/gguf_export.hpp"
#include "model/text/sentencepiece_tokenizer.hpp"
#include "tests/model/tiny_model.hpp"

using namespace ce;
using namespace ce::test;

namespace {

const std::string tokenizer_path = CE_SOURCE_DIR "/data/brown/tokenizer-2048.model";

struct GgufTensor {
  std::vector<uint64_t> dims;  // innermost first
  uint32_t type = 0;
  uint64_t offset = 0;
};

struct GgufFile {
  std::map<std::string, uint64_t> numbers;  // u32 / i32 / bool values
  std::map<std::string, float> floats;
  std::map<std::string, std::string> strings;
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> token_types;
  std::map<std::string, GgufTensor> tensors;
  std::vector<std::string> order;
  std::string bytes;
  uint64_t data_start = 0;

  const char* data(const std::string& name) const { return bytes.data() + data_start + tensors.at(name).offset; }
};

class Reader {
 public:
  explicit Reader(const std::string& b) : b_(b) {}
  template <class T>
  T get() {
    BOOST_REQUIRE_LE(at_ + sizeof(T), b_.size());
    T v;
    std::memcpy(&v, b_.data() + at_, sizeof v);
    at_ += sizeof v;
    return v;
  }
  std::string str() {
    const auto n = get<uint64_t>();
    BOOST_REQUIRE_LE(at_ + n, b_.size());
    std::string s = b_.substr(at_, n);
    at_ += n;
    return s;
  }
  size_t at() const { return at_; }

 private:
  const std::string& b_;
  size_t at_ = 0;
};

GgufFile read_gguf(const std::string& path) {
  GgufFile f;
  f.bytes = read_file(path);
  Reader r(f.bytes);
  BOOST_REQUIRE_EQUAL(f.bytes.substr(0, 4), "GGUF");
  r.get<uint32_t>();
  BOOST_REQUIRE_EQUAL(r.get<uint32_t>(), 3u);
  const auto n_tensors = r.get<uint64_t>(), n_kv = r.get<uint64_t>();
  for (uint64_t i = 0; i < n_kv; ++i) {
    const auto key = r.str();
    const auto type = r.get<uint32_t>();
    switch (type) {
      case 4: f.numbers[key] = r.get<uint32_t>(); break;
      case 5: f.numbers[key] = static_cast<uint64_t>(r.get<int32_t>()); break;
      case 6: f.floats[key] = r.get<float>(); break;
      case 7: f.numbers[key] = r.get<uint8_t>(); break;
      case 8: f.strings[key] = r.str(); break;
      case 9: {
        const auto item = r.get<uint32_t>();
        const auto n = r.get<uint64_t>();
        for (uint64_t j = 0; j < n; ++j) {
          if (key == "tokenizer.ggml.tokens" && item == 8) f.tokens.push_back(r.str());
          else if (key == "tokenizer.ggml.scores" && item == 6) f.scores.push_back(r.get<float>());
          else if (key == "tokenizer.ggml.token_type" && item == 5) f.token_types.push_back(r.get<int32_t>());
          else BOOST_FAIL("unexpected array " + key);
        }
        break;
      }
      default: BOOST_FAIL("unexpected metadata type " + std::to_string(type) + " of " + key);
    }
  }
  for (uint64_t i = 0; i < n_tensors; ++i) {
    const auto name = r.str();
    GgufTensor t;
    const auto dims = r.get<uint32_t>();
    for (uint32_t d = 0; d < dims; ++d) t.dims.push_back(r.get<uint64_t>());
    t.type = r.get<uint32_t>();
    t.offset = r.get<uint64_t>();
    BOOST_CHECK_EQUAL(t.offset % 32, 0u);
    f.tensors[name] = t;
    f.order.push_back(name);
  }
  f.data_start = (r.at() + 31) / 32 * 32;
  return f;
}

float half_at(const char* p) {
  at::Half h;
  std::memcpy(&h, p, 2);
  return static_cast<float>(h);
}

// The tensor's values as fp32, (dims reversed) row-major, decoded by the format's rules.
at::Tensor values_of(const GgufFile& f, const std::string& name) {
  const auto& t = f.tensors.at(name);
  std::vector<int64_t> shape(t.dims.rbegin(), t.dims.rend());
  int64_t n = 1;
  for (auto d : shape) n *= d;
  auto out = at::empty({n}, at::kFloat);
  float* o = out.data_ptr<float>();
  const char* p = f.data(name);
  const uint64_t bytes = t.type == 0 ? n * 4 : t.type == 1 ? n * 2 : n / 32 * 34;
  BOOST_REQUIRE_LE(f.data_start + t.offset + bytes, f.bytes.size());
  if (t.type == 0) std::memcpy(o, p, static_cast<size_t>(n) * 4);
  else if (t.type == 1) for (int64_t i = 0; i < n; ++i) o[i] = half_at(p + 2 * i);
  else if (t.type == 8)
    for (int64_t b = 0; b < n / 32; ++b) {
      const char* block = p + b * 34;  // fp16 scale, 32 int8
      const float d = half_at(block);
      for (int i = 0; i < 32; ++i) o[b * 32 + i] = d * static_cast<float>(static_cast<int8_t>(block[2 + i]));
    }
  else BOOST_FAIL("unexpected tensor type " + std::to_string(t.type));
  return out.view(shape);
}

ModelConfig gguf_config() {
  auto c = tiny_config();
  c.dim = 64;       // 2 blocks of 32 per row: Q8_0
  c.ffn_dim = 80;   // ffn_down rows of 80 values: not a multiple of 32, stays F16
  c.vocab_size = 2048;
  return c;
}

// HF rotate_half rows of one head, from the interleaved rows llama.cpp reads: row 2i was i, 2i+1 was i + hd/2.
at::Tensor back_to_rotate_half(const at::Tensor& w, int64_t heads) {
  const int64_t hd = w.size(0) / heads;
  return w.view({heads, hd / 2, 2, w.size(1)}).transpose(1, 2).reshape(w.sizes());
}

}  // namespace

BOOST_AUTO_TEST_SUITE(gguf_export)

BOOST_AUTO_TEST_CASE(layout_metadata_and_values_per_type) {
  const auto c = gguf_config();
  const auto w = scaled_weights(c, 7, 0.1, true);
  const SentencePieceTokenizer tok(tokenizer_path);
  TempDir dir;
  for (const auto type : {GgufType::f32, GgufType::f16, GgufType::q8_0}) {
    BOOST_TEST_CONTEXT("type " << static_cast<int>(type)) {
      write_gguf(*w, tok, type, dir.file("m.gguf"));
      const auto f = read_gguf(dir.file("m.gguf"));
      BOOST_CHECK_EQUAL(f.strings.at("general.architecture"), "llama");
      BOOST_CHECK_EQUAL(f.numbers.at("llama.block_count"), 4u);
      BOOST_CHECK_EQUAL(f.numbers.at("llama.embedding_length"), 64u);
      BOOST_CHECK_EQUAL(f.numbers.at("llama.feed_forward_length"), 80u);
      BOOST_CHECK_EQUAL(f.numbers.at("llama.attention.head_count"), 4u);
      BOOST_CHECK_EQUAL(f.numbers.at("llama.attention.head_count_kv"), 2u);
      BOOST_CHECK_EQUAL(f.numbers.at("llama.rope.dimension_count"), 16u);
      BOOST_CHECK_EQUAL(f.floats.at("llama.rope.freq_base"), 10000.0f);
      BOOST_CHECK_EQUAL(f.floats.at("llama.attention.layer_norm_rms_epsilon"), 1e-5f);
      BOOST_CHECK_EQUAL(f.numbers.at("general.file_type"), type == GgufType::f32 ? 0u : type == GgufType::f16 ? 1u : 7u);
      // 1 embedding + 4 layers of 9 + output norm + output (untied); no exit tensor.
      BOOST_CHECK_EQUAL(f.tensors.size(), 1u + 4 * 9 + 2);
      for (const auto& name : f.order) BOOST_CHECK_MESSAGE(name.find("exit") == std::string::npos, name);
      BOOST_CHECK((f.tensors.at("blk.0.attn_q.weight").dims == std::vector<uint64_t>{64, 64}));
      BOOST_CHECK((f.tensors.at("blk.0.attn_k.weight").dims == std::vector<uint64_t>{64, 32}));
      BOOST_CHECK((f.tensors.at("blk.0.ffn_down.weight").dims == std::vector<uint64_t>{80, 64}));
      BOOST_CHECK((f.tensors.at("token_embd.weight").dims == std::vector<uint64_t>{64, 2048}));
      BOOST_CHECK_EQUAL(f.tensors.at("blk.3.attn_norm.weight").type, 0u);  // norms F32 always
      const uint32_t matrix_type = type == GgufType::f32 ? 0 : type == GgufType::f16 ? 1 : 8;
      BOOST_CHECK_EQUAL(f.tensors.at("blk.1.ffn_gate.weight").type, matrix_type);
      BOOST_CHECK_EQUAL(f.tensors.at("blk.1.ffn_down.weight").type, type == GgufType::f32 ? 0u : 1u);
      // Offsets in file order, each tensor after the previous one's bytes.
      for (size_t i = 1; i < f.order.size(); ++i)
        BOOST_CHECK_GT(f.tensors.at(f.order[i]).offset, f.tensors.at(f.order[i - 1]).offset);

      // Values: exact for F32, fp16 rounding for F16, half a step of the block's scale for Q8_0.
      const auto tolerance = [&](const at::Tensor& ref, const std::string& name) {
        const auto t = f.tensors.at(name).type;
        if (t == 0) return 0.0;
        if (t == 1) return ref.abs().max().item<double>() / 1024.0;
        return ref.abs().max().item<double>() / 127.0 / 2.0 * 1.01;
      };
      const auto& l = w->layers[1];
      const std::map<std::string, at::Tensor> expected = {
          {"token_embd.weight", w->embed},
          {"blk.1.attn_norm.weight", l.attn_norm},
          {"blk.1.attn_v.weight", l.wv},
          {"blk.1.attn_output.weight", l.wo},
          {"blk.1.ffn_gate.weight", l.w_gate},
          {"blk.1.ffn_up.weight", l.w_up},
          {"blk.1.ffn_down.weight", l.w_down},
          {"output_norm.weight", w->final_norm},
          {"output.weight", w->lm_head}};
      for (const auto& [name, ref] : expected)
        BOOST_CHECK_MESSAGE(max_abs_diff(values_of(f, name), ref) <= tolerance(ref, name), name);
      const auto q = back_to_rotate_half(values_of(f, "blk.1.attn_q.weight"), 4);
      const auto k = back_to_rotate_half(values_of(f, "blk.1.attn_k.weight"), 2);
      BOOST_CHECK_LE(max_abs_diff(q, l.wq), tolerance(l.wq, "blk.1.attn_q.weight"));
      BOOST_CHECK_LE(max_abs_diff(k, l.wk), tolerance(l.wk, "blk.1.attn_k.weight"));
      // Not the same rows unpermuted (the permutation is not a no-op on these weights).
      BOOST_CHECK_GT(max_abs_diff(values_of(f, "blk.1.attn_q.weight"), l.wq), 0.01);

      // The vocabulary as the tokenizer holds it.
      BOOST_REQUIRE_EQUAL(f.tokens.size(), 2048u);
      BOOST_REQUIRE_EQUAL(f.scores.size(), 2048u);
      BOOST_REQUIRE_EQUAL(f.token_types.size(), 2048u);
      for (int32_t id : {0, 1, 2, 3, 100, 2047}) {
        BOOST_CHECK_EQUAL(f.tokens[static_cast<size_t>(id)], tok.piece(id));
        BOOST_CHECK_EQUAL(f.scores[static_cast<size_t>(id)], tok.score(id));
        BOOST_CHECK_EQUAL(f.token_types[static_cast<size_t>(id)], static_cast<int32_t>(tok.type(id)));
      }
      BOOST_CHECK_EQUAL(f.token_types[1], 3);  // <s> is a control piece
      BOOST_CHECK_EQUAL(f.numbers.at("tokenizer.ggml.bos_token_id"), 1u);
      BOOST_CHECK_EQUAL(f.numbers.at("tokenizer.ggml.eos_token_id"), 2u);
      BOOST_CHECK_EQUAL(f.strings.at("tokenizer.ggml.model"), "llama");
    }
  }
}

BOOST_AUTO_TEST_CASE(q8_0_blocks_round_to_nearest_step) {
  // One row with a known block: max 127 steps of 0.5 -> scale 0.5 exactly, values on the grid.
  auto c = gguf_config();
  auto w = scaled_weights(c, 3, 0.1);
  auto row = w->layers[0].w_up[0];
  row.zero_();
  row[0] = 63.5f;    // the block's max: scale 0.5
  row[1] = -1.2f;    // -2.4 steps -> -2 -> -1.0
  row[2] = 0.76f;    // 1.52 steps -> 2 -> 1.0
  row[33] = -0.25f;  // second block: alone, its own scale
  TempDir dir;
  write_gguf(*w, SentencePieceTokenizer(tokenizer_path), GgufType::q8_0, dir.file("m.gguf"));
  const auto f = read_gguf(dir.file("m.gguf"));
  const auto up = values_of(f, "blk.0.ffn_up.weight");
  BOOST_CHECK_EQUAL(up[0][0].item<float>(), 63.5f);
  BOOST_CHECK_EQUAL(up[0][1].item<float>(), -1.0f);
  BOOST_CHECK_EQUAL(up[0][2].item<float>(), 1.0f);
  BOOST_CHECK_EQUAL(up[0][3].item<float>(), 0.0f);
  BOOST_CHECK_CLOSE(up[0][33].item<float>(), -0.25f, 0.1);
}

BOOST_AUTO_TEST_CASE(refusals_name_the_problem) {
  const auto w = scaled_weights(tiny_config(), 1, 0.1);  // vocab 96, the tokenizer has 2048
  TempDir dir;
  BOOST_CHECK(contains(model_error_text([&] { write_gguf(*w, SentencePieceTokenizer(tokenizer_path), GgufType::f16, dir.file("m.gguf")); }),
                       "2048 pieces"));
  BOOST_CHECK(contains(model_error_text([] { gguf_type_from_string("q4_k"); }), "q4_k"));
  const auto ok = scaled_weights(gguf_config(), 1, 0.1);
  BOOST_CHECK(contains(model_error_text([&] { write_gguf(*ok, SentencePieceTokenizer(tokenizer_path), GgufType::f16, dir.path() + "/no/such/dir/m.gguf"); }),
                       "cannot write"));
  // An int8 checkpoint (ce-model --quantize-out): its bare values are no weights without their scales.
  TempDir stored, quantized;
  save_weights(*ok, stored.path());
  write_quantized_checkpoint(stored.path(), quantized.path());
  const auto int8 = model_error_text([&] {
    write_gguf(*load_weights(quantized.path(), StoredType::keep), SentencePieceTokenizer(tokenizer_path), GgufType::q8_0,
               dir.file("m.gguf"));
  });
  BOOST_CHECK_MESSAGE(contains(int8, "stores int8 matrices"), int8);
}

BOOST_AUTO_TEST_SUITE_END()
