#include "actors/http/http_api.hpp"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "actors/atoms.hpp"
#include "actors/edge/exit_policy.hpp"
#include "actors/http/completion_request.hpp"
#include "actors/http/http_server.hpp"
#include "actors/log.hpp"
#include "actors/http/metrics.hpp"
#include "actors/http/stats_json.hpp"
#include "actors/http/wait_queue.hpp"
#include "actors/http/web_routes.hpp"
#include "actors/node/node.hpp"
#include "model/text/chat_template.hpp"
#include "model/text/detokenizer.hpp"
#include "model/runtime.hpp"
#include "model/text/tokenizer.hpp"

namespace ce {
namespace {

using json = nlohmann::json;

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(to_json(e), "application/json");
}

// The two OpenAI endpoints that generate: they differ only in the prompt and the response shape.
enum class Endpoint { completions, chat };

std::string completion_id(Endpoint endpoint) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[40];
  std::snprintf(buf, sizeof buf, "%s-%016llx", endpoint == Endpoint::chat ? "chatcmpl" : "cmpl",
                static_cast<unsigned long long>(rng()));
  return buf;
}

// A fresh seed for a sampled request that names none. Below 2^53, so that a client can send it
// back as `seed` exactly, JavaScript's numbers included, to draw the same tokens again.
int64_t draw_seed() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return static_cast<int64_t>(rng() >> 11);
}

const char* openai_finish_reason(FinishReason r, bool stop_string_hit) {
  if (stop_string_hit) return "stop";
  switch (r) {
    case FinishReason::eos: return "stop";
    case FinishReason::error: return "error";
    default: return "length";
  }
}

json token_json(const TokenEvent& ev) {
  return {{"id", ev.token}, {"source", to_string(ev.source)}, {"layer", ev.layer}, {"confidence", ev.confidence}};
}

// One completion as it is generated: the decoded continuation, the stop strings, and how much
// of it has been streamed.
struct CompletionRun {
  size_t prompt_length;
  Detokenizer detokenizer;        // prompt as context: the text is what decoding adds to it
  std::vector<std::string> stop;
  std::vector<TokenEvent> events;
  std::vector<size_t> offsets;    // where each event's text starts in `text` (bytes; past a cut: its end)
  std::string text;               // the completion so far (cut at a stop string once one appears)
  bool stop_hit = false;
  size_t streamed = 0;            // bytes of text already sent
  size_t events_streamed = 0;

  CompletionRun(const Tokenizer& t, std::vector<int32_t> prompt, std::vector<std::string> stops)
      : prompt_length(prompt.size()), detokenizer(t, std::move(prompt)), stop(std::move(stops)) {}

  // Returns false when a stop string ends the response.
  bool add(const TokenEvent& ev) {
    if (stop_hit) return false;
    events.push_back(ev);
    offsets.push_back(detokenizer.text().size());
    detokenizer.push(ev.token);
    text = detokenizer.text();
    if (auto at = find_stop(text, stop); at != std::string::npos) {
      text.resize(at);
      stop_hit = true;
      return false;
    }
    return true;
  }
  // How far the text can be streamed now: whole UTF-8 characters, nothing that may yet turn
  // out to be the start of a stop string.
  size_t streamable() const {
    if (stop_hit) return text.size();
    size_t end = complete_utf8_prefix(text);
    end -= stop_prefix_overlap(text.substr(0, end), stop);
    return std::max(end, streamed);
  }
  size_t completion_tokens() const { return events.size(); }
  size_t tokens_from(TokenSource source) const {
    return static_cast<size_t>(
        std::count_if(events.begin(), events.end(), [source](const TokenEvent& ev) { return ev.source == source; }));
  }
  // Tokens that needed the cloud: answered by it, or by the edge standing in for it.
  size_t offloaded() const { return events.size() - tokens_from(TokenSource::edge_exit); }
};

// Each token's text as it reads inside a text, the same wherever the token appears, for
// logprobs: a chosen token's string must equal its key among the alternatives (clients compare
// them to tell whether a token was the greedy one). Decoding a token alone would drop the leading
// space of a SentencePiece word piece (" jury" -> "jury"), so each is decoded after an anchor token
// and the anchor's text taken off. Computed once per token, on demand; safe across threads.
class TokenTexts {
 public:
  explicit TokenTexts(const Tokenizer& tokenizer)
      : tokenizer_(tokenizer), texts_(static_cast<size_t>(std::max(0, tokenizer.vocab_size()))) {
    const auto ids = tokenizer.encode("a");
    if (!ids.empty()) {
      anchor_ = ids.back();
      anchor_text_ = tokenizer.decode({anchor_});
    }
  }
  std::string operator()(int32_t id) {
    if (id < 0 || static_cast<size_t>(id) >= texts_.size()) return "";  // a padded id the tokenizer lacks
    std::lock_guard<std::mutex> lock(mutex_);
    auto& text = texts_[static_cast<size_t>(id)];
    if (!text) {
      const std::string with_anchor = anchor_ >= 0 ? tokenizer_.decode({anchor_, id}) : std::string();
      text = anchor_ >= 0 && with_anchor.compare(0, anchor_text_.size(), anchor_text_) == 0
                 ? with_anchor.substr(anchor_text_.size())
                 : tokenizer_.decode({id});
    }
    return *text;
  }

 private:
  const Tokenizer& tokenizer_;
  int32_t anchor_ = -1;
  std::string anchor_text_;
  std::mutex mutex_;
  std::vector<std::optional<std::string>> texts_;
};

// Characters (code points) in text's first `bytes` bytes: OpenAI's text_offset counts characters.
size_t code_points(const std::string& text, size_t bytes) {
  bytes = std::min(bytes, text.size());
  return static_cast<size_t>(std::count_if(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(bytes),
                                           [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

// One token of a choice's logprobs: the figures of the head that scored it (null for the first
// token of a sequence: nothing precedes it) and where its text starts in the choice's text.
struct ScoredToken {
  int32_t id = 0;
  const Logprobs* logprobs = nullptr;
  size_t text_offset = 0;  // bytes
};

// /v1/completions' shape: parallel arrays; top_logprobs maps each alternative's text to its
// logprob (the more likely one kept where two tokens read the same).
json completion_logprobs(const std::vector<ScoredToken>& tokens, const std::string& text, TokenTexts& texts) {
  json strings = json::array(), values = json::array(), tops = json::array(), offsets = json::array();
  for (const auto& t : tokens) {
    strings.push_back(texts(t.id));
    offsets.push_back(code_points(text, t.text_offset));
    if (!t.logprobs) {
      values.push_back(nullptr);
      tops.push_back(nullptr);
      continue;
    }
    values.push_back(t.logprobs->logprob);
    json top = json::object();
    for (const auto& alt : t.logprobs->top) {
      const std::string key = texts(alt.token);
      if (!top.contains(key)) top[key] = alt.logprob;
    }
    tops.push_back(std::move(top));
  }
  return {{"tokens", std::move(strings)}, {"token_logprobs", std::move(values)}, {"top_logprobs", std::move(tops)},
          {"text_offset", std::move(offsets)}};
}

// /v1/chat/completions' shape: one object per token, alternatives most likely first, each with its
// UTF-8 bytes (a character split over byte tokens is whole only once they are joined).
json chat_logprobs(const std::vector<ScoredToken>& tokens, TokenTexts& texts) {
  const auto entry = [&](int32_t id, float logprob) {
    const std::string text = texts(id);
    json bytes = json::array();
    for (unsigned char c : text) bytes.push_back(static_cast<int>(c));
    return json{{"token", text}, {"logprob", logprob}, {"bytes", std::move(bytes)}};
  };
  json content = json::array();
  for (const auto& t : tokens) {
    json e = entry(t.id, t.logprobs ? t.logprobs->logprob : 0.0f);
    json top = json::array();
    if (t.logprobs)
      for (const auto& alt : t.logprobs->top) top.push_back(entry(alt.token, alt.logprob));
    e["top_logprobs"] = std::move(top);
    content.push_back(std::move(e));
  }
  return {{"content", std::move(content)}, {"refusal", nullptr}};
}

// What a completion with echo puts before its text: the prompt as the client sent it, and the
// prompt tokens echoed: the client's own, not a BOS the server put before them (a client that
// sends token ids counts its prompt in them, as likelihood evaluations do).
struct Echo {
  bool on = false;
  std::string text;
  size_t first_token = 0;  // prompt tokens before this one were added by the server
};

// The echoed prompt tokens with their logprobs (GenerateResult::prompt_logprobs, for positions
// 1..P-1) and where each starts in the echoed text.
std::vector<ScoredToken> prompt_scores(const std::vector<int32_t>& prompt, const Echo& echo, const GenerateResult& r,
                                       const Tokenizer& tokenizer) {
  std::vector<ScoredToken> out;
  const auto first = prompt.begin() + static_cast<std::ptrdiff_t>(echo.first_token);
  Detokenizer detokenizer(tokenizer, std::vector<int32_t>(prompt.begin(), first));
  for (size_t p = echo.first_token; p < prompt.size(); ++p) {
    ScoredToken t{prompt[p], nullptr, detokenizer.text().size()};
    if (p > 0 && p - 1 < r.prompt_logprobs.size()) t.logprobs = &r.prompt_logprobs[p - 1].logprobs;
    detokenizer.push(prompt[p]);
    out.push_back(t);
  }
  return out;
}

constexpr const char* kTokens = "ce_tokens_total";
constexpr const char* kResponses = "ce_responses_total";
constexpr const char* kUploadBytes = "ce_upload_bytes_total";
constexpr const char* kInlineBytes = "ce_inline_bytes_total";
constexpr const char* kOffload = "ce_offload_share";
constexpr const char* kRoundTrip = "ce_cloud_round_trip_seconds";
constexpr const char* kFallbackTokens = "ce_fallback_tokens_total";
constexpr const char* kFallbackResponses = "ce_fallback_responses_total";
constexpr const char* kEvictionsSeen = "ce_evictions_seen_total";
constexpr const char* kRequests = "ce_http_requests_total";
constexpr const char* kInFlight = "ce_http_requests_in_flight";
constexpr const char* kWaiting = "ce_http_requests_waiting";
// Request latencies and counts as vLLM reports them (vllm:time_to_first_token_seconds, ...).
constexpr const char* kQueueTime = "ce_request_queue_time_seconds";
constexpr const char* kTimeToFirstToken = "ce_time_to_first_token_seconds";
constexpr const char* kInterTokenLatency = "ce_inter_token_latency_seconds";
constexpr const char* kEndToEnd = "ce_e2e_request_latency_seconds";
constexpr const char* kPromptTokens = "ce_prompt_tokens_total";
constexpr const char* kGenerationTokens = "ce_generation_tokens_total";
constexpr const char* kFinished = "ce_requests_finished_total";
constexpr const char* kRefused = "ce_requests_refused_total";

using Clock = std::chrono::steady_clock;
double seconds_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

const char* endpoint_name(Endpoint e) { return e == Endpoint::chat ? "chat" : "completions"; }

// How a response ended, for ce_requests_finished_total: stop (EOS or a stop string), length,
// cancelled (the client left), error.
const char* finished_reason(const GenerateResult& r, const CompletionRun& run) {
  if (run.stop_hit) return "stop";
  if (!r.error.empty() && run.events.empty()) return "error";
  switch (r.finish_reason) {
    case FinishReason::eos: return "stop";
    case FinishReason::cancelled: return "cancelled";
    case FinishReason::error: return "error";
    default: return "length";
  }
}

// One admitted completion's clock: arrival (the handler's start, before the queue), the time it
// waited, and its tokens' times for time-to-first-token and inter-token latency.
struct RequestClock {
  Clock::time_point arrival;
  double queue_seconds = 0;
  Clock::time_point last_token{};
  bool first_token_seen = false;
  void token(Metrics& metrics) {
    const auto now = Clock::now();
    if (!first_token_seen) metrics.observe(kTimeToFirstToken, seconds_between(arrival, now));
    else metrics.observe(kInterTokenLatency, seconds_between(last_token, now));
    first_token_seen = true;
    last_token = now;
  }
};

// The limits of the HTTP server's connections from the config (see http_server.hpp). Every
// admitted connection has its own thread, so the queue is real: max_total leaves room for the
// running and the waiting completions, one address at its cap, and probes besides.
ConnectionLimits connection_limits(const NodeConfig& c) {
  ConnectionLimits l;
  l.read_timeout = c.http_read_timeout;
  l.read_budget = (1 << 20) + (64 << 10);  // the body limit (set_payload_max_length) + a head
  l.max_per_address = c.http_max_connections_per_address;
  l.max_total = c.http_max_concurrent + c.http_queue + c.http_max_connections_per_address + 8;
  return l;
}

}  // namespace

struct HttpApi::Impl {
  Node& node;
  const NodeConfig& config;
  const bool edge, cloud;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<TokenTexts> token_texts;     // each token's text, for logprobs
  std::set<std::string> api_keys;               // any of them admits a request; none: no auth
  std::unique_ptr<ChatTemplate> chat_template;  // null: the model has none (or it did not parse)
  std::string no_chat_reason;                   // why chat_template is null
  CompletionDefaults defaults;
  Metrics metrics;
  WaitQueue queue;  // ce.http.max-concurrent running, ce.http.queue waiting
  std::atomic<uint64_t> tokens_total{0}, tokens_offloaded{0};
  std::mutex latency_mutex;  // the mean end-to-end latency, for Retry-After
  double e2e_seconds_sum = 0;
  uint64_t e2e_count = 0;
  const int64_t created = static_cast<int64_t>(std::time(nullptr));
  GuardedServer server;
  std::thread thread;
  uint16_t port = 0;

  explicit Impl(Node& n)
      : node(n),
        config(n.config()),
        edge(n.config().role != Role::cloud),
        cloud(n.config().role != Role::edge),
        queue(n.config().http_max_concurrent, n.config().http_queue),
        server(connection_limits(n.config())) {
    const auto& mc = node.model().config();
    if (edge) {
      tokenizer = open_tokenizer(node.model().tokenizer_path());
      token_texts = std::make_unique<TokenTexts>(*tokenizer);
      defaults = {mc.name, config.max_tokens, config.temperature, config.top_p, draw_seed, static_cast<int>(mc.vocab_size)};
      load_chat_template();
    }
    load_api_keys();
    declare_metrics();
    routes();
    server.set_payload_max_length(1 << 20);
    // httplib's default adds SO_REUSEPORT, which lets a second node bind the same port and
    // silently take half the requests; a taken port must be an error instead.
    server.set_socket_options([](socket_t sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    });
    // An idle keep-alive connection holds a thread: keep that short. (A request's read time is
    // bounded by ce.http.read-timeout in the GuardedServer, not by httplib's per-recv timeout.)
    server.set_keep_alive_timeout(2);
    // A node whose config has no HTTP port (-1) still gets one when a caller builds the API.
    int bound = config.http_port <= 0 ? server.bind_to_any_port(config.http_host)
                                      : (server.bind_to_port(config.http_host, config.http_port) ? config.http_port : -1);
    if (bound <= 0)
      throw std::runtime_error("cannot serve HTTP on " + config.http_host + ":" + std::to_string(config.http_port) +
                               " (ce.http.host / ce.http.port): address in use or not available");
    port = static_cast<uint16_t>(bound);
    server.widen_backlog();
    thread = std::thread([this] { server.listen_after_bind(); });
    // Server::stop() is a no-op until the accept loop runs: wait for it, so that a quick
    // destruction cannot leave the thread in accept() forever.
    for (int i = 0; i < 500 && !server.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    CE_LOG(info, "http", "HTTP API on http://" << config.http_host << ":" << port
                                               << (edge ? " (/v1/completions, /v1/chat/completions, /v1/models, " : " (")
                                               << "/health, /metrics)");
    if (edge && api_keys.empty() && config.http_host != "127.0.0.1" && config.http_host != "localhost")
      CE_LOG(warning, "http", "the completions API listens on " << config.http_host
                                                               << " without ce.http.api-key: anyone who reaches it can use it");
  }

  // The keys of ce.http.api-key, of the file ce.http.api-key-file (one per line, # comments) and of
  // $CE_HTTP_API_KEYS (comma-separated): keys kept out of the INI file, and several of them.
  void load_api_keys() {
    const auto add = [&](std::string key) {
      key.erase(0, key.find_first_not_of(" \t\r"));
      key.erase(key.find_last_not_of(" \t\r") + 1);
      if (!key.empty() && key[0] != '#') api_keys.insert(key);
    };
    add(config.http_api_key);
    if (!config.http_api_key_file.empty()) {
      std::ifstream in(config.http_api_key_file);
      if (!in) throw std::runtime_error("ce.http.api-key-file = " + config.http_api_key_file + ": cannot read it");
      for (std::string line; std::getline(in, line);) add(line);
    }
    if (const char* env = std::getenv("CE_HTTP_API_KEYS")) {
      std::stringstream keys(env);
      for (std::string key; std::getline(keys, key, ',');) add(key);
    }
    if (!api_keys.empty()) CE_LOG(info, "http", api_keys.size() << " API key(s) admit requests");
  }

  // A template that does not parse leaves /v1/completions working and makes chat answer 400 with
  // the reason (logged once here).
  void load_chat_template() {
    try {
      const auto source = read_chat_template(node.model().dir());
      if (source.empty()) {
        no_chat_reason = "this model has no chat template (no chat_template in " + node.model().dir() +
                         "/tokenizer_config.json): it is a base model; use /v1/completions with a plain-text prompt";
        return;
      }
      chat_template = std::make_unique<ChatTemplate>(source);
    } catch (const std::exception& e) {
      no_chat_reason = std::string("this model's chat template does not parse: ") + e.what();
      CE_LOG(warning, "http", no_chat_reason);
    }
  }

  // Stops accepting; requests waiting in the queue get 503, idle and reading connections close,
  // running responses finish.
  ~Impl() {
    queue.close();
    server.begin_stop();
    if (thread.joinable()) thread.join();
    server.shutdown_connections();
  }

  void declare_metrics() {
    metrics.declare_counter(kRequests, "HTTP requests served, by path and status code");
    metrics.declare_gauge("ce_process_resident_bytes", "resident memory of this node process");
    metrics.declare_counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.");
    metrics.declare_gauge("process_resident_memory_bytes", "Resident memory size in bytes.");
    metrics.declare_gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.");
    metrics.declare_gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.");
    metrics.declare_gauge("process_open_fds", "Number of open file descriptors.");
    metrics.declare_gauge("process_max_fds", "Maximum number of open file descriptors.");
    metrics.declare_gauge("ce_http_connections_open", "HTTP connections open now");
    metrics.declare_counter("ce_http_connections_total",
                            "HTTP connections by how they were taken (accepted; refused_per_address: over "
                            "ce.http.max-connections-per-address; refused_total: over the server's connection cap)");
    metrics.declare_counter("ce_http_read_timeouts_total",
                            "requests cut off with 408: head and body not read within ce.http.read-timeout");
    if (edge) {
      metrics.declare_gauge(kInFlight, "completions being generated now");
      metrics.declare_gauge(kWaiting, "completions waiting in the queue for a slot (ce.http.queue)");
      metrics.declare_histogram(kQueueTime, "time a completion waited in the queue before it started",
                                {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120});
      metrics.declare_histogram(kTimeToFirstToken, "time from a completion's arrival (queue included) to its first token",
                                {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10,
                                 20, 40, 80});
      metrics.declare_histogram(kInterTokenLatency, "time between a completion's successive tokens",
                                {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                                 1, 2.5, 5, 7.5, 10});
      metrics.declare_histogram(kEndToEnd, "time from a completion's arrival (queue included) to its last token",
                                {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240,
                                 480});
      metrics.declare_counter(kPromptTokens, "prompt tokens of the completions run");
      metrics.declare_counter(kGenerationTokens, "tokens the completions generated (as their usage counts them)");
      metrics.declare_counter(kFinished, "completions run, by endpoint and how they ended (stop: end of sequence or "
                                         "a stop string; length; cancelled: the client left; error)");
      metrics.declare_counter(kRefused, "completions not run, by endpoint and why (queue_full, queue_timeout, "
                                        "client_left: it left while queued, shutdown)");
      metrics.declare_counter(kResponses, "completions finished, by inference mode and how they ended (length, eos, "
                                          "stop string, cancelled by a client that left, error)");
      metrics.declare_counter(kTokens, "generated tokens by where they came from (edge exit layer, cloud, degraded)");
      metrics.declare_gauge(kOffload, "share of generated tokens that needed the cloud (cloud + degraded) since start");
      metrics.declare_counter(kUploadBytes, "split-layer state bytes uploaded to the cloud");
      metrics.declare_counter(kInlineBytes, "bytes sent inside infer requests (naive-split baseline)");
      metrics.declare_gauge("ce_upload_backlog_positions", "positions uploaded and not yet acknowledged by the cloud");
      metrics.declare_gauge("ce_cloud_connected", "1 when the link to at least one cloud node is up");
      metrics.declare_counter("ce_cloud_failovers_total", "sessions moved to another cloud node after theirs failed");
      metrics.declare_counter("ce_cloud_replayed_positions_total", "positions re-sent to a cloud that lost or took over a session");
      metrics.declare_gauge("ce_cloud_node_up", "1 when the link to this cloud node is up");
      metrics.declare_gauge("ce_cloud_node_sessions", "open sessions of this edge placed on this cloud node");
      metrics.declare_counter("ce_cloud_node_placed_total", "sessions this edge placed on this cloud node");
      metrics.declare_histogram(kRoundTrip, "latency of tokens answered by the cloud (edge compute + round trip)",
                                {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10});
      metrics.declare_counter(kFallbackTokens, "tokens the edge's last exit produced because the cloud failed");
      metrics.declare_counter(kFallbackResponses, "completions that fell back to standalone for some tokens");
      metrics.declare_counter(kEvictionsSeen, "times the cloud had lost a session (evicted, restarted) and the edge rebuilt it");
      metrics.declare_counter("ce_cloud_requests_total", "infer requests sent to the cloud (speculative ones included)");
      metrics.declare_counter("ce_speculation_positions_total",
                              "positions computed ahead of the cloud's answer, by outcome (confirmed, rolled_back)");
      metrics.declare_counter("ce_speculation_blocking_round_trips_total",
                              "waits for the cloud with nothing left to compute");
      metrics.declare_counter("ce_upload_wasted_bytes_total", "uploaded bytes of positions a rollback dropped");
    }
    if (cloud) {
      metrics.declare_gauge("ce_cloud_contexts_live", "client contexts held");
      metrics.declare_counter("ce_cloud_evictions_total", "contexts ended (inactivity, Bye, failure)");
      metrics.declare_counter("ce_cloud_sessions_refused_total", "new contexts refused at the context-count or memory cap");
      metrics.declare_counter("ce_cloud_hellos_total", "edge handshakes by result (welcomed, refused)");
      metrics.declare_counter("ce_cloud_connections_total",
                              "connections on the public port by how they went (accepted, over_limit, "
                              "per_address_limit, evicted_pre_handshake, bad_header, handshake_timeout)");
      metrics.declare_gauge("ce_cloud_connections_live", "connections relayed now");
      metrics.declare_counter("ce_cloud_upload_positions_total", "uploaded positions taken into a context");
      metrics.declare_counter("ce_cloud_upload_positions_repeated_total",
                              "uploaded positions a context already held (re-sent after a lost link)");
      metrics.declare_gauge("ce_cloud_context_bytes", "bytes held by client contexts (hidden states + KV cache)");
      metrics.declare_counter("ce_cloud_infer_requests_total", "infer requests by client (the edge's Hello name)");
      metrics.declare_counter("ce_cloud_batch_steps_total", "batched cloud steps run");
      metrics.declare_counter("ce_cloud_batch_sessions_total",
                              "sessions summed over the batched steps (divided by the steps: the mean batch size)");
      metrics.declare_counter("ce_cloud_batch_rows_total", "positions computed by the batched steps");
      metrics.declare_gauge("ce_cloud_batch_max_sessions", "the largest batch so far, in sessions");
      metrics.declare_counter("ce_cloud_batch_step_seconds_total", "time spent in batched steps");
      metrics.declare_counter("ce_cloud_batch_gathers_total",
                              "steps that waited for sessions the step before answered (ce.batch.gather)");
      metrics.declare_counter("ce_cloud_batch_gather_seconds_total", "time steps waited for returning sessions");
      metrics.declare_gauge("ce_cloud_queue_depth", "infer jobs waiting for the next batched step");
      metrics.declare_counter("ce_cloud_truncates_total", "Truncate frames served (wrong speculations of edges)");
      metrics.declare_counter("ce_cloud_positions_rolled_back_total",
                              "computed positions that truncates dropped (wasted cloud work)");
    }
  }

  bool authorized(const httplib::Request& req) const {
    if (api_keys.empty()) return true;
    const std::string header = req.get_header_value("Authorization");
    return header.rfind("Bearer ", 0) == 0 && api_keys.count(header.substr(7)) > 0;
  }

  void routes() {
    server.set_logger([](const httplib::Request& req, const httplib::Response& res) {
      // The access log: one line per request (the request id is appended by log_line). Requests
      // cut off by the read timeout are counted and logged by the server, at most a line per 10 s.
      const auto& cur = GuardedServer::current();
      if (!cur.stream || cur.stream->read_expired()) return;
      char ms[32];
      std::snprintf(ms, sizeof ms, "%.1f", 1000 * seconds_between(cur.stream->started(), Clock::now()));
      CE_LOG(info, "http", (req.method.empty() ? "-" : req.method) << " " << (req.path.empty() ? "-" : req.path) << " "
                                                                    << res.status << " " << ms << " ms client "
                                                                    << cur.stream->address() << ":" << cur.stream->port()
                                                                    << cur.detail);
    });
    // Every response carries the request's id (X-Request-Id as sent, sanitised, or a generated one).
    server.set_pre_routing_handler([](const httplib::Request&, httplib::Response& res) {
      res.set_header("X-Request-Id", GuardedServer::current().request_id);
      return httplib::Server::HandlerResponse::Unhandled;
    });
    server.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      auto& cur = GuardedServer::current();
      if (cur.request_id.empty()) {  // a request refused before its head was read whole
        cur.request_id = sanitize_request_id("");
        set_log_request_id(cur.request_id);
      }
      if (!res.has_header("X-Request-Id")) res.set_header("X-Request-Id", cur.request_id);
      if (cur.stream && cur.stream->read_expired()) {  // httplib answers a failed read 400
        res.set_header("Connection", "close");
        return send_error(res, {408, "the request's head and body did not arrive within ce.http.read-timeout",
                                "invalid_request_error", "", "request_timeout"});
      }
      if (cur.stream && cur.stream->over_budget()) {
        res.set_header("Connection", "close");
        return send_error(res, {413, "the request is too large", "invalid_request_error", "", "request_too_large"});
      }
      if (!res.body.empty()) return;
      ApiError e{res.status, "", res.status == 404 ? "invalid_request_error" : "server_error", "", ""};
      e.message = res.status == 404 ? "Unknown endpoint: " + req.method + " " + req.path
                                    : "HTTP " + std::to_string(res.status);
      res.set_content(to_json(e), "application/json");
    });
    server.set_exception_handler([](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown error";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      CE_LOG(error, "http", req.method << " " << req.path << " failed: " << what);
      send_error(res, ApiError{500, "internal error: " + what, "server_error", "", ""});
    });
    server.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(dump(health()), "application/json");
    });
    server.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics_text(), "text/plain; version=0.0.4; charset=utf-8");
    });
    // GET / and CORS (web_routes.hpp); requests counted as their answers go out, before the client
    // has them (the logger above runs after the write).
    install_web_routes(server, config.http_cors_origins, /*serve_page=*/edge,
                       [this](const httplib::Request& req, const httplib::Response& res) {
                         static const std::set<std::string> known = {"/v1/completions", "/v1/chat/completions",
                                                                     "/v1/models",      "/health",
                                                                     "/metrics",        "/tokenize",
                                                                     "/detokenize"};
                         metrics.add(kRequests, 1,
                                     {{"path", known.count(req.path) ? req.path : "other"},
                                      {"code", std::to_string(res.status)}});
                       });
    if (!edge) return;
    server.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
      if (!authorized(req)) return unauthorized(res);
      res.set_content(dump({{"object", "list"}, {"data", json::array({model_json()})}}), "application/json");
    });
    server.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      if (!authorized(req)) return unauthorized(res);
      const std::string id = req.matches[1];
      if (id != node.model().config().name)
        return send_error(res, {404, "The model '" + id + "' does not exist; this server serves '" +
                                         node.model().config().name + "'",
                                "invalid_request_error", "model", "model_not_found"});
      res.set_content(dump(model_json()), "application/json");
    });
    // llama-server's shapes: {"content", "add_special", "with_pieces"} -> {"tokens"}, and back.
    server.Post("/tokenize", [this](const httplib::Request& req, httplib::Response& res) { tokenize(req, res); });
    server.Post("/detokenize", [this](const httplib::Request& req, httplib::Response& res) { detokenize(req, res); });
    server.Post("/v1/completions",
                [this](const httplib::Request& req, httplib::Response& res) { completions(req, res); });
    server.Post("/v1/chat/completions",
                [this](const httplib::Request& req, httplib::Response& res) { chat_completions(req, res); });
  }

  json model_json() const {
    const auto& mc = node.model().config();
    return {{"id", mc.name},
            {"object", "model"},
            {"created", created},
            {"owned_by", "cecollm"},
            {"x_ce",
             {{"layers", mc.n_layers},
              {"exit_layers", mc.exit_layers},
              {"split_layer", config.split_layer},
              {"weights_hash", node.model().weights_hash()},
              {"max_context", mc.max_seq},
              {"default_threshold", config.exit_threshold},
              {"mode", to_string(config.mode)}}}};
  }

  // The body as a JSON object, or a 400 already sent.
  std::optional<json> json_body(const httplib::Request& req, httplib::Response& res) {
    try {
      json body = json::parse(req.body);
      if (body.is_object()) return body;
    } catch (const json::parse_error&) {
    }
    send_error(res, {400, "the body must be a JSON object", "invalid_request_error", "", ""});
    return std::nullopt;
  }

  void tokenize(const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req)) return unauthorized(res);
    const auto body = json_body(req, res);
    if (!body) return;
    const auto content = body->find("content");
    if (content == body->end() || !content->is_string())
      return send_error(res, {400, "'content' must be a string", "invalid_request_error", "content", ""});
    const auto flag = [&](const char* name) {
      const auto it = body->find(name);
      return it != body->end() && it->is_boolean() && it->get<bool>();
    };
    const auto ids = flag("add_special") ? encode_prompt(*tokenizer, node.model().config().bos_id, content->get<std::string>())
                                         : tokenizer->encode(content->get<std::string>());
    json tokens = json::array();
    for (auto id : ids) {
      if (flag("with_pieces")) tokens.push_back({{"id", id}, {"piece", tokenizer->decode({id})}});
      else tokens.push_back(id);
    }
    res.set_content(dump({{"tokens", tokens}}), "application/json");
  }

  void detokenize(const httplib::Request& req, httplib::Response& res) {
    if (!authorized(req)) return unauthorized(res);
    const auto body = json_body(req, res);
    if (!body) return;
    const auto tokens = body->find("tokens");
    std::vector<int32_t> ids;
    const auto vocab = tokenizer->vocab_size();
    if (tokens != body->end() && tokens->is_array())
      for (const auto& t : *tokens) {
        if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= vocab)
          return send_error(res, {400, "'tokens' must hold token ids in [0, " + std::to_string(vocab) + ")",
                                  "invalid_request_error", "tokens", ""});
        ids.push_back(t.get<int32_t>());
      }
    else
      return send_error(res, {400, "'tokens' must be an array of token ids", "invalid_request_error", "tokens", ""});
    res.set_content(dump({{"content", tokenizer->decode(ids)}}), "application/json");
  }

  void unauthorized(httplib::Response& res) {
    send_error(res, ApiError{401, "Incorrect API key provided (send 'Authorization: Bearer KEY')",
                             "invalid_request_error", "", "invalid_api_key"});
  }

  // "degraded" when an edge that needs the cloud has no link: it still answers, standalone.
  json health() {
    json out = {{"status", "ok"}, {"role", to_string(config.role)}, {"model", node.model().config().name}};
    if (cloud) {
      const auto s = node.cloud_stats();
      out["contexts"] = {{"live", s.live}, {"evicted", s.evicted}, {"bytes", s.bytes}, {"refused", s.sessions_refused}};
    }
    if (edge) {
      const LinkStats link = node.link_stats();
      if (!link.connected && strategy_for(config.mode).asks_cloud) out["status"] = "degraded";  // needs its cloud
      out["mode"] = to_string(config.mode);
      out["threshold"] = config.exit_threshold;
      json nodes = json::array();
      for (const auto& n : link.nodes)
        nodes.push_back({{"address", n.name}, {"connected", n.connected}, {"draining", n.load.draining},
                         {"contexts", n.load.live_contexts}, {"sessions_here", n.open_sessions}});
      out["cloud"] = {{"connected", link.connected}, {"upload_backlog", link.queued_positions},
                      {"failovers", link.failovers}, {"nodes", std::move(nodes)}};
      out["requests_in_flight"] = queue.running();
      out["requests_waiting"] = queue.waiting();
    }
    return out;
  }

  std::string metrics_text() {
    const auto p = process_stats();
    metrics.set("ce_process_resident_bytes", static_cast<double>(p.resident_bytes));
    metrics.set("process_cpu_seconds_total", p.cpu_seconds);
    metrics.set("process_resident_memory_bytes", static_cast<double>(p.resident_bytes));
    metrics.set("process_virtual_memory_bytes", static_cast<double>(p.virtual_bytes));
    metrics.set("process_start_time_seconds", p.start_time_seconds);
    metrics.set("process_open_fds", static_cast<double>(p.open_fds));
    metrics.set("process_max_fds", static_cast<double>(p.max_fds));
    const auto c = server.stats();
    metrics.set("ce_http_connections_open", static_cast<double>(c.open));
    metrics.set("ce_http_connections_total", static_cast<double>(c.accepted), {{"result", "accepted"}});
    metrics.set("ce_http_connections_total", static_cast<double>(c.refused_per_address), {{"result", "refused_per_address"}});
    metrics.set("ce_http_connections_total", static_cast<double>(c.refused_total), {{"result", "refused_total"}});
    metrics.set("ce_http_read_timeouts_total", static_cast<double>(c.read_timeouts));
    if (edge) {
      const LinkStats link = node.link_stats();
      metrics.set("ce_cloud_connected", link.connected ? 1 : 0);
      metrics.set("ce_upload_backlog_positions", static_cast<double>(link.queued_positions));
      metrics.set("ce_cloud_failovers_total", static_cast<double>(link.failovers));
      metrics.set("ce_cloud_replayed_positions_total", static_cast<double>(link.replayed_positions));
      for (const auto& n : link.nodes) {
        metrics.set("ce_cloud_node_up", n.connected ? 1 : 0, {{"node", n.name}});
        metrics.set("ce_cloud_node_sessions", static_cast<double>(n.open_sessions), {{"node", n.name}});
        metrics.set("ce_cloud_node_placed_total", static_cast<double>(n.placed), {{"node", n.name}});
      }
      metrics.set(kInFlight, queue.running());
      metrics.set(kWaiting, queue.waiting());
    }
    if (cloud) {
      const auto s = node.cloud_stats();
      metrics.set("ce_cloud_contexts_live", static_cast<double>(s.live));
      metrics.set("ce_cloud_evictions_total", static_cast<double>(s.evicted));
      metrics.set("ce_cloud_context_bytes", static_cast<double>(s.bytes));
      metrics.set("ce_cloud_sessions_refused_total", static_cast<double>(s.sessions_refused));
      metrics.set("ce_cloud_upload_positions_total", static_cast<double>(s.positions_received));
      metrics.set("ce_cloud_upload_positions_repeated_total", static_cast<double>(s.positions_repeated));
      metrics.set("ce_cloud_batch_steps_total", static_cast<double>(s.batching.steps));
      metrics.set("ce_cloud_batch_sessions_total", static_cast<double>(s.batching.sessions));
      metrics.set("ce_cloud_batch_rows_total", static_cast<double>(s.batching.rows));
      metrics.set("ce_cloud_batch_max_sessions", static_cast<double>(s.batching.max_sessions));
      metrics.set("ce_cloud_batch_step_seconds_total", s.batching.step_seconds);
      metrics.set("ce_cloud_batch_gathers_total", static_cast<double>(s.batching.gathers));
      metrics.set("ce_cloud_batch_gather_seconds_total", s.batching.gather_seconds);
      metrics.set("ce_cloud_queue_depth", static_cast<double>(s.batching.queue_depth));
      metrics.set("ce_cloud_truncates_total", static_cast<double>(s.truncates));
      metrics.set("ce_cloud_positions_rolled_back_total", static_cast<double>(s.positions_rolled_back));
      metrics.set("ce_cloud_hellos_total", static_cast<double>(s.edges_welcomed), {{"result", "welcomed"}});
      metrics.set("ce_cloud_hellos_total", static_cast<double>(s.edges_refused), {{"result", "refused"}});
      const auto l = node.listener_stats();
      metrics.set("ce_cloud_connections_total", static_cast<double>(l.accepted), {{"result", "accepted"}});
      metrics.set("ce_cloud_connections_total", static_cast<double>(l.refused_over_limit), {{"result", "over_limit"}});
      metrics.set("ce_cloud_connections_total", static_cast<double>(l.refused_per_address),
                  {{"result", "per_address_limit"}});
      metrics.set("ce_cloud_connections_total", static_cast<double>(l.evicted_pre_handshake),
                  {{"result", "evicted_pre_handshake"}});
      metrics.set("ce_cloud_connections_total", static_cast<double>(l.closed_bad_header), {{"result", "bad_header"}});
      metrics.set("ce_cloud_connections_total", static_cast<double>(l.closed_handshake_timeout),
                  {{"result", "handshake_timeout"}});
      metrics.set("ce_cloud_connections_live", static_cast<double>(l.live));
      for (const auto& [client, requests] : node.cloud_requests_by_client())
        metrics.set("ce_cloud_infer_requests_total", static_cast<double>(requests), {{"client", client}});
    }
    return metrics.render();
  }

  // A request's end: its end-to-end latency (all its choices), for the histogram and Retry-After.
  void record_end(const RequestClock& clock) {
    const double e2e = seconds_between(clock.arrival, Clock::now());
    metrics.observe(kEndToEnd, e2e);
    std::lock_guard<std::mutex> lock(latency_mutex);
    e2e_seconds_sum += e2e;
    ++e2e_count;
  }

  // One generation (a choice) of a request: how it ended, its tokens, bytes and timings.
  void record(const GenerateResult& r, const CompletionRun& run, Endpoint endpoint, const RequestClock& clock) {
    const char* finish = finished_reason(r, run);
    metrics.add(kFinished, 1, {{"endpoint", endpoint_name(endpoint)}, {"finished_reason", finish}});
    metrics.add(kPromptTokens, static_cast<double>(run.prompt_length));
    metrics.add(kGenerationTokens, static_cast<double>(run.completion_tokens()));
    // The access log line names the edge's generation: the edge's own log lines name it too.
    char detail[160];
    std::snprintf(detail, sizeof detail, " generation %llu, %zu + %zu tokens, %s, queued %.1f ms",
                  static_cast<unsigned long long>(r.generation), run.prompt_length, run.completion_tokens(), finish,
                  1000 * clock.queue_seconds);
    GuardedServer::current().detail = detail;
    const auto& s = r.stats;
    const auto layers = node.model().config().n_layers;
    for (const auto& ev : run.events)
      metrics.add(kTokens, 1, {{"source", to_string(ev.source)}, {"layer", std::to_string(ev.layer)}});
    for (size_t i = 0; i < r.sources.size() && i < s.token_ms.size(); ++i)
      if (r.sources[i] == TokenSource::cloud && r.layers[i] == layers) metrics.observe(kRoundTrip, s.token_ms[i] / 1000.0);
    const uint64_t total = tokens_total += run.events.size();
    const uint64_t needed_cloud = tokens_offloaded += run.offloaded();
    if (total) metrics.set(kOffload, static_cast<double>(needed_cloud) / static_cast<double>(total));
    metrics.add(kUploadBytes, static_cast<double>(s.bytes_uploaded));
    metrics.add(kInlineBytes, static_cast<double>(s.bytes_inline));
    metrics.add(kFallbackTokens, s.degraded_tokens);
    if (s.degraded_tokens) metrics.add(kFallbackResponses);
    metrics.add(kEvictionsSeen, s.resyncs);
    metrics.add("ce_cloud_requests_total", s.cloud_requests);
    metrics.add("ce_speculation_positions_total", s.speculated - s.rolled_back, {{"outcome", "confirmed"}});
    metrics.add("ce_speculation_positions_total", s.rolled_back, {{"outcome", "rolled_back"}});
    metrics.add("ce_speculation_blocking_round_trips_total", s.blocking_round_trips);
    metrics.add("ce_upload_wasted_bytes_total", static_cast<double>(s.bytes_wasted));
    metrics.add(kResponses, 1, {{"mode", to_string(s.mode)}, {"finish", run.stop_hit ? "stop" : to_string(r.finish_reason)}});
  }

  // The response's stats, with the token counts of what the client received (a stop string can
  // end the text before the last generated tokens).
  json summary(const GenerateResult& r, const CompletionRun& run, const RequestClock& clock) {
    json out = stats_json(r.stats);
    out["request_id"] = GuardedServer::current().request_id;
    out["generation"] = r.generation;  // the edge's number for this response (in its log lines)
    out["queue_ms"] = 1000 * clock.queue_seconds;
    out["cloud_tokens"] = run.tokens_from(TokenSource::cloud);
    out["degraded_tokens"] = run.tokens_from(TokenSource::degraded);
    out["offload_share"] = run.events.empty() ? 0.0 : double(run.offloaded()) / double(run.events.size());
    if (!r.error.empty()) out["error"] = r.error;
    return out;
  }

  json usage(size_t prompt_tokens, size_t completion_tokens) const {
    return {{"prompt_tokens", prompt_tokens},
            {"completion_tokens", completion_tokens},
            {"total_tokens", prompt_tokens + completion_tokens}};
  }

  // One choice of a response or of a stream's event, in the endpoint's shape: a completion's
  // choice holds "text"; a chat completion's a "message" (whole) or a "delta" (streamed, role in the
  // first).
  json choice_json(Endpoint endpoint, bool streamed, int index, const std::string& text, const char* finish_reason,
                   json logprobs = nullptr, bool first = false) const {
    json choice = {{"index", index},
                   {"logprobs", std::move(logprobs)},
                   {"finish_reason", finish_reason ? json(finish_reason) : json(nullptr)}};
    if (endpoint == Endpoint::completions) {
      choice["text"] = text;
    } else if (!streamed) {
      choice["message"] = {{"role", "assistant"}, {"content", text}};
    } else {
      json delta = json::object();
      if (first) delta["role"] = "assistant";
      if (first || !text.empty()) delta["content"] = text;
      choice["delta"] = std::move(delta);
    }
    return choice;
  }

  json envelope(Endpoint endpoint, bool streamed, const std::string& id, const std::string& model, json choices) const {
    const char* object = endpoint == Endpoint::completions ? "text_completion"
                         : streamed                        ? "chat.completion.chunk"
                                                           : "chat.completion";
    return {{"id", id},
            {"object", object},
            {"created", static_cast<int64_t>(std::time(nullptr))},
            {"model", model},
            {"choices", std::move(choices)}};
  }

  // One event of a stream: one choice's piece.
  json chunk(Endpoint endpoint, const std::string& id, const std::string& model, int index, const std::string& text,
             const char* finish_reason, json logprobs = nullptr, bool first = false) const {
    return envelope(endpoint, true, id, model,
                    json::array({choice_json(endpoint, true, index, text, finish_reason, std::move(logprobs), first)}));
  }

  void completions(const httplib::Request& http_request, httplib::Response& res) {
    if (!authorized(http_request)) return unauthorized(res);
    auto parsed = parse_completion_request(http_request.body, defaults);
    if (auto* e = std::get_if<ApiError>(&parsed)) return send_error(res, *e);
    auto request = std::get<CompletionRequest>(std::move(parsed));
    const auto& mc = node.model().config();
    std::vector<int32_t> prompt;
    Echo echo;
    echo.on = request.echo;
    if (request.prompt_ids.empty()) {
      prompt = encode_prompt(*tokenizer, mc.bos_id, request.prompt);
      echo.first_token = tokenizer->adds_bos() && mc.bos_id >= 0 ? 1 : 0;  // encode_prompt's BOS
      echo.text = request.prompt;  // as sent, as OpenAI echoes it
    } else {  // ids as given, behind the BOS the model expects
      if (tokenizer->adds_bos() && mc.bos_id >= 0 && request.prompt_ids.front() != mc.bos_id) {
        prompt.push_back(static_cast<int32_t>(mc.bos_id));
        echo.first_token = 1;
      }
      prompt.insert(prompt.end(), request.prompt_ids.begin(), request.prompt_ids.end());
      if (echo.on) echo.text = tokenizer->decode(request.prompt_ids);
    }
    generate_and_answer(Endpoint::completions, request, std::move(prompt), echo, res);
  }

  // The conversation rendered by the model's chat template (BOS and role markers are the
  // template's), tokenized as it stands, then generated as a completion.
  void chat_completions(const httplib::Request& http_request, httplib::Response& res) {
    if (!authorized(http_request)) return unauthorized(res);
    auto parsed = parse_chat_request(http_request.body, defaults);
    if (auto* e = std::get_if<ApiError>(&parsed)) return send_error(res, *e);
    auto request = std::get<ChatRequest>(std::move(parsed));
    if (!chat_template)
      return send_error(res, {400, no_chat_reason, "invalid_request_error", "messages", "no_chat_template"});
    std::vector<ChatMessage> messages;
    for (const auto& turn : request.messages) messages.push_back({turn.role, turn.content});
    const auto special = [&](int32_t id) { return id >= 0 ? tokenizer->decode({id}) : std::string(); };
    std::string text;
    try {
      text = chat_template->render(messages, /*add_generation_prompt=*/true,
                                   {{"bos_token", special(tokenizer->bos_id())}, {"eos_token", special(tokenizer->eos_id())}});
    } catch (const std::exception& e) {  // the template's own raise_exception (say, roles that must alternate)
      return send_error(res, {400, std::string("the chat template refused these messages: ") + e.what(),
                              "invalid_request_error", "messages", ""});
    }
    generate_and_answer(Endpoint::chat, request.completion, tokenizer->encode(text), Echo{}, res);
  }

  // Waits in the queue for a slot (FIFO, at most ce.http.queue-timeout); true with a slot held (the
  // caller releases it), false with the refusal answered: 429 and Retry-After for a full queue or
  // a wait that timed out, 503 when the server stops, nothing for a client that left.
  bool admit(Endpoint endpoint, RequestClock& clock, httplib::Response& res) {
    ConnectionStream* stream = GuardedServer::current().stream;
    Clock::duration waited{};
    const auto outcome =
        queue.acquire(config.http_queue_timeout, [stream] { return !stream || stream->peer_alive(); }, &waited);
    clock.queue_seconds = std::chrono::duration<double>(waited).count();
    const auto refused = [&](const char* reason) {
      metrics.add(kRefused, 1, {{"endpoint", endpoint_name(endpoint)}, {"reason", reason}});
      return false;
    };
    switch (outcome) {
      case WaitQueue::Outcome::admitted:
        metrics.observe(kQueueTime, clock.queue_seconds);
        return true;
      case WaitQueue::Outcome::queue_full:
        res.set_header("Retry-After", retry_after());
        send_error(res, {429, "Too many completions: " + std::to_string(queue.max_running()) + " run (ce.http.max-concurrent) and " +
                                  std::to_string(queue.max_waiting()) + " wait (ce.http.queue); retry later",
                         "rate_limit_error", "", "rate_limit_exceeded"});
        return refused("queue_full");
      case WaitQueue::Outcome::timed_out:
        res.set_header("Retry-After", retry_after());
        send_error(res, {429, "No completion slot came free within ce.http.queue-timeout (" +
                                  std::to_string(config.http_queue_timeout.count()) + " ms); retry later",
                         "rate_limit_error", "", "queue_timeout"});
        return refused("queue_timeout");
      case WaitQueue::Outcome::abandoned:
        break;
    }
    if (server.stopping()) {
      send_error(res, {503, "the server is stopping", "server_error", "", "shutting_down"});
      return refused("shutdown");
    }
    res.status = 499;  // nginx's "client closed request": nobody reads it
    return refused("client_left");
  }

  // Seconds until a slot is likely free for one more request: the mean end-to-end latency so far
  // times the requests ahead of it per slot, at least 1, at most 60.
  std::string retry_after() {
    double mean = 0;
    {
      std::lock_guard<std::mutex> lock(latency_mutex);
      if (e2e_count) mean = e2e_seconds_sum / static_cast<double>(e2e_count);
    }
    const double ahead = static_cast<double>(queue.waiting() + queue.running()) / queue.max_running();
    return std::to_string(static_cast<int>(std::clamp(std::ceil(mean * ahead), 1.0, 60.0)));
  }

  // Choice `index` of a request: its own generation, its own seed (seed + index).
  static GenerateRequest generation(const CompletionRequest& request, const std::vector<int32_t>& prompt, const Echo& echo,
                                    int index) {
    GenerateRequest g;
    g.prompt = prompt;
    g.max_tokens = request.max_tokens;
    g.sampling = request.sampling(index);
    g.echo = echo.on && request.logprobs >= 0;  // the prompt's logprobs; plain echo is only text
    g.threshold = request.threshold;
    g.mode = request.mode;
    g.speculate = request.speculate;
    return g;
  }

  // Events [from, to) of a choice as logprob entries; their text starts `prefix` bytes into the
  // choice's text (after an echoed prompt).
  static std::vector<ScoredToken> scored_events(const CompletionRun& run, size_t from, size_t to, size_t prefix) {
    std::vector<ScoredToken> out;
    for (size_t i = from; i < to; ++i) out.push_back({run.events[i].token, &run.events[i].logprobs, prefix + run.offsets[i]});
    return out;
  }

  json logprobs_json(Endpoint endpoint, const std::vector<ScoredToken>& tokens, const std::string& text) {
    return endpoint == Endpoint::chat ? chat_logprobs(tokens, *token_texts) : completion_logprobs(tokens, text, *token_texts);
  }

  // A choice's x_ce: its generation's figures, its seed and, with echo and logprobs, the head that
  // scored each echoed prompt token (x_ce.tokens, added by the caller, names it for each generated one).
  json choice_x_ce(const GenerateResult& r, const CompletionRun& run, const RequestClock& clock,
                   const CompletionRequest& request, int index, const std::vector<int32_t>& prompt, const Echo& echo) {
    json out = summary(r, run, clock);
    out["seed"] = request.choice_seed(index);
    if (echo.on && request.logprobs >= 0) {
      json tokens = json::array();
      for (size_t p = echo.first_token; p < prompt.size(); ++p) {
        const bool scored = p > 0 && p - 1 < r.prompt_logprobs.size();
        tokens.push_back({{"id", prompt[p]},
                          {"source", scored ? json(to_string(r.prompt_logprobs[p - 1].source)) : json(nullptr)},
                          {"layer", scored ? json(r.prompt_logprobs[p - 1].layer) : json(nullptr)}});
      }
      out["prompt_tokens"] = std::move(tokens);
    }
    return out;
  }

  void generate_and_answer(Endpoint endpoint, const CompletionRequest& request, std::vector<int32_t> prompt,
                           const Echo& echo, httplib::Response& res) {
    auto clock = std::make_shared<RequestClock>();
    clock->arrival = Clock::now();
    if (!request.ignored_fields.empty()) {
      std::string names;
      for (const auto& f : request.ignored_fields) names += (names.empty() ? "" : ", ") + f;
      res.set_header("Warning", "299 - \"ignored fields: " + names + "\"");  // RFC 7234's miscellaneous persistent warning
    }
    const auto& mc = node.model().config();
    const auto limit = static_cast<size_t>(mc.max_seq);
    if (prompt.size() >= limit)
      return send_error(res, {400, "The prompt has " + std::to_string(prompt.size()) + " tokens; this model's context is " +
                                       std::to_string(limit) + " tokens",
                              "invalid_request_error", "prompt", "context_length_exceeded"});
    if (prompt.size() + static_cast<size_t>(request.max_tokens) > limit)
      return send_error(res, {400, "This model's maximum context length is " + std::to_string(limit) +
                                       " tokens; the prompt has " + std::to_string(prompt.size()) +
                                       " and max_tokens asks for " + std::to_string(request.max_tokens) +
                                       " more (at most " + std::to_string(limit - prompt.size()) + ")",
                              "invalid_request_error", "max_tokens", "context_length_exceeded"});

    // One slot per request, whatever its n: its choices run one after another in it, so n
    // multiplies the request's time, not the load it puts on the edge and the cloud.
    if (!admit(endpoint, *clock, res)) return;
    // Frees the slot when the response (a streamed one included) is done with.
    auto slot = std::shared_ptr<void>(nullptr, [this](void*) { queue.release(); });
    const std::string id = completion_id(endpoint);
    const json ignored = request.ignored_fields;
    const size_t prefix = echo.on ? echo.text.size() : 0;  // bytes of a choice's text before the completion

    if (!request.stream) {
      json choices = json::array(), choice_figures = json::array();
      size_t completion_tokens = 0;
      for (int index = 0; index < request.n; ++index) {
        CompletionRun run(*tokenizer, prompt, request.stop);
        auto result = node.generate(generation(request, prompt, echo, index), [&](const TokenEvent& ev) {
          clock->token(metrics);
          return run.add(ev);
        });
        record(result, run, endpoint, *clock);
        if (!result.error.empty() && run.events.empty()) {
          record_end(*clock);
          return send_error(res, {503, "no completion: " + result.error, "server_error", "", ""});
        }
        const std::string text = echo.on ? echo.text + run.text : run.text;
        json logprobs = nullptr;
        if (request.logprobs >= 0) {
          auto tokens = echo.on ? prompt_scores(prompt, echo, result, *tokenizer) : std::vector<ScoredToken>{};
          for (const auto& t : scored_events(run, 0, run.events.size(), prefix)) tokens.push_back(t);
          logprobs = logprobs_json(endpoint, tokens, text);
        }
        choices.push_back(choice_json(endpoint, false, index, text, openai_finish_reason(result.finish_reason, run.stop_hit),
                                      std::move(logprobs)));
        json figures = choice_x_ce(result, run, *clock, request, index, prompt, echo);
        json tokens = json::array();
        for (const auto& ev : run.events) tokens.push_back(token_json(ev));
        figures["tokens"] = std::move(tokens);
        if (request.n > 1) figures["index"] = index;
        choice_figures.push_back(std::move(figures));
        completion_tokens += run.completion_tokens();
      }
      record_end(*clock);
      json out = envelope(endpoint, false, id, mc.name, std::move(choices));
      out["usage"] = usage(prompt.size(), completion_tokens);
      // x_ce: the first choice's figures, as with n = 1; with more, every choice's in x_ce.choices.
      out["x_ce"] = choice_figures[0];
      out["x_ce"].erase("index");
      if (request.n > 1) out["x_ce"]["choices"] = std::move(choice_figures);
      if (!ignored.empty()) out["x_ce"]["ignored_fields"] = ignored;
      res.set_content(dump(out), "application/json");
      return;
    }

    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, slot, clock, request, prompt, echo, id, endpoint, ignored, prefix](size_t, httplib::DataSink& sink) {
          const std::string model = node.model().config().name;
          bool client_gone = false, failed = false;
          auto send = [&](const json& event) {
            const std::string line = "data: " + dump(event) + "\n\n";
            if (!client_gone && !sink.write(line.data(), line.size())) client_gone = true;
            return !client_gone;
          };
          size_t completion_tokens = 0;
          for (int index = 0; index < request.n && !client_gone && !failed; ++index) {
            CompletionRun run(*tokenizer, prompt, request.stop);
            // The tokens generated since the last event, as x_ce.tokens and (when asked) logprobs.
            auto attach_pending = [&](json& event) {
              const size_t from = run.events_streamed, to = run.events.size();
              json tokens = json::array();
              for (size_t i = from; i < to; ++i) tokens.push_back(token_json(run.events[i]));
              if (!event.contains("x_ce")) event["x_ce"] = json::object();
              event["x_ce"]["tokens"] = std::move(tokens);
              if (request.logprobs >= 0 && to > from)
                event["choices"][0]["logprobs"] =
                    logprobs_json(endpoint, scored_events(run, from, to, prefix), echo.text + run.text);
              run.events_streamed = to;
            };
            // Echo with logprobs: the prompt's logprobs come with the generation's result, and
            // the prompt comes first, so this choice's events wait for the result.
            const bool hold = echo.on && request.logprobs >= 0;
            // A chat choice opens with the assistant's role, before any token (as OpenAI's does).
            if (endpoint == Endpoint::chat && !send(chunk(endpoint, id, model, index, "", nullptr, nullptr, /*first=*/true)))
              break;
            if (echo.on && !hold && !send(chunk(endpoint, id, model, index, echo.text, nullptr))) break;
            auto result = node.generate(generation(request, prompt, echo, index), [&](const TokenEvent& ev) {
              clock->token(metrics);
              const bool more = run.add(ev);
              const size_t end = run.streamable();
              if (hold || end <= run.streamed) return more;
              json c = chunk(endpoint, id, model, index, run.text.substr(run.streamed, end - run.streamed), nullptr);
              attach_pending(c);
              run.streamed = end;
              if (!send(c)) return false;  // the client left: stop generating for it
              return more;
            });
            record(result, run, endpoint, *clock);
            if (client_gone) break;
            if (!result.error.empty() && run.events.empty()) {
              send({{"error", {{"message", "no completion: " + result.error}, {"type", "server_error"}}}});
              failed = true;
              break;
            }
            if (hold &&
                !send(chunk(endpoint, id, model, index, echo.text, nullptr,
                            logprobs_json(endpoint, prompt_scores(prompt, echo, result, *tokenizer), echo.text))))
              break;
            json last = chunk(endpoint, id, model, index, run.text.substr(std::min(run.streamed, run.text.size())),
                              openai_finish_reason(result.finish_reason, run.stop_hit));
            last["x_ce"] = choice_x_ce(result, run, *clock, request, index, prompt, echo);
            if (!ignored.empty()) last["x_ce"]["ignored_fields"] = ignored;
            attach_pending(last);
            send(last);
            completion_tokens += run.completion_tokens();
          }
          record_end(*clock);
          if (client_gone) return false;
          if (!failed && request.include_usage) {
            json u = envelope(endpoint, true, id, model, json::array());
            u["usage"] = usage(prompt.size(), completion_tokens);
            send(u);
          }
          const std::string done = "data: [DONE]\n\n";
          sink.write(done.data(), done.size());
          sink.done();
          return true;
        });
  }
};

HttpApi::HttpApi(Node& node) : impl_(std::make_unique<Impl>(node)) {}
HttpApi::~HttpApi() = default;
uint16_t HttpApi::port() const { return impl_->port; }

}  // namespace ce
