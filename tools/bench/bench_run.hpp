#pragma once
// ce-bench's vocabulary: the modes it compares, the plan (which modes on which link), and one
// measured response.
#include <string>
#include <utility>
#include <vector>

#include "actors/atoms.hpp"
#include "config/node_config.hpp"

namespace ce {
class Tokenizer;
}

namespace ce::bench {

struct ModeSpec {
  std::string label;
  InferenceMode mode;
  double threshold;
  bool speculate = false;  // collaborative only: go on with the edge's guess while the cloud answers
  bool budget = false;     // θ left to the edge's latency-budget policy (threshold: its ceiling)
};

struct Row {  // one response
  std::string link, mode;
  int prompt = 0;
  GenerateResult result;
};

// The paper's comparison at the model's θ: the baselines, standalone, collaborative (also at the
// paper's θ 0.8 unless that is the model's own) and collaborative with every token to the cloud;
// then speculative collaborative at the model's θ. The paper's modes wait for every cloud token.
std::vector<ModeSpec> paper_modes(double theta_default);

// Every mode on every link, and the θ sweep on the sweep link, in measuring order.
struct Plan {
  std::vector<std::pair<std::string, std::vector<ModeSpec>>> links;

  // Where a (link, mode) stands in the plan, -1 when the plan has no such pair.
  int index_of(const Row& r) const;
  // Whether a response (from a checkpoint, say) belongs to this plan of `prompts` prompts.
  bool holds(const Row& r, size_t prompts) const;
  int responses(size_t prompts) const;
};
Plan make_plan(const std::vector<std::string>& links, const std::vector<ModeSpec>& modes,
               const std::vector<double>& sweep, const std::string& sweep_link);
// The modes whose labels `only` names (comma-separated; empty: all); throws naming an unknown label.
std::vector<ModeSpec> select_modes(const std::vector<ModeSpec>& modes, const std::string& only);

// The prompts: the first `prompt_tokens` tokens of test paragraphs long enough to hold them.
std::vector<std::vector<int32_t>> make_prompts(const Tokenizer& tok, const std::string& text, int count,
                                               int prompt_tokens, int32_t bos);
std::string read_text(const std::string& path);

}  // namespace ce::bench
