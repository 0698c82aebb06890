// ce-bench: the paper's comparison in one run. A cloud node and an edge node (two CAF systems in
// this process, linked over loopback TCP through ce-linkem's emulated link) answer prompts from
// the held-out test text in every mode, on every link profile; writes CSV, Markdown and plots and
// checks its own invariants (tools/bench/: the plan, the checkpoint, the tables and invariants).
#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <thread>
#include <utility>

#include "actors/node/node.hpp"
#include "model/blas_kernel.hpp"
#include "model/evaluation.hpp"
#include "model/runtime.hpp"
#include "model/text/tokenizer.hpp"
#include "tools/cli.hpp"
#include "tools/weights_flag.hpp"
#include "linkem/link_emulator.hpp"
#include "tools/bench/bench_run.hpp"
#include "tools/bench/checkpoint.hpp"
#include "tools/bench/report.hpp"

using namespace ce;
using namespace ce::bench;

int main(int argc, char** argv) {
  ce::use_fast_blas_kernel(argv);
  cli::Parser cli("ce-bench",
                  "Benchmarks cloud-only, naive-split, standalone and collaborative inference over emulated links\n"
                  "(cloud and edge nodes in this process, linked over loopback TCP through ce-linkem).");
  cli.add("model", "DIR", "model directory", "models/ce-brown-8l")
      .add("text", "FILE", "held-out text for prompts and accuracy", "data/brown/test.txt")
      .add("prompts", "N", "prompts per mode and link", "100")
      .add("tokens", "N", "new tokens per prompt", "100")
      .add("prompt-tokens", "N", "prompt length in tokens", "32")
      .add("links", "LIST", "link profiles from bench/links/NAME.ini", "loopback,lan,wan,mobile")
      .add("modes", "LIST", "only these modes (labels as in summary.csv, e.g. standalone,collaborative,"
                            "collaborative-speculative); default: all", "")
      .add("sweep", "LIST", "thresholds for the θ sweep (on the sweep link)", "0.2,0.4,0.5,0.6,0.7,0.8,0.9,0.95")
      .add("sweep-link", "NAME", "link of the θ sweep", "wan")
      .add("eval-tokens", "N", "held-out tokens for the accuracy table", "20000")
      .add("out-dir", "DIR", "where CSV, Markdown and PNG go (default docs/bench; with --quick build/bench-quick, so "
                             "a smoke run never overwrites the committed results)")
      .add("max-ahead", "N", "ce.speculation.max-ahead of the edge (speculative mode)",
           std::to_string(defaults::speculation_max_ahead))
      .add("max-requests", "N", "ce.speculation.max-requests of the edge (speculative mode)",
           std::to_string(defaults::speculation_max_requests))
      .add("min-path-confidence", "X", "ce.speculation.min-path-confidence of the edge (speculative mode)",
           std::to_string(defaults::speculation_min_path_confidence))
      .add("latency-budget", "MS", "ce.exit.latency-budget of the edge (collaborative-budget mode)", "10")
      .add("quick", "", "small preset for CI: 3 prompts x 16 tokens, loopback and wan, short sweep")
      .add("threads", "N", "compute threads of each node, 0 = half the cores each (as an edge and a cloud on two machines); "
           "past half, the nodes share cores and the edge speculates only over the wire (ce.speculation.run-ahead = wire)", "0")
      .add("no-resume", "", "ignore the checkpoint of an interrupted run of the same configuration and start over")
      .add("stop-after", "N", "measure N more responses, then stop (rerun to resume from the checkpoint)", "0");
  ce::cli::add_weights_flag(cli);
  cli.parse(argc, argv);
  try {
    const bool quick = cli.has("quick");
    const int n_prompts = quick ? 3 : static_cast<int>(cli.get_int("prompts"));
    const int n_tokens = quick ? 16 : static_cast<int>(cli.get_int("tokens"));
    std::vector<std::string> links;
    {
      std::stringstream s(quick ? std::string("loopback,wan") : cli.get("links"));
      for (std::string l; std::getline(s, l, ',');) links.push_back(l);
    }
    std::vector<double> sweep;
    {
      std::stringstream s(quick ? std::string("0.5,0.9") : cli.get("sweep"));
      for (std::string t; std::getline(s, t, ',');) sweep.push_back(std::stod(t));
    }
    const std::string out_dir = cli.has("out-dir") ? cli.get("out-dir") : quick ? "build/bench-quick" : "docs/bench";
    std::filesystem::create_directories(out_dir);

    NodeConfig cloud_cfg;
    cloud_cfg.role = Role::cloud;
    cloud_cfg.model_path = cli.get("model");
    cloud_cfg.model_weights = ce::to_string(ce::cli::weights_from_flag(cli));
    cloud_cfg.listen_port = 0;
    // Each node computes on its own share of the cores unless told otherwise, as an edge and a cloud
    // on two machines would. Where the shares overlap, a speculating edge's steps past the wire's
    // time would take the cores the cloud's answers need: it runs ahead over the wire alone.
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const int threads = cli.get_int("threads") > 0 ? static_cast<int>(cli.get_int("threads")) : std::max(1, cores / 2);
    const RunAhead run_ahead = 2 * threads <= cores ? RunAhead::round_trip : RunAhead::wire;
    cloud_cfg.compute_threads = threads;
    cloud_cfg.log_level = LogLevel::warning;
    Node cloud(cloud_cfg);
    const auto& mc = cloud.model().config();
    const auto tokenizer = open_tokenizer(cloud.model().tokenizer_path());
    const Tokenizer& tok = *tokenizer;
    const std::string text = read_text(cli.get("text"));
    auto prompts = make_prompts(tok, text, n_prompts, static_cast<int>(cli.get_int("prompt-tokens")),
                                static_cast<int32_t>(mc.bos_id));
    if (prompts.empty()) throw std::runtime_error("no prompts could be cut from " + cli.get("text"));

    const double theta_default = mc.default_threshold;
    const Plan plan = make_plan(links, select_modes(paper_modes(theta_default), cli.get("modes")), sweep, quick ? std::string("wan") : cli.get("sweep-link"));

    // Responses already measured by an interrupted run of this same configuration.
    const std::string checkpoint_path = out_dir + "/ce-bench.checkpoint";
    std::ostringstream run_key;
    run_key << "# ce-bench checkpoint v2 weights=" << cloud.model().weights_hash() << " theta=" << theta_default
            << " text=" << cli.get("text") << " prompts=" << prompts.size() << " prompt_tokens="
            << cli.get_int("prompt-tokens") << " tokens=" << n_tokens << " threads=" << threads
            << " run_ahead=" << to_string(run_ahead);
    std::vector<Row> checkpointed;
    if (!cli.has("no-resume")) checkpointed = load_checkpoint(checkpoint_path, run_key.str());
    std::ofstream checkpoint;
    if (checkpointed.empty()) {
      checkpoint.open(checkpoint_path, std::ios::trunc);
      checkpoint << run_key.str() << "\n";
    } else {
      checkpoint.open(checkpoint_path, std::ios::app);
      std::ifstream tail(checkpoint_path, std::ios::binary | std::ios::ate);
      tail.seekg(-1, std::ios::end);
      if (tail.get() != '\n') checkpoint << "\n";  // end a line cut short, so the next response starts its own
      std::cerr << "ce-bench: resuming from " << checkpoint_path << ": " << checkpointed.size()
                << " responses already measured (--no-resume starts over)\n";
    }
    checkpoint << std::flush;
    if (!checkpoint) throw std::runtime_error(checkpoint_path + ": cannot write");
    std::vector<Row> rows;  // of this run's plan only (a resumed checkpoint may hold other links)
    std::copy_if(checkpointed.begin(), checkpointed.end(), std::back_inserter(rows),
                 [&](const Row& r) { return plan.holds(r, prompts.size()); });
    const size_t resumed_rows = rows.size();
    auto measured = [&](const std::string& link, const std::string& label, int prompt) {
      return std::any_of(rows.begin(), rows.end(),
                         [&](const Row& r) { return r.link == link && r.mode == label && r.prompt == prompt; });
    };

    std::vector<std::string> failures;
    const int total_runs = plan.responses(prompts.size());
    const long long stop_after = cli.get_int("stop-after");
    int done = 0, measured_now = 0;
    bool stopped = false;
    auto t_start = std::chrono::steady_clock::now();
    auto progress = [&](const std::string& what) {
      ++done;
      const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
      std::cerr << "\r[" << std::setw(3) << (100 * done / total_runs) << "%] " << done << "/" << total_runs << " "
                << what << ", ETA " << static_cast<int>(el / std::max(measured_now, 1) * (total_runs - done))
                << " s      " << std::flush;
    };
    auto run_response = [&](Node& edge, const std::string& link, const ModeSpec& m, size_t i) {
      if (measured(link, m.label, static_cast<int>(i))) {
        ++done;
        return;
      }
      GenerateRequest req;
      req.prompt = prompts[i];
      req.max_tokens = n_tokens;
      if (!m.budget) req.threshold = m.threshold;  // else the edge's latency-budget policy picks θ
      req.mode = m.mode;
      req.speculate = m.speculate;
      req.stop_at_eos = false;
      Row row{link, m.label, static_cast<int>(i), edge.generate(req)};
      if (!row.result.error.empty()) failures.push_back(link + "/" + m.label + ": " + row.result.error);
      else checkpoint << checkpoint_line(row) << "\n" << std::flush;  // a failed response is measured again
      rows.push_back(std::move(row));
      ++measured_now;
      progress(link + " " + m.label);
      stopped = stop_after > 0 && measured_now >= stop_after;
    };

    for (auto& [link, link_modes] : plan.links) {
      if (stopped) break;
      // A link measured in full by an earlier sitting needs no emulator and no edge node.
      const bool all_measured = std::all_of(link_modes.begin(), link_modes.end(), [&](const ModeSpec& m) {
        for (size_t i = 0; i < prompts.size(); ++i)
          if (!measured(link, m.label, static_cast<int>(i))) return false;
        return true;
      });
      if (all_measured) {
        done += static_cast<int>(link_modes.size() * prompts.size());
        continue;
      }
      auto profile = linkem::load_profile("bench/links/" + link + ".ini");
      linkem::LinkEmulator emulator(profile, "127.0.0.1", cloud.cloud_port());
      NodeConfig edge_cfg = cloud_cfg;
      edge_cfg.role = Role::edge;
      edge_cfg.cloud_port = emulator.port();
      edge_cfg.request_deadline = std::chrono::seconds(30);
      edge_cfg.speculation_max_ahead = static_cast<int>(cli.get_int("max-ahead"));
      edge_cfg.speculation_max_requests = static_cast<int>(cli.get_int("max-requests"));
      edge_cfg.speculation_min_path_confidence = std::stod(cli.get("min-path-confidence"));
      edge_cfg.speculation_run_ahead = run_ahead;
      // Only responses without a θ of their own (collaborative-budget) are decided by the policy.
      if (std::any_of(link_modes.begin(), link_modes.end(), [](const ModeSpec& m) { return m.budget; }))
        edge_cfg.exit_policy = ExitPolicy::latency_budget;
      edge_cfg.latency_budget = std::chrono::milliseconds(cli.get_int("latency-budget"));
      Node edge(edge_cfg);
      if (!edge.wait_for_cloud(std::chrono::seconds(10))) throw std::runtime_error("no cloud link over " + link);
      // Prompt-major order: this VM's speed drifts by tens of percent over minutes, and running every mode on
      // a prompt before the next prompt spreads that drift evenly over the modes being compared.
      for (size_t i = 0; i < prompts.size() && !stopped; ++i)
        for (size_t k = 0; k < link_modes.size() && !stopped; ++k) run_response(edge, link, link_modes[k], i);
    }
    std::cerr << "\n";
    if (stopped) {
      std::cout << "stopped after " << measured_now << " responses (--stop-after); " << rows.size() << " of " << total_runs
                << " measured, kept in " << checkpoint_path << "; rerun the same command to resume\n";
      return 0;
    }

    // Invariants, on resumed and new responses alike.
    for (auto& f : check_invariants(rows, prompts, n_tokens, mc.dim, links)) failures.push_back(f);

    // Raw and summary CSV, in plan order (link, mode, prompt) whatever order the responses were measured in.
    std::stable_sort(rows.begin(), rows.end(), [&](const Row& a, const Row& b) {
      return std::make_pair(plan.index_of(a), a.prompt) < std::make_pair(plan.index_of(b), b.prompt);
    });
    const std::string md = write_tables(rows, links, out_dir);

    // Accuracy against the next token of the held-out text (Table II analogue).
    std::vector<int32_t> eval_tokens{static_cast<int32_t>(mc.bos_id)};
    for (auto id : tok.encode(text)) eval_tokens.push_back(id);
    const auto eval_n = std::min<size_t>(eval_tokens.size(), static_cast<size_t>(quick ? 2000 : cli.get_int("eval-tokens")));
    eval_tokens.resize(eval_n);
    EvalOptions eo;
    eo.thresholds = {theta_default, 0.8};
    auto report = evaluate(cloud.model(), eval_tokens, eo);

    std::ofstream doc(out_dir + "/results.md");
    doc << "# ce-bench results\n\nModel `" << mc.name << "` (" << mc.n_layers << " layers, dim " << mc.dim
        << ", split after layer " << mc.default_split << "), " << prompts.size() << " prompts of "
        << cli.get("prompt-tokens") << " tokens from `" << cli.get("text") << "`, " << n_tokens
        << " new tokens each, greedy. Cloud and edge run on this machine (" << cores << " cores), "
        << (run_ahead == RunAhead::round_trip ? "each on " : "sharing them, each with ") << threads
        << (threads == 1 ? " compute thread" : " compute threads")
        << (run_ahead == RunAhead::round_trip ? " of its own, as on two machines" : "")
        << " (ce.speculation.run-ahead = " << to_string(run_ahead)
        << "); links emulated by ce-linkem (bench/links/).\n"
        << md << "\n### Accuracy on " << eval_n << " held-out tokens (next-token accuracy)\n\n" << report_markdown(report)
        << "\n";
    if (!failures.empty()) {
      std::cerr << "ce-bench: " << failures.size() << " invariant violations:\n";
      for (auto& f : failures) std::cerr << "  " << f << "\n";
      return 1;
    }
    checkpoint.close();
    std::filesystem::remove(checkpoint_path);  // complete: a rerun measures afresh
    // How the figures came about, for the report (scripts/run-bench adds the commit).
    const std::time_t now = std::time(nullptr);
    char finished[16];
    std::strftime(finished, sizeof finished, "%F", std::gmtime(&now));
    std::ofstream(out_dir + "/provenance.txt")
        << "finished=" << finished << "\nresumed_responses=" << resumed_rows << "\nresponses=" << rows.size()
        << "\nlast_sitting_minutes="
        << std::chrono::duration_cast<std::chrono::minutes>(std::chrono::steady_clock::now() - t_start).count()
        << "\nmax_ahead=" << cli.get_int("max-ahead") << "\nmax_requests=" << cli.get_int("max-requests")
        << "\nmin_path_confidence=" << cli.get("min-path-confidence")
        << "\nlatency_budget_ms=" << cli.get_int("latency-budget") << "\nthreads=" << threads
        << "\nrun_ahead=" << to_string(run_ahead) << "\n";
    std::cout << md << "\nwrote " << out_dir << "/responses.csv, summary.csv, results.md, provenance.txt\n";
    std::cout << "invariants held: every response complete, collaborative bytes = (prompt + generated) x dim x 2, "
                 "θ > 1 equals cloud-only\n";
  } catch (const std::exception& e) {
    std::cerr << "ce-bench: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
