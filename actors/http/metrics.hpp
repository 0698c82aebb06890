#pragma once
// Counters, gauges and histograms rendered in the Prometheus text exposition format (0.0.4),
// for the nodes' GET /metrics. Thread-safe: HTTP worker threads update it concurrently.
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace ce {

class Metrics {
 public:
  using Labels = std::vector<std::pair<std::string, std::string>>;

  // Declares a family; updating an undeclared name throws std::logic_error.
  void declare_counter(const std::string& name, const std::string& help);
  void declare_gauge(const std::string& name, const std::string& help);
  void declare_histogram(const std::string& name, const std::string& help, std::vector<double> upper_bounds);

  void add(const std::string& name, double amount = 1, const Labels& labels = {});  // counter
  void set(const std::string& name, double value, const Labels& labels = {});       // gauge, or a
                                                                                    // counter kept elsewhere
  void observe(const std::string& name, double value, const Labels& labels = {});   // histogram

  // The exposition text: # HELP and # TYPE per family, then its samples.
  std::string render() const;

 private:
  enum class Kind { counter, gauge, histogram };
  struct Series {
    double value = 0;               // counter, gauge; histogram: sum
    uint64_t count = 0;             // histogram
    std::vector<uint64_t> buckets;  // histogram, per upper bound (not cumulative)
  };
  struct Family {
    Kind kind;
    std::string help;
    std::vector<double> upper_bounds;
    std::map<Labels, Series> series;
  };
  Family& family(const std::string& name, Kind kind);
  void declare(const std::string& name, Kind kind, const std::string& help, std::vector<double> upper_bounds);

  mutable std::mutex mutex_;
  std::vector<std::string> order_;  // families in declaration order
  std::map<std::string, Family> families_;
};

// Resident set size of this process in bytes (from /proc/self/statm; 0 where unavailable).
uint64_t resident_memory_bytes();

// The standard process_* figures of the Prometheus client libraries, read from /proc (zero where
// unavailable): process_cpu_seconds_total, process_resident_memory_bytes,
// process_virtual_memory_bytes, process_start_time_seconds, process_open_fds, process_max_fds.
struct ProcessStats {
  double cpu_seconds = 0;          // user + system time
  uint64_t resident_bytes = 0;
  uint64_t virtual_bytes = 0;
  double start_time_seconds = 0;   // since the Unix epoch
  uint64_t open_fds = 0;
  uint64_t max_fds = 0;            // the soft RLIMIT_NOFILE
};
ProcessStats process_stats();

}  // namespace ce
