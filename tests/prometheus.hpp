#pragma once
// Reading one sample out of a Prometheus text exposition, for tests that check /metrics.
#include <string>

namespace ce::test {

// The value of `sample` (a metric name with its labels, as rendered: name{k="v"}), or -1 when the
// exposition has no such line.
inline double metric(const std::string& text, const std::string& sample) {
  const auto at = text.find("\n" + sample + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + sample.size() + 2));
}

}  // namespace ce::test
