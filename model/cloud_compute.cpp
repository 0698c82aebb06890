#include "model/cloud_compute.hpp"

#include <torch/torch.h>

#include "model/decoder.hpp"
#include "model/sampler.hpp"

namespace ce {

struct CloudCompute::State {
  std::shared_ptr<const Model> model;
  int64_t layer_begin;
  KvCache kv;
  std::vector<at::Tensor> waiting;  // (n, dim) fp32 rows at layer_begin, positions [computed, held)
  int64_t computed = 0, held = 0;

  State(std::shared_ptr<const Model> m, int64_t begin)
      : model(std::move(m)), layer_begin(begin), kv(model->config(), begin, model->config().n_layers) {}

  void check_append(uint32_t first, uint32_t count) const {
    if (count == 0) throw ModelError("cloud context: empty upload");
    if (first != held)
      throw ModelError("cloud context: upload starts at position " + std::to_string(first) + " but " +
                       std::to_string(held) + " positions are held (no gaps or overlaps)");
    if (held + count > model->config().max_seq)
      throw ModelError("cloud context: " + std::to_string(held + count) + " positions exceed max_seq " +
                       std::to_string(model->config().max_seq));
  }
};

CloudCompute::CloudCompute(std::shared_ptr<const Model> model, int64_t layer_begin) {
  const auto& c = model->config();
  if (layer_begin < 0 || layer_begin >= c.n_layers)
    throw ModelError("cloud context: layer_begin " + std::to_string(layer_begin) + " outside [0, " +
                     std::to_string(c.n_layers) + ")");
  state_ = std::make_unique<State>(std::move(model), layer_begin);
}

CloudCompute::~CloudCompute() = default;

void CloudCompute::append_hidden_fp16(uint32_t first, uint32_t count, const uint16_t* rows) {
  torch::InferenceMode guard;
  auto& s = *state_;
  if (s.layer_begin == 0) throw ModelError("cloud context: a cloud-only context takes tokens, not hidden states");
  s.check_append(first, count);
  const int64_t dim = s.model->config().dim;
  auto half = torch::from_blob(const_cast<uint16_t*>(rows), {count, dim}, torch::kHalf);
  auto f = half.to(torch::kFloat);  // copies: the caller's buffer may go away
  if (!torch::isfinite(f).all().item<bool>()) throw ModelError("cloud context: upload holds NaN or infinite values");
  s.waiting.push_back(f);
  s.held += count;
}

void CloudCompute::append_tokens(uint32_t first, uint32_t count, const int32_t* tokens) {
  torch::InferenceMode guard;
  auto& s = *state_;
  if (s.layer_begin != 0) throw ModelError("cloud context: a split context takes hidden states, not tokens");
  s.check_append(first, count);
  std::vector<int64_t> ids(tokens, tokens + count);
  s.waiting.push_back(s.model->decoder().embed(torch::tensor(ids, torch::kLong)));
  s.held += count;
}

int64_t CloudCompute::held() const { return state_->held; }
int64_t CloudCompute::computed() const { return state_->computed; }

TokenChoice CloudCompute::infer(uint32_t position, const SamplingParams& sampling) {
  torch::InferenceMode guard;
  auto& s = *state_;
  if (position >= s.held)
    throw ModelError("cloud context: position " + std::to_string(position) + " not uploaded (" +
                     std::to_string(s.held) + " held)");
  if (position < s.computed)
    throw ModelError("cloud context: position " + std::to_string(position) + " was already answered");
  auto all = torch::cat(s.waiting, 0);  // (held - computed, dim)
  const int64_t n = position + 1 - s.computed;
  auto rows = all.narrow(0, 0, n);
  s.waiting.clear();
  if (all.size(0) > n) s.waiting.push_back(all.narrow(0, n, all.size(0) - n).clone());
  const auto& decoder = s.model->decoder();
  auto out = decoder.forward(rows, s.computed, s.layer_begin, s.model->config().n_layers, s.kv);  // (n, dim)
  s.computed = position + 1;
  return choose_token(decoder.final_logits(out[-1]), sampling, position);
}

int64_t CloudCompute::bytes() const {
  int64_t total = state_->kv.bytes();
  for (auto& w : state_->waiting) total += w.nbytes();
  return total;
}

TokenChoice naive_split_infer(const Model& model, int64_t layer_begin, const float* rows, uint32_t count,
                              const SamplingParams& sampling) {
  torch::InferenceMode guard;
  const auto& c = model.config();
  if (count == 0 || count > c.max_seq) throw ModelError("naive split: bad sequence length " + std::to_string(count));
  auto x = torch::from_blob(const_cast<float*>(rows), {count, c.dim}, torch::kFloat);
  KvCache kv(c, layer_begin, c.n_layers);  // thrown away: the baseline keeps nothing
  auto out = model.decoder().forward(x, 0, layer_begin, c.n_layers, kv);
  return choose_token(model.decoder().final_logits(out[-1]), sampling, count - 1);
}

}  // namespace ce
