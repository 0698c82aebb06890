#include "actors/http/stats_json.hpp"

#include <algorithm>

namespace ce {

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5)];
}

nlohmann::json stats_json(const GenerationStats& s) {
  return {{"mode", to_string(s.mode)},
          {"threshold", s.threshold},
          {"prompt_tokens", s.prompt_tokens},
          {"generated", s.generated},
          {"cloud_tokens", s.cloud_tokens},
          {"degraded_tokens", s.degraded_tokens},
          {"resyncs", s.resyncs},
          {"backpressure_pauses", s.backpressure_pauses},
          {"bytes_uploaded", s.bytes_uploaded},
          {"bytes_inline", s.bytes_inline},
          {"cloud_requests", s.cloud_requests},
          {"speculation", s.speculation},
          {"max_ahead", s.max_ahead},
          {"speculated_positions", s.speculated},
          {"confirmed_positions", s.speculated - s.rolled_back},
          {"rolled_back_positions", s.rolled_back},
          {"speculation_misses", s.misses},
          {"blocking_round_trips", s.blocking_round_trips},
          {"blocked_ms", s.blocked_ms},
          {"critical_round_trips", s.critical_round_trips},
          {"bytes_wasted", s.bytes_wasted},
          {"edge_ms", s.edge_ms},
          {"cloud_ms", s.cloud_ms},
          {"wait_ms", s.wait_ms},
          {"total_ms", s.total_ms},
          {"token_ms_p50", percentile(s.token_ms, 0.5)},
          {"token_ms_p99", percentile(s.token_ms, 0.99)}};
}

}  // namespace ce
