#include "model/decoder.hpp"

#include <torch/torch.h>

#include <sys/mman.h>

#include <array>
#include <cmath>
#include <cstdlib>
#include <map>
#include <optional>
#include <set>
#include <vector>

#include "model/kernels.hpp"
#include "model/safetensors.hpp"

namespace ce {

// The weights as the kernels read them: a kernels::Matrix per weight matrix over tensors this
// struct keeps alive (the Weights' own tensors when no conversion was needed).
struct Decoder::Packed {
  struct Mat {
    at::Tensor values, scales;  // (rows, cols) fp32 / fp16 / bf16 / int8; int8: (rows, blocks) fp32
    kernels::Matrix view;
  };
  struct Layer {
    const float* attn_norm = nullptr;  // null, like every field, for a layer outside the process's parts
    const float* ffn_norm = nullptr;
    const float *bq = nullptr, *bk = nullptr, *bv = nullptr, *bo = nullptr;  // biases, where the model has them
    const float *b_gate = nullptr, *b_up = nullptr, *b_down = nullptr;
    Mat wq, wk, wv, wo, gate, up, down;
  };
  // A layer's matrices as loaded and as packed: one list for packing them and for releasing them.
  static constexpr std::pair<at::Tensor LayerWeights::*, Mat Layer::*> layer_matrices[] = {
      {&LayerWeights::wq, &Layer::wq},         {&LayerWeights::wk, &Layer::wk},     {&LayerWeights::wv, &Layer::wv},
      {&LayerWeights::wo, &Layer::wo},         {&LayerWeights::w_gate, &Layer::gate}, {&LayerWeights::w_up, &Layer::up},
      {&LayerWeights::w_down, &Layer::down}};
  struct Head {
    const float* norm;
    const Mat* matrix;  // shared between tied heads
  };
  std::vector<Layer> layers;
  std::map<const void*, std::unique_ptr<Mat>> heads_by_storage;  // lm_head, exit heads: each storage once
  std::optional<Head> final_head;  // absent on an edge
  std::map<int64_t, Head> exits;
  std::vector<float> cos, sin;  // (max_seq, head_dim / 2)
  int64_t bytes = 0;
  std::string precision;
  const std::map<const void*, at::Tensor>* block_scales = nullptr;  // of int8 matrices as stored; while packing

  static kernels::WeightType type_of(const at::Tensor& t) {
    switch (t.scalar_type()) {
      case at::kFloat: return kernels::WeightType::f32;
      case at::kHalf: return kernels::WeightType::f16;
      case at::kBFloat16: return kernels::WeightType::bf16;
      default: throw ModelError("decoder: weight matrices must be F32, F16 or BF16");
    }
  }

  // The type a matrix is held in for `p`, or nullopt when it is held as loaded (no copy).
  static std::optional<at::ScalarType> converted_type(const at::Tensor& t, WeightPrecision p) {
    const auto as = [&](at::ScalarType want) { return t.scalar_type() == want ? std::nullopt : std::optional(want); };
    switch (p) {
      case WeightPrecision::as_stored: {
        // The portable kernels convert halves value by value: there, fp32 is the faster way to hold
        // them. int8 stays int8 (its kernels multiply in integers in every build).
        const bool half = t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
        return kernels::isa() == "portable" && half ? std::optional(at::kFloat) : std::nullopt;
      }
      case WeightPrecision::fp32: return as(at::kFloat);
      case WeightPrecision::fp16: return as(at::kHalf);
      case WeightPrecision::int8: return as(at::kChar);
    }
    return std::nullopt;
  }
  // Whether a matrix held as int8 is rearranged for the VNNI kernel (a copy, even of one stored as int8).
  static bool interleaved(const at::Tensor& t, WeightPrecision p) {
    return converted_type(t, p).value_or(t.scalar_type()) == at::kChar && kernels::q8_grouped_pays() &&
           kernels::q8_grouped_fits(t.size(0), t.size(1));
  }
  static size_t converted_bytes(const at::Tensor& t, WeightPrecision p) {
    const auto type = interleaved(t, p) ? std::optional(at::kChar) : converted_type(t, p);
    if (!type) return 0;
    const auto rows = static_cast<size_t>(t.size(0)), cols = static_cast<size_t>(t.size(1));
    if (*type == at::kChar)
      return aligned(static_cast<size_t>(kernels::q8_grouped_bytes(t.size(0), t.size(1)))) +  // >= rows * cols
             aligned(rows * static_cast<size_t>(kernels::q8_blocks(t.size(1))) * 4);
    return aligned(rows * cols * static_cast<size_t>(c10::elementSize(*type)));
  }
  static size_t aligned(size_t bytes) { return (bytes + 63) / 64 * 64; }

  // Converted matrices live in one block of memory, in the order a step reads them, on 2 MiB pages
  // where the kernel grants them: the decode step streams every weight once per token, and on 4 KiB
  // pages the TLB misses and the prefetcher's restarts at page boundaries cost ~25% of the
  // bandwidth (measured on Zen 4: one sequential fp16 stream ~23 GB/s on 4 KiB pages, ~30 on 2 MiB).
  // Matrices kept as loaded stay views of the file's mapping (the page cache's large folios).
  struct Arena {
    void* base = nullptr;
    size_t size = 0, used = 0;
    ~Arena() { std::free(base); }
  } arena;
  void reserve(size_t bytes) {
    if (bytes == 0) return;
    constexpr size_t huge = size_t{2} << 20;
    arena.size = (bytes + huge - 1) / huge * huge;
    arena.base = std::aligned_alloc(huge, arena.size);
    if (!arena.base) throw ModelError("decoder: cannot allocate " + std::to_string(arena.size >> 20) + " MiB for the weights");
    ::madvise(arena.base, arena.size, MADV_HUGEPAGE);  // a hint: without THP the pages stay 4 KiB
  }
  at::Tensor carve(at::IntArrayRef sizes, at::ScalarType type) {
    size_t bytes = static_cast<size_t>(c10::elementSize(type));
    for (auto d : sizes) bytes *= static_cast<size_t>(d);
    if (arena.used + aligned(bytes) > arena.size) throw ModelError("decoder: weight arena too small");
    void* at = static_cast<char*>(arena.base) + arena.used;
    arena.used += aligned(bytes);
    return at::from_blob(at, sizes, at::TensorOptions().dtype(type));  // the arena outlives the views
  }

  Mat pack(const at::Tensor& t, WeightPrecision p) {
    Mat m;
    at::Tensor stored_scales;  // of a matrix the checkpoint stores as int8
    if (t.scalar_type() == at::kChar) {
      if (!block_scales || !block_scales->count(t.data_ptr()))
        throw ModelError("decoder: an int8 matrix without its block scales");
      stored_scales = block_scales->at(t.data_ptr());
    }
    const auto type = converted_type(t, p);
    const bool grouped = interleaved(t, p);
    const int64_t rows = t.size(0), cols = t.size(1), blocks = kernels::q8_blocks(cols);
    if (!type && !grouped) {
      m.values = t.contiguous();
      m.scales = stored_scales;
    } else if (type && *type != at::kChar) {
      m.values = carve(t.sizes(), *type);
      m.values.copy_(stored_scales.defined() ? dequantize_block_scaled(t, stored_scales) : t);
    } else {
      // int8: quantized here unless stored so, then rearranged where the VNNI kernel runs.
      at::Tensor q = type ? at::Tensor() : t.contiguous(), scales = stored_scales;
      if (type) {
        const auto f = t.to(at::kFloat).contiguous();
        q = grouped ? at::empty({rows, cols}, at::kChar) : carve({rows, cols}, at::kChar);
        scales = grouped ? at::empty({rows, blocks}, at::kFloat) : carve({rows, blocks}, at::kFloat);
        kernels::quantize_q8(f.data_ptr<float>(), rows, cols, q.data_ptr<int8_t>(), scales.data_ptr<float>());
      }
      if (grouped) {
        m.values = carve({rows, blocks * kernels::kQ8Block}, at::kByte);  // a short last block padded
        m.scales = carve({rows, blocks}, at::kFloat);
        kernels::interleave_q8(q.data_ptr<int8_t>(), scales.contiguous().data_ptr<float>(), rows, cols,
                               m.values.data_ptr<uint8_t>(), m.scales.data_ptr<float>());
      } else {
        m.values = q;
        m.scales = scales;
      }
    }
    if (type || grouped) release_pages(t);  // the loaded copy is not read again: its pages can go
    m.view.type = !m.scales.defined() ? type_of(m.values)
                  : grouped           ? kernels::WeightType::q8_grouped
                                      : kernels::WeightType::q8;
    m.view.data = m.values.data_ptr();
    m.view.scales = m.scales.defined() ? m.scales.data_ptr<float>() : nullptr;
    m.view.rows = m.values.size(0);
    m.view.cols = cols;
    bytes += m.values.nbytes() + (m.scales.defined() ? m.scales.nbytes() : 0);
    precision = kernels::to_string(m.view.type);
    return m;
  }

  Head head(const at::Tensor& norm, const at::Tensor& matrix, WeightPrecision p) {
    auto& slot = heads_by_storage[matrix.data_ptr()];
    if (!slot) slot = std::make_unique<Mat>(pack(matrix, p));
    return {norm.data_ptr<float>(), slot.get()};
  }
};

Decoder::Decoder(std::shared_ptr<const Weights> weights, WeightPrecision precision) : weights_(std::move(weights)) {
  const auto& c = config();
  const auto frequencies = rope_inverse_frequencies(c);
  auto inv_freq = torch::tensor(frequencies, torch::kDouble);  // (hd/2)
  auto pos = torch::arange(c.max_seq, torch::kDouble);
  auto freqs = torch::outer(pos, inv_freq);  // (max_seq, hd/2)
  const auto half_cos = freqs.cos().to(torch::kFloat).contiguous(), half_sin = freqs.sin().to(torch::kFloat).contiguous();
  cos_ = torch::cat({half_cos, half_cos}, -1);  // (max_seq, hd): rotate_half layout, for training
  sin_ = torch::cat({half_sin, half_sin}, -1);

  auto p = std::make_unique<Packed>();
  p->block_scales = &weights_->block_scales;
  {
    size_t arena = 0;
    std::set<const void*> heads;  // tied heads are packed once, as head() does
    const auto head_bytes = [&](const at::Tensor& h) {
      return heads.insert(h.data_ptr()).second ? Packed::converted_bytes(h, precision) : 0;
    };
    for (const auto& l : weights_->layers)
      if (l.wq.defined())
        for (auto [loaded, mat] : Packed::layer_matrices) arena += Packed::converted_bytes(l.*loaded, precision);
    if (weights_->final_norm.defined()) arena += head_bytes(weights_->lm_head);
    for (const auto& [layer, x] : weights_->exits) arena += head_bytes(x.head);
    p->reserve(arena);
  }
  p->cos.assign(half_cos.data_ptr<float>(), half_cos.data_ptr<float>() + half_cos.numel());
  p->sin.assign(half_sin.data_ptr<float>(), half_sin.data_ptr<float>() + half_sin.numel());
  const auto floats = [](const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; };
  for (const auto& l : weights_->layers) {
    Packed::Layer packed;
    if (l.wq.defined()) {
      packed.attn_norm = floats(l.attn_norm);
      packed.ffn_norm = floats(l.ffn_norm);
      packed.bq = floats(l.bq);
      packed.bk = floats(l.bk);
      packed.bv = floats(l.bv);
      packed.bo = floats(l.bo);
      packed.b_gate = floats(l.b_gate);
      packed.b_up = floats(l.b_up);
      packed.b_down = floats(l.b_down);
      for (auto [loaded, mat] : Packed::layer_matrices) packed.*mat = p->pack(l.*loaded, precision);
    }
    p->layers.push_back(std::move(packed));
  }
  if (weights_->final_norm.defined()) p->final_head = p->head(weights_->final_norm, weights_->lm_head, precision);
  for (const auto& [layer, x] : weights_->exits) p->exits.emplace(layer, p->head(x.norm, x.head, precision));
  p->block_scales = nullptr;
  packed_ = std::move(p);
  release_converted_matrices();
}

void Decoder::release_converted_matrices() {
  // A matrix the decoder converted (int8, or another float type) is held twice: as loaded and as
  // packed. Inference reads only the packed copy, so this decoder keeps a Weights without the
  // loaded one; the caller's Weights, if it still has one, is left alone. The embedding stays: it
  // is a lookup, read as stored.
  const auto shares = [](const at::Tensor& loaded, const Packed::Mat& m) {
    return !loaded.defined() || (m.values.defined() && m.values.data_ptr() == loaded.data_ptr());
  };
  auto slim = std::make_shared<Weights>(*weights_);
  bool changed = false;
  const auto release = [&](at::Tensor& loaded) {  // with the block scales of one stored as int8
    if (loaded.defined()) slim->block_scales.erase(loaded.data_ptr());
    loaded = at::Tensor();
  };
  for (size_t i = 0; i < slim->layers.size(); ++i) {
    auto& l = slim->layers[i];
    const auto& k = packed_->layers[i];
    for (auto [loaded, mat] : Packed::layer_matrices)
      if (!shares(l.*loaded, k.*mat)) {
        release(l.*loaded);
        changed = true;
      }
  }
  const auto release_head = [&](at::Tensor& head, const Packed::Head& packed) {
    if (head.defined() && !head.is_same(slim->embed) && !shares(head, *packed.matrix)) {
      release(head);
      changed = true;
    }
  };
  if (packed_->final_head) release_head(slim->lm_head, *packed_->final_head);
  for (auto& [layer, x] : slim->exits) release_head(x.head, packed_->exits.at(layer));
  // A process that looks no token up (a cloud) held the embedding only as a tied head; once that
  // head is the decoder's own copy, the embedding goes too.
  if (slim->embed.defined() && !slim->parts.embed) {
    bool read = packed_->final_head && shares(slim->embed, *packed_->final_head->matrix);
    for (const auto& [layer, head] : packed_->exits) read = read || shares(slim->embed, *head.matrix);
    if (!read) {
      const at::Tensor old_embed = slim->embed;
      if (slim->lm_head.is_same(old_embed)) slim->lm_head = at::Tensor();
      for (auto& [layer, x] : slim->exits)
        if (x.head.is_same(old_embed)) x.head = at::Tensor();
      slim->embed = at::Tensor();
      changed = true;
    }
  }
  if (!changed || !slim->embed.defined()) {
    if (changed) weights_ = std::move(slim);
    return;
  }
  // Its own embedding too: a view would keep the whole file's mapping (and the pages the load
  // touched) alive for one tensor.
  const at::Tensor old_embed = slim->embed;
  slim->embed = old_embed.clone();
  const auto retie = [&](at::Tensor& head) {  // heads tied to the embedding follow it
    if (head.is_same(old_embed)) head = slim->embed;
  };
  retie(slim->lm_head);
  for (auto& [layer, x] : slim->exits) retie(x.head);
  weights_ = std::move(slim);
}

Decoder::~Decoder() = default;

std::string Decoder::precision() const { return packed_->precision; }
int64_t Decoder::matrix_bytes() const { return packed_->bytes; }

at::Tensor Decoder::embed(const at::Tensor& tokens) const {
  if (!weights_->embed.defined())
    throw ModelError("embed: this process did not load the token embedding (its model parts: the cloud's layers)");
  if (tokens.dim() != 1) throw ModelError("embed: tokens must be 1-D");
  if (tokens.numel() && (tokens.min().item<int64_t>() < 0 || tokens.max().item<int64_t>() >= config().vocab_size))
    throw ModelError("embed: token id outside the vocabulary of " + std::to_string(config().vocab_size));
  return weights_->embed.index_select(0, tokens.to(torch::kLong)).to(torch::kFloat);
}

int64_t Decoder::check_step(const at::Tensor& hidden, int64_t start, int64_t layer_begin, int64_t layer_end,
                            const KvCache& kv, int64_t outputs) const {
  const auto& c = config();
  if (hidden.dim() != 2 || hidden.size(1) != c.dim)
    throw ModelError("decoder: hidden must be (T, " + std::to_string(c.dim) + ")");
  if (hidden.scalar_type() != torch::kFloat) throw ModelError("decoder: hidden must be float32");
  if (layer_begin < kv.layer_begin() || layer_end > kv.layer_end() || layer_begin > layer_end)
    throw ModelError("decoder: layers [" + std::to_string(layer_begin) + ", " + std::to_string(layer_end) +
                     ") not held by the cache [" + std::to_string(kv.layer_begin()) + ", " +
                     std::to_string(kv.layer_end()) + ")");
  const int64_t t = hidden.size(0);
  if (outputs < -1 || outputs > t)
    throw ModelError("decoder: outputs " + std::to_string(outputs) + " outside [0, " + std::to_string(t) +
                     "] rows (or -1: all)");
  if (start < 0 || start + t > c.max_seq)
    throw ModelError("decoder: positions [" + std::to_string(start) + ", " + std::to_string(start + t) +
                     ") exceed max_seq " + std::to_string(c.max_seq));
  const auto& parts = weights_->parts;
  for (int64_t l = layer_begin; l < layer_end; ++l)
    if (!parts.holds_layer(l, c.n_layers))
      throw ModelError("decoder: layer " + std::to_string(l) + " is not loaded in this process (it holds layers [" +
                       std::to_string(parts.layer_begin) + ", " +
                       std::to_string(parts.layer_end < 0 ? c.n_layers : parts.layer_end) + "))");
  for (int64_t l = layer_begin; l < layer_end; ++l)
    if (kv.length(l) != start)
      throw ModelError("decoder: layer " + std::to_string(l) + " has " + std::to_string(kv.length(l)) +
                       " cached positions, expected " + std::to_string(start));
  return outputs < 0 ? t : outputs;
}

namespace {
// run_layers' scratch_of over a caller's scratch: grown to what a call asks, never shrunk.
std::function<float*(size_t)> grown(std::vector<float>& scratch) {
  return [&scratch](size_t floats) {
    if (scratch.size() < floats) scratch.resize(floats);
    return scratch.data();
  };
}
}  // namespace

at::Tensor Decoder::forward(const at::Tensor& hidden, int64_t start, int64_t layer_begin, int64_t layer_end,
                            KvCache& kv, int64_t outputs) const {
  const int64_t kept = check_step(hidden, start, layer_begin, layer_end, kv, outputs);
  auto out = hidden.contiguous().clone();  // (T, dim), the residual stream, updated in place
  const int64_t t = out.size(0);
  const Segment one{0, t, start, &kv, kept};
  run_layers(out.data_ptr<float>(), &one, 1, layer_begin, layer_end, grown(thread_scratch()));
  return out.narrow(0, t - kept, kept);
}

std::vector<float>& Decoder::thread_scratch() {
  thread_local std::vector<float> scratch;
  return scratch;
}

std::vector<at::Tensor> Decoder::forward(const std::vector<DecodeStep>& steps, int64_t layer_begin, int64_t layer_end,
                                         std::vector<float>& scratch) const {
  std::vector<Segment> segments;
  std::vector<at::Tensor> rows;
  int64_t total = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const auto& s = steps[i];
    if (!s.kv) throw ModelError("decoder: batch step " + std::to_string(i) + " has no cache");
    for (size_t j = 0; j < i; ++j)
      if (steps[j].kv == s.kv) throw ModelError("decoder: one cache twice in a batch");
    const int64_t kept = check_step(s.hidden, s.start, layer_begin, layer_end, *s.kv, s.outputs);
    const int64_t t = s.hidden.size(0);
    segments.push_back({total, t, s.start, s.kv, kept});
    total += t;
    rows.push_back(s.hidden);
  }
  std::vector<at::Tensor> out;
  if (steps.empty()) return out;
  auto x = torch::cat(rows, 0).contiguous();  // (sum T_i, dim): every session's rows, one residual stream
  run_layers(x.data_ptr<float>(), segments.data(), segments.size(), layer_begin, layer_end, grown(scratch));
  for (const auto& seg : segments) out.push_back(x.narrow(0, seg.row + seg.rows - seg.outputs, seg.outputs));
  return out;
}

void Decoder::run_layers(float* x, const Segment* segments, size_t n_segments, int64_t layer_begin, int64_t layer_end,
                         const std::function<float*(size_t)>& scratch_of) const {
  const auto& c = config();
  const int64_t dim = c.dim, hd = c.head_dim(), q_dim = c.q_dim(), kv_dim = c.kv_dim(), ffn = c.ffn_dim;
  // All rows; the rows that go on past the range (Segment::outputs).
  int64_t t = 0, t_out = 0;
  for (size_t i = 0; i < n_segments; ++i) {
    t += segments[i].rows;
    t_out += segments[i].outputs;
  }
  // The range's last layer runs its queries, attention, output projection and FFN on those rows
  // alone, gathered: of a catch-up's rows only the last one goes on to the final head.
  const bool trims = t_out < t;
  // One block of scratch for the whole call, carved up (T rows each):
  const int64_t gathered = trims ? 2 * t_out * dim : 0;
  float* xb = scratch_of(static_cast<size_t>(t * (dim + 2 * q_dim + 2 * kv_dim + 2 * ffn) + gathered));
  float* q = xb + t * dim;         // (T, heads, hd)
  float* k = q + t * q_dim;        // (T, kv_heads, hd)
  float* v = k + t * kv_dim;       // (T, kv_heads, hd)
  float* att = v + t * kv_dim;     // (T, heads, hd)
  float* gate = att + t * q_dim;   // (T, ffn)
  float* up = gate + t * ffn;      // (T, ffn)
  float* x_out = trims ? up + t * ffn : x;           // (T_out, dim): the rows going on, in the last layer
  float* xb_out = trims ? x_out + t_out * dim : xb;  // (T_out, dim): their normed rows
  const float eps = static_cast<float>(c.norm_eps);
  const float* cos = packed_->cos.data();
  const float* sin = packed_->sin.data();
  // Each segment's attention (its queries over its own cache: ragged, no padding), pointed at its
  // cache's layer by the first member before the phase; in a trimmed last layer, its output rows'
  // queries only (at the end of its positions), from the gathered rows.
  constexpr size_t kInline = 4;
  std::array<kernels::Attention, 2 * kInline> inline_attentions{};
  std::vector<kernels::Attention> more_attentions(n_segments > kInline ? 2 * n_segments : 0);
  kernels::Attention* attentions = n_segments > kInline ? more_attentions.data() : inline_attentions.data();
  kernels::Attention* out_attentions = attentions + n_segments;
  for (size_t i = 0, out_row = 0; i < n_segments; ++i) {
    const auto& s = segments[i];
    attentions[i] = {q + s.row * q_dim, s.rows, s.start, nullptr, nullptr, att + s.row * q_dim};
    out_attentions[i] = {q + out_row * q_dim, s.outputs, s.start + s.rows - s.outputs, nullptr, nullptr,
                         att + out_row * q_dim};
    out_row += static_cast<size_t>(s.outputs);
  }
  // Copies each segment's output rows between all rows (T, dim) and the gathered ones (T_out, dim).
  const auto gather = [&](float* all, float* gathered_rows, bool back) {
    for (size_t i = 0, out_row = 0; i < n_segments; ++i) {
      const auto& s = segments[i];
      float* row = all + (s.row + s.rows - s.outputs) * dim;
      float* out = gathered_rows + out_row * dim;
      std::copy_n(back ? out : row, s.outputs * dim, back ? row : out);
      out_row += static_cast<size_t>(s.outputs);
    }
  };
  // One parallel region for the whole range: the threads share out the rows of every product (and
  // the attention's heads) as tickets and meet at a barrier where the next kernel needs all of
  // them, instead of a fork and join per kernel (~60 per token). Small models stay on one thread:
  // their products are too short.
  const kernels::TeamClaim claim(t * dim * dim >= (int64_t{1} << 16));
  claim.run([&](const kernels::Member& member) {
    const bool first = member.share.index == 0;  // work for one member, the others wait at the next sync
    for (int64_t l = layer_begin; l < layer_end; ++l) {
      const auto& w = packed_->layers[static_cast<size_t>(l)];
      // Rows whose queries, attention and FFN run: all, or in a trimmed last layer the gathered ones.
      const bool trim = trims && l == layer_end - 1;
      const int64_t tq = trim ? t_out : t;
      float* xr = trim ? x_out : x;
      float* xbr = trim ? xb_out : xb;
      kernels::Attention* jobs = trim ? out_attentions : attentions;
      if (first) {
        kernels::rms_norm(x, w.attn_norm, t, dim, eps, xb);
        if (trim) {
          gather(x, x_out, false);
          gather(xb, xb_out, false);
        }
      }
      member.sync();
      kernels::linear(member, {{xbr, tq, &w.wq.view, q}, {xb, t, &w.wk.view, k}, {xb, t, &w.wv.view, v}});
      member.sync();
      if (first) {
        if (w.bq) {
          kernels::add_bias(q, tq, q_dim, w.bq);
          kernels::add_bias(k, t, kv_dim, w.bk);
          kernels::add_bias(v, t, kv_dim, w.bv);
        }
        for (size_t i = 0; i < n_segments; ++i) {
          const auto& s = segments[i];
          kernels::rope(q + (jobs[i].q - q), jobs[i].n, c.n_heads, hd, jobs[i].start, cos, sin);  // its queries
          kernels::rope(k + s.row * kv_dim, s.rows, c.n_kv_heads, hd, s.start, cos, sin);
          s.kv->append(l, k + s.row * kv_dim, v + s.row * kv_dim, s.rows);  // cannot throw: checked against max_seq
          jobs[i].keys = s.kv->keys(l);
          jobs[i].values = s.kv->values(l);
        }
      }
      member.sync();
      kernels::attention(member, c.n_heads, c.n_kv_heads, hd, jobs, n_segments);
      member.sync();
      kernels::linear(member, {{att, tq, &w.wo.view, xr, /*accumulate=*/true}});
      member.sync();
      if (first) {
        if (w.bo) kernels::add_bias(xr, tq, dim, w.bo);
        kernels::rms_norm(xr, w.ffn_norm, tq, dim, eps, xbr);
      }
      member.sync();
      kernels::swiglu(member, xbr, tq, w.gate.view, w.up.view, gate, up, w.b_gate, w.b_up);
      member.sync();
      kernels::linear(member, {{gate, tq, &w.down.view, xr, /*accumulate=*/true}});
      member.sync();
      if (w.b_down) {
        if (first) kernels::add_bias(xr, tq, dim, w.b_down);
        member.sync();
      }
    }
  });
  if (trims) gather(x, x_out, true);
}

at::Tensor Decoder::head_logits(const void* head_ptr, const at::Tensor& hidden) const {
  const auto& head = *static_cast<const Packed::Head*>(head_ptr);
  const auto& c = config();
  if (hidden.size(-1) != c.dim || hidden.scalar_type() != torch::kFloat)
    throw ModelError("decoder: head input must be (..., " + std::to_string(c.dim) + ") float32");
  auto x = hidden.contiguous();
  const int64_t rows = x.numel() / c.dim;
  auto sizes = x.sizes().vec();
  sizes.back() = c.vocab_size;
  auto normed = at::empty_like(x);
  auto logits = at::empty(sizes, x.options());
  kernels::rms_norm(x.data_ptr<float>(), head.norm, rows, c.dim, static_cast<float>(c.norm_eps), normed.data_ptr<float>());
  kernels::linear(normed.data_ptr<float>(), rows, head.matrix->view, logits.data_ptr<float>());
  return logits;
}

at::Tensor Decoder::exit_logits(int64_t exit_layer, const at::Tensor& hidden) const {
  auto it = packed_->exits.find(exit_layer);
  if (it == packed_->exits.end()) throw ModelError("decoder: no exit head after layer " + std::to_string(exit_layer));
  return head_logits(&it->second, hidden);
}

at::Tensor Decoder::final_logits(const at::Tensor& hidden) const {
  if (!packed_->final_head)
    throw ModelError("decoder: this process did not load the final norm and head (its model parts: the edge's)");
  return head_logits(&*packed_->final_head, hidden);
}


// ---- training: libtorch with autograd -------------------------------------------------------

void Decoder::require_fp32(const char* what) const {
  const auto fp32 = [](const at::Tensor& t) { return t.defined() && t.scalar_type() == torch::kFloat; };
  if (!fp32(weights_->lm_head) || weights_->layers.empty() || !fp32(weights_->layers[0].wq))
    throw ModelError(std::string("decoder: ") + what +
                     " needs the fp32 weights (load them widened to fp32; an inference decoder of another precision "
                     "keeps only its own copy)");
}

at::Tensor Decoder::rms_norm(const at::Tensor& x, const at::Tensor& w) const {
  return x * torch::rsqrt(x.pow(2).mean(-1, true) + config().norm_eps) * w;
}

at::Tensor Decoder::rope(const at::Tensor& x) const {
  const int64_t t = x.size(2), half = x.size(3) / 2;
  auto cos = cos_.narrow(0, 0, t);  // (T, hd), broadcasts over (B, H)
  auto sin = sin_.narrow(0, 0, t);
  auto rotated = torch::cat({-x.narrow(3, half, half), x.narrow(3, 0, half)}, -1);
  return x * cos + rotated * sin;
}

at::Tensor Decoder::layer_forward_train(int64_t layer, const at::Tensor& x) const {
  const auto& c = config();
  const auto& w = weights_->layers[static_cast<size_t>(layer)];
  const int64_t b = x.size(0), t = x.size(1), hd = c.head_dim();

  auto h = rms_norm(x, w.attn_norm);
  auto q = torch::linear(h, w.wq, w.bq).view({b, t, c.n_heads, hd}).transpose(1, 2);     // (B, H, T, hd)
  auto k = torch::linear(h, w.wk, w.bk).view({b, t, c.n_kv_heads, hd}).transpose(1, 2);  // (B, KV, T, hd)
  auto v = torch::linear(h, w.wv, w.bv).view({b, t, c.n_kv_heads, hd}).transpose(1, 2);
  q = rope(q);
  k = rope(k);
  const int64_t n_rep = c.n_heads / c.n_kv_heads;
  if (n_rep > 1) {
    k = k.repeat_interleave(n_rep, 1);  // head h reads kv head h / n_rep, as HF's repeat_kv
    v = v.repeat_interleave(n_rep, 1);
  }
  auto scores = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(hd));  // (B, H, T, T)
  if (t > 1) {
    auto mask = torch::ones({t, t}, torch::kBool).triu(1);  // query i reads keys [0, i]
    scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
  }
  auto attn = torch::matmul(torch::softmax(scores, -1), v);  // (B, H, T, hd)
  auto out = x + torch::linear(attn.transpose(1, 2).reshape({b, t, c.q_dim()}), w.wo, w.bo);
  auto g = rms_norm(out, w.ffn_norm);
  return out + torch::linear(torch::silu(torch::linear(g, w.w_gate, w.b_gate)) * torch::linear(g, w.w_up, w.b_up), w.w_down,
                             w.b_down);
}

at::Tensor Decoder::forward_no_cache(const at::Tensor& hidden, int64_t layer_begin, int64_t layer_end) const {
  require_fp32("training");
  auto x = hidden;
  for (int64_t l = layer_begin; l < layer_end; ++l) x = layer_forward_train(l, x);
  return x;
}

at::Tensor Decoder::exit_logits_train(int64_t exit_layer, const at::Tensor& hidden) const {
  require_fp32("training");
  auto it = weights_->exits.find(exit_layer);
  if (it == weights_->exits.end()) throw ModelError("decoder: no exit head after layer " + std::to_string(exit_layer));
  return torch::linear(rms_norm(hidden, it->second.norm), it->second.head);
}

at::Tensor Decoder::final_logits_train(const at::Tensor& hidden) const {
  require_fp32("training");
  return torch::linear(rms_norm(hidden, weights_->final_norm), weights_->lm_head);
}

}  // namespace ce
