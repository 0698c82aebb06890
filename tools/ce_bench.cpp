// ce-bench: the paper's comparison in one run. A cloud node and an edge node (two CAF systems in
// this process, linked over loopback TCP through ce-linkem's emulated link) answer prompts from
// the held-out test text in every mode, on every link profile; writes CSV, Markdown and plots and
// checks its own invariants.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <numeric>
#include <sstream>
#include <thread>
#include <utility>

#include "actors/node/node.hpp"
#include "model/blas_kernel.hpp"
#include "model/evaluation.hpp"
#include "model/runtime.hpp"
#include "model/tokenizer.hpp"
#include "tools/cli.hpp"
#include "linkem/link_emulator.hpp"

namespace {

using namespace ce;

struct ModeSpec {
  std::string label;
  InferenceMode mode;
  double threshold;
};

struct Row {  // one response
  std::string link, mode;
  int prompt = 0;
  GenerateResult result;
};

struct Summary {
  std::string link, mode;
  double threshold = 0;
  int responses = 0, tokens = 0, cloud_tokens = 0, degraded = 0;
  double total_s = 0, edge_s = 0, cloud_s = 0, comm_s = 0, p50 = 0, p99 = 0;
  double bytes_per_response = 0;
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5)];
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Prompts: the first `prompt_tokens` tokens of test paragraphs long enough to hold them.
std::vector<std::vector<int32_t>> make_prompts(const Tokenizer& tok, const std::string& text, int count,
                                               int prompt_tokens, int32_t bos) {
  std::vector<std::vector<int32_t>> out;
  std::stringstream in(text);
  for (std::string para; std::getline(in, para) && static_cast<int>(out.size()) < count;) {
    if (para.size() < 40) continue;
    auto ids = tok.encode(para);
    if (static_cast<int>(ids.size()) < prompt_tokens) continue;
    std::vector<int32_t> p{bos};
    p.insert(p.end(), ids.begin(), ids.begin() + prompt_tokens);
    out.push_back(std::move(p));
  }
  return out;
}

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
    token_ms.insert(token_ms.end(), st.token_ms.begin(), st.token_ms.end());
  }
  s.p50 = percentile(token_ms, 0.5);
  s.p99 = percentile(token_ms, 0.99);
  s.bytes_per_response = s.responses ? bytes / s.responses : 0;
  return s;
}

// The checkpoint: one line per measured response, appended as soon as it is measured, so that a
// run of hours (the full preset is ~3 h on 2 cores) survives being stopped and resumes where it
// left off. Its first line names the run; a checkpoint of another run is not resumed.
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

std::string checkpoint_line(const Row& r) {
  const auto& s = r.result.stats;
  std::ostringstream out;
  out << std::setprecision(9) << r.link << '\t' << r.mode << '\t' << r.prompt << '\t' << static_cast<int>(s.mode)
      << '\t' << s.threshold << '\t'
      << s.prompt_tokens << '\t' << s.generated << '\t' << s.cloud_tokens << '\t' << s.degraded_tokens << '\t'
      << s.bytes_uploaded << '\t' << s.bytes_inline << '\t' << s.edge_ms << '\t' << s.cloud_ms << '\t' << s.wait_ms
      << '\t' << s.total_ms << '\t'
      << join_numbers(std::vector<double>(r.result.tokens.begin(), r.result.tokens.end())) << '\t'
      << join_numbers(s.token_ms);
  return out.str();
}

Row parse_checkpoint_line(const std::string& line) {
  std::vector<std::string> f;
  std::istringstream in(line);
  for (std::string field; std::getline(in, field, '\t');) f.push_back(field);
  if (f.size() == 16) f.emplace_back();  // a response without tokens has an empty last field
  if (f.size() != 17) throw std::runtime_error("has " + std::to_string(f.size()) + " fields, expected 17");
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
  for (double t : split_numbers(f[15])) r.result.tokens.push_back(static_cast<int32_t>(t));
  s.token_ms = split_numbers(f[16]);
  if (r.result.tokens.size() != static_cast<size_t>(s.generated) || s.token_ms.size() != static_cast<size_t>(s.generated))
    throw std::runtime_error("is incomplete (" + std::to_string(s.generated) + " tokens generated, " +
                             std::to_string(r.result.tokens.size()) + " ids and " + std::to_string(s.token_ms.size()) +
                             " latencies recorded)");
  return r;
}

// Rows of `path` when its header is `run_key`; none (and a note why) otherwise.
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

}  // namespace

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
      .add("sweep", "LIST", "thresholds for the θ sweep (on the sweep link)", "0.2,0.4,0.5,0.6,0.7,0.8,0.9,0.95")
      .add("sweep-link", "NAME", "link of the θ sweep", "wan")
      .add("eval-tokens", "N", "held-out tokens for the accuracy table", "20000")
      .add("out-dir", "DIR", "where CSV, Markdown and PNG go", "docs/bench")
      .add("quick", "", "small preset for CI: 3 prompts x 16 tokens, loopback and wan, short sweep")
      .add("threads", "N", "torch threads, 0 = all cores", "0")
      .add("no-resume", "", "ignore the checkpoint of an interrupted run of the same configuration and start over")
      .add("stop-after", "N", "measure N more responses, then stop (rerun to resume from the checkpoint)", "0");
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
    const std::string out_dir = cli.get("out-dir");
    std::filesystem::create_directories(out_dir);

    NodeConfig cloud_cfg;
    cloud_cfg.role = Role::cloud;
    cloud_cfg.model_path = cli.get("model");
    cloud_cfg.listen_port = 0;
    cloud_cfg.torch_threads = static_cast<int>(cli.get_int("threads"));
    cloud_cfg.log_level = LogLevel::warning;
    Node cloud(cloud_cfg);
    const auto& mc = cloud.model().config();
    Tokenizer tok(cloud.model().tokenizer_path());
    const std::string text = read_text(cli.get("text"));
    auto prompts = make_prompts(tok, text, n_prompts, static_cast<int>(cli.get_int("prompt-tokens")),
                                static_cast<int32_t>(mc.bos_id));
    if (prompts.empty()) throw std::runtime_error("no prompts could be cut from " + cli.get("text"));

    const double theta_default = mc.default_threshold;
    std::vector<ModeSpec> modes = {{"cloud-only", InferenceMode::cloud_only, 2.0},
                                   {"naive-split", InferenceMode::naive_split, 2.0},
                                   {"standalone", InferenceMode::standalone, theta_default},
                                   {"collaborative", InferenceMode::collaborative, theta_default},
                                   {"collaborative-0.8", InferenceMode::collaborative, 0.8},
                                   {"collaborative-all-cloud", InferenceMode::collaborative, 2.0}};
    if (std::abs(theta_default - 0.8) < 1e-9)  // the paper's θ is the model's own: run it once
      modes.erase(std::remove_if(modes.begin(), modes.end(), [](const ModeSpec& m) { return m.label == "collaborative-0.8"; }),
                  modes.end());
    // The plan: every mode on every link, and the θ sweep on the sweep link.
    std::vector<std::pair<std::string, std::vector<ModeSpec>>> plan;
    for (auto& link : links) {
      auto link_modes = modes;
      if (link == cli.get("sweep-link") || (quick && link == "wan"))
        for (double theta : sweep) {
          std::ostringstream label;
          label << "sweep-" << theta;
          link_modes.push_back({label.str(), InferenceMode::collaborative, theta});
        }
      plan.emplace_back(link, std::move(link_modes));
    }
    // Where a (link, mode) stands in the plan, -1 when the plan has no such pair.
    auto plan_index = [&](const Row& r) {
      int index = 0;
      for (auto& [link, link_modes] : plan)
        for (auto& m : link_modes) {
          if (r.link == link && r.mode == m.label) return index;
          ++index;
        }
      return -1;
    };
    auto planned = [&](const Row& r) {
      return r.prompt >= 0 && r.prompt < static_cast<int>(prompts.size()) && plan_index(r) >= 0;
    };

    // Responses already measured by an interrupted run of this same configuration.
    const std::string checkpoint_path = out_dir + "/ce-bench.checkpoint";
    std::ostringstream run_key;
    run_key << "# ce-bench checkpoint v1 weights=" << cloud.model().weights_hash() << " theta=" << theta_default
            << " text=" << cli.get("text") << " prompts=" << prompts.size() << " prompt_tokens="
            << cli.get_int("prompt-tokens") << " tokens=" << n_tokens;
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
    std::copy_if(checkpointed.begin(), checkpointed.end(), std::back_inserter(rows), planned);
    const size_t resumed_rows = rows.size();
    auto measured = [&](const std::string& link, const std::string& label, int prompt) {
      return std::any_of(rows.begin(), rows.end(),
                         [&](const Row& r) { return r.link == link && r.mode == label && r.prompt == prompt; });
    };

    std::vector<std::string> failures;
    int total_runs = 0;
    for (auto& entry : plan) total_runs += static_cast<int>(entry.second.size() * prompts.size());
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
      req.threshold = m.threshold;
      req.mode = m.mode;
      req.stop_at_eos = false;
      Row row{link, m.label, static_cast<int>(i), edge.generate(req)};
      if (!row.result.error.empty()) failures.push_back(link + "/" + m.label + ": " + row.result.error);
      else checkpoint << checkpoint_line(row) << "\n" << std::flush;  // a failed response is measured again
      rows.push_back(std::move(row));
      ++measured_now;
      progress(link + " " + m.label);
      stopped = stop_after > 0 && measured_now >= stop_after;
    };

    for (auto& [link, link_modes] : plan) {
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
    for (auto& r : rows) {
      const auto& st = r.result.stats;
      const std::string where = r.link + "/" + r.mode + " prompt " + std::to_string(r.prompt);
      if (static_cast<int>(r.result.tokens.size()) != n_tokens)
        failures.push_back(where + ": produced " + std::to_string(r.result.tokens.size()) + " tokens");
      const auto expected_upload = (prompts[static_cast<size_t>(r.prompt)].size() + static_cast<size_t>(n_tokens)) *
                                   static_cast<size_t>(mc.dim) * 2;
      if (st.mode == InferenceMode::collaborative && st.bytes_uploaded != expected_upload)
        failures.push_back(where + ": uploaded " + std::to_string(st.bytes_uploaded) + " B, expected " +
                           std::to_string(expected_upload) + " = (prompt + generated) x dim x 2");
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

    // Raw and summary CSV, in plan order (link, mode, prompt) whatever order the responses were measured in.
    std::stable_sort(rows.begin(), rows.end(), [&](const Row& a, const Row& b) {
      return std::make_pair(plan_index(a), a.prompt) < std::make_pair(plan_index(b), b.prompt);
    });
    std::ofstream raw(out_dir + "/responses.csv");
    raw << "link,mode,prompt,threshold,prompt_tokens,generated,cloud_tokens,degraded,bytes_uploaded,bytes_inline,edge_ms,"
           "cloud_ms,wait_ms,total_ms\n";
    for (auto& r : rows) {
      const auto& s = r.result.stats;
      raw << r.link << "," << r.mode << "," << r.prompt << "," << s.threshold << "," << s.prompt_tokens << ","
          << s.generated << "," << s.cloud_tokens << "," << s.degraded_tokens << "," << s.bytes_uploaded << ","
          << s.bytes_inline << "," << s.edge_ms << "," << s.cloud_ms << "," << s.wait_ms << "," << s.total_ms << "\n";
    }
    std::vector<std::string> labels;
    for (auto& r : rows)
      if (std::find(labels.begin(), labels.end(), r.mode) == labels.end()) labels.push_back(r.mode);
    std::ofstream sum(out_dir + "/summary.csv");
    sum << "link,mode,threshold,responses,tokens,cloud_share,total_s,edge_s,cloud_s,comm_s,tokens_per_s,p50_ms,p99_ms,"
           "bytes_per_response\n";
    std::ostringstream md;
    md << std::fixed;
    for (auto& link : links) {
      md << "\n### Link: " << link << "\n\n| mode | θ | total (s) | edge (s) | cloud (s) | comm/wait (s) | tokens/s | "
            "p50 / p99 per token (ms) | to cloud | bytes / response |\n|---|---|---|---|---|---|---|---|---|---|\n";
      for (auto& label : labels) {
        double theta = 0;
        for (auto& r : rows)
          if (r.mode == label) theta = r.result.stats.threshold;
        auto s = summarize(link, {label, InferenceMode::collaborative, theta}, rows);
        if (!s.responses) continue;
        const double share = s.tokens ? static_cast<double>(s.cloud_tokens) / s.tokens : 0;
        sum << link << "," << label << "," << theta << "," << s.responses << "," << s.tokens << "," << share << ","
            << s.total_s << "," << s.edge_s << "," << s.cloud_s << "," << s.comm_s << "," << s.tokens / s.total_s << ","
            << s.p50 << "," << s.p99 << "," << s.bytes_per_response << "\n";
        md << "| " << label << " | " << std::setprecision(2) << theta << " | " << std::setprecision(2) << s.total_s
           << " | " << s.edge_s << " | " << s.cloud_s << " | " << s.comm_s << " | " << std::setprecision(1)
           << s.tokens / s.total_s << " | " << std::setprecision(2) << s.p50 << " / " << s.p99 << " | "
           << std::setprecision(1) << 100 * share << "% | " << std::setprecision(0) << s.bytes_per_response << " |\n";
      }
    }

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
        << " new tokens each, greedy. Cloud and edge share this machine (" << std::thread::hardware_concurrency()
        << " cores); links emulated by ce-linkem (bench/links/).\n"
        << md.str() << "\n### Accuracy on " << eval_n << " held-out tokens (next-token accuracy)\n\n" << report_markdown(report)
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
        << std::chrono::duration_cast<std::chrono::minutes>(std::chrono::steady_clock::now() - t_start).count() << "\n";
    std::cout << md.str() << "\nwrote " << out_dir << "/responses.csv, summary.csv, results.md, provenance.txt\n";
    std::cout << "invariants held: every response complete, collaborative bytes = (prompt + generated) x dim x 2, "
                 "θ > 1 equals cloud-only\n";
  } catch (const std::exception& e) {
    std::cerr << "ce-bench: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
