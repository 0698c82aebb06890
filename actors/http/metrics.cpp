#include "actors/http/metrics.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <iterator>
#include <limits>
#include <stdexcept>

namespace ce {
namespace {

std::string escape_label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out;
}

std::string format_value(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  char buf[32];
  if (v == std::floor(v) && std::fabs(v) < 1e15) {  // counts print as integers, never 2e+04
    std::snprintf(buf, sizeof buf, "%.0f", v);
    return buf;
  }
  // The shortest text that reads back as the same double ("0.0025", not "0.0025000000000000001").
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

std::string label_text(const Metrics::Labels& labels, const std::string& extra_name = "",
                       const std::string& extra_value = "") {
  if (labels.empty() && extra_name.empty()) return "";
  std::string out = "{";
  bool first = true;
  auto put = [&](const std::string& k, const std::string& v) {
    if (!first) out += ",";
    first = false;
    out += k + "=\"" + escape_label(v) + "\"";
  };
  for (const auto& [k, v] : labels) put(k, v);
  if (!extra_name.empty()) put(extra_name, extra_value);
  return out + "}";
}

}  // namespace

void Metrics::declare(const std::string& name, Kind kind, const std::string& help, std::vector<double> upper_bounds) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (families_.count(name)) throw std::logic_error("metric " + name + " declared twice");
  families_[name] = Family{kind, help, std::move(upper_bounds), {}};
  order_.push_back(name);
}

void Metrics::declare_counter(const std::string& name, const std::string& help) { declare(name, Kind::counter, help, {}); }
void Metrics::declare_gauge(const std::string& name, const std::string& help) { declare(name, Kind::gauge, help, {}); }
void Metrics::declare_histogram(const std::string& name, const std::string& help, std::vector<double> upper_bounds) {
  declare(name, Kind::histogram, help, std::move(upper_bounds));
}

Metrics::Family& Metrics::family(const std::string& name, Kind kind) {
  auto it = families_.find(name);
  if (it == families_.end() || it->second.kind != kind) throw std::logic_error("metric " + name + " not declared as used");
  return it->second;
}

void Metrics::add(const std::string& name, double amount, const Labels& labels) {
  std::lock_guard<std::mutex> lock(mutex_);
  family(name, Kind::counter).series[labels].value += amount;
}

void Metrics::set(const std::string& name, double value, const Labels& labels) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = families_.find(name);
  if (it != families_.end() && it->second.kind == Kind::counter) {  // a total counted elsewhere
    it->second.series[labels].value = value;
    return;
  }
  family(name, Kind::gauge).series[labels].value = value;
}

void Metrics::observe(const std::string& name, double value, const Labels& labels) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& f = family(name, Kind::histogram);
  auto& s = f.series[labels];
  if (s.buckets.empty()) s.buckets.assign(f.upper_bounds.size(), 0);
  for (size_t i = 0; i < f.upper_bounds.size(); ++i)
    if (value <= f.upper_bounds[i]) {
      s.buckets[i]++;
      break;
    }
  s.value += value;
  s.count++;
}

std::string Metrics::render() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::ostringstream out;
  for (const auto& name : order_) {
    const auto& f = families_.at(name);
    const char* type = f.kind == Kind::counter ? "counter" : f.kind == Kind::gauge ? "gauge" : "histogram";
    out << "# HELP " << name << " " << f.help << "\n# TYPE " << name << " " << type << "\n";
    if (f.kind != Kind::histogram) {
      // A family with no samples yet still shows one zero sample when it has no labels.
      if (f.series.empty()) out << name << " 0\n";
      for (const auto& [labels, s] : f.series) out << name << label_text(labels) << " " << format_value(s.value) << "\n";
      continue;
    }
    auto print_histogram = [&](const Labels& labels, const Series& s) {
      uint64_t cumulative = 0;
      for (size_t i = 0; i < f.upper_bounds.size(); ++i) {
        cumulative += s.buckets.empty() ? 0 : s.buckets[i];
        out << name << "_bucket" << label_text(labels, "le", format_value(f.upper_bounds[i])) << " " << cumulative
            << "\n";
      }
      out << name << "_bucket" << label_text(labels, "le", "+Inf") << " " << s.count << "\n";
      out << name << "_sum" << label_text(labels) << " " << format_value(s.value) << "\n";
      out << name << "_count" << label_text(labels) << " " << s.count << "\n";
    };
    if (f.series.empty()) print_histogram({}, Series{});
    for (const auto& [labels, s] : f.series) print_histogram(labels, s);
  }
  return out.str();
}

uint64_t resident_memory_bytes() {
  std::ifstream statm("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  if (!(statm >> size >> resident)) return 0;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

ProcessStats process_stats() {
  ProcessStats out;
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const auto page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  // /proc/self/stat: "pid (comm) state ppid ...": fields counted after the command name, which
  // may itself hold spaces and parentheses; utime and stime are fields 14 and 15, starttime 22,
  // vsize 23 (bytes), rss 24 (pages).
  std::ifstream stat_file("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(stat_file)), std::istreambuf_iterator<char>());
  const auto close = stat.rfind(')');
  if (close != std::string::npos && ticks > 0) {
    std::istringstream fields(stat.substr(close + 2));
    std::vector<std::string> f;  // f[0] is field 3 (state)
    for (std::string x; fields >> x;) f.push_back(x);
    if (f.size() >= 22) {
      out.cpu_seconds = (std::stod(f[11]) + std::stod(f[12])) / ticks;
      out.virtual_bytes = std::stoull(f[20]);
      out.resident_bytes = std::stoull(f[21]) * page;
      std::ifstream proc_stat("/proc/stat");  // btime: boot time, seconds since the epoch
      for (std::string key; proc_stat >> key;) {
        if (key == "btime") {
          double btime = 0;
          if (proc_stat >> btime) out.start_time_seconds = btime + std::stod(f[19]) / ticks;
          break;
        }
        proc_stat.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
      }
    }
  }
  std::error_code ec;
  for (std::filesystem::directory_iterator it("/proc/self/fd", ec), end; !ec && it != end; it.increment(ec))
    ++out.open_fds;
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0)
    out.max_fds = limit.rlim_cur == RLIM_INFINITY ? 0 : static_cast<uint64_t>(limit.rlim_cur);
  return out;
}

}  // namespace ce
