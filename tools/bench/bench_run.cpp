#include "tools/bench/bench_run.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "model/text/tokenizer.hpp"

namespace ce::bench {

std::vector<ModeSpec> paper_modes(double theta_default) {
  std::vector<ModeSpec> modes = {{"cloud-only", InferenceMode::cloud_only, 2.0},
                                 {"naive-split", InferenceMode::naive_split, 2.0},
                                 {"standalone", InferenceMode::standalone, theta_default},
                                 {"collaborative", InferenceMode::collaborative, theta_default}};
  if (std::abs(theta_default - 0.8) >= 1e-9) modes.push_back({"collaborative-0.8", InferenceMode::collaborative, 0.8});
  modes.push_back({"collaborative-all-cloud", InferenceMode::collaborative, 2.0});
  modes.push_back({"collaborative-speculative", InferenceMode::collaborative, theta_default, true});
  modes.push_back({"collaborative-budget", InferenceMode::collaborative, theta_default, false, true});
  return modes;
}

std::vector<ModeSpec> select_modes(const std::vector<ModeSpec>& modes, const std::string& only) {
  if (only.empty()) return modes;
  std::vector<ModeSpec> out;
  std::stringstream s(only);
  for (std::string label; std::getline(s, label, ',');) {
    auto it = std::find_if(modes.begin(), modes.end(), [&](const ModeSpec& m) { return m.label == label; });
    if (it == modes.end()) {
      std::string known;
      for (auto& m : modes) known += (known.empty() ? "" : ", ") + m.label;
      throw std::runtime_error("--modes: unknown mode '" + label + "' (known: " + known + ")");
    }
    out.push_back(*it);
  }
  return out;
}

Plan make_plan(const std::vector<std::string>& links, const std::vector<ModeSpec>& modes,
               const std::vector<double>& sweep, const std::string& sweep_link) {
  Plan plan;
  for (auto& link : links) {
    auto link_modes = modes;
    if (link == sweep_link)
      for (double theta : sweep) {
        std::ostringstream label;
        label << "sweep-" << theta;
        link_modes.push_back({label.str(), InferenceMode::collaborative, theta});
      }
    plan.links.emplace_back(link, std::move(link_modes));
  }
  return plan;
}

int Plan::index_of(const Row& r) const {
  int index = 0;
  for (auto& [link, link_modes] : links)
    for (auto& m : link_modes) {
      if (r.link == link && r.mode == m.label) return index;
      ++index;
    }
  return -1;
}

bool Plan::holds(const Row& r, size_t prompts) const {
  return r.prompt >= 0 && r.prompt < static_cast<int>(prompts) && index_of(r) >= 0;
}

int Plan::responses(size_t prompts) const {
  int n = 0;
  for (auto& entry : links) n += static_cast<int>(entry.second.size() * prompts);
  return n;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::vector<int32_t>> make_prompts(const Tokenizer& tok, const std::string& text, int count,
                                               int prompt_tokens, int32_t bos) {
  std::vector<std::vector<int32_t>> out;
  std::stringstream in(text);
  for (std::string para; std::getline(in, para) && static_cast<int>(out.size()) < count;) {
    if (para.size() < 40) continue;
    auto ids = tok.encode(para);
    if (static_cast<int>(ids.size()) < prompt_tokens) continue;
    std::vector<int32_t> p{bos};
    p.insert(p.end(), ids.begin(), ids.begin() + prompt_tokens);
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace ce::bench
