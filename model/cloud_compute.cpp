#include "model/cloud_compute.hpp"

#include <algorithm>

#include <torch/torch.h>

#include <limits>

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

int64_t CloudCompute::layer_begin() const { return state_->layer_begin; }
int64_t CloudCompute::held() const { return state_->waiting.end(); }
int64_t CloudCompute::computed() const { return state_->computed; }

void CloudCompute::check(const Request& request) {
  if (!request.context) throw ModelError("cloud step: a request without a context");
  const auto& s = *request.context->state_;
  if (request.position >= s.waiting.end())
    throw ModelError("cloud context: position " + std::to_string(request.position) + " not uploaded (" +
                     std::to_string(s.waiting.end()) + " held)");
  if (request.position < s.computed)
    throw ModelError("cloud context: position " + std::to_string(request.position) + " was already answered");
  check_choice(request.sampling, request.history, request.scored_token, s.model->config().vocab_size);
}

TokenChoice CloudCompute::infer(uint32_t position, const SamplingParams& sampling, const TokenHistory& history,
                                int32_t scored_token) {
  const Request request{this, position, sampling, history, scored_token};
  check(request);
  return *step({request}, std::numeric_limits<int64_t>::max(), Decoder::thread_scratch()).front();
}

std::vector<std::optional<TokenChoice>> CloudCompute::step(const std::vector<Request>& requests, int64_t max_rows,
                                                           std::vector<float>& scratch) {
  torch::InferenceMode guard;
  std::vector<std::optional<TokenChoice>> out(requests.size());
  if (requests.empty()) return out;
  if (max_rows < 1) throw ModelError("cloud step: max_rows must be at least 1");
  check(requests.front());
  const auto& first = *requests.front().context->state_;
  for (size_t i = 0; i < requests.size(); ++i) {  // everything refused before any row is taken
    check(requests[i]);
    const auto& s = *requests[i].context->state_;
    if (s.model != first.model || s.layer_begin != first.layer_begin)
      throw ModelError("cloud step: contexts of different models or layer ranges in one batch");
    for (size_t j = 0; j < i; ++j)
      if (requests[j].context == requests[i].context) throw ModelError("cloud step: one cache twice in a batch");
  }
  std::vector<int64_t> rows_of;  // this step's rows of each context
  int64_t total = 0;
  for (const auto& r : requests) {
    rows_of.push_back(std::min<int64_t>(r.position + 1 - r.context->state_->computed, max_rows));
    total += rows_of.back();
  }
  if (requests.size() > 1)  // a context takes at most as many rows as the others together
    for (auto& n : rows_of) n = std::min(n, std::max(kCatchUpFloor, total - n));
  // A context's rows reach the final head only when they reach its requested position: then its
  // last row, else none (the decoder then fills only their keys and values in the last layer).
  std::vector<Decoder::DecodeStep> steps;
  for (size_t i = 0; i < requests.size(); ++i) {
    auto& s = *requests[i].context->state_;
    const auto n = static_cast<uint32_t>(rows_of[i]);
    const bool answers = s.computed + rows_of[i] == int64_t{requests[i].position} + 1;
    steps.push_back({s.take_inputs(n), s.computed, &s.kv, answers ? 1 : 0});  // (n, dim) at [computed, computed + n)
  }
  const auto& decoder = first.model->decoder();
  const auto rows = decoder.forward(steps, first.layer_begin, first.model->config().n_layers, scratch);
  std::vector<at::Tensor> last;  // (dim) the answered requests' last rows, for one head product
  std::vector<size_t> answered;
  for (size_t i = 0; i < requests.size(); ++i) {
    requests[i].context->state_->computed += rows_of[i];
    if (rows[i].size(0) == 1) {
      last.push_back(rows[i][0]);
      answered.push_back(i);
    }
  }
  if (answered.empty()) return out;
  const auto logits = decoder.final_logits(torch::stack(last));  // (answered, vocab)
  for (size_t j = 0; j < answered.size(); ++j) {
    const auto& r = requests[answered[j]];
    out[answered[j]] = choose_token(logits[static_cast<int64_t>(j)], r.sampling, {r.position, r.history, r.scored_token});
  }
  return out;
}

int64_t CloudCompute::RowBudget::max_rows(size_t contexts) const {
  if (contexts != 1 || steps_since_shared_ > kSharedSteps) return chunk_;
  return std::min(chunk_, std::max(kCatchUpFloor, shared_rows_));
}

void CloudCompute::RowBudget::record(size_t contexts, int64_t answered_rows) {
  if (contexts > 1) {
    shared_rows_ = answered_rows;
    steps_since_shared_ = 0;
  } else if (steps_since_shared_ <= kSharedSteps) {
    ++steps_since_shared_;
  }
}

int64_t CloudCompute::truncate(uint32_t positions) {
  auto& s = *state_;
  const int64_t dropped = std::max<int64_t>(0, s.computed - positions);
  if (dropped > 0) {
    for (int64_t l = s.kv.layer_begin(); l < s.kv.layer_end(); ++l) s.kv.truncate(l, positions);
    s.computed = positions;
  }
  s.waiting.truncate(positions);  // [computed, held) keeps what lies before `positions`
  return dropped;
}

int64_t CloudCompute::bytes() const {
  int64_t total = state_->kv.bytes();
  return total + static_cast<int64_t>(state_->waiting.bytes().size());
}

TokenChoice naive_split_infer(const Model& model, int64_t layer_begin, const float* rows, uint32_t count,
                              const SamplingParams& sampling, const TokenHistory& history, int32_t scored_token) {
  torch::InferenceMode guard;
  const auto& c = model.config();
  if (count == 0 || count > c.max_seq) throw ModelError("naive split: bad sequence length " + std::to_string(count));
  check_choice(sampling, history, scored_token, c.vocab_size);
  auto x = torch::from_blob(const_cast<float*>(rows), {count, c.dim}, torch::kFloat);
  KvCache kv(c, layer_begin, c.n_layers);  // thrown away: the baseline keeps nothing
  auto last = model.decoder().forward(x, 0, layer_begin, c.n_layers, kv, 1);  // (1, dim)
  return choose_token(model.decoder().final_logits(last[0]), sampling, {count - 1, history, scored_token});
}

}  // namespace ce
