#include "model/text/tokenizer.hpp"

#include <filesystem>

#include "model/model_config.hpp"
#include "model/text/hf_tokenizer.hpp"
#include "model/text/sentencepiece_tokenizer.hpp"

namespace ce {

std::vector<int32_t> encode_prompt(const Tokenizer& tokenizer, int64_t bos_id, const std::string& text) {
  std::vector<int32_t> ids;
  if (tokenizer.adds_bos() && bos_id >= 0) ids.push_back(static_cast<int32_t>(bos_id));
  const auto body = tokenizer.encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

std::unique_ptr<Tokenizer> open_tokenizer(const std::string& path) {
  namespace fs = std::filesystem;
  if (fs::is_directory(path)) {
    // tokenizer.json first: it carries what tokenizer.model cannot (added tokens, pre-tokenizer).
    for (const char* name : {"tokenizer.json", "tokenizer.model"})
      if (fs::exists(fs::path(path) / name)) return open_tokenizer((fs::path(path) / name).string());
    throw ModelError(path + ": no tokenizer.json or tokenizer.model in this directory");
  }
  if (!fs::exists(path)) throw ModelError(path + ": tokenizer file not found");
  if (fs::path(path).extension() == ".json") return std::make_unique<HfTokenizer>(path);
  return std::make_unique<SentencePieceTokenizer>(path);
}

}  // namespace ce
