#include "model/split_plan.hpp"

namespace ce {

SplitPlan SplitPlan::from_config(const ModelConfig& c, int64_t split) {
  SplitPlan p;
  p.n_layers = c.n_layers;
  p.split = split == 0 ? c.default_split : split;
  if (p.split < 1 || p.split >= c.n_layers)
    throw ModelError("split layer " + std::to_string(p.split) + " outside [1, " + std::to_string(c.n_layers - 1) +
                     "] for a " + std::to_string(c.n_layers) + "-layer model");
  for (auto e : c.exit_layers)
    if (e <= p.split) p.edge_exits.push_back(e);
  if (p.edge_exits.empty())
    throw ModelError("split layer " + std::to_string(p.split) + " leaves the edge without an exit (exits at " +
                     (c.exit_layers.empty() ? std::string("none") : std::to_string(c.exit_layers.front())) + "...)");
  return p;
}

std::string SplitPlan::describe() const {
  std::string exits;
  for (auto e : edge_exits) exits += (exits.empty() ? "" : ",") + std::to_string(e);
  return "edge layers [0," + std::to_string(split) + ") exits {" + exits + "}, cloud layers [" +
         std::to_string(split) + "," + std::to_string(n_layers) + ")";
}

}  // namespace ce
