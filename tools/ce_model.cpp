// ce-model: writes a random early-exit model (for tests and demos without a trained one) and
// prints what a model directory holds.
#include <filesystem>
#include <map>
#include <iostream>
#include <memory>

#include "model/blas_kernel.hpp"
#include "model/gguf_export.hpp"
#include "model/llama2c_export.hpp"
#include "model/runtime.hpp"
#include "model/text/sentencepiece_tokenizer.hpp"
#include "model/text/tokenizer.hpp"
#include "model/weights.hpp"
#include "tools/architecture_flags.hpp"

namespace {

// Llama 3.2 1B's published config.json, as ModelConfig (no exits: add them with ce-train --add-exits).
ce::ModelConfig llama32_1b_shape() {
  ce::ModelConfig c;
  c.dim = 2048;
  c.n_layers = 16;
  c.n_heads = 32;
  c.n_kv_heads = 8;
  c.head_size = 64;
  c.ffn_dim = 8192;
  c.vocab_size = 128256;
  c.max_seq = 131072;
  c.rope_theta = 500000.0;
  c.rope_scaling = {ce::RopeScaling::Kind::llama3, 32.0, 1.0, 4.0, 8192};
  c.norm_eps = 1e-5;
  c.tie_word_embeddings = true;
  c.bos_id = 128000;
  c.eos_id = 128001;
  c.more_eos_ids = {128008, 128009};
  c.exit_layers = {};
  c.default_split = 8;
  c.validate();
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  ce::use_fast_blas_kernel(argv);
  ce::cli::Parser cli("ce-model", "Writes a random early-exit LLaMA model directory (--random-out), an int8 copy of one "
                                  "(--quantize-out), or describes one (--info).");
  cli.add("random-out", "DIR", "write a randomly initialised model into DIR")
      .add("info", "DIR", "print the config, split, parameter count and weights hash of a model")
      .add("export-llama2c", "DIR", "write DIR/model.bin and DIR/tokenizer.bin in llama2.c's formats from --model (for decode benchmarks against its run.c)")
      .add("export-gguf", "FILE", "write FILE in llama.cpp's GGUF format (architecture llama, exits left out) from --model (for decode benchmarks against llama.cpp)")
      .add("quantize-out", "DIR", "write --model to DIR with every weight matrix but the embedding stored as int8, one fp32 "
                                  "scale per 32 values (loaded as int8 without converting; ce.model.weights = auto)")
      .add("gguf-type", "TYPE", "matrix type of --export-gguf: f32, f16 or q8_0 (rows not a multiple of 32 values stay f16)", "f16")
      .add("model", "DIR", "model directory read by --export-llama2c, --export-gguf and --quantize-out", "models/ce-brown-8l")
      .add("vocab", "N", "vocabulary size (taken from --tokenizer when given)", "1024")
      .add("tokenizer", "FILE", "tokenizer.model to copy into --random-out's directory; for --export-gguf, the vocabulary of a model without one")
      .add("seed", "N", "random seed", "0")
      .add("preset", "NAME", "--random-out with a published architecture instead of the flags: llama-3.2-1b (16 layers, dim "
                             "2048, GQA 32/8, FFN 8192, vocab 128256, tied, llama3 rope scaling), written as Hugging Face "
                             "publishes it (config.json without exits, bf16 shards + index)")
      .add("dtype", "TYPE", "matrix type --random-out writes: fp16, bf16 or fp32", "fp16")
      .add("shards", "N", "--random-out files: 1 = model.safetensors, N = model-0000K-of-0000N + index", "1");
  ce::cli::add_architecture_flags(cli);
  cli.parse(argc, argv);
  try {
    if (cli.has("info")) {
      auto model = ce::Model::load(cli.get("info"));
      const auto& c = model->config();
      std::cout << "name " << c.name << "\nlayers " << c.n_layers << ", dim " << c.dim << ", heads " << c.n_heads
                << " (kv " << c.n_kv_heads << "), ffn " << c.ffn_dim << ", vocab " << c.vocab_size << "\nexits";
      for (auto e : c.exit_layers) std::cout << " " << e;
      std::cout << ", default split " << c.default_split << ", default threshold " << c.default_threshold
                << "\nweights hash " << model->weights_hash() << "\n";
      if (auto kernel = ce::blas_kernel_name(); !kernel.empty()) std::cout << "OpenBLAS kernel " << kernel << "\n";
      return 0;
    }
    if (cli.has("export-llama2c")) {
      const auto dir = cli.get("export-llama2c"), from = cli.get("model");
      std::filesystem::create_directories(dir);
      ce::write_llama2c_model(*ce::load_weights(from), dir + "/model.bin");
      if (std::filesystem::exists(from + "/tokenizer.model"))
        ce::write_llama2c_tokenizer(ce::SentencePieceTokenizer(from + "/tokenizer.model"), dir + "/tokenizer.bin");
      std::cout << "wrote " << dir << "/model.bin" << (std::filesystem::exists(dir + "/tokenizer.bin") ? " and tokenizer.bin" : "")
                << " from " << from << "\n";
      return 0;
    }
    if (cli.has("quantize-out")) {
      const auto out = cli.get("quantize-out"), from = cli.get("model");
      const auto bytes = ce::write_quantized_checkpoint(from, out);
      std::cout << "wrote " << out << " (int8 weight matrices, " << bytes / (1 << 20) << " MiB) from " << from << "\n";
      return 0;
    }
    if (cli.has("export-gguf")) {
      const auto path = cli.get("export-gguf"), from = cli.get("model");
      const auto type = ce::gguf_type_from_string(cli.get("gguf-type"));
      const std::string tokenizer = cli.has("tokenizer") ? cli.get("tokenizer") : from + "/tokenizer.model";
      ce::write_gguf(*ce::load_weights(from, ce::StoredType::keep), ce::SentencePieceTokenizer(tokenizer), type, path);
      std::cout << "wrote " << path << " (" << cli.get("gguf-type") << ") from " << from << "\n";
      return 0;
    }
    const std::string out = cli.require("random-out");
    std::unique_ptr<ce::Tokenizer> tok;
    if (cli.has("tokenizer")) tok = ce::open_tokenizer(cli.get("tokenizer"));
    ce::ModelConfig c;
    if (cli.has("preset")) {
      if (cli.get("preset") != "llama-3.2-1b") cli.fail("--preset: unknown '" + cli.get("preset") + "' (known: llama-3.2-1b)");
      c = llama32_1b_shape();
    } else {
      c = ce::cli::architecture_from_flags(cli, tok.get(), cli.get_int("vocab"));
    }
    if (tok && tok->vocab_size() > c.vocab_size)
      cli.fail("--tokenizer has " + std::to_string(tok->vocab_size()) + " tokens, the model " + std::to_string(c.vocab_size));
    c.name = (cli.has("preset") ? cli.get("preset") + "-random-" : "random-") + cli.get("seed");
    const std::map<std::string, at::ScalarType> dtypes{{"fp16", at::kHalf}, {"bf16", at::kBFloat16}, {"fp32", at::kFloat}};
    if (!dtypes.count(cli.get("dtype"))) cli.fail("--dtype must be fp16, bf16 or fp32");
    std::cerr << "ce-model: drawing " << c.name << "'s weights\n";
    {
      auto w = ce::random_weights(c, static_cast<uint64_t>(cli.get_int("seed")));
      std::cerr << "ce-model: writing " << out << "\n";
      ce::save_weights(*w, out, {dtypes.at(cli.get("dtype")), static_cast<int>(cli.get_int("shards")), cli.has("preset")});
    }
    if (cli.has("tokenizer")) {  // the tokenizer file, and tokenizer_config.json beside a tokenizer.json
      namespace fs = std::filesystem;
      const fs::path from = cli.get("tokenizer");
      const auto copy = [&](const fs::path& file) {
        if (fs::exists(file)) fs::copy_file(file, fs::path(out) / file.filename(), fs::copy_options::overwrite_existing);
      };
      copy(from);
      if (from.extension() == ".json") copy(from.parent_path() / "tokenizer_config.json");
    }
    std::cout << "wrote " << out << " (hash " << ce::Model::load(out)->weights_hash() << ")\n";
  } catch (const std::exception& e) {
    std::cerr << "ce-model: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
