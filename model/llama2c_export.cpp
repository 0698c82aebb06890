#include "model/llama2c_export.hpp"

#include <torch/torch.h>

#include <cstdio>
#include <fstream>

#include "model/rotary_layout.hpp"
#include "model/text/sentencepiece_tokenizer.hpp"
#include "model/weights.hpp"

namespace ce {
namespace {

void write_tensor(std::ofstream& out, const at::Tensor& t) {
  auto f = t.detach().to(at::kFloat).contiguous();
  out.write(reinterpret_cast<const char*>(f.data_ptr<float>()), static_cast<std::streamsize>(f.nbytes()));
}

template <class Slot>
void write_layers(std::ofstream& out, const Weights& w, Slot slot) {
  for (const auto& l : w.layers) write_tensor(out, slot(l));
}

}  // namespace

at::Tensor rotate_half_to_interleaved(const at::Tensor& w, int64_t heads) {
  const int64_t hd = w.size(0) / heads, dim = w.size(1);
  return w.view({heads, 2, hd / 2, dim}).transpose(1, 2).reshape({heads * hd, dim});
}

void write_llama2c_model(const Weights& w, const std::string& path) {
  if (const auto extended = w.config.extensions(); !extended.empty())
    throw ModelError("llama2.c export: the format cannot express this model's " + extended);
  const auto& c = w.config;
  if (c.rope_theta != 10000.0)
    throw ModelError("llama2.c export: run.c fixes rope_theta at 10000, this model has " + std::to_string(c.rope_theta));
  std::ofstream out(path, std::ios::binary);
  if (!out) throw ModelError(path + ": cannot write");
  // vocab_size negative: the classifier is stored separately (not tied to the embedding).
  const int32_t header[7] = {static_cast<int32_t>(c.dim),        static_cast<int32_t>(c.ffn_dim),
                             static_cast<int32_t>(c.n_layers),   static_cast<int32_t>(c.n_heads),
                             static_cast<int32_t>(c.n_kv_heads), static_cast<int32_t>(c.tie_word_embeddings ? c.vocab_size : -c.vocab_size),
                             static_cast<int32_t>(c.max_seq)};
  out.write(reinterpret_cast<const char*>(header), sizeof header);
  write_tensor(out, w.embed);
  write_layers(out, w, [](const LayerWeights& l) { return l.attn_norm; });
  write_layers(out, w, [&](const LayerWeights& l) { return rotate_half_to_interleaved(l.wq, c.n_heads); });
  write_layers(out, w, [&](const LayerWeights& l) { return rotate_half_to_interleaved(l.wk, c.n_kv_heads); });
  write_layers(out, w, [](const LayerWeights& l) { return l.wv; });
  write_layers(out, w, [](const LayerWeights& l) { return l.wo; });
  write_layers(out, w, [](const LayerWeights& l) { return l.ffn_norm; });
  write_layers(out, w, [](const LayerWeights& l) { return l.w_gate; });  // w1
  write_layers(out, w, [](const LayerWeights& l) { return l.w_down; });  // w2
  write_layers(out, w, [](const LayerWeights& l) { return l.w_up; });    // w3
  write_tensor(out, w.final_norm);
  // The legacy format's precomputed RoPE tables: run.c skips them, but they must be there.
  write_tensor(out, torch::zeros({c.max_seq, c.head_dim()}));
  if (!c.tie_word_embeddings) write_tensor(out, w.lm_head);
  if (!out) throw ModelError(path + ": write failed");
}

void write_llama2c_tokenizer(const SentencePieceTokenizer& t, const std::string& path) {
  std::vector<std::string> pieces;
  int32_t longest = 0;
  for (int32_t id = 0; id < t.vocab_size(); ++id) {
    std::string p = t.piece(id);
    for (size_t at; (at = p.find("\xe2\x96\x81")) != std::string::npos;) p.replace(at, 3, " ");
    longest = std::max(longest, static_cast<int32_t>(p.size()));
    pieces.push_back(std::move(p));
  }
  std::ofstream out(path, std::ios::binary);
  if (!out) throw ModelError(path + ": cannot write");
  out.write(reinterpret_cast<const char*>(&longest), sizeof longest);
  for (int32_t id = 0; id < t.vocab_size(); ++id) {
    const float score = t.score(id);
    const auto len = static_cast<int32_t>(pieces[static_cast<size_t>(id)].size());
    out.write(reinterpret_cast<const char*>(&score), sizeof score);
    out.write(reinterpret_cast<const char*>(&len), sizeof len);
    out.write(pieces[static_cast<size_t>(id)].data(), len);
  }
  if (!out) throw ModelError(path + ": write failed");
}

}  // namespace ce
