// Trainer: the loss falls, EE-Tuning (--freeze-backbone) touches only exit heads, and a run
// interrupted and resumed from its checkpoint equals an uninterrupted one.
#include <boost/test/unit_test.hpp>

#include <ATen/ATen.h>

#include <functional>
#include <filesystem>
#include <numeric>

#include "model/decoder.hpp"
#include "model/safetensors.hpp"
#include "model/trainer.hpp"
#include "model/weights.hpp"
#include "tests/model/tiny_model.hpp"

using namespace ce;
using namespace ce::test;

namespace {

ModelConfig train_config() {
  ModelConfig c;
  c.name = "tiny-train";
  c.dim = 32;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.ffn_dim = 64;
  c.vocab_size = 64;
  c.max_seq = 64;
  c.exit_layers = {1};
  c.default_split = 1;
  return c;
}

// A mostly deterministic token stream (next = 5 * t + 3 mod 64, one token in ten random): a
// model can learn it quickly, so the loss must fall.
std::vector<int32_t> synthetic_tokens(size_t n, uint64_t seed) {
  std::vector<int32_t> t{1};
  uint64_t s = seed;
  while (t.size() < n) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    const auto r = static_cast<int32_t>((s >> 33) % 640);
    t.push_back(r < 64 ? r : (5 * t.back() + 3) % 64);
  }
  return t;
}

TrainOptions base_options() {
  TrainOptions o;
  o.config = train_config();
  o.train_tokens = synthetic_tokens(4096, 1);
  o.valid_tokens = synthetic_tokens(1024, 2);
  o.batch = 4;
  o.seq = 32;
  o.steps = 30;
  o.lr = 1e-2;
  o.warmup = 3;
  o.eval_every = 0;
  o.checkpoint_every = 0;
  o.seed = 7;
  return o;
}

double mean(const std::vector<double>& v, size_t from, size_t to) {
  return std::accumulate(v.begin() + static_cast<long>(from), v.begin() + static_cast<long>(to), 0.0) /
         static_cast<double>(to - from);
}

}  // namespace

BOOST_AUTO_TEST_SUITE(trainer)

BOOST_AUTO_TEST_CASE(thirty_steps_lower_the_loss) {
  auto o = base_options();
  o.eval_every = 10;
  o.eval_batches = 2;
  std::vector<TrainProgress> seen;
  TempDir out;
  const auto r = train(o, out.path(), [&](const TrainProgress& p) { seen.push_back(p); });
  BOOST_TEST(r.finished);
  BOOST_TEST(r.steps_done == 30);
  BOOST_REQUIRE_EQUAL(r.step_losses.size(), 30u);
  // Untrained: about 1.5 * ln(64) = 6.2 (final + 0.5 * exit). Require a clear fall.
  const double first = mean(r.step_losses, 0, 3), last = mean(r.step_losses, 25, 30);
  BOOST_TEST_MESSAGE("loss " << first << " -> " << last);
  BOOST_TEST(first > 5.0);
  BOOST_TEST(last < 0.75 * first);
  // Progress: one report per step (losses for the exit and the final layer), plus 3 evaluations.
  int evals = 0;
  int64_t step = 0;
  for (auto& p : seen) {
    BOOST_TEST(p.losses.size() == 2u);
    if (p.is_eval) {
      ++evals;
      BOOST_TEST(p.step % 10 == 0);
    } else {
      BOOST_TEST(p.step == ++step);
    }
  }
  BOOST_TEST(evals == 3);
  BOOST_TEST(step == 30);
  // The trained model is written and loads.
  auto w = load_weights(out.path());
  BOOST_TEST(w->config.exit_layers == o.config.exit_layers);
}

BOOST_AUTO_TEST_CASE(freeze_backbone_changes_only_exit_tensors) {
  const auto c = train_config();
  TempDir init, out;
  save_weights(*random_weights(c, 5), init.path());
  auto o = base_options();
  o.init_dir = init.path();
  o.freeze_backbone = true;
  o.steps = 10;
  const auto r = train(o, out.path(), nullptr);
  BOOST_TEST(r.steps_done == 10);
  const auto before = load_weights(init.path())->named_tensors();
  const auto after = load_weights(out.path())->named_tensors();
  BOOST_REQUIRE_EQUAL(before.size(), after.size());
  int exit_tensors = 0;
  for (auto& [name, t] : before) {
    if (Weights::is_exit_tensor(name)) {
      ++exit_tensors;
      BOOST_TEST(!at::equal(t, after.at(name)), name << " should have been trained");
    } else {
      BOOST_TEST(at::equal(t, after.at(name)), name << " changed under --freeze-backbone");
    }
  }
  BOOST_TEST(exit_tensors == 2);  // exits.1.norm.weight, exits.1.head.weight
}

// Share of positions of `tokens` where the exit's greedy token equals the final layer's.
double exit_agreement(const std::string& model_dir, const std::vector<int32_t>& tokens) {
  Decoder d(load_weights(model_dir));
  const auto& c = d.config();
  auto ids = at::tensor(std::vector<int64_t>(tokens.begin(), tokens.begin() + c.max_seq), at::kLong).unsqueeze(0);
  auto h = at::embedding(d.weights().embed, ids);  // (1, T, dim)
  h = d.forward_no_cache(h, 0, c.exit_layers[0]);
  auto exit_greedy = d.exit_logits(c.exit_layers[0], h).argmax(-1);
  auto final_greedy = d.final_logits(d.forward_no_cache(h, c.exit_layers[0], c.n_layers)).argmax(-1);
  return exit_greedy.eq(final_greedy).to(at::kDouble).mean().item<double>();
}

BOOST_AUTO_TEST_CASE(greedy_distillation_teaches_exits_the_final_layers_choice) {
  // EE-Tuning of a random backbone: the final layer's greedy token is a fixed function of the
  // context that the truth-CE objective knows nothing about, so only --distill-greedy learns it.
  const auto c = train_config();
  TempDir init, truth_tuned, greedy_tuned;
  save_weights(*random_weights(c, 5), init.path());
  auto o = base_options();
  o.init_dir = init.path();
  o.freeze_backbone = true;
  o.steps = 40;
  train(o, truth_tuned.path(), nullptr);
  o.exit_weight = 0;
  o.greedy_distill_weight = 1;
  train(o, greedy_tuned.path(), nullptr);
  const auto probe = synthetic_tokens(1024, 3);
  const double before = exit_agreement(init.path(), probe), truth = exit_agreement(truth_tuned.path(), probe),
               greedy = exit_agreement(greedy_tuned.path(), probe);
  BOOST_TEST_MESSAGE("exit/final agreement: random " << before << ", truth-tuned " << truth << ", greedy-tuned " << greedy);
  BOOST_TEST(greedy > before + 0.2);
  BOOST_TEST(greedy > truth + 0.1);
}

BOOST_AUTO_TEST_CASE(resumed_run_equals_uninterrupted_run) {
  auto o = base_options();
  o.steps = 20;
  o.checkpoint_every = 10;
  TempDir split_ckpt, whole_ckpt, split_out, whole_out;

  o.checkpoint_dir = split_ckpt.path();
  o.stop_after = 10;
  const auto first = train(o, "", nullptr);
  BOOST_TEST(first.steps_done == 10);
  BOOST_TEST(!first.finished);
  BOOST_TEST(std::filesystem::exists(split_ckpt.file("state.json")));
  const auto second = train(o, split_out.path(), nullptr);  // resumes at step 10
  BOOST_TEST(second.steps_done == 10);
  BOOST_TEST(second.finished);

  o.checkpoint_dir = whole_ckpt.path();
  o.stop_after = 0;
  const auto whole = train(o, whole_out.path(), nullptr);
  BOOST_TEST(whole.steps_done == 20);
  BOOST_REQUIRE_EQUAL(whole.step_losses.size(), 20u);

  std::vector<double> resumed = first.step_losses;
  resumed.insert(resumed.end(), second.step_losses.begin(), second.step_losses.end());
  BOOST_REQUIRE_EQUAL(resumed.size(), 20u);
  for (size_t i = 0; i < 20; ++i)
    BOOST_TEST(std::abs(resumed[i] - whole.step_losses[i]) < 1e-5, "step " << i);  // tolerance 1e-5

  // Final weights: the fp32 checkpoints agree to 1e-5, the fp16 exports as well.
  const auto a = read_safetensors(checkpoint_weights_file(split_ckpt.path()));
  const auto b = read_safetensors(checkpoint_weights_file(whole_ckpt.path()));
  BOOST_REQUIRE_EQUAL(a.size(), b.size());
  for (auto& [name, t] : a) {
    BOOST_TEST(t.scalar_type() == at::kFloat);
    BOOST_TEST(max_abs_diff(t, b.at(name)) < 1e-5, name);
  }
  const auto ea = load_weights(split_out.path())->named_tensors();
  const auto eb = load_weights(whole_out.path())->named_tensors();
  for (auto& [name, t] : ea) BOOST_TEST(max_abs_diff(t, eb.at(name)) < 1e-5, name);
  // And training really moved the weights away from the initialisation.
  const auto init = random_weights(o.config, o.seed)->named_tensors();
  BOOST_TEST(max_abs_diff(init.at("model.layers.0.mlp.up_proj.weight"), a.at("model.layers.0.mlp.up_proj.weight")) >
             1e-3);
}

BOOST_AUTO_TEST_CASE(a_checkpoint_resumes_only_under_the_options_that_made_it) {
  auto o = base_options();
  o.steps = 6;
  o.checkpoint_every = 2;
  o.stop_after = 2;
  TempDir ckpt;
  o.checkpoint_dir = ckpt.path();
  train(o, "", nullptr);
  for (auto [field, change] : std::vector<std::pair<std::string, std::function<void(TrainOptions&)>>>{
           {"lr", [](TrainOptions& x) { x.lr *= 2; }},
           {"seed", [](TrainOptions& x) { x.seed += 1; }},
           {"steps", [](TrainOptions& x) { x.steps += 10; }},
           {"freeze_backbone", [](TrainOptions& x) { x.freeze_backbone = true; }},
           {"train_tokens", [](TrainOptions& x) { x.train_tokens[5] ^= 1; }}}) {
    auto other = o;
    change(other);
    const auto text = model_error_text([&] { train(other, "", nullptr); });
    BOOST_TEST(text.find("made with " + field + " = ") != std::string::npos, text);
  }
  // Settings of a sitting may change: a longer sitting and another checkpoint interval resume.
  auto sitting = o;
  sitting.stop_after = 0;
  sitting.checkpoint_every = 3;
  BOOST_TEST(train(sitting, "", nullptr).steps_done == 4);
}

BOOST_AUTO_TEST_CASE(a_checkpoint_cut_short_leaves_the_previous_one_resumable) {
  auto o = base_options();
  o.steps = 8;
  o.checkpoint_every = 4;
  TempDir whole_ckpt, split_ckpt;
  o.checkpoint_dir = whole_ckpt.path();
  const auto whole = train(o, "", nullptr);
  o.checkpoint_dir = split_ckpt.path();
  o.stop_after = 4;
  train(o, "", nullptr);
  // What a kill during the next checkpoint leaves: its folder half written, state.json untouched.
  std::filesystem::create_directories(split_ckpt.file("step-0000008.tmp"));
  write_file(split_ckpt.file("step-0000008.tmp/weights.safetensors"), "truncated");
  const auto state_before = read_file(split_ckpt.file("state.json"));
  BOOST_TEST(state_before.find("\"step\": 4") != std::string::npos);
  o.stop_after = 0;
  const auto second = train(o, "", nullptr);
  BOOST_TEST(second.steps_done == 4);  // resumed at step 4
  const auto a = read_safetensors(checkpoint_weights_file(split_ckpt.path()));
  const auto b = read_safetensors(checkpoint_weights_file(whole_ckpt.path()));
  for (auto& [name, t] : a) BOOST_TEST(max_abs_diff(t, b.at(name)) < 1e-5, name);
  // Only the committed checkpoint is left.
  int folders = 0;
  for (const auto& e : std::filesystem::directory_iterator(split_ckpt.path())) folders += e.is_directory();
  BOOST_TEST(folders == 1);
  // A state.json that is not ours is a clear error, not a crash.
  write_file(split_ckpt.file("state.json"), "{\"step\": \"x\"}");
  BOOST_TEST(model_error_text([&] { train(o, "", nullptr); }).find("state.json") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(bad_options_throw) {
  auto o = base_options();
  o.train_tokens.resize(static_cast<size_t>(o.seq));  // fewer than seq + 2 tokens
  BOOST_CHECK_THROW(train(o, "", nullptr), ModelError);
  // An init model whose exits differ from the requested config.
  TempDir init;
  auto other = train_config();
  other.n_layers = 3;
  other.exit_layers = {2};
  save_weights(*random_weights(other, 1), init.path());
  o = base_options();
  o.init_dir = init.path();
  o.steps = 1;
  BOOST_CHECK_THROW(train(o, "", nullptr), ModelError);
  // Negative loss weights, and EE-Tuning with every exit loss switched off.
  o = base_options();
  o.greedy_distill_weight = -1;
  BOOST_CHECK_THROW(train(o, "", nullptr), ModelError);
  o = base_options();
  o.freeze_backbone = true;
  o.exit_weight = 0;
  BOOST_CHECK_THROW(train(o, "", nullptr), ModelError);
}

BOOST_AUTO_TEST_SUITE_END()
