#include "model/exit_tuning.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "model/decoder.hpp"
#include "model/kv_cache.hpp"
#include "model/weights.hpp"

namespace ce {
namespace {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

constexpr const char* kFinalNormName = "model.norm.weight";
constexpr const char* kLmHeadName = "lm_head.weight";
constexpr const char* kEmbedName = "model.embed_tokens.weight";

// The files of a published model directory besides config.json and the weights; a model with exits
// reads text exactly as its source did, so they are copied as they are.
constexpr const char* kCopiedFiles[] = {
    "tokenizer.json",          "tokenizer_config.json", "tokenizer.model",    "generation_config.json",
    "special_tokens_map.json", "added_tokens.json",     "chat_template.jinja"};

// At most this many logits (fp32) exist at once while scoring an exit: rows are scored in chunks
// of kLogitFloats / vocab, so a 128 k vocabulary costs the same memory as a 2 k one (~128 MB,
// plus the same again for the softmax's gradient).
constexpr int64_t kLogitFloats = int64_t{1} << 25;
// Rows of a stored (bf16/fp16) head widened to fp32 at a time inside the head product: a
// (vocab, dim) fp32 copy of a large head (1 GB for Llama 3.2 1B) is never made.
constexpr int64_t kHeadRowsPerChunk = 4096;

std::string join(const std::vector<int64_t>& values) {
  std::string out;
  for (auto v : values) out += (out.empty() ? "" : ",") + std::to_string(v);
  return out;
}

std::string exit_tensor_name(int64_t layer, const char* leaf) {
  return "exits." + std::to_string(layer) + "." + leaf;
}

// ---- checks -----------------------------------------------------------------------------------

void check_source_dir(const std::string& from) {
  if (from.empty()) throw ModelError("--from: no source model directory given");
  if (!fs::is_directory(from)) throw ModelError("--from " + from + ": not a directory");
  if (!fs::is_regular_file(from + "/config.json"))
    throw ModelError("--from " + from + ": no config.json (not a model directory)");
  if (!fs::exists(from + "/model.safetensors") && !fs::exists(from + "/model.safetensors.index.json"))
    throw ModelError("--from " + from +
                     ": neither model.safetensors nor model.safetensors.index.json (not a model directory)");
}

void check_exit_layers(const ModelConfig& source, const ExitSpec& spec, const std::string& config_path) {
  const std::string asked = "--add-exits " + join(spec.exit_layers);
  if (spec.exit_layers.empty()) throw ModelError("--add-exits: no exit layers given");
  int64_t previous = 0;
  for (auto e : spec.exit_layers) {
    if (e < 1 || e >= source.n_layers)
      throw ModelError(asked + ": exit layer " + std::to_string(e) + " outside [1, " +
                       std::to_string(source.n_layers - 1) + "] (" + config_path + " has " +
                       std::to_string(source.n_layers) + " layers)");
    if (e <= previous) throw ModelError(asked + ": exit layers must be strictly increasing");
    previous = e;
  }
  if (!source.exit_layers.empty()) {
    if (source.exit_layers == spec.exit_layers)
      throw ModelError(
          config_path + ": already has exits at layers " + join(source.exit_layers) +
          ", the ones asked for: nothing to add (to tune them again, add them to the checkpoint they were "
          "added to)");
    throw ModelError(config_path + ": already has exits at layers " + join(source.exit_layers) +
                     "; --add-exits adds exits to a model without them");
  }
  if (!(spec.default_threshold >= 0 && spec.default_threshold <= 1))
    throw ModelError("add-exits: default threshold must be in [0, 1]");
}

void check_out_dir(const std::string& from, const std::string& out, bool force) {
  if (out.empty()) throw ModelError("--out: no output directory given");
  if (!fs::exists(out)) return;
  std::error_code ec;
  if (fs::equivalent(from, out, ec))
    throw ModelError("--out " + out +
                     " is the --from directory: write the model with exits to a new directory");
  if (!fs::is_directory(out)) throw ModelError("--out " + out + ": exists and is not a directory");
  if (!fs::is_empty(out) && !force)
    throw ModelError("--out " + out +
                     ": exists and is not empty (--force writes into it, replacing its model files)");
}

void check_tuning(const ExitTuningOptions& t, const ModelConfig& source) {
  if (t.steps < 0) throw ModelError("--steps must be >= 0");
  if (t.steps == 0) return;
  if (t.batch < 1) throw ModelError("--batch must be >= 1");
  if (t.seq_len < 2 || t.seq_len > source.max_seq)
    throw ModelError("--seq-len " + std::to_string(t.seq_len) + " outside [2, " +
                     std::to_string(source.max_seq) + "] (the model's max_position_embeddings)");
  if (!(t.lr > 0)) throw ModelError("--lr must be > 0");
  if (!(t.head_lr >= 0)) throw ModelError("--head-lr must be >= 0");
  if (!(t.held_out_fraction >= 0 && t.held_out_fraction < 1))
    throw ModelError("held-out fraction must be in [0, 1)");
  if (t.held_out_windows < 0) throw ModelError("held-out windows must be >= 0");
}

void check_token_ids(const std::vector<int32_t>& tokens, int64_t vocab, const char* what) {
  for (auto t : tokens)
    if (t < 0 || t >= vocab)
      throw ModelError(std::string(what) + ": token id " + std::to_string(t) +
                       " outside the model's vocabulary of " + std::to_string(vocab) +
                       " (is the tokenizer the model's?)");
}

// ---- the frozen head --------------------------------------------------------------------------

// logits (n, vocab) = x (n, dim) · headᵀ for a head that is not trained (lm_head, tied exits),
// kept in its stored type: the product widens kHeadRowsPerChunk rows at a time, forward and
// backward, so the only fp32 copy of it is one chunk. Gradient to x only.
class FrozenHeadProduct : public torch::autograd::Function<FrozenHeadProduct> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& head) {
    ctx->saved_data["head"] = head;  // the stored tensor itself (a view of the mapped file), not a copy
    const int64_t vocab = head.size(0);
    auto logits = at::empty({x.size(0), vocab}, x.options());
    for (int64_t row = 0; row < vocab; row += kHeadRowsPerChunk) {
      const int64_t n = std::min(kHeadRowsPerChunk, vocab - row);
      logits.narrow(1, row, n).copy_(at::mm(x, head.narrow(0, row, n).to(at::kFloat).t()));
    }
    return logits;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    const auto head = ctx->saved_data["head"].toTensor();
    const auto& grad_logits = grads[0];  // (n, vocab)
    auto grad_x = at::zeros({grad_logits.size(0), head.size(1)}, grad_logits.options());  // (n, dim)
    for (int64_t row = 0; row < head.size(0); row += kHeadRowsPerChunk) {
      const int64_t n = std::min(kHeadRowsPerChunk, head.size(0) - row);
      grad_x.addmm_(grad_logits.narrow(1, row, n), head.narrow(0, row, n).to(at::kFloat));
    }
    return {grad_x, at::Tensor()};
  }
};

// ---- exit parameters and their loss -----------------------------------------------------------

// One exit being tuned: fp32 leaves that autograd trains.
struct TunedExit {
  int64_t layer = 0;
  at::Tensor norm;  // (dim), initialised from the final norm
  at::Tensor head;  // (vocab, dim), a copy of lm_head; undefined when tied (lm_head itself, frozen)
};

std::vector<TunedExit> initial_exits(const Weights& backbone, const ExitSpec& spec) {
  std::vector<TunedExit> exits;
  for (auto layer : spec.exit_layers) {
    TunedExit x;
    x.layer = layer;
    x.norm = backbone.final_norm.to(at::kFloat).clone().requires_grad_(true);
    // Own heads cost 16 bytes per parameter while tuning (fp32 weight, gradient, two Adam moments).
    if (spec.own_heads) x.head = backbone.lm_head.to(at::kFloat).clone().requires_grad_(true);
    exits.push_back(std::move(x));
  }
  return exits;
}

struct LossSum {
  double nats = 0;
  int64_t positions = 0;
};

// Positions whose target is BOS are not scored: that is the start of the next document, which no
// context predicts.
int64_t ignored_target(const ModelConfig& c) { return c.bos_id >= 0 ? c.bos_id : -100; }

// Summed next-token cross-entropy of one exit over `states` (N, dim) fp32 against `targets` (N)
// int64, in row chunks of at most kLogitFloats logits. With `backward_scale` > 0 the gradient of
// sum * backward_scale is accumulated into the exit's parameters, chunk by chunk (each chunk's
// graph is freed before the next is built).
LossSum exit_loss(const TunedExit& exit, const at::Tensor& frozen_head, const at::Tensor& states,
                  const at::Tensor& targets, const ModelConfig& c, double backward_scale) {
  const int64_t rows = states.size(0), vocab = c.vocab_size;
  const int64_t rows_per_chunk = std::max<int64_t>(1, kLogitFloats / vocab);
  const int64_t ignored = ignored_target(c);
  LossSum out;
  out.positions = (targets != ignored).sum().item<int64_t>();
  for (int64_t row = 0; row < rows; row += rows_per_chunk) {
    const int64_t n = std::min(rows_per_chunk, rows - row);
    const auto x = states.narrow(0, row, n);  // (n, dim)
    // RMSNorm as the decoder computes it, the exit's norm weight trained.
    const auto normed = x * torch::rsqrt(x.pow(2).mean(-1, true) + c.norm_eps) * exit.norm;  // (n, dim)
    const auto logits = exit.head.defined() ? torch::linear(normed, exit.head)
                                            : FrozenHeadProduct::apply(normed, frozen_head);  // (n, vocab)
    namespace F = torch::nn::functional;
    const auto sum =
        F::cross_entropy(logits, targets.narrow(0, row, n),
                         F::CrossEntropyFuncOptions().ignore_index(ignored).reduction(torch::kSum));
    if (backward_scale > 0) (sum * backward_scale).backward();
    out.nats += sum.item<double>();
  }
  return out;
}

// ---- windows of text through the frozen backbone ----------------------------------------------

// One window: T inputs and the T next tokens. With a BOS the inputs are BOS + stream[begin, begin + T - 1)
// and the targets stream[begin, begin + T): the backbone reads every window as the start of a
// document, as it was trained (Llama-family models treat position 0's BOS as an attention sink; a
// window without it is out of distribution). Without one, inputs stream[begin, begin + T).
struct Window {
  at::Tensor inputs, targets;  // (T) int64 each
};

Window window_at(const std::vector<int32_t>& stream, int64_t begin, int64_t seq_len, int64_t bos) {
  std::vector<int64_t> inputs, targets;
  const auto token = [&](int64_t i) { return static_cast<int64_t>(stream[static_cast<size_t>(i)]); };
  if (bos >= 0) inputs.push_back(bos);
  for (int64_t i = begin; static_cast<int64_t>(inputs.size()) < seq_len; ++i) inputs.push_back(token(i));
  const int64_t first_target = bos >= 0 ? begin : begin + 1;
  for (int64_t i = first_target; i < first_target + seq_len; ++i) targets.push_back(token(i));
  const auto as_tensor = [](const std::vector<int64_t>& v) { return torch::tensor(v, torch::kLong); };
  return {as_tensor(inputs), as_tensor(targets)};
}

// A window start needs seq_len + 1 tokens from it on (either layout of window_at).
int64_t window_starts(const std::vector<int32_t>& stream, int64_t seq_len) {
  return static_cast<int64_t>(stream.size()) - seq_len;
}

// Runs the backbone (inference decoder: weights as stored, kernels, no autograd) over a batch of
// windows to the last exit and returns the hidden states at each exit, (B * T, dim) fp32 each,
// exits ascending, with the targets (B * T).
class BackbonePass {
 public:
  BackbonePass(const Decoder& decoder, std::vector<int64_t> exit_layers)
      : decoder_(decoder), exit_layers_(std::move(exit_layers)) {}

  std::pair<std::vector<at::Tensor>, at::Tensor> run(const std::vector<Window>& windows) {
    const auto& c = decoder_.config();
    while (caches_.size() < windows.size()) caches_.emplace_back(c, 0, exit_layers_.back());
    std::vector<Decoder::DecodeStep> steps;
    std::vector<at::Tensor> targets;
    for (size_t i = 0; i < windows.size(); ++i) {
      caches_[i].clear();
      steps.push_back({decoder_.embed(windows[i].inputs), 0, &caches_[i]});  // (T, dim)
      targets.push_back(windows[i].targets);
    }
    std::vector<at::Tensor> states;
    int64_t depth = 0;
    for (auto layer : exit_layers_) {
      const auto rows = decoder_.forward(steps, depth, layer, scratch_);  // every window's rows as one batch
      for (size_t i = 0; i < steps.size(); ++i) steps[i].hidden = rows[i];
      states.push_back(torch::cat(rows, 0));  // (B * T, dim)
      depth = layer;
    }
    return {states, torch::cat(targets, 0)};
  }

 private:
  const Decoder& decoder_;
  std::vector<int64_t> exit_layers_;
  std::vector<KvCache> caches_;  // one per window of a batch, kept between batches
  std::vector<float> scratch_;
};

// Mean loss per exit over up to `windows` non-overlapping windows at the start of `stream`.
std::vector<double> held_out_losses(BackbonePass& pass, const std::vector<TunedExit>& exits,
                                    const at::Tensor& frozen_head, const std::vector<int32_t>& stream,
                                    const ExitTuningOptions& o, const ModelConfig& c) {
  const int64_t starts = window_starts(stream, o.seq_len);  // windows begin at 0, T, 2T, ... below this
  const int64_t count = starts < 1 ? 0 : std::min(o.held_out_windows, (starts - 1) / o.seq_len + 1);
  if (count == 0) return {};
  torch::NoGradGuard no_grad;
  std::vector<LossSum> sums(exits.size());
  for (int64_t first = 0; first < count; first += o.batch) {
    std::vector<Window> batch;
    for (int64_t w = first; w < std::min(count, first + o.batch); ++w)
      batch.push_back(window_at(stream, w * o.seq_len, o.seq_len, c.bos_id));
    const auto [states, targets] = pass.run(batch);
    for (size_t k = 0; k < exits.size(); ++k) {
      const auto s = exit_loss(exits[k], frozen_head, states[k], targets, c, 0);
      sums[k].nats += s.nats;
      sums[k].positions += s.positions;
    }
  }
  std::vector<double> means;
  for (const auto& s : sums) means.push_back(s.positions ? s.nats / static_cast<double>(s.positions) : NAN);
  return means;
}

// Linear warm-up over the first 5% of the steps (Adam's first updates are its largest relative to
// the gradient), then cosine decay to a tenth of the peak: the last steps average out the noise of
// small batches.
double schedule(int64_t step, int64_t steps) {
  const int64_t warmup = std::max<int64_t>(1, steps / 20);
  if (step < warmup) return static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double progress =
      static_cast<double>(step - warmup) / static_cast<double>(std::max<int64_t>(1, steps - warmup));
  return 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * std::min(1.0, progress)));
}

// EE-Tuning: trains `exits` (norms, own heads) on next-token cross-entropy with the backbone frozen.
//
// The loss is cross-entropy against the text's next token, not KL to the final layer's
// distribution: it is the loss of EE-Tuning (Pan et al., 2023) and of ce-train's exit heads, so
// ce-eval's threshold calibration reads both kinds of model the same way; the backbone only runs to
// the last exit (for exits at 4 and 8 of 16 layers, half the layers and no final head per step);
// and the final layer's distribution is itself only an estimate of the next token.
//
// Memory per step: the batch's hidden states at each exit ((B * T, dim) fp32 each), one chunk of
// logits, the decoder's KV caches and scratch for B windows; the backbone is read as stored.
AddExitsResult tune_exits(const Decoder& decoder, const at::Tensor& frozen_head,
                          std::vector<TunedExit>& exits, const AddExitsOptions& options,
                          const std::function<void(const ExitTuningProgress&)>& progress) {
  const auto& o = options.tuning;
  const auto& c = decoder.config();
  std::vector<int32_t> train = o.train_tokens, held_out = o.valid_tokens;
  if (held_out.empty() && o.held_out_fraction > 0) {
    const auto n = static_cast<size_t>(static_cast<double>(train.size()) * o.held_out_fraction);
    held_out.assign(train.end() - static_cast<std::ptrdiff_t>(n), train.end());
    train.resize(train.size() - n);
  }
  check_token_ids(train, c.vocab_size, "--train");
  check_token_ids(held_out, c.vocab_size, "--valid");
  if (window_starts(train, o.seq_len) < 1)
    throw ModelError("--train: " + std::to_string(train.size()) +
                     " training tokens, fewer than --seq-len + 1 = " + std::to_string(o.seq_len + 1));

  std::vector<at::Tensor> norms, heads;
  for (auto& x : exits) {
    norms.push_back(x.norm);
    if (x.head.defined()) heads.push_back(x.head);
  }
  const double head_lr = o.head_lr > 0 ? o.head_lr : o.lr / 10;
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(norms, std::make_unique<torch::optim::AdamOptions>(o.lr));
  if (!heads.empty()) groups.emplace_back(heads, std::make_unique<torch::optim::AdamOptions>(head_lr));
  std::vector<double> peak_lr{o.lr, head_lr};
  torch::optim::Adam adam(groups, torch::optim::AdamOptions(o.lr));

  BackbonePass pass(decoder, options.exits.exit_layers);
  AddExitsResult result;
  const auto report_held_out = [&](ExitTuningProgress::Kind kind, std::vector<double>& into) {
    into = held_out_losses(pass, exits, frozen_head, held_out, o, c);
    if (progress && !into.empty()) {
      ExitTuningProgress p;
      p.kind = kind;
      p.step = result.steps_done;
      p.total_steps = o.steps;
      p.losses = into;
      progress(p);
    }
  };
  report_held_out(ExitTuningProgress::Kind::held_out_before, result.held_out_before);

  using clock = std::chrono::steady_clock;
  const auto seconds_since = [](clock::time_point t) {
    return std::chrono::duration<double>(clock::now() - t).count();
  };
  const auto t0 = clock::now();
  for (int64_t step = 0; step < o.steps; ++step) {
    const auto step_start = clock::now();
    // Windows depend only on (seed, step), as ce-train's batches.
    std::mt19937_64 rng(o.seed * 1000003ull + static_cast<uint64_t>(step));
    std::uniform_int_distribution<int64_t> pick(0, window_starts(train, o.seq_len) - 1);
    std::vector<Window> batch;
    for (int64_t b = 0; b < o.batch; ++b) batch.push_back(window_at(train, pick(rng), o.seq_len, c.bos_id));
    const auto [states, targets] = pass.run(batch);
    ExitTuningProgress p;
    p.backbone_seconds = seconds_since(step_start);
    const auto exits_start = clock::now();

    const double factor = schedule(step, o.steps);
    for (size_t g = 0; g < adam.param_groups().size(); ++g)
      static_cast<torch::optim::AdamOptions&>(adam.param_groups()[g].options()).lr(peak_lr[g] * factor);
    adam.zero_grad();
    const int64_t scored = (targets != ignored_target(c)).sum().item<int64_t>();
    for (size_t k = 0; k < exits.size(); ++k) {
      // Each exit's mean loss, summed over exits: they share no parameters, each learns its own mean.
      const auto s = exit_loss(exits[k], frozen_head, states[k], targets, c,
                               scored ? 1.0 / static_cast<double>(scored) : 0);
      p.losses.push_back(s.positions ? s.nats / static_cast<double>(s.positions) : NAN);
    }
    adam.step();
    p.exit_seconds = seconds_since(exits_start);
    result.steps_done = step + 1;
    result.tokens_per_second =
        static_cast<double>(result.steps_done * o.batch * o.seq_len) / seconds_since(t0);
    if (progress) {
      p.step = step + 1;
      p.total_steps = o.steps;
      p.lr = o.lr * factor;
      p.tokens_per_second = result.tokens_per_second;
      progress(p);
    }
  }
  report_held_out(ExitTuningProgress::Kind::held_out_after, result.held_out_after);
  return result;
}

// ---- writing the model directory --------------------------------------------------------------

// The exit tensors to add, in the types of the tensors they start from (model.norm.weight's,
// lm_head's): untuned, the stored tensors themselves; tuned, the trained values rounded to them.
TensorMap exit_tensors(const TensorMap& source, const ModelConfig& source_config, const ExitSpec& spec,
                       const std::vector<TunedExit>& tuned) {
  const at::Tensor& final_norm = source.at(kFinalNormName);
  const at::Tensor& lm_head = source.at(source_config.tie_word_embeddings ? kEmbedName : kLmHeadName);
  TensorMap out;
  for (size_t k = 0; k < spec.exit_layers.size(); ++k) {
    const int64_t layer = spec.exit_layers[k];
    const TunedExit* t = tuned.empty() ? nullptr : &tuned[k];
    out[exit_tensor_name(layer, "norm.weight")] =
        t ? t->norm.detach().to(final_norm.scalar_type()) : final_norm;
    if (spec.own_heads)
      out[exit_tensor_name(layer, "head.weight")] = t ? t->head.detach().to(lm_head.scalar_type()) : lm_head;
  }
  return out;
}

ordered_json read_ordered_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ModelError(path + ": cannot open");
  try {
    return ordered_json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw ModelError(path + ": not valid JSON (" + e.what() + ")");
  }
}

// The source's config.json, every field as it was and in its order, plus the early_exit section;
// checked to load before it replaces anything.
void write_config_with_exits(const std::string& from, const std::string& out, const ExitSpec& spec) {
  auto j = read_ordered_json(from + "/config.json");
  j["early_exit"] = {{"exit_layers", spec.exit_layers},
                     {"tie_exit_heads", !spec.own_heads},
                     {"default_threshold", spec.default_threshold},
                     {"default_split", spec.exit_layers.back()}};
  const std::string path = out + "/config.json", tmp = path + ".tmp";
  {
    std::ofstream file(tmp);
    file << j.dump(2) << "\n";
    if (!file.flush()) throw ModelError(tmp + ": write failed");
  }
  try {
    load_model_config(tmp);
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw ModelError(path + ": cannot replace it with " + tmp);
}

// With --force, weight files of an earlier model in `out` would shadow or contradict the one file
// written here (the loader prefers an index): they go.
void remove_stale_weights(const std::string& out) {
  for (const auto& entry : fs::directory_iterator(out)) {
    const std::string name = entry.path().filename().string();
    const bool shard = name.rfind("model-", 0) == 0 && name.size() > 12 &&
                       name.compare(name.size() - 12, 12, ".safetensors") == 0;
    if (name == "model.safetensors.index.json" || shard) fs::remove(entry.path());
  }
}

void write_model_with_exits(const AddExitsOptions& o, const TensorMap& source,
                            const ModelConfig& source_config, const std::vector<TunedExit>& tuned) {
  fs::create_directories(o.out);
  remove_stale_weights(o.out);
  TensorMap all = source;  // views of the mapped source files: written byte for byte, in their types
  for (auto& [name, t] : exit_tensors(source, source_config, o.exits, tuned)) all[name] = t;
  write_safetensors(o.out + "/model.safetensors", all, {{"format", "pt"}});
  for (const char* file : kCopiedFiles)
    if (fs::exists(o.from + "/" + file))
      fs::copy_file(o.from + "/" + file, o.out + "/" + file, fs::copy_options::overwrite_existing);
  write_config_with_exits(o.from, o.out, o.exits);  // last: a directory with a config is complete
}

}  // namespace

ModelConfig check_add_exits(const AddExitsOptions& o) {
  check_source_dir(o.from);
  const std::string config_path = o.from + "/config.json";
  const auto source = load_model_config(config_path);
  check_exit_layers(source, o.exits, config_path);
  check_out_dir(o.from, o.out, o.force);
  check_tuning(o.tuning, source);
  return source;
}

AddExitsResult add_exits(const AddExitsOptions& o,
                         const std::function<void(const ExitTuningProgress&)>& progress) {
  const auto source_config = check_add_exits(o);
  std::string source_files;
  const TensorMap source = read_checkpoint_tensors(o.from, &source_files);
  for (const auto& [name, t] : source)  // tuning reads the stored matrices as they are: floats only
    if (t.scalar_type() == at::kChar)
      throw ModelError(source_files + ": tensor '" + name + "' is int8 (ce-model --quantize-out); add exits to the "
                       "float checkpoint, then quantize the result");
  // Every tensor of the source checked against its config (names, shapes); nothing loaded yet.
  weights_from_tensors(source_config, source, source_files, StoredType::keep,
                       ModelParts{false, 0, 0, false, false});

  AddExitsResult result;
  std::vector<TunedExit> tuned;
  if (o.tuning.steps > 0) {
    // The layers up to the last exit, the embedding, final norm and head, all as stored: views of
    // the mapped files (norms widened, they are tiny). Deeper layers are never read here.
    const ModelParts parts{true, 0, o.exits.exit_layers.back(), false, true};
    const auto backbone = weights_from_tensors(source_config, source, source_files, StoredType::keep, parts);
    const Decoder decoder(backbone, WeightPrecision::as_stored);
    tuned = initial_exits(*backbone, o.exits);
    // lm_head (vocab, dim) as stored, from the caller's Weights: a decoder that converted its
    // matrices (the portable kernels widen them) keeps only its packed copy.
    result = tune_exits(decoder, backbone->lm_head, tuned, o, progress);
    for (auto& x : tuned) {  // their gradients go before the copy in the stored type is made
      for (auto* t : {&x.norm, &x.head})
        if (t->defined()) {
          t->mutable_grad() = at::Tensor();
          t->requires_grad_(false);
        }
    }
  }
  write_model_with_exits(o, source, source_config, tuned);
  result.config = load_model_config(o.out + "/config.json");
  return result;
}

}  // namespace ce
