// ce-node: one cecollm node (edge, cloud, or both in one process) from a config file.
#include <csignal>
#include <cstdio>
#include <iomanip>
#include <filesystem>
#include <iostream>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "actors/http/http_api.hpp"
#include "actors/http/stats_json.hpp"
#include "actors/log.hpp"
#include "actors/node/node.hpp"
#include "model/blas_kernel.hpp"
#include "model/text/detokenizer.hpp"
#include "model/runtime.hpp"
#include "model/text/tokenizer.hpp"
#include "tools/cli.hpp"

namespace {

nlohmann::json to_json(const ce::GenerateResult& r, const std::string& text) {
  std::vector<std::string> sources;
  for (auto src : r.sources) sources.push_back(ce::to_string(src));
  return {{"text", text},
          {"tokens", r.tokens},
          {"sources", sources},
          {"layers", r.layers},
          {"error", r.error},
          {"finish_reason", ce::to_string(r.finish_reason)},
          {"stats", ce::stats_json(r.stats)}};
}

// "CLOUD_PORT HTTP_PORT\n" (0 where the node has none), written once the node serves, so that
// scripts and tests can wait for it and learn ephemeral ports.
void write_ready_file(const std::string& path, unsigned cloud_port, unsigned http_port) {
  const std::string tmp = path + ".tmp";
  if (FILE* f = std::fopen(tmp.c_str(), "w")) {
    std::fprintf(f, "%u %u\n", cloud_port, http_port);
    std::fclose(f);
    std::rename(tmp.c_str(), path.c_str());
  }
}

void print_stats(const ce::GenerateResult& r) {
  const auto& s = r.stats;
  const double share = s.generated ? 100.0 * (s.cloud_tokens + s.degraded_tokens) / s.generated : 0;
  std::cout << std::fixed << std::setprecision(1) << "\n--- " << ce::to_string(s.mode) << ", θ " << std::setprecision(2)
            << s.threshold << std::setprecision(1) << " ---\n"
            << "tokens " << s.generated << " (prompt " << s.prompt_tokens << "), to the cloud " << s.cloud_tokens
            << " (" << share << "% offloaded), degraded " << s.degraded_tokens << "\n"
            << "uploaded " << s.bytes_uploaded << " B";
  if (s.bytes_inline) std::cout << ", inline " << s.bytes_inline << " B";
  std::cout << "\nedge " << s.edge_ms << " ms, cloud " << s.cloud_ms << " ms, wait " << s.wait_ms << " ms, total "
            << s.total_ms << " ms, per token p50 " << std::setprecision(2) << ce::percentile(s.token_ms, 0.5) << " ms p99 "
            << ce::percentile(s.token_ms, 0.99) << " ms\n";
  if (!r.error.empty()) std::cout << "error: " << r.error << "\n";
}

// What responses do until the cloud link comes up (see effective_mode in actors/edge/exit_policy.hpp).
const char* without_cloud(ce::InferenceMode mode) {
  switch (mode) {
    case ce::InferenceMode::cloud_only: return "cloud-only responses fail until it comes up";
    case ce::InferenceMode::naive_split: return "naive-split tokens come from the edge's last exit (degraded) until it comes up";
    default: return "responses run standalone until it comes up";
  }
}

}  // namespace

int main(int argc, char** argv) {
  ce::use_fast_blas_kernel(argv);
  ce::cli::Parser cli("ce-node",
                      "Runs one cecollm node from a config file: a cloud (serves edges), an edge (answers prompts,\n"
                      "asking the cloud for low-confidence tokens), or both in one process.\n\nConfig keys:\n" +
                          ce::config_keys_help());
  cli.add("config", "FILE", "node config (INI), e.g. config/local.ini")
      .add("set", "KEY=VALUE", "override a config key (repeatable), e.g. --set ce.mode=standalone")
      .add("prompt", "TEXT", "edge: answer this prompt and exit (repeatable)")
      .add("stdin", "", "edge: answer each line of standard input as a prompt")
      .add("max-tokens", "N", "edge: tokens per response (default: ce.generate.max-tokens)")
      .add("wait-cloud", "DURATION", "edge: wait this long for the cloud link before the first prompt (e.g. 3s, 500ms)", "3s")
      .add("json", "", "edge: print one JSON object per response instead of text")
      .add("trace", "", "edge: print one line per token (position, id, source, layer, confidence)")
      .add("ready-file", "FILE", "write 'CLOUD_PORT HTTP_PORT' into FILE once the node serves (0 = none)")
      .add("print-config", "", "print the effective configuration and exit");
  cli.parse(argc, argv);
  try {
    auto config = ce::load_node_config(cli.require("config"));
    // A path given on the command line is read as the shell reads it: against the working
    // directory (a path in the file, against the file's directory).
    const std::string working_dir = std::filesystem::current_path().string();
    for (auto& assignment : cli.all("set")) ce::apply_override(config, assignment, working_dir);
    config.validate();
    const auto wait_cloud = ce::parse_duration(cli.get("wait-cloud"), "--wait-cloud");  // checked before anything starts
    if (cli.has("print-config")) {
      std::cout << ce::describe(config);
      return 0;
    }
    // A serving node (a cloud, or an edge serving HTTP) blocks the stop signals before CAF and
    // the HTTP server start their threads, so only sigwait below sees them and the node shuts
    // down cleanly; an edge answering prompts keeps the default (Ctrl-C ends it).
    const bool edge = config.role != ce::Role::cloud;
    std::vector<std::string> prompts = cli.all("prompt");
    const bool serve_http = config.http_port >= 0 && (!edge || (prompts.empty() && !cli.has("stdin")));
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    if (!edge || serve_http) pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

    ce::Node node(config);
    if (!edge || serve_http) {
      std::unique_ptr<ce::HttpApi> http;
      if (serve_http) {
        if (edge && config.mode != ce::InferenceMode::standalone &&
            !node.wait_for_cloud(wait_cloud))
          CE_LOG(warning, "node", "no cloud link yet: " << without_cloud(config.mode));
        http = std::make_unique<ce::HttpApi>(node);
      }
      if (cli.has("ready-file")) write_ready_file(cli.get("ready-file"), node.cloud_port(), http ? http->port() : 0);
      int sig = 0;
      sigwait(&stop_signals, &sig);
      CE_LOG(info, "node", "stopping on signal " << sig);
      // SIGTERM (systemd's stop) drains a cloud: no new sessions, the open ones may end within
      // ce.session.drain-timeout; a second signal, or SIGINT, stops at once.
      if (sig == SIGTERM && config.role != ce::Role::edge && config.drain_timeout.count() > 0) {
        CE_LOG(info, "node", "draining for up to " << config.drain_timeout.count() << " ms (signal again to stop now)");
        node.drain(config.drain_timeout, [&] {
          const timespec pause{0, 100'000'000};
          if (sigtimedwait(&stop_signals, nullptr, &pause) < 0) return true;
          CE_LOG(info, "node", "second stop signal: stopping now");
          return false;
        });
      }
      return 0;
    }
    if (cli.has("ready-file")) write_ready_file(cli.get("ready-file"), node.cloud_port(), 0);
    std::unique_ptr<ce::Tokenizer> tokenizer = ce::open_tokenizer(node.model().tokenizer_path());
    const auto& mc = node.model().config();
    if (config.mode != ce::InferenceMode::standalone &&
        !node.wait_for_cloud(wait_cloud))
      CE_LOG(warning, "node", "no cloud link yet: " << without_cloud(config.mode));

    const bool from_stdin = cli.has("stdin") || prompts.empty();
    const bool tty = isatty(STDOUT_FILENO);
    auto answer = [&](const std::string& prompt) {
      ce::GenerateRequest req;
      req.prompt = ce::encode_prompt(*tokenizer, mc.bos_id, prompt);
      req.max_tokens = cli.has("max-tokens") ? static_cast<int>(cli.get_int("max-tokens")) : config.max_tokens;
      req.sampling = ce::SamplingParams::sampled(static_cast<float>(config.temperature),
                                                 static_cast<float>(config.top_p), static_cast<uint64_t>(config.seed));
      ce::Detokenizer live_text(*tokenizer, req.prompt);  // what the terminal shows as tokens come
      const bool json = cli.has("json"), trace = cli.has("trace");
      if (!json && !trace) std::cout << prompt << std::flush;
      auto result = node.generate(req, [&](const ce::TokenEvent& ev) {
        if (trace) {
          std::cout << "pos " << ev.position << " token " << ev.token << " " << ce::to_string(ev.source) << " layer "
                    << ev.layer << " conf " << ev.confidence << std::endl;  // a line per token, as it comes
          return true;
        }
        if (json) return true;
        live_text.push(ev.token);
        const std::string piece = live_text.take_ready();
        if (tty && ev.source == ce::TokenSource::cloud) std::cout << "\033[1;36m" << piece << "\033[0m";
        else if (tty && ev.source == ce::TokenSource::degraded) std::cout << "\033[33m" << piece << "\033[0m";
        else std::cout << piece;
        std::cout << std::flush;
        return true;
      });
      const std::string text = tokenizer->decode(result.tokens);
      if (json) {
        std::cout << to_json(result, text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
      } else {
        if (tty) std::cout << "\n(edge tokens plain, \033[1;36mcloud tokens in cyan\033[0m, \033[33mdegraded in yellow\033[0m)";
        print_stats(result);
      }
      return result.error.empty();
    };
    bool ok = true;
    for (auto& p : prompts) ok = answer(p) && ok;
    if (from_stdin && prompts.empty()) {
      // A terminal on stdin would otherwise look like a hang: say what the node waits for.
      if (isatty(STDIN_FILENO))
        std::cerr << "ce-node: type a prompt and press Enter (Ctrl-D ends); set ce.http.port to serve HTTP instead\n";
      for (std::string line; std::getline(std::cin, line);)
        if (!line.empty()) ok = answer(line) && ok;
    }
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::cerr << "ce-node: " << e.what() << "\n";
    return 1;
  }
}
