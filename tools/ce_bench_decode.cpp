// ce-bench-decode: batch-1 decode speed of the inference paths the nodes run, one JSON line per
// measurement (scripts/bench-decode interleaves it with llama2.c's run.c and plots).
//   full   EarlyExitRunner over [0, L), final head only (what ce-generate --mode full runs)
//   edge   EarlyExitRunner over [0, split), every edge exit read (the edge's work per token)
//   cloud  CloudCompute over [split, L): one uploaded fp16 state in, one token out
//   catchup  the cloud filling a gap of g uploaded positions in one infer, per position, against
//            one-position steps over the same positions
//   batch  the cloud's step of --sessions contexts, one new position each (scripts/bench-load's
//          yardstick for what batching can gain)
//   edge-batch  the edge's step of --sessions responses generating together at the model's θ
//          (EarlyExitRunner::advance of a batch, as edge_inference's scheduler runs it;
//          scripts/bench-edge's yardstick)
//   memory the machine's read bandwidth
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "model/blas_kernel.hpp"
#include "model/cloud_compute.hpp"
#include "model/decoder.hpp"
#include "model/early_exit_runner.hpp"
#include "model/kernels.hpp"
#include "model/runtime.hpp"
#include "model/split_plan.hpp"
#include "model/weights.hpp"
#include "tools/cli.hpp"
#include "tools/weights_flag.hpp"

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// The machine's memory read bandwidth with the decoder's threads, GB/s: the best of 8 passes of
// libtorch's vectorised sum over 1 GiB (the bound of a batch-1 step, which reads every weight once:
// no engine decodes faster than bytes of weights per token / this). libtorch gets the kernels'
// threads for it (configure_threads leaves it one) and one again after.
double read_bandwidth_gbps() {
  struct TorchThreads {
    TorchThreads() { at::set_num_threads(ce::kernels::threads()); }
    ~TorchThreads() { at::set_num_threads(1); }
  } while_reading;
  const auto buffer = at::ones({int64_t{1} << 28}, at::kFloat);
  double best = 1e9;
  for (int pass = 0; pass < 8; ++pass) {
    const auto t0 = clock_type::now();
    const double sum = buffer.sum().item<double>();
    best = std::min(best, seconds_since(t0));
    if (std::abs(sum - static_cast<double>(buffer.numel())) > 1e-3 * static_cast<double>(buffer.numel()))
      throw std::runtime_error("memory range: the sum of 2^28 ones came out as " + std::to_string(sum));
  }
  return static_cast<double>(buffer.numel() * buffer.element_size()) / best / 1e9;
}

// Greedy decoding from BOS over [0, layer_end): the seconds of `steps` single-token steps.
double runner_seconds(const std::shared_ptr<const ce::Model>& model, int64_t layer_end, bool read_exits, int steps) {
  ce::EarlyExitRunner runner(model, layer_end);
  ce::ExitRule rule;
  rule.threshold = read_exits ? 1.0 : ce::ExitRule::never_exit;  // θ = 1: every exit read, (almost) none taken
  auto out = runner.advance({static_cast<int32_t>(model->config().bos_id)}, rule);
  const auto t0 = clock_type::now();
  for (int i = 0; i < steps; ++i) {
    const int32_t token = out.standalone_token() >= 0 ? out.standalone_token() : 0;
    out = runner.advance({token}, rule);
    runner.take_completed();
  }
  return seconds_since(t0);
}

// Split-layer states of positions [0, n) as the edge makes them (greedy from BOS).
ce::PositionRows edge_states(const std::shared_ptr<const ce::Model>& model, int64_t split, int64_t n) {
  ce::EarlyExitRunner runner(model, split);
  ce::ExitRule rule;
  rule.threshold = ce::ExitRule::never_exit;
  auto out = runner.advance({static_cast<int32_t>(model->config().bos_id)}, rule);
  for (int64_t i = 1; i < n; ++i) out = runner.advance({std::max(0, out.standalone_token())}, rule);
  runner.flush();
  return runner.take_completed();
}

// Rows of N(0, 1) values for positions [0, n): what a cloud that holds only its own layers is fed
// (the timing does not depend on the values).
ce::PositionRows random_states(int64_t dim, int64_t n) {
  const auto bits = at::randn({n, dim}).to(at::kHalf).contiguous();
  return ce::PositionRows::states_f16(0, static_cast<uint32_t>(n), static_cast<uint32_t>(dim),
                                      static_cast<const uint16_t*>(bits.data_ptr()));
}

// A cloud context that has computed the first `context` positions of `states`.
std::unique_ptr<ce::CloudCompute> computed_context(const std::shared_ptr<const ce::Model>& model, int64_t split,
                                                   const ce::PositionRows& states, int64_t context) {
  auto cloud = std::make_unique<ce::CloudCompute>(model, split);
  cloud->append(states.slice(0, static_cast<uint32_t>(context)));
  cloud->infer(static_cast<uint32_t>(context - 1), {});
  return cloud;
}

// Seconds of `gap` one-position steps (append one state, infer it) after a context of `context`
// computed ones: the cloud's work per offloaded token, and what a catch-up of the same positions
// replaces.
double stepped_seconds(const std::shared_ptr<const ce::Model>& model, int64_t split, const ce::PositionRows& states,
                       int64_t context, int64_t gap) {
  const auto cloud = computed_context(model, split, states, context);
  const auto t0 = clock_type::now();
  for (int64_t p = context; p < context + gap; ++p) {
    cloud->append(states.slice(static_cast<uint32_t>(p), 1));
    cloud->infer(static_cast<uint32_t>(p), {});
  }
  return seconds_since(t0);
}

// Seconds of one infer that fills `gap` positions after a context of `context` computed ones.
double catchup_seconds(const std::shared_ptr<const ce::Model>& model, int64_t split, const ce::PositionRows& states,
                       int64_t context, int64_t gap) {
  const auto cloud = computed_context(model, split, states, context);
  cloud->append(states.slice(static_cast<uint32_t>(context), static_cast<uint32_t>(gap)));
  const auto t0 = clock_type::now();
  cloud->infer(static_cast<uint32_t>(context + gap - 1), {});
  return seconds_since(t0);
}

// Seconds of `steps` batched cloud steps (CloudCompute::step, as the cloud's scheduler runs them)
// of `sessions` contexts that hold `context` computed positions, each step one new position of
// every context, answered: the cloud's work under load, scheduling and network aside.
double batch_seconds(const std::shared_ptr<const ce::Model>& model, int64_t split, const ce::PositionRows& states,
                     int64_t context, int64_t sessions, int steps) {
  std::vector<std::unique_ptr<ce::CloudCompute>> clouds;
  for (int64_t s = 0; s < sessions; ++s) clouds.push_back(computed_context(model, split, states, context));
  std::vector<float> scratch;
  const auto t0 = clock_type::now();
  for (int i = 0; i < steps; ++i) {
    const auto position = static_cast<uint32_t>(context + i);
    std::vector<ce::CloudCompute::Request> requests;
    for (auto& cloud : clouds) {
      cloud->append(states.slice(position, 1));
      requests.emplace_back(cloud.get(), position);
    }
    ce::CloudCompute::step(requests, std::numeric_limits<int64_t>::max(), scratch);
  }
  return seconds_since(t0);
}

// Seconds of `steps` batched edge steps of `sessions` responses over [0, split) at the model's θ
// (tokens fed back greedily, exits read, rows left at an exit riding along later), each response
// started from a different prompt of `context` tokens: the edge's work under load, HTTP aside.
double edge_batch_seconds(const std::shared_ptr<const ce::Model>& model, int64_t split, int64_t context,
                          int64_t sessions, int steps) {
  const auto& c = model->config();
  std::vector<std::unique_ptr<ce::EarlyExitRunner>> runners;
  std::vector<ce::EarlyExitRunner::Advance> batch;
  ce::ExitRule rule;
  rule.threshold = c.default_threshold;
  for (int64_t s = 0; s < sessions; ++s) {
    runners.push_back(std::make_unique<ce::EarlyExitRunner>(model, split));
    std::vector<int32_t> prompt;
    if (c.bos_id >= 0) prompt.push_back(static_cast<int32_t>(c.bos_id));
    for (auto i = static_cast<int64_t>(prompt.size()); i < context; ++i) prompt.push_back(static_cast<int32_t>((s * 131 + i * 17) % c.vocab_size));
    batch.push_back({runners.back().get(), prompt, rule});
  }
  std::vector<float> scratch;
  auto outcomes = ce::EarlyExitRunner::advance(batch, scratch);
  const auto t0 = clock_type::now();
  for (int i = 0; i < steps; ++i) {
    for (size_t s = 0; s < batch.size(); ++s) batch[s].tokens = {std::max(0, outcomes[s].standalone_token())};
    outcomes = ce::EarlyExitRunner::advance(batch, scratch);
  }
  return seconds_since(t0);
}

// kB of a /proc/self/status field (VmRSS, VmHWM), 0 when unreadable.
long status_kib(const char* field) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(field, 0) == 0) return std::stol(line.substr(std::strlen(field) + 1));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  ce::use_fast_blas_kernel(argv);
  ce::cli::Parser cli("ce-bench-decode",
                      "Measures batch-1 decode tokens/s of the full model, the edge's and the cloud's layer ranges, and "
                      "the cloud's per-position catch-up cost; prints one JSON line per measurement.");
  cli.add("model", "DIR", "model directory", "models/ce-brown-8l")
      .add("ranges", "LIST",
           "comma-separated: full, edge, cloud, catchup, batch (the cloud's step of --sessions contexts, one position "
           "each), edge-batch (the edge's step of --sessions responses at the model's θ), memory (the machine's read "
           "bandwidth)",
           "full,edge,cloud")
      .add("tokens", "N", "decode steps per measurement (from BOS; run.c's default is 256)", "256")
      .add("split", "LAYER", "edge/cloud split (default: the model's default_split)", "0")
      .add("gaps", "LIST", "catch-up gaps, in positions", "1,4,16,64,256")
      .add("context", "N", "positions already computed before a catch-up or a batch's steps", "64")
      .add("sessions", "N", "contexts in each step of the batch range", "32")
      .add("threads", "N", "compute threads, 0 = all cores", "1")
      .add("tag", "TEXT", "copied into every line (e.g. the repeat number)", "")
      .add("parts", "WHICH", "tensors loaded: all, or role = only what --ranges' one range needs (edge: embedding, layers "
                             "[0, split), exits; cloud: layers [split, L) and the head, fed random split-layer states)",
           "all");
  ce::cli::add_weights_flag(cli);
  cli.parse(argc, argv);
  try {
    const int threads = static_cast<int>(cli.get_int("threads"));
    ce::configure_threads(threads);
    const auto precision = ce::cli::weights_from_flag(cli);
    const auto ranges = cli.get_list("ranges");
    const bool role_parts = cli.get("parts") == "role";
    if (!role_parts && cli.get("parts") != "all") cli.fail("--parts must be all or role");
    if (role_parts && (ranges.size() != 1 || (ranges[0] != "edge" && ranges[0] != "cloud")))
      cli.fail("--parts role needs exactly one range, edge or cloud");
    const bool splits = std::any_of(ranges.begin(), ranges.end(), [](const std::string& r) { return r != "full"; });
    const auto split = splits ? ce::SplitPlan::from_config(ce::load_model_config(cli.get("model") + "/config.json"),
                                                           cli.get_int("split")).split
                              : 0;
    const auto load_start = clock_type::now();
    auto model = ce::Model::load(cli.get("model"), precision,
                                 !role_parts          ? ce::ModelParts::all()
                                 : ranges[0] == "edge" ? ce::ModelParts::edge(split)
                                                       : ce::ModelParts::cloud(split));
    const double load_seconds = seconds_since(load_start);
    const auto& c = model->config();
    const int steps = static_cast<int>(cli.get_int("tokens"));
    if (steps < 1 || steps + 1 > c.max_seq) cli.fail("--tokens must be in [1, max_seq - 1]");
    const auto line = [&](const std::string& range) {
      std::ostringstream o;
      o << std::fixed << std::setprecision(4) << "{\"engine\":\"cecollm\",\"model\":\"" << c.name << "\",\"weights\":\""
        << model->decoder().precision() << "\",\"threads\":" << ce::kernels::threads() << ",\"isa\":\""
        << ce::kernels::isa() << "\",\"row_blocks\":\"" << ce::kernels::to_string(ce::kernels::row_blocks())
        << "\",\"range\":\"" << range << "\",\"tag\":\"" << cli.get("tag")
        << "\",\"parts\":\"" << cli.get("parts") << "\",\"load_s\":" << load_seconds
        << ",\"weight_mib\":" << model->weight_bytes() / 1048576.0 << ",\"rss_mib\":" << status_kib("VmRSS:") / 1024.0
        << ",\"peak_rss_mib\":" << status_kib("VmHWM:") / 1024.0;
      return o.str();
    };
    const auto report = [&](const std::string& range, double seconds) {
      std::cout << line(range) << ",\"tokens\":" << steps << ",\"tokens_per_s\":" << steps / seconds
                << ",\"ms_per_token\":" << 1e3 * seconds / steps << "}" << std::endl;
    };
    std::vector<int64_t> gaps;
    for (const auto g : cli.get_int_list("gaps")) {
      if (g < 1) cli.fail("--gaps needs positive integers, got " + std::to_string(g));
      gaps.push_back(g);
    }
    const int64_t context = cli.get_int("context");
    const int64_t sessions = cli.get_int("sessions");
    if (sessions < 1) cli.fail("--sessions must be at least 1");
    if (context < 1) cli.fail("--context must be at least 1");
    int64_t needed = steps + 1;
    for (auto g : gaps) needed = std::max(needed, context + g);
    for (const char* batched : {"batch", "edge-batch"})
      if (std::find(ranges.begin(), ranges.end(), batched) != ranges.end()) needed = std::max(needed, context + steps);
    // A batched range's `steps` steps of `sessions` rows each.
    const auto report_batch = [&](const std::string& range, double seconds) {
      std::cout << line(range) << ",\"context\":" << context << ",\"sessions\":" << sessions << ",\"steps\":" << steps
                << ",\"ms_per_step\":" << 1e3 * seconds / steps
                << ",\"ms_per_row\":" << 1e3 * seconds / steps / static_cast<double>(sessions) << "}" << std::endl;
    };
    std::optional<ce::PositionRows> states;
    for (const auto& range : ranges) {
      if (range == "memory") {
        std::cout << line(range) << ",\"gb_per_s\":" << read_bandwidth_gbps() << "}" << std::endl;
      } else if (range == "full") {
        report(range, runner_seconds(model, c.n_layers, false, steps));
      } else if (range == "edge") {
        report(range, runner_seconds(model, split, true, steps));
      } else if (range == "edge-batch") {
        if (needed > c.max_seq) cli.fail("--tokens and --context need more positions than max_seq");
        report_batch(range, edge_batch_seconds(model, split, context, sessions, steps));
      } else if (range == "cloud" || range == "catchup" || range == "batch") {
        if (needed > c.max_seq) cli.fail("--tokens, --context and --gaps need more positions than max_seq");
        if (!states) states = role_parts ? random_states(c.dim, needed) : edge_states(model, split, needed);
        if (range == "cloud") {
          report(range, stepped_seconds(model, split, *states, 1, steps));
          continue;
        }
        if (range == "batch") {
          report_batch(range, batch_seconds(model, split, *states, context, sessions, steps));
          continue;
        }
        // The yardstick: stepping the same positions one at a time, as a cloud without lazy fill
        // would (a step's attention grows with its depth, so a step at the gap's start alone would
        // understate it for long gaps). Best of 3 each (5 for short gaps), the two measured in turn.
        for (auto g : gaps) {
          double best = 1e9, stepped = 1e9;
          for (int r = 0, repeats = g < 16 ? 5 : 3; r < repeats; ++r) {
            best = std::min(best, catchup_seconds(model, split, *states, context, g));
            stepped = std::min(stepped, stepped_seconds(model, split, *states, context, g));
          }
          const double step = stepped / static_cast<double>(g);
          std::cout << line(range) << ",\"context\":" << context << ",\"gap\":" << g
                    << ",\"ms_per_position\":" << 1e3 * best / g << ",\"ms_per_step\":" << 1e3 * step
                    << ",\"ratio_to_step\":" << best / g / step << "}" << std::endl;
        }
      } else {
        cli.fail("--ranges: unknown range '" + range + "' (full, edge, cloud, catchup, batch, edge-batch, memory)");
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "ce-bench-decode: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
