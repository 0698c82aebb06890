#include "model/early_exit_runner.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <limits>

#include "model/decoder.hpp"
#include "model/sampler.hpp"

namespace ce {

namespace {
struct RowGroup {
  int64_t depth;      // layers [0, depth) done
  int64_t first_pos;  // rows are positions [first_pos, first_pos + rows.size(0))
  at::Tensor rows;    // (n, dim)
};

// The outcome's token taken from the head at `layer` (an exit that reached θ, or the final layer).
void resolve(StepOutcome& o, TokenChoice choice, int64_t layer) {
  o.resolved = true;
  o.token = choice.token;
  o.confidence = choice.confidence;
  o.exit_layer = static_cast<int32_t>(layer);
  o.logprobs = std::move(choice.logprobs);
}

// An exit read for the outcome's token: it is the fallback (the deepest exit read so far) and, when
// its confidence reaches θ, the token. True when it resolved the token.
bool read_exit(StepOutcome& o, const TokenChoice& choice, int64_t layer, const ExitRule& rule) {
  o.fallback_token = choice.token;
  o.fallback_confidence = choice.confidence;
  o.fallback_layer = static_cast<int32_t>(layer);
  o.fallback_logprobs = choice.logprobs;
  if (!rule.leaves_at(choice.confidence)) return false;
  resolve(o, choice, layer);
  return true;
}

}  // namespace

struct EarlyExitRunner::State {
  std::shared_ptr<const Model> model;
  const Decoder& decoder;
  int64_t layer_end;
  std::vector<int64_t> exits;  // exit layers inside [1, layer_end]
  KvCache kv;
  int64_t next_pos = 0;
  int64_t completed = 0;
  std::vector<int32_t> fed;   // the tokens of positions [0, next_pos): the penalties' history
  size_t prompt_length = 0;   // the first feed's tokens: the prompt (the rest count as output)
  std::vector<RowGroup> pending;  // older rows first; depth strictly decreasing toward the back
  std::vector<at::Tensor> done;   // rows at layer_end not yet taken
  int64_t done_first = 0;

  // What rewind() restores; KV rows before the lengths are never rewritten, so lengths suffice.
  struct Checkpoint {
    int64_t next_pos = 0, completed = 0, done_first = 0;
    std::vector<int64_t> kv_lengths;  // per layer of [0, layer_end)
    std::vector<RowGroup> pending;    // copies: the descents that follow consume the originals
    std::vector<at::Tensor> done;
  };
  std::vector<Checkpoint> checkpoints;  // by increasing next_pos

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

  // One token's way down the range: its rows at their depth and the decision so far. A descent
  // stops early at an exit that resolves its last row; run_to_end: a prompt's rows all go to
  // layer_end even when an exit decides its last token, so that their split states can be
  // uploaded while the first tokens are generated.
  struct Descent {
    State* state;
    RowGroup cur;
    ExitRule rule;
    bool run_to_end = false;
    StepOutcome out;
    bool finished = false;
  };

  Descent start(RowGroup cur, const ExitRule& rule, bool run_to_end) {
    Descent d{this, std::move(cur), rule, run_to_end, StepOutcome{}, false};
    d.out.position = static_cast<int32_t>(d.cur.first_pos + d.cur.rows.size(0) - 1);
    settle(d);
    return d;
  }

  // Before a forward: pending rows that wait at the descent's depth join it; at layer_end it is done.
  void settle(Descent& d) {
    if (!pending.empty() && pending.back().depth == d.cur.depth) {
      auto& g = pending.back();
      TORCH_CHECK(g.first_pos + g.rows.size(0) == d.cur.first_pos, "pending rows are not contiguous");
      d.cur.rows = torch::cat({g.rows, d.cur.rows}, 0);
      d.cur.first_pos = g.first_pos;
      pending.pop_back();
    }
    if (d.cur.depth < layer_end) return;
    complete(d.cur.rows);
    const auto& c = model->config();
    if (layer_end == c.n_layers && d.rule.evaluate_exits && !d.out.resolved) {
      auto logits = decoder.final_logits(d.cur.rows[-1]);
      resolve(d.out, choose_token(logits, d.rule.sampling, choice_input(d)), c.n_layers);
    }
    d.finished = true;
  }

  // The choice's position and, when the rule penalizes, the tokens up to it.
  ChoiceInput choice_input(const Descent& d) const {
    ChoiceInput in;
    in.position = static_cast<uint64_t>(d.out.position);
    if (d.rule.sampling.penalizes())
      in.history = TokenHistory::of(fed.data(), static_cast<size_t>(d.out.position) + 1, prompt_length);
    return in;
  }

  // Whether the descent, having just arrived at d.cur.depth, reads the exit there. With no chance
  // of leaving early (threshold > 1) only the last exit is read, as standalone's fallback, and not
  // even that when the range ends at the final head, which always decides.
  bool reads_exit(const Descent& d) const {
    const int64_t stop = d.cur.depth;
    const int64_t last_exit = exits.empty() ? -1 : exits.back();
    const bool at_exit = std::find(exits.begin(), exits.end(), stop) != exits.end();
    const bool fallback_needed = stop == last_exit && layer_end < model->config().n_layers;
    return d.rule.evaluate_exits && !d.out.resolved && at_exit && (d.rule.threshold <= 1.0 || fallback_needed);
  }

  // After a forward that brought the descent to d.cur.depth, with the exit's logits (vocab) there
  // when reads_exit(d): the exit may decide the token (and stop the descent); else it goes on.
  void reached(Descent& d, const at::Tensor& exit_logits) {
    if (exit_logits.defined()) {
      const int64_t stop = d.cur.depth;
      if (read_exit(d.out, choose_token(exit_logits, d.rule.sampling, choice_input(d)), stop, d.rule)) {
        if (!d.run_to_end) {
          if (stop == layer_end)
            complete(d.cur.rows);
          else
            pending.push_back(std::move(d.cur));
          d.finished = true;
          return;
        }
      }
    }
    settle(d);
  }

  // Runs descents of different runners (one each, same model and range) together: each round
  // takes the descents at the smallest depth, runs them as one batched forward to the nearest stop
  // any of them has (an exit, layer_end, or its own pending rows' depth), then lets each see where
  // it arrived. A descent cut short at another's stop just goes on from there.
  static void run(const std::vector<Descent*>& descents, std::vector<float>& scratch) {
    if (descents.empty()) return;
    const auto& decoder = descents.front()->state->decoder;
    while (true) {
      int64_t depth = std::numeric_limits<int64_t>::max();
      for (auto* d : descents)
        if (!d->finished) depth = std::min(depth, d->cur.depth);
      if (depth == std::numeric_limits<int64_t>::max()) return;
      std::vector<Descent*> group;
      int64_t stop = std::numeric_limits<int64_t>::max();
      for (auto* d : descents)
        if (!d->finished && d->cur.depth == depth) {
          group.push_back(d);
          stop = std::min(stop, d->state->next_stop(depth));
        }
      std::vector<Decoder::DecodeStep> steps;
      for (auto* d : group) steps.push_back({d->cur.rows, d->cur.first_pos, &d->state->kv});
      const auto rows = decoder.forward(steps, depth, stop, scratch);  // each (n_i, dim)
      std::vector<at::Tensor> last;  // (dim) the last rows of those that read the exit at `stop`
      std::vector<bool> reads(group.size());
      for (size_t i = 0; i < group.size(); ++i) {
        group[i]->cur.rows = rows[i];
        group[i]->cur.depth = stop;
        reads[i] = group[i]->state->reads_exit(*group[i]);
        if (reads[i]) last.push_back(rows[i][-1]);
      }
      // One head product for all of them: (readers, vocab).
      const auto logits = last.empty() ? at::Tensor() : decoder.exit_logits(stop, torch::stack(last));
      int64_t reader = 0;
      for (size_t i = 0; i < group.size(); ++i)
        group[i]->state->reached(*group[i], reads[i] ? logits[reader++] : at::Tensor());
    }
  }

  StepOutcome descend(RowGroup cur, const ExitRule& rule, bool run_to_end = false) {
    auto d = start(std::move(cur), rule, run_to_end);
    run({&d}, Decoder::thread_scratch());
    return d.out;
  }

  // Throws when `tokens` cannot be fed at the next positions.
  void check_feed(const std::vector<int32_t>& tokens) const {
    if (tokens.empty()) throw ModelError("early-exit runner: no tokens to feed");
    if (next_pos + static_cast<int64_t>(tokens.size()) > model->config().max_seq)
      throw ModelError("early-exit runner: sequence would exceed max_seq " + std::to_string(model->config().max_seq));
  }

  // The rows of `tokens` (which passed check_feed) at the next positions, at depth 0.
  RowGroup feed(const std::vector<int32_t>& tokens) {
    std::vector<int64_t> ids(tokens.begin(), tokens.end());
    RowGroup cur{0, next_pos, decoder.embed(torch::tensor(ids, torch::kLong))};  // (T, dim)
    if (next_pos == 0) prompt_length = tokens.size();
    next_pos += static_cast<int64_t>(tokens.size());
    fed.insert(fed.end(), tokens.begin(), tokens.end());
    return cur;
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
  return advance({{this, tokens, rule}}, Decoder::thread_scratch()).front();  // a batch of one
}

std::vector<StepOutcome> EarlyExitRunner::advance(const std::vector<Advance>& batch, std::vector<float>& scratch) {
  torch::InferenceMode guard;
  for (size_t i = 0; i < batch.size(); ++i) {  // everything refused before any runner changes
    const auto* r = batch[i].runner;
    if (!r) throw ModelError("early-exit runner: batch item " + std::to_string(i) + " has no runner");
    const auto& first = *batch.front().runner->state_;
    if (r->state_->model != first.model || r->state_->layer_end != first.layer_end)
      throw ModelError("early-exit runner: a batch mixes models or layer ranges");
    for (size_t j = 0; j < i; ++j)
      if (batch[j].runner == r) throw ModelError("early-exit runner: one runner twice in a batch");
    r->state_->check_feed(batch[i].tokens);
  }
  std::vector<State::Descent> descents;
  descents.reserve(batch.size());
  for (const auto& a : batch) {
    auto& s = *a.runner->state_;
    descents.push_back(s.start(s.feed(a.tokens), a.rule, a.tokens.size() > 1));
  }
  std::vector<State::Descent*> all;
  for (auto& d : descents) all.push_back(&d);
  State::run(all, scratch);
  std::vector<StepOutcome> out;
  for (const auto& d : descents) out.push_back(d.out);
  return out;
}

std::vector<StepOutcome> EarlyExitRunner::score(const std::shared_ptr<const Model>& model, int64_t layer_end,
                                                const std::vector<int32_t>& tokens, const ExitRule& rule) {
  torch::InferenceMode guard;
  EarlyExitRunner probe(model, layer_end);  // checks the range
  auto& s = *probe.state_;
  s.check_feed(tokens);
  const auto n = static_cast<int64_t>(tokens.size()) - 1;  // positions scored
  std::vector<StepOutcome> out(static_cast<size_t>(std::max<int64_t>(n, 0)));
  if (n <= 0) return out;
  auto choose = [&](const at::Tensor& logits, int64_t p) {  // logits (vocab) after position p
    return choose_token(logits, rule.sampling, ChoiceInput{static_cast<uint64_t>(p), {}, tokens[static_cast<size_t>(p) + 1]});
  };
  for (int64_t p = 0; p < n; ++p) out[static_cast<size_t>(p)].position = static_cast<int32_t>(p);
  RowGroup cur = s.feed(tokens);  // (T, dim) at depth 0
  std::vector<int64_t> stops = s.exits;
  if (stops.empty() || stops.back() != layer_end) stops.push_back(layer_end);
  for (const auto stop : stops) {
    cur.rows = s.decoder.forward({{cur.rows, 0, &s.kv}}, cur.depth, stop, Decoder::thread_scratch()).front();
    cur.depth = stop;
    const bool at_exit = std::find(s.exits.begin(), s.exits.end(), stop) != s.exits.end();
    const bool final_head = stop == model->config().n_layers;
    if (!at_exit && !final_head) continue;
    const auto head_rows = cur.rows.narrow(0, 0, n);  // (n, dim): the rows that predict a next token
    const auto logits = at_exit ? s.decoder.exit_logits(stop, head_rows) : s.decoder.final_logits(head_rows);  // (n, vocab)
    for (int64_t p = 0; p < n; ++p) {
      auto& o = out[static_cast<size_t>(p)];
      if (o.resolved) continue;
      if (at_exit)
        read_exit(o, choose(logits[p], p), stop, rule);
      else
        resolve(o, choose(logits[p], p), stop);  // the final head always decides
    }
  }
  return out;
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

void EarlyExitRunner::checkpoint() {
  torch::InferenceMode guard;
  auto& s = *state_;
  if (!s.checkpoints.empty() && s.checkpoints.back().next_pos == s.next_pos) return;
  State::Checkpoint c{s.next_pos, s.completed, s.done_first, {}, {}, {}};
  for (int64_t l = 0; l < s.layer_end; ++l) c.kv_lengths.push_back(s.kv.length(l));
  for (const auto& g : s.pending) c.pending.push_back({g.depth, g.first_pos, g.rows.clone()});
  for (const auto& t : s.done) c.done.push_back(t.clone());
  s.checkpoints.push_back(std::move(c));
}

void EarlyExitRunner::rewind(int64_t positions) {
  auto& s = *state_;
  auto it = std::find_if(s.checkpoints.begin(), s.checkpoints.end(),
                         [&](const State::Checkpoint& c) { return c.next_pos == positions; });
  if (it == s.checkpoints.end())
    throw ModelError("early-exit runner: no checkpoint at position " + std::to_string(positions));
  for (int64_t l = 0; l < s.layer_end; ++l) s.kv.truncate(l, it->kv_lengths[static_cast<size_t>(l)]);
  s.next_pos = it->next_pos;
  s.fed.resize(static_cast<size_t>(s.next_pos));
  s.completed = it->completed;
  s.done_first = it->done_first;
  s.pending = std::move(it->pending);
  s.done = std::move(it->done);
  s.checkpoints.erase(it, s.checkpoints.end());
}

void EarlyExitRunner::confirm(int64_t positions) {
  auto& c = state_->checkpoints;
  c.erase(std::remove_if(c.begin(), c.end(), [&](const State::Checkpoint& k) { return k.next_pos <= positions; }),
          c.end());
}

int64_t EarlyExitRunner::positions() const { return state_->next_pos; }
int64_t EarlyExitRunner::completed_positions() const { return state_->completed; }
int64_t EarlyExitRunner::layer_end() const { return state_->layer_end; }

}  // namespace ce
