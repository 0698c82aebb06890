#include "model/decoder.hpp"

#include <torch/torch.h>

#include <cmath>

namespace ce {

Decoder::Decoder(std::shared_ptr<const Weights> weights) : weights_(std::move(weights)) {
  const auto& c = config();
  const int64_t hd = c.head_dim();
  auto inv_freq = 1.0 / torch::pow(c.rope_theta, torch::arange(0, hd, 2, torch::kDouble) / static_cast<double>(hd));
  auto pos = torch::arange(c.max_seq, torch::kDouble);
  auto freqs = torch::outer(pos, inv_freq);       // (max_seq, hd/2)
  auto emb = torch::cat({freqs, freqs}, -1);      // (max_seq, hd): rotate_half layout
  cos_ = emb.cos().to(torch::kFloat);
  sin_ = emb.sin().to(torch::kFloat);
}

at::Tensor Decoder::embed(const at::Tensor& tokens) const {
  if (tokens.dim() != 1) throw ModelError("embed: tokens must be 1-D");
  if (tokens.numel() && (tokens.min().item<int64_t>() < 0 || tokens.max().item<int64_t>() >= config().vocab_size))
    throw ModelError("embed: token id outside the vocabulary of " + std::to_string(config().vocab_size));
  return weights_->embed.index_select(0, tokens.to(torch::kLong));
}

at::Tensor Decoder::rms_norm(const at::Tensor& x, const at::Tensor& w) const {
  return x * torch::rsqrt(x.pow(2).mean(-1, true) + config().norm_eps) * w;
}

at::Tensor Decoder::rope(const at::Tensor& x, int64_t start) const {
  const int64_t t = x.size(2), half = x.size(3) / 2;
  auto cos = cos_.narrow(0, start, t);  // (T, hd), broadcasts over (B, H)
  auto sin = sin_.narrow(0, start, t);
  auto rotated = torch::cat({-x.narrow(3, half, half), x.narrow(3, 0, half)}, -1);
  return x * cos + rotated * sin;
}

at::Tensor Decoder::layer_forward(int64_t layer, const at::Tensor& x, int64_t start, KvCache* kv) const {
  const auto& c = config();
  const auto& w = weights_->layers[static_cast<size_t>(layer)];
  const int64_t b = x.size(0), t = x.size(1), hd = c.head_dim();

  auto h = rms_norm(x, w.attn_norm);
  auto q = torch::linear(h, w.wq).view({b, t, c.n_heads, hd}).transpose(1, 2);     // (B, H, T, hd)
  auto k = torch::linear(h, w.wk).view({b, t, c.n_kv_heads, hd}).transpose(1, 2);  // (B, KV, T, hd)
  auto v = torch::linear(h, w.wv).view({b, t, c.n_kv_heads, hd}).transpose(1, 2);
  q = rope(q, start);
  k = rope(k, start);
  if (kv) {
    auto [keys, values] = kv->append(layer, k[0], v[0]);  // (KV, start + T, hd)
    k = keys.unsqueeze(0);
    v = values.unsqueeze(0);
  }
  const int64_t n_rep = c.n_heads / c.n_kv_heads;
  if (n_rep > 1) {
    k = k.repeat_interleave(n_rep, 1);  // head h reads kv head h / n_rep, as HF's repeat_kv
    v = v.repeat_interleave(n_rep, 1);
  }
  const int64_t s = k.size(2);
  auto scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(hd));  // (B, H, T, S)
  if (t > 1) {
    // Query i sits at position start + i and may read keys [0, start + i].
    auto mask = torch::ones({t, s}, torch::kBool).triu(start + 1);
    scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
  }
  auto attn = torch::matmul(torch::softmax(scores, -1), v);  // (B, H, T, hd)
  auto out = x + torch::linear(attn.transpose(1, 2).reshape({b, t, c.dim}), w.wo);
  auto g = rms_norm(out, w.ffn_norm);
  return out + torch::linear(torch::silu(torch::linear(g, w.w_gate)) * torch::linear(g, w.w_up), w.w_down);
}

at::Tensor Decoder::forward(const at::Tensor& hidden, int64_t start, int64_t layer_begin, int64_t layer_end,
                            KvCache& kv) const {
  const auto& c = config();
  if (hidden.dim() != 2 || hidden.size(1) != c.dim)
    throw ModelError("decoder: hidden must be (T, " + std::to_string(c.dim) + ")");
  if (hidden.scalar_type() != torch::kFloat) throw ModelError("decoder: hidden must be float32");
  if (layer_begin < kv.layer_begin() || layer_end > kv.layer_end() || layer_begin > layer_end)
    throw ModelError("decoder: layers [" + std::to_string(layer_begin) + ", " + std::to_string(layer_end) +
                     ") not held by the cache [" + std::to_string(kv.layer_begin()) + ", " +
                     std::to_string(kv.layer_end()) + ")");
  if (start < 0 || start + hidden.size(0) > c.max_seq)
    throw ModelError("decoder: positions [" + std::to_string(start) + ", " + std::to_string(start + hidden.size(0)) +
                     ") exceed max_seq " + std::to_string(c.max_seq));
  for (int64_t l = layer_begin; l < layer_end; ++l)
    if (kv.length(l) != start)
      throw ModelError("decoder: layer " + std::to_string(l) + " has " + std::to_string(kv.length(l)) +
                       " cached positions, expected " + std::to_string(start));
  auto x = hidden.unsqueeze(0);  // (1, T, dim)
  for (int64_t l = layer_begin; l < layer_end; ++l) x = layer_forward(l, x, start, &kv);
  return x.squeeze(0);
}

at::Tensor Decoder::forward_no_cache(const at::Tensor& hidden, int64_t layer_begin, int64_t layer_end) const {
  auto x = hidden;
  for (int64_t l = layer_begin; l < layer_end; ++l) x = layer_forward(l, x, 0, nullptr);
  return x;
}

at::Tensor Decoder::exit_logits(int64_t exit_layer, const at::Tensor& hidden) const {
  auto it = weights_->exits.find(exit_layer);
  if (it == weights_->exits.end()) throw ModelError("decoder: no exit head after layer " + std::to_string(exit_layer));
  return torch::linear(rms_norm(hidden, it->second.norm), it->second.head);
}

at::Tensor Decoder::final_logits(const at::Tensor& hidden) const {
  return torch::linear(rms_norm(hidden, weights_->final_norm), weights_->lm_head);
}

TokenChoice Decoder::choose_greedy(const at::Tensor& logits) {
  auto probs = torch::softmax(logits.to(torch::kFloat), -1);
  auto [p, i] = probs.max(-1);
  return {static_cast<int32_t>(i.item<int64_t>()), p.item<float>()};
}

}  // namespace ce
