#include "tests/model/reference_llama.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace ce::test {
namespace {

// The only libtorch use: copy a tensor's values out as float.
std::vector<float> to_vector(const at::Tensor& t) {
  auto c = t.detach().to(at::kFloat).contiguous();
  const float* p = c.data_ptr<float>();
  return std::vector<float>(p, p + c.numel());
}

double silu(double x) { return x / (1.0 + std::exp(-x)); }

}  // namespace

ReferenceLlama::ReferenceLlama(const Weights& w, RefVariant variant) : c_(w.config), variant_(variant) {
  auto matrix = [&](const at::Tensor& t, const at::Tensor& bias = {}) {
    Matrix m;
    m.q8_input = variant.q8_activations;
    m.out = t.size(0);
    m.in = t.size(1);
    m.w = to_vector(t);
    if (bias.defined()) m.bias = to_vector(bias);
    return m;
  };
  embed_ = to_vector(w.embed);
  for (const auto& l : w.layers) {
    Layer r;
    r.attn_norm = to_vector(l.attn_norm);
    r.ffn_norm = to_vector(l.ffn_norm);
    r.wq = matrix(l.wq, l.bq);
    r.wk = matrix(l.wk, l.bk);
    r.wv = matrix(l.wv, l.bv);
    r.wo = matrix(l.wo, l.bo);
    r.gate = matrix(l.w_gate, l.b_gate);
    r.up = matrix(l.w_up, l.b_up);
    r.down = matrix(l.w_down, l.b_down);
    layers_.push_back(std::move(r));
  }
  final_norm_ = to_vector(w.final_norm);
  lm_head_ = matrix(w.lm_head);
  for (const auto& [e, x] : w.exits) exits_.push_back({e, Exit{to_vector(x.norm), matrix(x.head)}});
}

namespace {

// x as an int8 product sees it: the fp32 value, per 32-value block scale = max|x| / 127 and
// q = x * (1 / scale) to nearest (ties to even), back to q * scale.
Vec q8_rounded(const Vec& x) {
  Vec out(x.size());
  for (size_t b = 0; b < x.size(); b += 32) {
    const size_t end = std::min(x.size(), b + 32);
    float top = 0;
    for (size_t k = b; k < end; ++k) top = std::max(top, std::abs(static_cast<float>(x[k])));
    const float scale = top / 127.0f, inv = scale > 0 ? 1.0f / scale : 0.0f;
    for (size_t k = b; k < end; ++k) out[k] = static_cast<double>(std::nearbyint(static_cast<float>(x[k]) * inv) * scale);
  }
  return out;
}

}  // namespace

Vec ReferenceLlama::Matrix::apply(const Vec& input) const {
  if (static_cast<int64_t>(input.size()) != in) throw std::logic_error("reference: matrix/vector size mismatch");
  const Vec& x = q8_input ? q8_rounded(input) : input;
  Vec y(static_cast<size_t>(out), 0.0);
  for (int64_t o = 0; o < out; ++o) {
    double s = 0;
    const float* row = w.data() + o * in;
    for (int64_t i = 0; i < in; ++i) s += static_cast<double>(row[i]) * x[static_cast<size_t>(i)];
    y[static_cast<size_t>(o)] = s + (bias.empty() ? 0.0 : static_cast<double>(bias[static_cast<size_t>(o)]));
  }
  return y;
}

Rows ReferenceLlama::embed(const std::vector<int64_t>& tokens) const {
  Rows out;
  for (auto t : tokens) {
    const float* row = embed_.data() + t * c_.dim;
    out.emplace_back(row, row + c_.dim);
  }
  return out;
}

Vec ReferenceLlama::rms_norm(const Vec& x, const std::vector<float>& w) const {
  double ms = 0;
  for (double v : x) ms += v * v;
  ms /= static_cast<double>(x.size());
  const double r = 1.0 / std::sqrt(ms + c_.norm_eps);
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * r * w[i];
  return y;
}

double ReferenceLlama::inverse_frequency(int64_t pair) const {
  const double hd = static_cast<double>(c_.head_dim());
  const double base = 1.0 / std::pow(c_.rope_theta, static_cast<double>(2 * pair) / hd);
  const auto& r = c_.rope_scaling;
  if (r.kind == RopeScaling::Kind::linear) return base / r.factor;
  if (r.kind != RopeScaling::Kind::llama3) return base;
  // transformers' _compute_llama3_parameters, step by step.
  const double old_context = static_cast<double>(r.original_max_position);
  const double low_freq_wavelen = old_context / r.low_freq_factor;
  const double high_freq_wavelen = old_context / r.high_freq_factor;
  const double wavelen = 2 * M_PI / base;
  const double inv_freq_llama = wavelen > low_freq_wavelen ? base / r.factor : base;
  const double smooth_factor = (old_context / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
  const double smoothed = (1 - smooth_factor) * inv_freq_llama / r.factor + smooth_factor * inv_freq_llama;
  const bool is_medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
  return is_medium ? smoothed : inv_freq_llama;
}

void ReferenceLlama::rope(Vec& x, int64_t n_heads, int64_t position) const {
  const int64_t hd = c_.head_dim(), half = hd / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    double* v = x.data() + h * hd;
    for (int64_t i = 0; i < half; ++i) {
      const double inv_freq = inverse_frequency(i);
      const double angle = static_cast<double>(position) * inv_freq;
      const double cs = std::cos(angle), sn = std::sin(angle);
      // rotate_half pairs element i with i + half; the wrong variant pairs 2i with 2i + 1.
      const int64_t a = variant_.interleaved_rope ? 2 * i : i;
      const int64_t b = variant_.interleaved_rope ? 2 * i + 1 : i + half;
      const double x1 = v[a], x2 = v[b];
      v[a] = x1 * cs - x2 * sn;
      v[b] = x2 * cs + x1 * sn;
    }
  }
}

Rows ReferenceLlama::layer(const Layer& l, const Rows& x) const {
  const int64_t T = static_cast<int64_t>(x.size());
  const int64_t hd = c_.head_dim(), H = c_.n_heads, KV = c_.n_kv_heads, group = H / KV;
  Rows q(x.size()), k(x.size()), v(x.size());
  for (int64_t t = 0; t < T; ++t) {
    const Vec h = rms_norm(x[static_cast<size_t>(t)], l.attn_norm);
    q[static_cast<size_t>(t)] = l.wq.apply(h);
    k[static_cast<size_t>(t)] = l.wk.apply(h);
    v[static_cast<size_t>(t)] = l.wv.apply(h);
    rope(q[static_cast<size_t>(t)], H, t);
    rope(k[static_cast<size_t>(t)], KV, t);
  }
  Rows out(x.size());
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  for (int64_t t = 0; t < T; ++t) {
    Vec attn(static_cast<size_t>(H * hd), 0.0);
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kvh = variant_.gqa_modulo ? h % KV : h / group;
      const double* qh = q[static_cast<size_t>(t)].data() + h * hd;
      // Causal: position t reads keys 0..t.
      Vec score(static_cast<size_t>(t + 1));
      double mx = -1e300;
      for (int64_t s = 0; s <= t; ++s) {
        const double* ks = k[static_cast<size_t>(s)].data() + kvh * hd;
        double d = 0;
        for (int64_t i = 0; i < hd; ++i) d += qh[i] * ks[i];
        score[static_cast<size_t>(s)] = d * scale;
        mx = std::max(mx, d * scale);
      }
      double z = 0;
      for (auto& s : score) z += (s = std::exp(s - mx));
      for (int64_t s = 0; s <= t; ++s) {
        const double p = score[static_cast<size_t>(s)] / z;
        const double* vs = v[static_cast<size_t>(s)].data() + kvh * hd;
        for (int64_t i = 0; i < hd; ++i) attn[static_cast<size_t>(h * hd + i)] += p * vs[i];
      }
    }
    Vec r = x[static_cast<size_t>(t)];
    const Vec o = l.wo.apply(attn);
    for (size_t i = 0; i < r.size(); ++i) r[i] += o[i];
    const Vec g = rms_norm(r, l.ffn_norm);
    Vec gate = l.gate.apply(g);
    const Vec up = l.up.apply(g);
    for (size_t i = 0; i < gate.size(); ++i) gate[i] = silu(gate[i]) * up[i];
    const Vec down = l.down.apply(gate);
    for (size_t i = 0; i < r.size(); ++i) r[i] += down[i];
    out[static_cast<size_t>(t)] = std::move(r);
  }
  return out;
}

Rows ReferenceLlama::layers(Rows x, int64_t begin, int64_t end) const {
  for (int64_t i = begin; i < end; ++i) x = layer(layers_[static_cast<size_t>(i)], x);
  return x;
}

Vec ReferenceLlama::final_logits(const Vec& h) const { return lm_head_.apply(rms_norm(h, final_norm_)); }

Vec ReferenceLlama::exit_logits(int64_t exit_layer, const Vec& h) const {
  for (const auto& [e, x] : exits_)
    if (e == exit_layer) return x.head.apply(rms_norm(h, x.norm));
  throw std::logic_error("reference: no exit after layer " + std::to_string(exit_layer));
}

}  // namespace ce::test
