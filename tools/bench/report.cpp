#include "tools/bench/report.hpp"

#include <algorithm>
#include <fstream>
#include <iomanip>
#include <sstream>

#include "actors/http/stats_json.hpp"

namespace ce::bench {

Summary summarize(const std::string& link, const ModeSpec& m, const std::vector<Row>& rows) {
  Summary s;
  s.link = link;
  s.mode = m.label;
  s.threshold = m.threshold;
  std::vector<double> token_ms;
  double bytes = 0;
  for (auto& r : rows) {
    if (r.link != link || r.mode != m.label) continue;
    const auto& st = r.result.stats;
    s.responses++;
    s.tokens += st.generated;
    s.cloud_tokens += st.cloud_tokens;
    s.degraded += st.degraded_tokens;
    s.total_s += st.total_ms / 1e3;
    s.edge_s += st.edge_ms / 1e3;
    s.cloud_s += st.cloud_ms / 1e3;
    s.comm_s += st.wait_ms / 1e3;
    bytes += static_cast<double>(st.bytes_uploaded + st.bytes_inline);
    s.cloud_requests += st.cloud_requests;
    s.speculated += st.speculated;
    s.rolled_back += st.rolled_back;
    s.misses += st.misses;
    s.blocking_round_trips += st.blocking_round_trips;
    s.critical_round_trips += st.critical_round_trips;
    s.blocked_s += st.blocked_ms / 1e3;
    s.wasted_bytes_per_response += static_cast<double>(st.bytes_wasted);
    token_ms.insert(token_ms.end(), st.token_ms.begin(), st.token_ms.end());
  }
  s.p50 = percentile(token_ms, 0.5);
  s.p99 = percentile(token_ms, 0.99);
  s.bytes_per_response = s.responses ? bytes / s.responses : 0;
  if (s.responses) s.wasted_bytes_per_response /= s.responses;
  return s;
}

std::string write_tables(const std::vector<Row>& rows, const std::vector<std::string>& links, const std::string& out_dir) {
  std::ofstream raw(out_dir + "/responses.csv");
  raw << "link,mode,prompt,threshold,prompt_tokens,generated,cloud_tokens,degraded,bytes_uploaded,bytes_inline,edge_ms,"
         "cloud_ms,wait_ms,total_ms,cloud_requests,speculated,rolled_back,blocking_round_trips,blocked_ms,bytes_wasted,"
         "misses,critical_round_trips\n";
  for (auto& r : rows) {
    const auto& s = r.result.stats;
    raw << r.link << "," << r.mode << "," << r.prompt << "," << s.threshold << "," << s.prompt_tokens << ","
        << s.generated << "," << s.cloud_tokens << "," << s.degraded_tokens << "," << s.bytes_uploaded << ","
        << s.bytes_inline << "," << s.edge_ms << "," << s.cloud_ms << "," << s.wait_ms << "," << s.total_ms << ","
        << s.cloud_requests << "," << s.speculated << "," << s.rolled_back << "," << s.blocking_round_trips << ","
        << s.blocked_ms << "," << s.bytes_wasted << "," << s.misses << "," << s.critical_round_trips << "\n";
  }
  std::vector<std::string> labels;
  for (auto& r : rows)
    if (std::find(labels.begin(), labels.end(), r.mode) == labels.end()) labels.push_back(r.mode);
  std::ofstream sum(out_dir + "/summary.csv");
  sum << "link,mode,threshold,responses,tokens,cloud_share,total_s,edge_s,cloud_s,comm_s,tokens_per_s,p50_ms,p99_ms,"
         "bytes_per_response,cloud_requests,speculated,rolled_back,blocking_round_trips,blocked_s,"
         "wasted_bytes_per_response,misses,critical_round_trips\n";
  std::ostringstream md;
  md << std::fixed;
  for (auto& link : links) {
    md << "\n### Link: " << link << "\n\n| mode | θ | total (s) | edge (s) | cloud (s) | comm/wait (s) | tokens/s | "
          "p50 / p99 per token (ms) | to cloud | bytes / response | blocking round trips / response | "
          "rolled back / speculated |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (auto& label : labels) {
      double theta = 0;
      for (auto& r : rows)
        if (r.mode == label) theta = r.result.stats.threshold;
      auto s = summarize(link, {label, InferenceMode::collaborative, theta}, rows);
      if (!s.responses) continue;
      const double share = s.tokens ? static_cast<double>(s.cloud_tokens) / s.tokens : 0;
      sum << link << "," << label << "," << theta << "," << s.responses << "," << s.tokens << "," << share << ","
          << s.total_s << "," << s.edge_s << "," << s.cloud_s << "," << s.comm_s << "," << s.tokens / s.total_s << ","
          << s.p50 << "," << s.p99 << "," << s.bytes_per_response << "," << s.cloud_requests << "," << s.speculated
          << "," << s.rolled_back << "," << s.blocking_round_trips << "," << s.blocked_s << ","
          << s.wasted_bytes_per_response << "," << s.misses << "," << s.critical_round_trips << "\n";
      md << "| " << label << " | " << std::setprecision(2) << theta << " | " << std::setprecision(2) << s.total_s
         << " | " << s.edge_s << " | " << s.cloud_s << " | " << s.comm_s << " | " << std::setprecision(1)
         << s.tokens / s.total_s << " | " << std::setprecision(2) << s.p50 << " / " << s.p99 << " | "
         << std::setprecision(1) << 100 * share << "% | " << std::setprecision(0) << s.bytes_per_response << " | "
         << std::setprecision(1) << static_cast<double>(s.blocking_round_trips) / s.responses << " | "
         << (s.speculated ? std::to_string(s.rolled_back) + " / " + std::to_string(s.speculated) : std::string("–"))
         << " |\n";
    }
  }
  return md.str();
}


std::vector<std::string> check_invariants(const std::vector<Row>& rows, const std::vector<std::vector<int32_t>>& prompts,
                                          int n_tokens, int64_t dim, const std::vector<std::string>& links) {
  std::vector<std::string> failures;
  for (auto& r : rows) {
    const auto& st = r.result.stats;
    const std::string where = r.link + "/" + r.mode + " prompt " + std::to_string(r.prompt);
    if (static_cast<int>(r.result.tokens.size()) != n_tokens)
      failures.push_back(where + ": produced " + std::to_string(r.result.tokens.size()) + " tokens");
    const auto expected_upload = (prompts[static_cast<size_t>(r.prompt)].size() + static_cast<size_t>(n_tokens)) *
                                 static_cast<size_t>(dim) * 2;
    if (st.mode == InferenceMode::collaborative && st.bytes_uploaded - st.bytes_wasted != expected_upload)
      failures.push_back(where + ": uploaded " + std::to_string(st.bytes_uploaded) + " B (" +
                         std::to_string(st.bytes_wasted) + " of rolled-back positions), expected " +
                         std::to_string(expected_upload) + " confirmed = (prompt + generated) x dim x 2");
  }

  // Invariant: θ > 1 sends every token to the cloud and must equal cloud-only exactly.
  for (auto& link : links)
    for (size_t i = 0; i < prompts.size(); ++i) {
      const GenerateResult *all_cloud = nullptr, *cloud_only = nullptr;
      for (auto& r : rows)
        if (r.link == link && r.prompt == static_cast<int>(i)) {
          if (r.mode == "collaborative-all-cloud") all_cloud = &r.result;
          if (r.mode == "cloud-only") cloud_only = &r.result;
        }
      if (all_cloud && cloud_only && all_cloud->tokens != cloud_only->tokens)
        failures.push_back(link + ": collaborative with θ > 1 differs from cloud-only on prompt " + std::to_string(i));
    }
  // Invariant: speculation changes when tokens come, never which.
  for (auto& r : rows) {
    if (r.mode != "collaborative-speculative") continue;
    for (auto& plain : rows)
      if (plain.mode == "collaborative" && plain.link == r.link && plain.prompt == r.prompt &&
          plain.result.tokens != r.result.tokens)
        failures.push_back(r.link + ": speculative collaborative differs from collaborative on prompt " +
                           std::to_string(r.prompt));
  }
  return failures;
}

}  // namespace ce::bench
