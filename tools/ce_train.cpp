// ce-train: trains an early-exit LLaMA on a text file (joint training, or EE-Tuning of the exit
// heads with --freeze-backbone), with checkpoint/resume, and writes an fp16 model directory; or, with
// --add-exits, adds exits to a published checkpoint (--from) and EE-Tunes them (model/exit_tuning).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "model/blas_kernel.hpp"
#include "model/exit_tuning.hpp"
#include "model/runtime.hpp"
#include "model/text/tokenizer.hpp"
#include "model/trainer.hpp"
#include "tools/architecture_flags.hpp"

namespace {
std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ce::ModelError(path + ": cannot open");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<int32_t> tokenize_documents(const ce::Tokenizer& tok, const std::string& text, int32_t bos) {
  // The whole corpus is one stream, BOS first; paragraphs stay apart through the newline token.
  std::vector<int32_t> ids{bos};
  auto all = tok.encode(text);
  ids.insert(ids.end(), all.begin(), all.end());
  return ids;
}

// --add-exits: the training text is the shipped validation split unless --train says otherwise
// (data/brown/train.txt is not in git: scripts/make-corpus regenerates it).
constexpr const char* kAddExitsDefaultText = "data/brown/valid.txt";

long long int_or(const ce::cli::Parser& cli, const char* name, long long fallback) {
  return cli.has(name) ? cli.get_int(name) : fallback;
}

ce::AddExitsOptions add_exits_options(const ce::cli::Parser& cli) {
  for (const char* joint_only : {"init", "freeze-backbone", "checkpoint-dir", "exits", "tokenizer"})
    if (cli.has(joint_only)) cli.fail("--" + std::string(joint_only) + " does not apply to --add-exits");
  ce::AddExitsOptions o;
  o.from = cli.require("from");
  o.out = cli.require("out");
  o.force = cli.has("force");
  for (auto layer : cli.get_int_list("add-exits")) o.exits.exit_layers.push_back(layer);
  o.exits.own_heads = cli.has("own-heads");
  auto& t = o.tuning;
  t.steps = int_or(cli, "steps", 200);
  t.batch = int_or(cli, "batch", 4);
  t.seq_len = int_or(cli, "seq-len", int_or(cli, "seq", 256));
  t.lr = cli.has("lr") ? cli.get_double("lr") : 1e-3;
  t.head_lr = cli.get_double("head-lr");
  t.seed = static_cast<uint64_t>(cli.get_int("seed"));
  return o;
}

void print_exit_losses(const char* what, const std::vector<int64_t>& exits,
                       const std::vector<double>& losses) {
  std::fprintf(stderr, "%s", what);
  for (size_t k = 0; k < losses.size(); ++k)
    std::fprintf(stderr, " exit%lld=%.4f", static_cast<long long>(exits[k]), losses[k]);
}

std::vector<int32_t> tokenize_file(const ce::Tokenizer& tokenizer, const char* flag,
                                   const std::string& path) {
  if (!std::filesystem::is_regular_file(path))
    throw ce::ModelError(std::string("--") + flag + " " + path +
                         ": not found (paths are relative to the working directory: run from the "
                         "repository root or pass --" + flag + " FILE)");
  std::cerr << "tokenizing " << path << " ...\n";
  return tokenizer.encode(read_file(path));
}

int run_add_exits(const ce::cli::Parser& cli) {
  auto o = add_exits_options(cli);
  ce::check_add_exits(o);  // refusals before the text is read
  if (o.tuning.steps > 0) {
    const std::string train = cli.has("train") ? cli.get("train") : kAddExitsDefaultText;
    const auto tokenizer = ce::open_tokenizer(o.from);
    o.tuning.train_tokens = tokenize_file(*tokenizer, "train", train);
    if (cli.has("valid")) o.tuning.valid_tokens = tokenize_file(*tokenizer, "valid", cli.get("valid"));
    const std::string held_out =
        cli.has("valid") ? std::to_string(o.tuning.valid_tokens.size()) : "the last 5% of them";
    std::cerr << "train tokens " << o.tuning.train_tokens.size() << ", held-out tokens " << held_out << "\n";
  }
  const auto& exits = o.exits.exit_layers;
  const auto result = ce::add_exits(o, [&](const ce::ExitTuningProgress& p) {
    using Kind = ce::ExitTuningProgress::Kind;
    if (p.kind == Kind::step) {
      std::fprintf(stderr, "ee-tune step %lld/%lld lr %.2e", static_cast<long long>(p.step),
                   static_cast<long long>(p.total_steps), p.lr);
      print_exit_losses(" loss", exits, p.losses);
      std::fprintf(stderr, " | %.0f tok/s (step: backbone %.2f s, exits %.2f s)\n", p.tokens_per_second,
                   p.backbone_seconds, p.exit_seconds);
    } else {
      const bool before = p.kind == Kind::held_out_before;
      print_exit_losses(before ? "held-out loss before tuning" : "held-out loss after tuning", exits,
                        p.losses);
      std::fprintf(stderr, "\n");
    }
  });
  std::cerr << "wrote " << o.out << ": exits at " << cli.get("add-exits") << " ("
            << (o.exits.own_heads ? "own heads" : "heads tied to lm_head") << "), " << result.steps_done
            << " tuning steps, default_split " << result.config.default_split << ", default_threshold "
            << result.config.default_threshold << " (calibrate it: ce-eval --model " << o.out
            << " --write-threshold)\n";
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  ce::use_fast_blas_kernel(argv);
  ce::cli::Parser cli("ce-train", "Trains an early-exit LLaMA (C++/libtorch) and writes an fp16 safetensors model directory.");
  cli.add("train", "FILE", "training text", "data/brown/train.txt")
      .add("valid", "FILE", "validation text (loss reported every --eval-every steps)", "data/brown/valid.txt")
      .add("tokenizer", "FILE", "SentencePiece BPE tokenizer.model", "data/brown/tokenizer-2048.model")
      .add("out", "DIR", "output model directory (required)")
      .add("init", "DIR", "start from this model (required with --freeze-backbone)")
      .add("checkpoint-dir", "DIR", "checkpoint directory; an existing checkpoint is resumed")
      .add("name", "NAME", "model name in config.json", "ce-brown-8l")
      .add("steps", "N", "optimizer steps", "2000").add("batch", "N", "sequences per step", "16")
      .add("seq", "N", "tokens per sequence", "256").add("lr", "X", "peak learning rate", "0.003")
      .add("warmup", "N", "warm-up steps", "100").add("weight-decay", "X", "AdamW weight decay", "0.1")
      .add("exit-weight", "X", "loss weight of each exit (final = 1)", "0.5")
      .add("distill", "X", "weight of KL(final || exit) per exit", "0")
      .add("distill-greedy", "X", "weight of CE(exit, final layer's greedy token) per exit: the exit's confidence learns to estimate agreement with the final layer", "0")
      .add("freeze-backbone", "", "EE-Tuning: train only the exit heads of --init")
      .add("seed", "N", "seed for init and batches", "1").add("eval-every", "N", "validation interval", "200")
      .add("checkpoint-every", "N", "checkpoint interval", "200")
      .add("stop-after", "N", "stop this sitting after N steps (resume later)", "0")
      .add("threads", "N", "compute threads (libtorch's and the kernels'), 0 = all cores", "0");
  cli.add("add-exits", "LIST",
          "add exits after these layers to the published checkpoint --from and EE-Tune them (backbone "
          "frozen, run as stored), writing --out; its own defaults: --train " +
              std::string(kAddExitsDefaultText) +
              " --steps 200 --batch 4 --seq-len 256 --lr 0.001, held-out loss on --valid or the last 5% of "
              "--train; --steps 0 writes the untuned exits. Example: ce-train --add-exits 4,8 --from "
              "~/hf/Llama-3.2-1B --out runs/llama-1b-ee --train my-text.txt --steps 300")
      .add("from", "DIR",
           "--add-exits: Hugging Face model directory without exits (config.json, safetensors, tokenizer)")
      .add("own-heads", "",
           "--add-exits: each exit gets its own head, a copy of lm_head (default: tied to lm_head); tuning "
           "costs 16 bytes per head parameter (fp32 weight, gradient, Adam moments): Llama 3.2 1B, 4.2 GB "
           "per exit")
      .add("head-lr", "X", "--add-exits --own-heads: learning rate of the heads, 0 = --lr / 10", "0")
      .add("seq-len", "N", "--add-exits: tokens per window (as --seq)")
      .add("force", "", "--add-exits: write into an existing non-empty --out, replacing its model files");
  ce::cli::add_architecture_flags(cli);
  cli.parse(argc, argv);
  try {
    ce::configure_threads(static_cast<int>(cli.get_int("threads")), ce::TorchWork::compute);
    if (cli.has("add-exits")) return run_add_exits(cli);
    const auto opened = ce::open_tokenizer(cli.get("tokenizer"));
    const ce::Tokenizer& tok = *opened;
    ce::TrainOptions o;
    o.config = ce::cli::architecture_from_flags(cli, &tok, tok.vocab_size());
    o.config.name = cli.get("name");
    const auto& c = o.config;
    o.init_dir = cli.get("init");
    o.freeze_backbone = cli.has("freeze-backbone");
    if (o.freeze_backbone && o.init_dir.empty()) cli.fail("--freeze-backbone needs --init");
    if (!o.init_dir.empty()) o.config = ce::Model::load(o.init_dir)->config();
    o.checkpoint_dir = cli.get("checkpoint-dir");
    o.steps = cli.get_int("steps");
    o.batch = cli.get_int("batch");
    o.seq = cli.get_int("seq");
    o.lr = cli.get_double("lr");
    o.warmup = cli.get_int("warmup");
    o.weight_decay = cli.get_double("weight-decay");
    o.exit_weight = cli.get_double("exit-weight");
    o.distill_weight = cli.get_double("distill");
    o.greedy_distill_weight = cli.get_double("distill-greedy");
    o.seed = static_cast<uint64_t>(cli.get_int("seed"));
    o.eval_every = cli.get_int("eval-every");
    o.checkpoint_every = cli.get_int("checkpoint-every");
    o.stop_after = cli.get_int("stop-after");
    // Training that saves nothing is never what was meant; the default text is made, not shipped.
    const std::string out = cli.require("out");
    if (!std::filesystem::exists(cli.get("train")))
      cli.fail("--train " + cli.get("train") + " does not exist" +
               (cli.get("train") == "data/brown/train.txt" ? " (it is generated: run scripts/make-corpus first)" : ""));
    std::cerr << "tokenizing " << cli.get("train") << " ...\n";
    o.train_tokens = tokenize_documents(tok, read_file(cli.get("train")), tok.bos_id());
    if (std::filesystem::exists(cli.get("valid")))
      o.valid_tokens = tokenize_documents(tok, read_file(cli.get("valid")), tok.bos_id());
    std::cerr << "train tokens " << o.train_tokens.size() << ", valid tokens " << o.valid_tokens.size() << "\n";
    auto result = ce::train(o, out, [&](const ce::TrainProgress& p) {
      std::fprintf(stderr, "%s step %lld/%lld lr %.2e loss", p.is_eval ? "EVAL" : "train", static_cast<long long>(p.step),
                   static_cast<long long>(p.total_steps), p.lr);
      for (size_t i = 0; i < p.losses.size(); ++i)
        std::fprintf(stderr, " %s%.4f", i + 1 == p.losses.size() ? "final=" : ("exit" + std::to_string(c.exit_layers[i]) + "=").c_str(), p.losses[i]);
      if (!p.is_eval)
        std::fprintf(stderr, " | %.0f tok/s ETA %.0f min", p.tokens_per_second, p.eta_seconds / 60);
      std::fprintf(stderr, "\n");
    });
    if (!out.empty()) {
      std::filesystem::copy_file(cli.get("tokenizer"), out + "/tokenizer.model", std::filesystem::copy_options::overwrite_existing);
      std::cerr << "wrote " << out << " after " << result.steps_done << " steps\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "ce-train: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
