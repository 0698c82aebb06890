#include "model/trainer.hpp"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "model/decoder.hpp"
#include "model/weights.hpp"

namespace ce {
namespace {

// The options that decide a run's trajectory: a checkpoint resumes only under the same ones.
// (checkpoint_every, stop_after and the evaluation settings do not change the weights.)
nlohmann::json run_identity(const TrainOptions& o) {
  auto digest = [](const std::vector<int32_t>& tokens) {  // FNV-1a over the token ids
    uint64_t h = 1469598103934665603ull;
    for (int32_t t : tokens) h = (h ^ static_cast<uint32_t>(t)) * 1099511628211ull;
    return std::to_string(tokens.size()) + ":" + std::to_string(h);
  };
  const auto& c = o.config;
  return {{"model", {c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_dim, c.vocab_size, c.max_seq,
                     c.exit_layers, c.tie_word_embeddings, c.tie_exit_heads}},
          {"train_tokens", digest(o.train_tokens)},
          {"init_dir", o.init_dir},
          {"steps", o.steps},
          {"batch", o.batch},
          {"seq", o.seq},
          {"lr", o.lr},
          {"min_lr_ratio", o.min_lr_ratio},
          {"warmup", o.warmup},
          {"weight_decay", o.weight_decay},
          {"clip", o.clip},
          {"exit_weight", o.exit_weight},
          {"distill_weight", o.distill_weight},
          {"greedy_distill_weight", o.greedy_distill_weight},
          {"freeze_backbone", o.freeze_backbone},
          {"seed", o.seed}};
}

void write_json_atomically(const std::string& path, const nlohmann::json& j) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << j.dump(2) << "\n";
    if (!out.flush()) throw ModelError(tmp + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw ModelError(path + ": cannot rename " + tmp);
}

nlohmann::json read_state(const std::string& checkpoint_dir) {
  const std::string path = checkpoint_dir + "/state.json";
  std::ifstream in(path);
  try {
    auto state = nlohmann::json::parse(in);
    state.at("step").get<int64_t>();
    state.at("checkpoint").get<std::string>();
    return state;
  } catch (const nlohmann::json::exception& e) {
    throw ModelError(path + ": not a checkpoint state written by ce-train (" + e.what() + ")");
  }
}

// Batches depend only on (seed, step): a resumed run sees exactly the batches it would have seen.
std::pair<at::Tensor, at::Tensor> sample_batch(const at::Tensor& data, int64_t batch, int64_t seq, uint64_t seed,
                                               int64_t step) {
  std::mt19937_64 rng(seed * 1000003ull + static_cast<uint64_t>(step));
  std::uniform_int_distribution<int64_t> pick(0, data.size(0) - seq - 2);
  std::vector<at::Tensor> rows;
  for (int64_t b = 0; b < batch; ++b) rows.push_back(data.narrow(0, pick(rng), seq + 1));
  auto all = torch::stack(rows);  // (B, T + 1)
  return {all.narrow(1, 0, seq), all.narrow(1, 1, seq)};
}

struct Losses {
  at::Tensor total;
  std::vector<at::Tensor> per_head;  // exits ascending, then final
};

Losses compute_losses(const Decoder& d, const at::Tensor& input, const at::Tensor& target, const TrainOptions& o) {
  const auto& c = d.config();
  auto h = torch::embedding(d.weights().embed, input);  // (B, T, dim)
  Losses out;
  std::vector<at::Tensor> exit_logits;
  int64_t depth = 0;
  for (auto e : c.exit_layers) {
    h = d.forward_no_cache(h, depth, e);
    depth = e;
    exit_logits.push_back(d.exit_logits_train(e, h));  // (B, T, vocab)
  }
  h = d.forward_no_cache(h, depth, c.n_layers);
  auto final_logits = d.final_logits_train(h);
  auto ce_loss = [&](const at::Tensor& logits, const at::Tensor& labels) {
    return torch::nn::functional::cross_entropy(logits.reshape({-1, c.vocab_size}), labels.reshape({-1}));
  };
  auto final_loss = ce_loss(final_logits, target);
  out.total = o.freeze_backbone ? torch::zeros({}) : final_loss;
  at::Tensor teacher, teacher_greedy;
  if (o.distill_weight > 0) teacher = torch::softmax(final_logits.detach(), -1);
  if (o.greedy_distill_weight > 0) teacher_greedy = final_logits.detach().argmax(-1);  // (B, T)
  for (auto& logits : exit_logits) {
    auto l = ce_loss(logits, target);
    out.per_head.push_back(l.detach());
    if (o.exit_weight > 0) out.total = out.total + o.exit_weight * l;
    if (o.distill_weight > 0) {
      auto log_p = torch::log_softmax(logits, -1);
      auto kl = (teacher * (torch::log(teacher + 1e-9) - log_p)).sum(-1).mean();
      out.total = out.total + o.distill_weight * kl;
    }
    if (o.greedy_distill_weight > 0) out.total = out.total + o.greedy_distill_weight * ce_loss(logits, teacher_greedy);
  }
  out.per_head.push_back(final_loss.detach());
  return out;
}

double learning_rate(const TrainOptions& o, int64_t step) {
  if (step < o.warmup) return o.lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup);
  const double progress = static_cast<double>(step - o.warmup) / std::max<int64_t>(1, o.steps - o.warmup);
  const double cosine = 0.5 * (1 + std::cos(M_PI * std::min(1.0, progress)));
  return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * cosine);
}

}  // namespace

TrainResult train(const TrainOptions& o, const std::string& out_dir,
                  const std::function<void(const TrainProgress&)>& progress) {
  if (o.train_tokens.size() < static_cast<size_t>(o.seq + 2)) throw ModelError("train: not enough training tokens");
  if (o.exit_weight < 0 || o.distill_weight < 0 || o.greedy_distill_weight < 0)
    throw ModelError("train: loss weights (exit-weight, distill, distill-greedy) must be >= 0");
  if (o.freeze_backbone && o.exit_weight == 0 && o.distill_weight == 0 && o.greedy_distill_weight == 0)
    throw ModelError("train: --freeze-backbone with exit-weight, distill and distill-greedy all 0 trains nothing");
  std::shared_ptr<Weights> weights;
  int64_t start_step = 0;
  const auto identity = run_identity(o);
  std::string resumed_from;  // the committed checkpoint folder, when resuming
  if (!o.checkpoint_dir.empty() && std::filesystem::exists(o.checkpoint_dir + "/state.json")) {
    const auto state = read_state(o.checkpoint_dir);
    const auto& made_with = state.contains("options") ? state["options"] : nlohmann::json::object();
    for (auto& [key, value] : identity.items())
      if (!made_with.contains(key) || made_with[key] != value)
        throw ModelError("train: the checkpoint in " + o.checkpoint_dir + " was made with " + key + " = " +
                         (made_with.contains(key) ? made_with[key].dump() : std::string("(not recorded)")) +
                         ", this run asks " + value.dump() +
                         "; resume with the same options or use another --checkpoint-dir");
    start_step = state["step"].get<int64_t>();
    resumed_from = o.checkpoint_dir + "/" + state["checkpoint"].get<std::string>();
    const std::string file = resumed_from + "/weights.safetensors";
    weights = weights_from_tensors(o.config, read_safetensors(file), file);
  } else if (!o.init_dir.empty()) {
    weights = load_weights(o.init_dir);
    if (weights->config.exit_layers != o.config.exit_layers && !o.config.exit_layers.empty())
      throw ModelError("train: --init model's exits differ from the requested config");
  } else {
    weights = random_weights(o.config, o.seed);
  }
  Decoder decoder(weights);
  std::vector<at::Tensor> params;
  for (auto& [name, t] : weights->named_tensors()) {
    const bool trainable = !o.freeze_backbone || Weights::is_exit_tensor(name);
    t.requires_grad_(trainable);
    if (trainable) params.push_back(t);
  }
  if (params.empty()) throw ModelError("train: nothing to train (tied exit heads and frozen backbone?)");
  torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(o.lr).betas({0.9, 0.95}).weight_decay(o.weight_decay));
  if (!resumed_from.empty()) torch::load(optimizer, resumed_from + "/optimizer.pt");

  auto train_data = torch::tensor(std::vector<int64_t>(o.train_tokens.begin(), o.train_tokens.end()), torch::kLong);
  at::Tensor valid_data;
  if (o.valid_tokens.size() > static_cast<size_t>(o.seq + 2))
    valid_data = torch::tensor(std::vector<int64_t>(o.valid_tokens.begin(), o.valid_tokens.end()), torch::kLong);

  // A checkpoint is written into a fresh folder, which state.json then names in one rename: a
  // run killed at any moment leaves the previous checkpoint whole and named.
  auto save_checkpoint = [&](int64_t step) {
    if (o.checkpoint_dir.empty()) return;
    namespace fs = std::filesystem;
    char name[32];
    std::snprintf(name, sizeof name, "step-%07lld", static_cast<long long>(step));
    const fs::path root(o.checkpoint_dir), folder = root / name, staging = root / (std::string(name) + ".tmp");
    fs::create_directories(root);
    fs::remove_all(staging);
    fs::create_directories(staging);
    TensorMap t;
    for (auto& [tensor_name, tensor] : weights->named_tensors()) t[tensor_name] = tensor.detach();
    write_safetensors((staging / "weights.safetensors").string(), t);
    torch::save(optimizer, (staging / "optimizer.pt").string());
    fs::remove_all(folder);
    fs::rename(staging, folder);
    write_json_atomically((root / "state.json").string(), {{"step", step}, {"checkpoint", name}, {"options", identity}});
    for (const auto& entry : fs::directory_iterator(root))  // older checkpoints and leftovers of a crash
      if (entry.is_directory() && entry.path().filename() != name &&
          entry.path().filename().string().rfind("step-", 0) == 0)
        fs::remove_all(entry.path());
  };

  TrainResult result;
  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  int64_t step = start_step;
  for (; step < o.steps; ++step) {
    if (o.stop_after > 0 && step - start_step >= o.stop_after) break;
    const double lr = learning_rate(o, step);
    for (auto& group : optimizer.param_groups())
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    auto [input, target] = sample_batch(train_data, o.batch, o.seq, o.seed, step);
    auto losses = compute_losses(decoder, input, target, o);
    optimizer.zero_grad();
    losses.total.backward();
    torch::nn::utils::clip_grad_norm_(params, o.clip);
    optimizer.step();
    result.step_losses.push_back(losses.total.item<double>());
    const int64_t done = step + 1 - start_step;
    const double elapsed = std::chrono::duration<double>(clock::now() - t0).count();
    TrainProgress p;
    p.step = step + 1;
    p.total_steps = o.steps;
    p.lr = lr;
    for (auto& l : losses.per_head) p.losses.push_back(l.item<double>());
    p.tokens_per_second = static_cast<double>(done * o.batch * o.seq) / elapsed;
    p.eta_seconds = elapsed / static_cast<double>(done) * static_cast<double>(o.steps - step - 1);
    if (progress) progress(p);
    if (valid_data.defined() && o.eval_every > 0 && (step + 1) % o.eval_every == 0) {
      torch::NoGradGuard no_grad;
      TrainProgress ev = p;
      ev.is_eval = true;
      ev.losses.assign(p.losses.size(), 0.0);
      for (int64_t b = 0; b < o.eval_batches; ++b) {
        auto [vi, vt] = sample_batch(valid_data, o.batch, o.seq, 7777, b);  // fixed validation windows
        auto vl = compute_losses(decoder, vi, vt, o);
        for (size_t i = 0; i < vl.per_head.size(); ++i) ev.losses[i] += vl.per_head[i].item<double>() / o.eval_batches;
      }
      if (progress) progress(ev);
    }
    if (o.checkpoint_every > 0 && (step + 1) % o.checkpoint_every == 0) save_checkpoint(step + 1);
  }
  result.steps_done = step - start_step;
  result.finished = step >= o.steps;
  save_checkpoint(step);
  for (auto& t : params) t.requires_grad_(false);
  if (!out_dir.empty()) save_weights(*weights, out_dir);
  return result;
}

std::string checkpoint_weights_file(const std::string& checkpoint_dir) {
  return checkpoint_dir + "/" + read_state(checkpoint_dir)["checkpoint"].get<std::string>() + "/weights.safetensors";
}

}  // namespace ce
