#pragma once
// One JSON shape for a response's GenerationStats, shared by the HTTP API ("x_ce" of a
// completion) and `ce-node --json`, so that a script reading either sees the same field names.
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/atoms.hpp"

namespace ce {

// Nearest-rank percentile of v (p in [0, 1]); 0 for an empty v.
double percentile(std::vector<double> v, double p);

// mode, threshold, token counts, bytes, per-phase ms and per-token latency p50/p99.
nlohmann::json stats_json(const GenerationStats& stats);

}  // namespace ce
