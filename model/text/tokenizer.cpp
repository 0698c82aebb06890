#include "model/text/tokenizer.hpp"

#include <filesystem>

#include "model/model_config.hpp"
#include "model/text/sentencepiece_tokenizer.hpp"

namespace ce {

std::unique_ptr<Tokenizer> open_tokenizer(const std::string& path) {
  namespace fs = std::filesystem;
  if (fs::is_directory(path)) {
    if (fs::exists(fs::path(path) / "tokenizer.model")) return open_tokenizer((fs::path(path) / "tokenizer.model").string());
    throw ModelError(path + ": no tokenizer.json or tokenizer.model in this directory");
  }
  if (!fs::exists(path)) throw ModelError(path + ": tokenizer file not found");
  return std::make_unique<SentencePieceTokenizer>(path);
}

}  // namespace ce
