#pragma once
// The typed configuration of one cecollm node, read from a strict CAF-INI-like file:
//
//   ; comment            # comment
//   [ce]
//   role = "edge"        ; strings quoted (\" and \\ escapes) or bare words
//   model.path = "../models/ce-brown-8l"
//   [ce.cloud]
//   host = "127.0.0.1"
//   port = 7700
//
// A key's full name is its section + "." + key. Unknown keys, duplicate keys, wrong types
// and out-of-range values are errors that name the file, the line and the key. The known
// keys, their types, defaults and meaning are listed by config_keys_help(); they all come
// from one table in node_config.cpp.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/defaults.hpp"

namespace ce {

enum class Role { edge, cloud, both };
enum class InferenceMode { standalone, collaborative, cloud_only, naive_split };
enum class LogLevel { error, warning, info, debug };
enum class ExitPolicy { fixed, latency_budget };
// How long a speculating edge computes ahead of a cloud request's answer: while the whole round
// trip lasts (the cloud computes on cores of its own), or only while the request is on the wire (the
// cloud shares the edge's cores: a step of the edge's beyond the wire's time takes cores the cloud's
// answer needs). automatic: see NodeConfig::run_ahead().
enum class RunAhead { automatic, round_trip, wire };

// The spelling used in config files: "edge", "cloud-only", "warning", ...
const char* to_string(Role role);
const char* to_string(InferenceMode mode);
const char* to_string(LogLevel level);
const char* to_string(ExitPolicy policy);
const char* to_string(RunAhead run_ahead);
// Whether `host` names this machine's loopback interface: localhost, ::1 or 127.a.b.c.
bool is_loopback(const std::string& host);
// The mode a config-file spelling names ("cloud-only" -> cloud_only), nullopt for anything else;
// and the spellings, "standalone|collaborative|cloud-only|naive-split".
std::optional<InferenceMode> inference_mode_named(const std::string& name);
std::string inference_mode_names();

// Every configuration problem is reported with this type; the message names the source
// ("edge.ini:7: ..." or "--set ce.cloud.port=0: ...") and the key at fault.
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One cloud node an edge connects to.
struct CloudAddress {
  std::string host;
  std::uint16_t port = 0;
  std::string name() const { return host + ":" + std::to_string(port); }
  bool operator==(const CloudAddress& o) const { return host == o.host && port == o.port; }
};

// "host:port, host:port" (commas and/or spaces between; "[::1]:7700" for IPv6) -> addresses.
// Throws ConfigError naming the bad entry; an empty list, a missing or out-of-range port and a
// repeated address are errors.
std::vector<CloudAddress> parse_cloud_nodes(const std::string& text);

// ce.http.cors-origins: "https://app.example, http://localhost:5173" (commas and/or spaces between)
// or "*" -> the origins, lower-cased, without a trailing slash; "" -> none (no CORS headers).
// Throws ConfigError naming an entry that is not scheme://host[:port] (http or https, no path).
std::vector<std::string> parse_cors_origins(const std::string& text);

struct NodeConfig {
  Role role = Role::edge;  // ce.role, required in a file
  std::string model_path;  // ce.model.path, required; resolved against the config's directory
  std::string model_weights = "auto";  // ce.model.weights: auto (as stored), fp32, fp16 or int8
  std::string model_parts = "auto";    // ce.model.parts: auto, role or all (which tensors this node loads)
  int split_layer = defaults::split_layer;           // ce.split.layer
  double exit_threshold = defaults::exit_threshold;  // ce.exit.threshold
  InferenceMode mode = InferenceMode::collaborative;  // ce.mode
  ExitPolicy exit_policy = ExitPolicy::fixed;          // ce.exit.policy
  std::chrono::milliseconds latency_budget = defaults::latency_budget;  // ce.exit.latency-budget (per token)
  double threshold_floor = defaults::threshold_floor;  // ce.exit.threshold-floor
  std::string exit_calibration;  // ce.exit.calibration; empty: MODEL/eval/valid.csv
  // The θ -> cloud share table the latency-budget policy reads.
  std::string calibration_path() const;
  // The θ the config asks for; nullopt where it leaves the choice to the model (the documented -1).
  std::optional<double> threshold_override() const {
    return exit_threshold < 0 ? std::nullopt : std::optional<double>(exit_threshold);
  }

  std::string cloud_host = defaults::cloud_host;      // ce.cloud.host (edge connects here)
  std::uint16_t cloud_port = defaults::cloud_port;    // ce.cloud.port
  std::string cloud_nodes;  // ce.cloud.nodes: "host:port, host:port, ..."; empty = the one above
  std::chrono::milliseconds cloud_load_interval = defaults::cloud_load_interval;  // ce.cloud.load-interval
  // The clouds an edge places its sessions on: ce.cloud.nodes, or ce.cloud.host:port alone.
  std::vector<CloudAddress> cloud_addresses() const;
  // ce.speculation.run-ahead resolved: as set, or for auto, wire where the cloud computes on this
  // machine (role both, or every cloud at a loopback address) and round-trip otherwise.
  RunAhead run_ahead() const;
  std::string listen_host = defaults::listen_host;    // ce.listen.host (cloud listens here)
  std::uint16_t listen_port = defaults::listen_port;  // ce.listen.port, 0 = ephemeral
  bool allow_plain_remote = defaults::allow_plain_remote;  // ce.listen.allow-plain-remote
  int max_connections = defaults::max_connections;         // ce.listen.max-connections
  int max_connections_per_address = defaults::max_connections_per_address;  // ce.listen.max-connections-per-address
  std::chrono::milliseconds handshake_timeout = defaults::handshake_timeout;  // ce.listen.handshake-timeout

  std::string http_host = defaults::http_host;            // ce.http.host
  int http_port = defaults::http_port;                    // ce.http.port, -1 = none, 0 = ephemeral
  int http_max_concurrent = defaults::http_max_concurrent;  // ce.http.max-concurrent
  std::string http_api_key;                               // ce.http.api-key, empty = no auth
  std::string http_api_key_file;                          // ce.http.api-key-file: one key per line
  int http_queue = 64;                                    // ce.http.queue: completions waiting for a slot
  std::chrono::milliseconds http_queue_timeout{30000};    // ce.http.queue-timeout
  std::chrono::milliseconds http_read_timeout{10000};     // ce.http.read-timeout: a request's head + body
  int http_max_connections_per_address = 64;              // ce.http.max-connections-per-address
  std::string http_cors_origins;                          // ce.http.cors-origins: "" = no CORS headers

  std::chrono::milliseconds idle_timeout = defaults::idle_timeout;  // ce.session.idle-timeout
  std::chrono::milliseconds drain_timeout = defaults::drain_timeout;  // ce.session.drain-timeout
  int max_contexts = defaults::max_contexts;                        // ce.session.max-contexts
  std::int64_t memory_cap_mib = defaults::memory_cap_mib;           // ce.session.memory-cap
  int batch_max_sessions = defaults::batch_max_sessions;            // ce.batch.max-sessions
  int batch_catch_up_chunk = defaults::batch_catch_up_chunk;        // ce.batch.catch-up-chunk
  double batch_gather = defaults::batch_gather;                      // ce.batch.gather
  std::chrono::milliseconds request_deadline = defaults::request_deadline;  // ce.request.deadline
  bool speculation_enabled = defaults::speculation_enabled;      // ce.speculation.enabled
  int speculation_max_ahead = defaults::speculation_max_ahead;   // ce.speculation.max-ahead
  int speculation_max_requests = defaults::speculation_max_requests;  // ce.speculation.max-requests
  double speculation_min_path_confidence = defaults::speculation_min_path_confidence;  // ce.speculation.min-path-confidence
  int speculation_test_miss_every = 0;                           // ce.speculation.test-miss-every
  RunAhead speculation_run_ahead = RunAhead::automatic;          // ce.speculation.run-ahead

  int upload_batch = defaults::upload_batch;              // ce.upload.batch
  int upload_queue_limit = defaults::upload_queue_limit;  // ce.upload.queue-limit (positions)

  std::string tls_certificate;  // ce.tls.certificate
  std::string tls_key;          // ce.tls.key
  std::string tls_ca;           // ce.tls.ca

  int compute_threads = defaults::compute_threads;  // ce.threads, 0 = all cores
  int actor_threads = defaults::actor_threads;  // ce.actor-threads

  int max_tokens = defaults::max_tokens;      // ce.generate.max-tokens
  double temperature = defaults::temperature;  // ce.generate.temperature
  double top_p = defaults::top_p;              // ce.generate.top-p
  std::int64_t seed = defaults::seed;          // ce.generate.seed

  LogLevel log_level = LogLevel::info;  // ce.log.level

  std::string source_path;  // the file (or source name) this config came from

  // All three TLS paths are set (validate() refuses one or two).
  bool tls_enabled() const { return !tls_certificate.empty() && !tls_key.empty() && !tls_ca.empty(); }
  std::size_t memory_cap_bytes() const { return static_cast<std::size_t>(memory_cap_mib) << 20; }

  // Checks every field's range and the rules between fields and the file system: the model
  // directory holds config.json and model.safetensors, TLS is all-or-none with existing
  // files, and a cloud refuses a plaintext listener on a non-loopback address unless
  // allow_plain_remote is set. Throws ConfigError, e.g.
  // "edge.ini: ce.cloud.port = 0: must be in 1..65535".
  void validate() const;
};

// Parses a config file's text. source_name is used in messages and stored as source_path;
// relative paths resolve against base_dir. Throws ConfigError "FILE:LINE: ..." for syntax
// errors, unknown keys (with the closest known key), duplicate keys, wrong types and bad
// ranges, and "FILE: ..." for a missing required key. Does not call validate().
NodeConfig parse_node_config_text(const std::string& text, const std::string& source_name,
                                  const std::string& base_dir);

// Reads the file (a clear error if it is missing), parses it with paths relative to the
// file's directory, then validate()s the result.
NodeConfig load_node_config(const std::string& path);

// Applies one "ce.cloud.port=7801" assignment from a command line --set, with the same
// per-key checks as the file parser; relative paths resolve against base_dir. Call
// validate() after the last override.
void apply_override(NodeConfig& config, const std::string& assignment, const std::string& base_dir);

// The effective config as "key = value" lines (in a form the parser reads back).
std::string describe(const NodeConfig& config);

// One line per key: name, type and range, default, meaning.
std::string config_keys_help();

// A duration as config files write it (500ms, 3s, 2min, 1h). Throws ConfigError "WHAT: ..." (a
// bare number too: it needs a unit, as in the files).
std::chrono::milliseconds parse_duration(const std::string& text, const std::string& what);

}  // namespace ce
