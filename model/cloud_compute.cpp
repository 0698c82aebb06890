#include "model/cloud_compute.hpp"

#include <torch/torch.h>

#include "model/decoder.hpp"
#include "model/sampler.hpp"

namespace ce {

struct CloudCompute::State {
  std::shared_ptr<const Model> model;
  int64_t layer_begin;
  KvCache kv;
  PositionRows waiting;  // uploaded, KV not filled yet: positions [computed, held)
  int64_t computed = 0;

  State(std::shared_ptr<const Model> m, int64_t begin)
      : model(std::move(m)),
        layer_begin(begin),
        kv(model->config(), begin, model->config().n_layers),
        waiting(begin == 0 ? PositionRows::empty_at(RowKind::token_ids, 4, 0)
                           : PositionRows::empty_at(RowKind::states_f16, static_cast<uint32_t>(model->config().dim) * 2, 0)) {}

  // (n, dim) fp32 rows at layer_begin for the first n waiting positions.
  at::Tensor take_inputs(uint32_t n) {
    auto rows = waiting.take_front(n);
    if (rows.kind() == RowKind::token_ids) {
      std::vector<int64_t> ids(rows.ids(), rows.ids() + rows.count());
      return model->decoder().embed(torch::tensor(ids, torch::kLong));
    }
    const int64_t dim = model->config().dim;
    return torch::from_blob(const_cast<uint16_t*>(rows.f16()), {rows.count(), dim}, torch::kHalf).to(torch::kFloat);
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

void CloudCompute::append(const PositionRows& rows) {
  auto& s = *state_;
  const auto& c = s.model->config();
  if (rows.empty()) throw ModelError("cloud context: empty upload");
  if (rows.kind() != s.waiting.kind())
    throw ModelError(std::string("cloud context: a ") + (s.layer_begin == 0 ? "cloud-only" : "split") +
                     " context takes " + to_string(s.waiting.kind()) + ", not " + to_string(rows.kind()));
  if (rows.end() > c.max_seq)
    throw ModelError("cloud context: " + std::to_string(rows.end()) + " positions exceed max_seq " +
                     std::to_string(c.max_seq));
  for (uint32_t i = 0; i < rows.count(); ++i) {
    if (rows.kind() == RowKind::token_ids) {
      if (rows.ids()[i] < 0 || rows.ids()[i] >= c.vocab_size)
        throw ModelError("cloud context: token id " + std::to_string(rows.ids()[i]) + " outside the vocabulary");
    } else {
      for (uint32_t j = 0; j < rows.row_bytes() / 2; ++j)
        if ((rows.f16()[static_cast<size_t>(i) * rows.row_bytes() / 2 + j] & 0x7c00) == 0x7c00)  // all-ones exponent
          throw ModelError("cloud context: upload holds NaN or infinite values");
    }
  }
  s.waiting.append(rows);
}

int64_t CloudCompute::held() const { return state_->waiting.end(); }
int64_t CloudCompute::computed() const { return state_->computed; }

TokenChoice CloudCompute::infer(uint32_t position, const SamplingParams& sampling) {
  torch::InferenceMode guard;
  auto& s = *state_;
  if (position >= s.waiting.end())
    throw ModelError("cloud context: position " + std::to_string(position) + " not uploaded (" +
                     std::to_string(s.waiting.end()) + " held)");
  if (position < s.computed)
    throw ModelError("cloud context: position " + std::to_string(position) + " was already answered");
  auto rows = s.take_inputs(static_cast<uint32_t>(position + 1 - s.computed));  // (n, dim)
  const auto& decoder = s.model->decoder();
  auto out = decoder.forward(rows, s.computed, s.layer_begin, s.model->config().n_layers, s.kv);  // (n, dim)
  s.computed = position + 1;
  return choose_token(decoder.final_logits(out[-1]), sampling, position);
}

int64_t CloudCompute::bytes() const {
  int64_t total = state_->kv.bytes();
  return total + static_cast<int64_t>(state_->waiting.bytes().size());
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
