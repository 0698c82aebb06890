#pragma once
// The architecture flags ce-model and ce-train share, and the ModelConfig they describe.
#include <string>

#include "model/model_config.hpp"
#include "model/text/tokenizer.hpp"
#include "tools/cli.hpp"

namespace ce::cli {

inline void add_architecture_flags(Parser& cli) {
  cli.add("dim", "N", "hidden size", "256")
      .add("layers", "N", "number of layers", "8")
      .add("heads", "N", "attention heads", "4")
      .add("kv-heads", "N", "key/value heads (grouped-query attention)", "4")
      .add("ffn", "N", "feed-forward size", "688")
      .add("exits", "LIST", "comma-separated exit layers", "2,4")
      .add("split", "N", "default split layer", "4")
      .add("max-seq", "N", "maximum positions", "1024")
      .add("tie-exit-heads", "", "exit heads share lm_head");
}

// Vocabulary size and special ids come from the tokenizer when there is one. Validated.
inline ModelConfig architecture_from_flags(const Parser& cli, const Tokenizer* tokenizer, int64_t vocab_size) {
  ModelConfig c;
  c.dim = cli.get_int("dim");
  c.n_layers = cli.get_int("layers");
  c.n_heads = cli.get_int("heads");
  c.n_kv_heads = cli.get_int("kv-heads");
  c.ffn_dim = cli.get_int("ffn");
  c.max_seq = cli.get_int("max-seq");
  c.default_split = cli.get_int("split");
  c.tie_exit_heads = cli.has("tie-exit-heads");
  c.vocab_size = vocab_size;
  if (tokenizer) {
    c.vocab_size = tokenizer->vocab_size();
    c.bos_id = tokenizer->bos_id();
    c.eos_id = tokenizer->eos_id();
  }
  c.exit_layers.clear();
  for (auto e : cli.get_int_list("exits")) c.exit_layers.push_back(e);
  try {
    c.validate();
  } catch (const ModelError& e) {
    cli.fail(e.what());
  }
  return c;
}

}  // namespace ce::cli
