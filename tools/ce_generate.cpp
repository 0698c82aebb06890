// ce-generate: local text generation with the early-exit decoder (one process, no network).
#include <chrono>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <map>
#include <optional>

#include "model/blas_kernel.hpp"
#include "model/text/detokenizer.hpp"
#include "model/early_exit_runner.hpp"
#include "model/split_plan.hpp"
#include "model/text/tokenizer.hpp"
#include "tools/cli.hpp"
#include "tools/weights_flag.hpp"

int main(int argc, char** argv) {
  ce::use_fast_blas_kernel(argv);
  ce::cli::Parser cli("ce-generate", "Generates text locally with an early-exit LLaMA model and reports which exit produced each token.");
  cli.add("model", "DIR", "model directory (config.json, model.safetensors, tokenizer.model)", "models/ce-brown-8l")
      .add("prompt", "TEXT", "prompt text")
      .add("prompt-ids", "IDS", "comma-separated prompt token ids instead of --prompt (no tokenizer needed)")
      .add("tokenizer", "FILE", "tokenizer model (default: DIR/tokenizer.model)")
      .add("max-tokens", "N", "tokens to generate", "64")
      .add("mode", "MODE", "full (every token from the final layer), early-exit (first exit with confidence >= θ, else the final layer) or standalone (edge layers only: first confident exit, else the last edge exit)", "early-exit")
      .add("threshold", "θ", "exit confidence threshold (default: the model's default_threshold)")
      .add("split", "LAYER", "edge/cloud split for --mode standalone (default: the model's default_split)", "0")
      .add("temperature", "T", "sampling temperature, 0 = greedy", "0")
      .add("top-p", "P", "nucleus sampling mass", "1")
      .add("seed", "N", "sampling seed", "0")
      .add("threads", "N", "compute threads, 0 = all cores", "0")
      .add("no-bos", "", "do not prepend the BOS token")
      .add("quiet", "", "print only the generated text");
  ce::cli::add_weights_flag(cli);
  cli.parse(argc, argv);

  try {
    ce::configure_threads(static_cast<int>(cli.get_int("threads")));
    const std::string dir = cli.get("model");
    auto model = ce::Model::load(dir, ce::cli::weights_from_flag(cli));
    const auto& cfg = model->config();
    const std::string mode = cli.get("mode");
    if (mode != "full" && mode != "early-exit" && mode != "standalone") cli.fail("--mode must be full, early-exit or standalone");

    std::unique_ptr<ce::Tokenizer> tokenizer;
    const std::string tok_path = cli.has("tokenizer") ? cli.get("tokenizer") : model->tokenizer_path();
    if (std::filesystem::exists(tok_path)) tokenizer = ce::open_tokenizer(tok_path);

    std::vector<int32_t> prompt;
    if (cli.has("prompt-ids")) {
      if (!cli.has("no-bos") && cfg.bos_id >= 0) prompt.push_back(static_cast<int32_t>(cfg.bos_id));
      for (auto id : cli.get_int_list("prompt-ids")) prompt.push_back(static_cast<int32_t>(id));
    } else {
      if (!tokenizer) cli.fail("no tokenizer at " + tok_path + ": pass --tokenizer or --prompt-ids");
      prompt = ce::encode_prompt(*tokenizer, cli.has("no-bos") ? -1 : cfg.bos_id, cli.require("prompt"));
    }

    ce::ExitRule rule;
    rule.threshold = cli.has("threshold") ? cli.get_double("threshold") : cfg.default_threshold;
    if (mode == "full") rule.threshold = ce::ExitRule::never_exit;
    rule.sampling = ce::SamplingParams::sampled(static_cast<float>(cli.get_double("temperature")),
                                                static_cast<float>(cli.get_double("top-p")),
                                                static_cast<uint64_t>(cli.get_int("seed")));
    const int64_t layer_end =
        mode == "standalone" ? ce::SplitPlan::from_config(cfg, cli.get_int("split")).split : cfg.n_layers;
    ce::EarlyExitRunner runner(model, layer_end);
    const bool quiet = cli.has("quiet");
    const auto max_tokens = cli.get_int("max-tokens");

    using clock = std::chrono::steady_clock;
    auto t0 = clock::now();
    auto out = runner.advance(prompt, rule);
    auto t_prefill = clock::now();
    std::vector<int32_t> generated;
    std::vector<int32_t> exit_of;
    std::optional<ce::Detokenizer> text;
    if (tokenizer) text.emplace(*tokenizer, prompt);
    for (long long i = 0; i < max_tokens; ++i) {
      const int32_t token = out.standalone_token();
      const int32_t layer = out.standalone_layer();
      generated.push_back(token);
      exit_of.push_back(layer);
      if (text) {
        text->push(token);
        std::cout << text->take_ready() << std::flush;
      }
      if (cfg.is_eos(token)) break;
      if (i + 1 < max_tokens) out = runner.advance({token}, rule);
    }
    auto t_end = clock::now();
    std::cout << "\n";
    if (quiet) return 0;

    std::map<int32_t, int> per_exit;
    std::cout << "\n--- tokens (id@exit layer; " << cfg.n_layers << " = final layer) ---\n";
    for (size_t i = 0; i < generated.size(); ++i) {
      ++per_exit[exit_of[i]];
      std::cout << generated[i] << "@" << exit_of[i] << (i + 1 < generated.size() ? " " : "\n");
    }
    const double prefill_s = std::chrono::duration<double>(t_prefill - t0).count();
    const double decode_s = std::chrono::duration<double>(t_end - t_prefill).count();
    const size_t decoded = generated.size() > 1 ? generated.size() - 1 : 0;
    std::cout << std::fixed << std::setprecision(2) << "--- stats ---\nmode " << mode << ", threshold "
              << rule.threshold << ", prompt " << prompt.size() << " tokens, generated " << generated.size()
              << "\nprefill " << prefill_s * 1e3 << " ms, decode " << (decoded ? decoded / decode_s : 0.0)
              << " tokens/s\nshare per exit:";
    for (auto& [layer, n] : per_exit)
      std::cout << " layer " << layer << ": " << 100.0 * n / generated.size() << "%";
    std::cout << "\n";
  } catch (const std::exception& e) {
    std::cerr << "ce-generate: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
