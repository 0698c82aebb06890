#pragma once
// A loaded model as the rest of the system sees it: torch-free, shared read-only by all sessions.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "model/model_config.hpp"

namespace ce {

class Decoder;
struct Weights;
struct ModelParts;

// How the weight matrices are held for inference: as the file stores them (fp16 files stay fp16
// in memory, widened inside the kernels), or converted once at load.
enum class WeightPrecision { as_stored, fp32, fp16, int8 };
const char* to_string(WeightPrecision precision);  // "auto", "fp32", "fp16", "int8"
std::optional<WeightPrecision> weight_precision_named(const std::string& name);
constexpr const char* weight_precision_names = "auto|fp32|fp16|int8";

class Model {
 public:
  // Loads config.json + the weights (model.safetensors, or shards with their index) from `dir`,
  // all of them or a role's parts (tokenizer optional, see tokenizer_path()).
  static std::shared_ptr<const Model> load(const std::string& dir,
                                           WeightPrecision precision = WeightPrecision::as_stored);
  static std::shared_ptr<const Model> load(const std::string& dir, WeightPrecision precision, const ModelParts& parts);
  static std::shared_ptr<const Model> from_weights(std::shared_ptr<const Weights> weights, std::string dir = {},
                                                   WeightPrecision precision = WeightPrecision::as_stored);

  const ModelConfig& config() const;
  const std::string& weights_hash() const;
  std::string precision() const;  // the weight matrices as held: "fp32", "fp16", "bf16" or "int8"
  int64_t weight_bytes() const;   // bytes of the weight matrices as held
  const std::string& dir() const { return dir_; }
  // dir/tokenizer.json where there is one, else dir/tokenizer.model (which may be absent).
  std::string tokenizer_path() const;
  const Decoder& decoder() const { return *decoder_; }

 private:
  std::shared_ptr<const Decoder> decoder_;
  std::string dir_;
};

// What libtorch's own ops do in a process: the glue around the kernels (conversions, sampling,
// scoring), or the compute itself (training).
enum class TorchWork { glue, compute };
// Sets the threads of the kernels' team (0: all cores), and of libtorch's intra-op pool for
// TorchWork::compute; for glue, one. libtorch's OpenMP workers spin after each parallel op, and with
// as many cores as the team has members that spin takes a member's core: the cloud's catch-up of
// 256 positions ran 1.3x slower on 2 cores while a 256 x 256 widening of its input rows had
// started them.
void configure_threads(int threads, TorchWork torch = TorchWork::glue);

}  // namespace ce
