#include "model/early_exit_runner.hpp"

#include <torch/torch.h>

#include <algorithm>

#include "model/decoder.hpp"
#include "model/sampler.hpp"

namespace ce {

namespace {
struct RowGroup {
  int64_t depth;      // layers [0, depth) done
  int64_t first_pos;  // rows are positions [first_pos, first_pos + rows.size(0))
  at::Tensor rows;    // (n, dim)
};
}  // namespace

struct EarlyExitRunner::State {
  std::shared_ptr<const Model> model;
  const Decoder& decoder;
  int64_t layer_end;
  std::vector<int64_t> exits;  // exit layers inside [1, layer_end]
  KvCache kv;
  int64_t next_pos = 0;
  int64_t completed = 0;
  std::vector<RowGroup> pending;  // older rows first; depth strictly decreasing toward the back
  std::vector<at::Tensor> done;   // rows at layer_end not yet taken
  int64_t done_first = 0;

  State(std::shared_ptr<const Model> m, int64_t end)
      : model(std::move(m)), decoder(model->decoder()), layer_end(end), kv(model->config(), 0, end) {
    for (auto e : model->config().exit_layers)
      if (e <= end) exits.push_back(e);
  }

  int64_t next_stop(int64_t depth) const {
    int64_t stop = layer_end;
    for (auto e : exits)
      if (e > depth) {
        stop = std::min(stop, e);
        break;
      }
    if (!pending.empty()) stop = std::min(stop, pending.back().depth);
    return stop;
  }

  void complete(const at::Tensor& rows) {
    if (done.empty()) done_first = completed;
    done.push_back(rows);
    completed += rows.size(0);
  }

  // Carries `group` down from its depth, merging pending rows as it reaches them; stops early at
  // an exit that resolves the last row. Returns the outcome for the last row.
  // run_to_end: a prompt's rows all go to layer_end even when an exit decides its last token, so
  // their split states can be uploaded while the first tokens are generated.
  StepOutcome descend(RowGroup cur, const ExitRule& rule, bool run_to_end = false) {
    StepOutcome out;
    out.position = static_cast<int32_t>(cur.first_pos + cur.rows.size(0) - 1);
    const int64_t last_exit = exits.empty() ? -1 : exits.back();
    while (true) {
      if (!pending.empty() && pending.back().depth == cur.depth) {
        auto& g = pending.back();
        TORCH_CHECK(g.first_pos + g.rows.size(0) == cur.first_pos, "pending rows are not contiguous");
        cur.rows = torch::cat({g.rows, cur.rows}, 0);
        cur.first_pos = g.first_pos;
        pending.pop_back();
      }
      if (cur.depth == layer_end) break;
      const int64_t stop = next_stop(cur.depth);
      cur.rows = decoder.forward(cur.rows, cur.first_pos, cur.depth, stop, kv);  // (n, dim)
      cur.depth = stop;
      const bool at_exit = std::find(exits.begin(), exits.end(), stop) != exits.end();
      // With no chance of leaving early (threshold > 1) only the last exit is read, as standalone's
      // fallback, and not even that when the range ends at the final head, which always decides.
      const bool fallback_needed = stop == last_exit && layer_end < model->config().n_layers;
      const bool read_exit =
          rule.evaluate_exits && !out.resolved && at_exit && (rule.threshold <= 1.0 || fallback_needed);
      if (!read_exit) continue;
      auto logits = decoder.exit_logits(stop, cur.rows[-1]);  // (vocab)
      const auto choice = choose_token(logits, rule.sampling, static_cast<uint64_t>(out.position));
      out.fallback_token = choice.token;
      out.fallback_confidence = choice.confidence;
      out.fallback_layer = static_cast<int32_t>(stop);
      if (rule.leaves_at(choice.confidence)) {
        out.resolved = true;
        out.token = choice.token;
        out.confidence = choice.confidence;
        out.exit_layer = static_cast<int32_t>(stop);
        if (run_to_end) continue;
        if (stop == layer_end)
          complete(cur.rows);
        else
          pending.push_back(std::move(cur));
        return out;
      }
    }
    complete(cur.rows);
    const auto& c = model->config();
    if (layer_end == c.n_layers && rule.evaluate_exits && !out.resolved) {
      auto logits = decoder.final_logits(cur.rows[-1]);
      const auto choice = choose_token(logits, rule.sampling, static_cast<uint64_t>(out.position));
      out.resolved = true;
      out.token = choice.token;
      out.confidence = choice.confidence;
      out.exit_layer = static_cast<int32_t>(c.n_layers);
    }
    return out;
  }
};

EarlyExitRunner::EarlyExitRunner(std::shared_ptr<const Model> model, int64_t layer_end) {
  const auto& c = model->config();
  if (layer_end < 1 || layer_end > c.n_layers)
    throw ModelError("early-exit runner: layer_end " + std::to_string(layer_end) + " outside [1, " +
                     std::to_string(c.n_layers) + "]");
  state_ = std::make_unique<State>(std::move(model), layer_end);
}

EarlyExitRunner::~EarlyExitRunner() = default;

StepOutcome EarlyExitRunner::advance(const std::vector<int32_t>& tokens, const ExitRule& rule) {
  torch::InferenceMode guard;
  auto& s = *state_;
  if (tokens.empty()) throw ModelError("early-exit runner: no tokens to feed");
  if (s.next_pos + static_cast<int64_t>(tokens.size()) > s.model->config().max_seq)
    throw ModelError("early-exit runner: sequence would exceed max_seq " +
                     std::to_string(s.model->config().max_seq));
  std::vector<int64_t> ids(tokens.begin(), tokens.end());
  auto x = s.decoder.embed(torch::tensor(ids, torch::kLong));  // (T, dim)
  RowGroup cur{0, s.next_pos, x};
  s.next_pos += static_cast<int64_t>(tokens.size());
  return s.descend(std::move(cur), rule, tokens.size() > 1);
}

void EarlyExitRunner::flush() {
  torch::InferenceMode guard;
  auto& s = *state_;
  ExitRule run_only;
  run_only.evaluate_exits = false;
  while (!s.pending.empty()) {
    RowGroup g = std::move(s.pending.back());
    s.pending.pop_back();
    s.descend(std::move(g), run_only);
  }
}

PositionRows EarlyExitRunner::take_completed(std::vector<float>* fp32) {
  auto& s = *state_;
  const auto dim = static_cast<uint32_t>(s.model->config().dim);
  if (s.done.empty()) return PositionRows::empty_at(RowKind::states_f16, dim * 2, static_cast<uint32_t>(s.completed));
  auto full = torch::cat(s.done, 0).contiguous();  // (n, dim) fp32
  if (fp32) fp32->insert(fp32->end(), full.data_ptr<float>(), full.data_ptr<float>() + full.numel());
  auto half = full.to(torch::kHalf).contiguous();  // (n, dim) fp16
  s.done.clear();
  return PositionRows::states_f16(static_cast<uint32_t>(s.done_first), static_cast<uint32_t>(half.size(0)), dim,
                                  reinterpret_cast<const uint16_t*>(half.data_ptr()));
}

int64_t EarlyExitRunner::positions() const { return state_->next_pos; }
int64_t EarlyExitRunner::completed_positions() const { return state_->completed; }
int64_t EarlyExitRunner::layer_end() const { return state_->layer_end; }

}  // namespace ce
