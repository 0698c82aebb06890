#pragma once
// A loaded model as the rest of the system sees it: torch-free, shared read-only by all sessions.
#include <cstdint>
#include <memory>
#include <string>

#include "model/model_config.hpp"

namespace ce {

class Decoder;
struct Weights;

class Model {
 public:
  // Loads config.json + model.safetensors from `dir` (tokenizer optional, see tokenizer_path()).
  static std::shared_ptr<const Model> load(const std::string& dir);
  static std::shared_ptr<const Model> from_weights(std::shared_ptr<const Weights> weights, std::string dir = {});

  const ModelConfig& config() const;
  const std::string& weights_hash() const;
  const std::string& dir() const { return dir_; }
  std::string tokenizer_path() const { return dir_ + "/tokenizer.model"; }
  const Decoder& decoder() const { return *decoder_; }

 private:
  std::shared_ptr<const Decoder> decoder_;
  std::string dir_;
};

// Sets torch's intra-op threads (0: all cores) and inference-friendly global flags.
void configure_torch_threads(int threads);

}  // namespace ce
