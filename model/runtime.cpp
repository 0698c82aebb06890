#include "model/runtime.hpp"

#include <torch/torch.h>

#include <filesystem>
#include <thread>

#include "model/decoder.hpp"
#include "model/kernels.hpp"
#include "model/weights.hpp"

namespace ce {

std::string Model::tokenizer_path() const {
  const std::string json = dir_ + "/tokenizer.json";
  return std::filesystem::exists(json) ? json : dir_ + "/tokenizer.model";
}

const char* to_string(WeightPrecision p) {
  switch (p) {
    case WeightPrecision::as_stored: return "auto";
    case WeightPrecision::fp32: return "fp32";
    case WeightPrecision::fp16: return "fp16";
    case WeightPrecision::int8: return "int8";
  }
  return "auto";
}

std::optional<WeightPrecision> weight_precision_named(const std::string& name) {
  for (auto p : {WeightPrecision::as_stored, WeightPrecision::fp32, WeightPrecision::fp16, WeightPrecision::int8})
    if (name == to_string(p)) return p;
  return std::nullopt;
}

std::shared_ptr<const Model> Model::load(const std::string& dir, WeightPrecision precision) {
  return load(dir, precision, ModelParts::all());
}

std::shared_ptr<const Model> Model::load(const std::string& dir, WeightPrecision precision, const ModelParts& parts) {
  // Only an fp32 request widens at load; every other precision starts from the stored matrices.
  const bool widen = precision == WeightPrecision::fp32;
  return from_weights(load_weights(dir, widen ? StoredType::widen_to_fp32 : StoredType::keep, parts), dir, precision);
}

std::shared_ptr<const Model> Model::from_weights(std::shared_ptr<const Weights> weights, std::string dir,
                                                 WeightPrecision precision) {
  auto m = std::make_shared<Model>();
  m->decoder_ = std::make_shared<const Decoder>(std::move(weights), precision);
  m->dir_ = std::move(dir);
  return m;
}

const ModelConfig& Model::config() const { return decoder_->config(); }
const std::string& Model::weights_hash() const { return decoder_->weights().hash; }
std::string Model::precision() const { return decoder_->precision(); }
int64_t Model::weight_bytes() const { return decoder_->matrix_bytes(); }

void configure_threads(int threads, TorchWork torch) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(torch == TorchWork::compute ? threads : 1);
  kernels::set_threads(threads);
}

}  // namespace ce
