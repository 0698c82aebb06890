// ce-eval: evaluates an early-exit model on a text file: cross-entropy, bits per character and
// perplexity of every head, and a sweep of the exit threshold θ (share resolved at the edge,
// agreement with the final layer, standalone/collaborative/full accuracy). Optionally picks the
// default θ and writes it into the model's config.json.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "model/blas_kernel.hpp"
#include "model/evaluation.hpp"
#include "model/split_plan.hpp"
#include "model/text/tokenizer.hpp"
#include "tools/cli.hpp"
#include "tools/weights_flag.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Failure(path + ": cannot open");
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Creates the parent folder of an output file when it is missing.
void make_parent(const std::string& path) {
  const fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty() && !fs::is_directory(parent)) fs::create_directories(parent, ec);
  if (ec) throw Failure(parent.string() + ": cannot create folder (" + ec.message() + ")");
}

void write_file(const std::string& path, const std::string& text) {
  make_parent(path);
  std::ofstream out(path, std::ios::binary);
  if (!out || !(out << text) || !(out.flush())) throw Failure(path + ": cannot write");
}

void require_file(const std::string& path, const std::string& what) {
  if (!fs::is_regular_file(path)) throw Failure(what + " not found: " + path);
}

std::vector<double> parse_thresholds(const std::string& list, const ce::cli::Parser& cli) {
  std::vector<double> out;
  std::stringstream in(list);
  for (std::string item; std::getline(in, item, ',');) {
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || !std::isfinite(v) || v < 0)
      cli.fail("--thresholds needs comma-separated numbers >= 0, got '" + item + "'");
    out.push_back(v);
  }
  if (out.empty()) cli.fail("--thresholds is empty");
  return out;
}

std::string find_plot_script() {
  if (fs::is_regular_file("scripts/plot-eval.py")) return "scripts/plot-eval.py";
#ifdef CE_SOURCE_DIR
  const std::string installed = std::string(CE_SOURCE_DIR) + "/scripts/plot-eval.py";
  if (fs::is_regular_file(installed)) return installed;
#endif
  throw Failure("scripts/plot-eval.py not found (run from the repository root)");
}

// Runs /usr/bin/python3 SCRIPT CSV PNG and waits; no shell, so paths need no quoting.
void plot(const std::string& csv, const std::string& png) {
  const std::string python = "/usr/bin/python3";
  require_file(python, "python3 (needed for --out-png)");
  const std::string script = find_plot_script();
  make_parent(png);
  std::vector<std::string> args{python, script, csv, png};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (int err = posix_spawn(&pid, python.c_str(), nullptr, nullptr, argv.data(), environ); err != 0)
    throw Failure("cannot start " + python + ": " + std::strerror(err));
  int status = 0;
  if (waitpid(pid, &status, 0) < 0) throw Failure("waiting for " + script + " failed");
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw Failure(script + " failed (exit status " + std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) +
                  "); is python3-matplotlib installed?");
}

std::string pick_markdown(const ce::EvalReport& rep, const ce::ThresholdPick& pick, double max_drop,
                          double min_agreement, double confidence) {
  char buf[512];
  std::string md = "\n## Picked threshold\n\nRule: the θ of the sweep with the largest edge share among those whose "
                   "collaborative accuracy is within ";
  std::snprintf(buf, sizeof buf, "%.2f points of the full model's and whose edge agreement is >= %.1f%%", 100 * max_drop,
                100 * min_agreement);
  md += buf;
  if (confidence > 0) {
    std::snprintf(buf, sizeof buf,
                  " with %.0f%% confidence (the one-sided Wilson lower bound over the tokens resolved at the edge)",
                  100 * confidence);
    md += buf;
  }
  md += " (ties: the smaller θ; equivalently the smallest such θ).\n\n";
  if (!pick.satisfied) {
    md += "No θ of the sweep meets the rule.\n";
    return md;
  }
  const auto& r = rep.sweep[static_cast<size_t>(pick.row)];
  std::snprintf(buf, sizeof buf,
                "θ = %g: edge share %.1f%%, edge agreement %.2f%% (lower bound %.2f%% over %lld tokens), "
                "collaborative accuracy %.2f%% vs full %.2f%%, standalone %.2f%%.\n",
                pick.threshold, 100 * r.edge_share, 100 * r.edge_agreement,
                100 * ce::edge_agreement_lower_bound(r, confidence), static_cast<long long>(r.edge_tokens),
                100 * r.accuracy_collaborative,
                100 * r.accuracy_full, 100 * r.accuracy_standalone);
  md += buf;
  if (r.edge_tokens == 0)
    md += "\nNote: at this θ no token leaves at the edge on this text; every θ within the bounds sends all tokens "
          "to the cloud, so the pick says little about unseen text.\n";
  return md;
}

}  // namespace

int main(int argc, char** argv) {
  ce::use_fast_blas_kernel(argv);
  ce::cli::Parser cli("ce-eval",
                      "Evaluates an early-exit LLaMA on a text file: per-head cross-entropy, bits per character and "
                      "perplexity, and a sweep of the exit threshold θ (share resolved at each edge exit and at the "
                      "cloud, agreement with the final layer, standalone/collaborative/full next-token accuracy). "
                      "The report is printed as Markdown. Exit status: 0 ok, 1 error (missing file, bad model, "
                      "plot failure, no θ to write), 2 bad command line.");
  cli.add("model", "DIR", "model directory (config.json, model.safetensors, tokenizer.model)", "models/ce-brown-8l")
      .add("text", "FILE", "UTF-8 text to evaluate; tokenized whole with BOS prepended", "data/brown/valid.txt")
      .add("tokenizer", "FILE", "tokenizer model (default: DIR/tokenizer.model)")
      .add("max-tokens", "N", "evaluate only the first N tokens of the stream (BOS included), 0 = all", "0")
      .add("window", "N", "tokens per non-overlapping window, each run with a fresh KV cache (<= max_seq)", "256")
      .add("split", "N", "edge/cloud split layer, 0 = the model's default_split; edge exits are those <= N", "0")
      .add("thresholds", "LIST", "comma-separated θ values to sweep (default: 0.1,...,0.7, 0.75, 0.8, 0.81, ..., 0.9, 0.925, 0.95, 0.975, 0.99 and the model's default θ)")
      .add("out-md", "FILE", "also write the Markdown report to FILE")
      .add("out-csv", "FILE", "write the θ sweep as CSV")
      .add("out-png", "FILE", "plot the sweep (θ vs edge share, agreement, accuracies) with /usr/bin/python3 scripts/plot-eval.py")
      .add("pick-threshold", "", "pick the default θ from the sweep (see the rule in the report) and print it")
      .add("write-threshold", "", "pick θ as --pick-threshold and write it as default_threshold into DIR/config.json")
      .add("max-accuracy-drop", "X", "rule for picking θ: largest allowed full - collaborative accuracy (absolute)", "0.01")
      .add("min-edge-agreement", "X", "rule for picking θ: smallest allowed edge agreement", "0.97")
      .add("agreement-confidence", "X",
           "rule for picking θ: confidence with which the edge agreement must reach --min-edge-agreement "
           "(one-sided Wilson bound over the edge tokens), 0 = compare the measured ratio", "0.95")
      .add("threads", "N", "compute threads, 0 = all cores", "0");
  ce::cli::add_weights_flag(cli);
  cli.add("compare-weights", "P", "also evaluate with these weights (e.g. fp32) and report greedy agreement and bits/char per head against them");
  cli.parse(argc, argv);

  const long long max_tokens = cli.get_int("max-tokens");
  if (max_tokens < 0 || max_tokens == 1) cli.fail("--max-tokens must be 0 (all) or at least 2");
  const long long threads = cli.get_int("threads");
  if (threads < 0) cli.fail("--threads must be >= 0");
  ce::EvalOptions options;
  options.window = cli.get_int("window");
  options.split = cli.get_int("split");
  if (options.split < 0) cli.fail("--split must be >= 0");
  if (cli.has("thresholds")) options.thresholds = parse_thresholds(cli.get("thresholds"), cli);
  const double max_drop = cli.get_double("max-accuracy-drop");
  const double min_agreement = cli.get_double("min-edge-agreement");
  const double agreement_confidence = cli.get_double("agreement-confidence");
  if (!(agreement_confidence >= 0 && agreement_confidence < 1)) cli.fail("--agreement-confidence must be in [0, 1)");
  const bool write_threshold = cli.has("write-threshold");
  const bool pick = cli.has("pick-threshold") || write_threshold;

  try {
    ce::configure_threads(static_cast<int>(threads));
    const std::string dir = cli.get("model");
    if (!fs::is_directory(dir)) throw Failure("model directory not found: " + dir);
    require_file(dir + "/config.json", "model config");
    require_file(dir + "/model.safetensors", "model weights");
    const std::string tok_path = cli.has("tokenizer") ? cli.get("tokenizer") : (std::filesystem::exists(dir + "/tokenizer.json") ? dir + "/tokenizer.json" : dir + "/tokenizer.model");
    require_file(tok_path, "tokenizer");
    const std::string text_path = cli.get("text");
    require_file(text_path, "text");

    auto model = ce::Model::load(dir, ce::cli::weights_from_flag(cli));
    const auto& cfg = model->config();
    ce::SplitPlan::from_config(cfg, options.split);  // fail on a bad split or window before tokenizing
    if (options.window < 1 || options.window > cfg.max_seq)
      throw Failure("--window " + std::to_string(options.window) + " outside [1, " + std::to_string(cfg.max_seq) +
                    "] (the model's max_position_embeddings)");
    const auto opened = ce::open_tokenizer(tok_path);
    const ce::Tokenizer& tokenizer = *opened;
    if (tokenizer.vocab_size() > cfg.vocab_size)
      throw Failure(tok_path + ": tokenizer has " + std::to_string(tokenizer.vocab_size()) +
                    " pieces, more than the model's vocabulary of " + std::to_string(cfg.vocab_size));

    const std::string text = read_file(text_path);
    if (text.empty()) throw Failure(text_path + ": empty");
    std::vector<int32_t> tokens{static_cast<int32_t>(cfg.bos_id)};
    {
      auto ids = tokenizer.encode(text);
      tokens.insert(tokens.end(), ids.begin(), ids.end());
    }
    const size_t all_tokens = tokens.size();
    if (max_tokens > 0 && static_cast<size_t>(max_tokens) < tokens.size()) tokens.resize(static_cast<size_t>(max_tokens));
    const bool truncated = tokens.size() < all_tokens;
    // Bits per character over the characters the predicted tokens spell: the whole file, or the
    // decoded prefix when --max-tokens cut the stream.
    options.characters = truncated
                             ? ce::count_characters(tokenizer.decode(std::vector<int32_t>(tokens.begin() + 1, tokens.end())))
                             : ce::count_characters(text);
    std::cerr << "ce-eval: " << text_path << ": " << all_tokens << " tokens, evaluating " << tokens.size()
              << (truncated ? " (--max-tokens)" : "") << ", " << options.characters << " characters\n";

    int last_decile = 0;
    options.progress = [&](int64_t done, int64_t total) {
      const int decile = static_cast<int>(10 * done / total);
      if (decile > last_decile) {
        last_decile = decile;
        std::cerr << "ce-eval: " << done << "/" << total << " positions\n";
      }
    };
    const auto report = ce::evaluate(*model, tokens, options);

    std::string md = ce::report_markdown(report);
    md.insert(md.find("- tokens:"), "- text: `" + text_path + "`" +
                                        (truncated ? " (first " + std::to_string(tokens.size()) + " of " +
                                                         std::to_string(all_tokens) + " tokens)"
                                                   : std::string()) +
                                        "\n");
    if (cli.has("compare-weights")) {
      const auto reference_precision = ce::weight_precision_named(cli.get("compare-weights"));
      if (!reference_precision) cli.fail("--compare-weights must be one of " + std::string(ce::weight_precision_names));
      std::cerr << "ce-eval: evaluating again with " << cli.get("compare-weights") << " weights\n";
      const auto reference_model = ce::Model::load(dir, *reference_precision);
      last_decile = 0;
      const auto reference = ce::evaluate(*reference_model, tokens, options);
      md += ce::comparison_markdown(model->precision(), reference_model->precision(), ce::compare_runs(report, reference));
    }
    ce::ThresholdPick picked;
    if (pick) {
      picked = ce::pick_threshold_detail(report, max_drop, min_agreement, agreement_confidence);
      md += pick_markdown(report, picked, max_drop, min_agreement, agreement_confidence);
    }
    std::cout << md << std::flush;
    if (cli.has("out-md")) write_file(cli.get("out-md"), md);

    const std::string csv = ce::sweep_csv(report);
    if (cli.has("out-csv")) write_file(cli.get("out-csv"), csv);
    if (cli.has("out-png")) {
      std::string csv_path = cli.get("out-csv");
      fs::path temp;
      if (csv_path.empty()) {
        temp = fs::temp_directory_path() / ("ce-eval-" + std::to_string(getpid()) + ".csv");
        csv_path = temp.string();
        write_file(csv_path, csv);
      }
      try {
        plot(csv_path, cli.get("out-png"));
      } catch (...) {
        if (!temp.empty()) fs::remove(temp);
        throw;
      }
      if (!temp.empty()) fs::remove(temp);
    }
    std::fprintf(stderr, "ce-eval: %lld positions in %.2f s (%.0f tokens/s)\n", static_cast<long long>(report.predicted),
                 report.seconds, report.seconds > 0 ? report.predicted / report.seconds : 0.0);

    if (pick) {
      if (!picked.satisfied) {
        std::cerr << "ce-eval: no θ of the sweep meets the rule"
                  << (write_threshold ? "; config.json left unchanged" : "") << "\n";
        return 1;
      }
      std::cout << "\npicked threshold: " << picked.threshold << "\n";
      if (write_threshold) {
        const std::string config_path = dir + "/config.json";
        ce::write_default_threshold(config_path, picked.threshold);
        std::cerr << "ce-eval: wrote default_threshold " << picked.threshold << " to " << config_path << "\n";
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "ce-eval: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
