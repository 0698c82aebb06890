// ce-model: writes a random early-exit model (for tests and demos without a trained one) and
// prints what a model directory holds.
#include <filesystem>
#include <iostream>
#include <sstream>

#include "model/runtime.hpp"
#include "model/tokenizer.hpp"
#include "model/weights.hpp"
#include "tools/cli.hpp"

int main(int argc, char** argv) {
  ce::cli::Parser cli("ce-model", "Writes a random early-exit LLaMA model directory (--random-out) or describes one (--info).");
  cli.add("random-out", "DIR", "write a randomly initialised model into DIR")
      .add("info", "DIR", "print the config, split, parameter count and weights hash of a model")
      .add("dim", "N", "hidden size", "256")
      .add("layers", "N", "number of layers", "8")
      .add("heads", "N", "attention heads", "4")
      .add("kv-heads", "N", "key/value heads", "4")
      .add("ffn", "N", "feed-forward size", "688")
      .add("vocab", "N", "vocabulary size (taken from --tokenizer when given)", "1024")
      .add("exits", "LIST", "comma-separated exit layers", "2,4")
      .add("split", "N", "default split layer", "4")
      .add("max-seq", "N", "maximum positions", "1024")
      .add("tokenizer", "FILE", "copy this tokenizer.model into the model directory")
      .add("seed", "N", "random seed", "0");
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
      return 0;
    }
    const std::string out = cli.require("random-out");
    ce::ModelConfig c;
    c.name = "random-" + cli.get("seed");
    c.dim = cli.get_int("dim");
    c.n_layers = cli.get_int("layers");
    c.n_heads = cli.get_int("heads");
    c.n_kv_heads = cli.get_int("kv-heads");
    c.ffn_dim = cli.get_int("ffn");
    c.vocab_size = cli.get_int("vocab");
    c.max_seq = cli.get_int("max-seq");
    c.default_split = cli.get_int("split");
    c.exit_layers.clear();
    std::stringstream exits(cli.get("exits"));
    for (std::string e; std::getline(exits, e, ',');) c.exit_layers.push_back(std::stoll(e));
    if (cli.has("tokenizer")) {
      ce::Tokenizer tok(cli.get("tokenizer"));
      c.vocab_size = tok.vocab_size();
      c.bos_id = tok.bos_id();
      c.eos_id = tok.eos_id();
    }
    auto w = ce::random_weights(c, static_cast<uint64_t>(cli.get_int("seed")));
    ce::save_weights(*w, out);
    if (cli.has("tokenizer"))
      std::filesystem::copy_file(cli.get("tokenizer"), out + "/tokenizer.model",
                                 std::filesystem::copy_options::overwrite_existing);
    std::cout << "wrote " << out << " (hash " << ce::Model::load(out)->weights_hash() << ")\n";
  } catch (const std::exception& e) {
    std::cerr << "ce-model: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
