// ce-bench-load: the cloud alone under N simulated edges (tools/bench/load.hpp), one JSON line per
// session count. The cloud node runs apart (scripts/bench-load starts one batched and one with
// ce.batch.max-sessions = 1, the one-job-at-a-time baseline, and interleaves them).
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "model/runtime.hpp"
#include "model/text/tokenizer.hpp"
#include "tools/bench/load.hpp"
#include "tools/cli.hpp"

int main(int argc, char** argv) {
  ce::cli::Parser cli("ce-bench-load",
                      "Replays edge traffic (uploads of split-layer states, infer requests at the offload pattern of "
                      "θ on a text) from N concurrent sessions against a running cloud node, without edge compute; "
                      "prints one JSON line per session count: offloaded tokens/s, request round trip p50/p99/max over all requests, p50/max of each session's first (its prompt's catch-up) and p50/p99 of the later ones.");
  cli.add("host", "HOST", "the cloud node's address", "127.0.0.1")
      .add("port", "PORT", "the cloud node's port (ce.listen.port)")
      .add("nodes", "LIST", "several cloud nodes instead, \"host:port,host:port\": each session goes to one by "
                            "rendezvous hashing, as edges place it")
      .add("model", "DIR", "the cloud's model (for the traffic and the Hello)", "models/ce-brown-8l")
      .add("text", "FILE", "text the simulated edges generate along (teacher-forced)", "data/brown/test.txt")
      .add("threshold", "θ", "the edges' exit threshold; above 1 every position goes to the cloud (default: the model's)")
      .add("prompt", "N", "positions each session uploads before its first request", "16")
      .add("positions", "N", "positions per session (prompt included)", "128")
      .add("sessions", "LIST", "comma-separated session counts, run in turn", "1,2,4,8,16,32,64")
      .add("catch-up", "N", "also run one session that uploads N positions and asks once, beside the others", "0")
      .add("deadline", "MS", "deadline of each request", "60000")
      .add("tag", "TEXT", "copied into every line");
  cli.parse(argc, argv);
  std::vector<ce::CloudAddress> clouds;
  if (cli.has("nodes")) {
    try {
      clouds = ce::parse_cloud_nodes(cli.get("nodes"));
    } catch (const ce::ConfigError& e) {
      cli.fail(std::string("--nodes: ") + e.what());
    }
  } else {
    if (!cli.has("port")) cli.fail("--port (or --nodes) is required: the running cloud node's ce.listen.port");
    const long long port = cli.get_int("port");
    if (port < 1 || port > 65535) cli.fail("--port must be in 1..65535");
    clouds.push_back({cli.get("host"), static_cast<uint16_t>(port)});
  }
  try {
    const auto model = ce::Model::load(cli.get("model"));
    std::ifstream in(cli.get("text"));
    if (!in) cli.fail("--text: cannot read " + cli.get("text"));
    std::stringstream text;
    text << in.rdbuf();
    auto tokens = ce::open_tokenizer(model->tokenizer_path())->encode(text.str());
    tokens.insert(tokens.begin(), static_cast<int32_t>(model->config().bos_id));
    const auto positions = static_cast<size_t>(cli.get_int("positions"));
    const auto catch_up = static_cast<uint32_t>(cli.get_int("catch-up"));
    const size_t needed = std::max<size_t>(positions, catch_up);
    if (needed > static_cast<size_t>(model->config().max_seq)) cli.fail("--positions / --catch-up beyond max_seq");
    if (tokens.size() < needed) cli.fail("--text holds " + std::to_string(tokens.size()) + " tokens, fewer than needed");
    tokens.resize(needed);
    const double threshold = cli.has("threshold") ? cli.get_double("threshold") : model->config().default_threshold;
    auto trace = ce::bench::make_trace(model, tokens, static_cast<uint32_t>(cli.get_int("prompt")), threshold);
    const auto offloaded = trace.offloaded_count(static_cast<uint32_t>(positions));
    uint64_t base = 1;
    for (const auto n : cli.get_int_list("sessions")) {
      if (n < 1) cli.fail("--sessions needs positive counts");
      ce::bench::LoadOptions o;
      o.clouds = clouds;
      o.sessions = static_cast<int>(n);
      o.session_base = base;
      base += static_cast<uint64_t>(n) + 1;
      o.deadline = std::chrono::milliseconds(cli.get_int("deadline"));
      o.positions = static_cast<uint32_t>(positions);  // the catch-up session alone goes further
      o.catch_up = catch_up;
      const auto r = ce::bench::run_load(trace, o);
      std::cout << std::fixed << std::setprecision(3) << "{\"tag\":\"" << cli.get("tag") << "\",\"sessions\":" << n
                << ",\"threshold\":" << threshold << ",\"offloaded_per_session\":" << offloaded
                << ",\"requests\":" << r.requests << ",\"errors\":" << r.errors << ",\"seconds\":" << r.seconds
                << ",\"tokens_per_s\":" << r.tokens_per_s << ",\"p50_ms\":" << r.p50_ms << ",\"p99_ms\":" << r.p99_ms
                << ",\"max_ms\":" << r.max_ms << ",\"first_p50_ms\":" << r.first_p50_ms
                << ",\"first_max_ms\":" << r.first_max_ms << ",\"next_p50_ms\":" << r.next_p50_ms
                << ",\"next_p99_ms\":" << r.next_p99_ms << ",\"catch_up\":" << catch_up << ",\"catch_up_ms\":" << r.catch_up_ms
                << ",\"clouds\":" << clouds.size() << ",\"sessions_per_cloud\":[";
      for (size_t i = 0; i < r.sessions_per_cloud.size(); ++i) std::cout << (i ? "," : "") << r.sessions_per_cloud[i];
      std::cout << "]}" << std::endl;
      if (r.errors) std::cerr << "ce-bench-load: " << r.errors << " requests failed, first: " << r.first_error << "\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "ce-bench-load: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
