#pragma once
// --weights, shared by the binaries that load a model for inference.
#include "model/runtime.hpp"
#include "tools/cli.hpp"

namespace ce::cli {

inline void add_weights_flag(Parser& cli) {
  cli.add("weights", "P",
          std::string("weight matrices in memory: auto (as the file stores them), fp32, fp16 or int8 (") +
              weight_precision_names + ")",
          "auto");
}

inline WeightPrecision weights_from_flag(const Parser& cli) {
  const auto p = weight_precision_named(cli.get("weights"));
  if (!p) cli.fail("--weights must be one of " + std::string(weight_precision_names) + ", got '" + cli.get("weights") + "'");
  return *p;
}

}  // namespace ce::cli
