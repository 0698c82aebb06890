#pragma once
// ce-bench's figures: per (link, mode) sums and latency percentiles, written as CSV (every
// response, and the summary) and as the Markdown tables of results.md; and the invariants every
// run must hold.
#include <string>
#include <vector>

#include "tools/bench/bench_run.hpp"

namespace ce::bench {

struct Summary {
  std::string link, mode;
  double threshold = 0;
  int responses = 0, tokens = 0, cloud_tokens = 0, degraded = 0;
  double total_s = 0, edge_s = 0, cloud_s = 0, comm_s = 0, p50 = 0, p99 = 0;
  double bytes_per_response = 0;
  // Speculation (and, for every collaborative mode, the waits for the cloud).
  int cloud_requests = 0, speculated = 0, rolled_back = 0, misses = 0, blocking_round_trips = 0, critical_round_trips = 0;
  double blocked_s = 0, wasted_bytes_per_response = 0;
};

Summary summarize(const std::string& link, const ModeSpec& m, const std::vector<Row>& rows);

// Writes out_dir/responses.csv and out_dir/summary.csv; returns the Markdown tables, a section
// per link. `rows` in plan order.
std::string write_tables(const std::vector<Row>& rows, const std::vector<std::string>& links, const std::string& out_dir);

// What must hold whatever the speed: every response complete, collaborative uploads of exactly
// (prompt + generated) x dim x 2 confirmed bytes (the rows of rolled-back positions counted apart),
// θ > 1 equal to cloud-only and speculative collaborative equal to collaborative token for token.
// One line per violation.
std::vector<std::string> check_invariants(const std::vector<Row>& rows, const std::vector<std::vector<int32_t>>& prompts,
                                          int n_tokens, int64_t dim, const std::vector<std::string>& links);

}  // namespace ce::bench
