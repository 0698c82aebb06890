#include "actors/http/web.hpp"

#include <algorithm>
#include <cctype>

#include "config/node_config.hpp"

namespace ce {

CorsPolicy::CorsPolicy(const std::string& origins) : origins_(parse_cors_origins(origins)) {
  any_ = std::find(origins_.begin(), origins_.end(), "*") != origins_.end();
}

std::string CorsPolicy::allow_origin(const std::string& origin) const {
  if (origin.empty() || !enabled()) return "";
  if (any_) return "*";
  std::string lower = origin;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return std::find(origins_.begin(), origins_.end(), lower) != origins_.end() ? origin : "";
}

}  // namespace ce
