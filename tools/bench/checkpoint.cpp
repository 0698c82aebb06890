#include "tools/bench/checkpoint.hpp"

#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

namespace ce::bench {
namespace {

std::string join_numbers(const std::vector<double>& v) {
  std::ostringstream out;
  out << std::setprecision(9);
  for (size_t i = 0; i < v.size(); ++i) out << (i ? " " : "") << v[i];
  return out.str();
}

std::vector<double> split_numbers(const std::string& s) {
  std::vector<double> out;
  std::istringstream in(s);
  for (double x; in >> x;) out.push_back(x);
  return out;
}

}  // namespace

std::string checkpoint_line(const Row& r) {
  const auto& s = r.result.stats;
  std::ostringstream out;
  out << std::setprecision(9) << r.link << '\t' << r.mode << '\t' << r.prompt << '\t' << static_cast<int>(s.mode)
      << '\t' << s.threshold << '\t'
      << s.prompt_tokens << '\t' << s.generated << '\t' << s.cloud_tokens << '\t' << s.degraded_tokens << '\t'
      << s.bytes_uploaded << '\t' << s.bytes_inline << '\t' << s.edge_ms << '\t' << s.cloud_ms << '\t' << s.wait_ms
      << '\t' << s.total_ms << '\t' << s.cloud_requests << '\t' << s.speculated << '\t' << s.rolled_back << '\t'
      << s.blocking_round_trips << '\t' << s.blocked_ms << '\t' << s.bytes_wasted << '\t' << s.misses << '\t'
      << s.critical_round_trips << '\t'
      << join_numbers(std::vector<double>(r.result.tokens.begin(), r.result.tokens.end())) << '\t'
      << join_numbers(s.token_ms);
  return out.str();
}

Row parse_checkpoint_line(const std::string& line) {
  std::vector<std::string> f;
  std::istringstream in(line);
  for (std::string field; std::getline(in, field, '\t');) f.push_back(field);
  constexpr size_t fields = 25;
  if (f.size() == fields - 1) f.emplace_back();  // a response without tokens has an empty last field
  if (f.size() != fields)
    throw std::runtime_error("has " + std::to_string(f.size()) + " fields, expected " + std::to_string(fields));
  Row r;
  r.link = f[0];
  r.mode = f[1];
  r.prompt = std::stoi(f[2]);
  auto& s = r.result.stats;
  s.mode = static_cast<InferenceMode>(std::stoi(f[3]));
  s.threshold = std::stod(f[4]);
  s.prompt_tokens = std::stoi(f[5]);
  s.generated = std::stoi(f[6]);
  s.cloud_tokens = std::stoi(f[7]);
  s.degraded_tokens = std::stoi(f[8]);
  s.bytes_uploaded = std::stoull(f[9]);
  s.bytes_inline = std::stoull(f[10]);
  s.edge_ms = std::stod(f[11]);
  s.cloud_ms = std::stod(f[12]);
  s.wait_ms = std::stod(f[13]);
  s.total_ms = std::stod(f[14]);
  s.cloud_requests = std::stoi(f[15]);
  s.speculated = std::stoi(f[16]);
  s.rolled_back = std::stoi(f[17]);
  s.blocking_round_trips = std::stoi(f[18]);
  s.blocked_ms = std::stod(f[19]);
  s.bytes_wasted = std::stoull(f[20]);
  s.misses = std::stoi(f[21]);
  s.critical_round_trips = std::stoi(f[22]);
  for (double t : split_numbers(f[23])) r.result.tokens.push_back(static_cast<int32_t>(t));
  s.token_ms = split_numbers(f[24]);
  if (r.result.tokens.size() != static_cast<size_t>(s.generated) || s.token_ms.size() != static_cast<size_t>(s.generated))
    throw std::runtime_error("is incomplete (" + std::to_string(s.generated) + " tokens generated, " +
                             std::to_string(r.result.tokens.size()) + " ids and " + std::to_string(s.token_ms.size()) +
                             " latencies recorded)");
  return r;
}

std::vector<Row> load_checkpoint(const std::string& path, const std::string& run_key) {
  std::ifstream in(path);
  if (!in) return {};
  std::string header;
  std::getline(in, header);
  if (header != run_key) {
    std::cerr << "ce-bench: " << path << " is from another run (" << header << "), starting over\n";
    return {};
  }
  std::vector<Row> rows;
  int line_no = 1;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    try {
      rows.push_back(parse_checkpoint_line(line));
    } catch (const std::exception& e) {  // a line cut by a kill: measure that response again
      std::cerr << "ce-bench: " << path << " line " << line_no << " " << e.what() << "; measuring it again\n";
    }
  }
  return rows;
}

}  // namespace ce::bench
