#include "model/runtime.hpp"

#include <torch/torch.h>

#include <thread>

#include "model/decoder.hpp"

namespace ce {

std::shared_ptr<const Model> Model::load(const std::string& dir) { return from_weights(load_weights(dir), dir); }

std::shared_ptr<const Model> Model::from_weights(std::shared_ptr<const Weights> weights, std::string dir) {
  auto m = std::make_shared<Model>();
  m->decoder_ = std::make_shared<const Decoder>(std::move(weights));
  m->dir_ = std::move(dir);
  return m;
}

const ModelConfig& Model::config() const { return decoder_->config(); }
const std::string& Model::weights_hash() const { return decoder_->weights().hash; }

void configure_torch_threads(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
}

}  // namespace ce
