#pragma once
// Default values of every node setting, in one place. NodeConfig's member initialisers and
// the --help text both read them from here.
#include <chrono>
#include <cstdint>

namespace ce::defaults {

using namespace std::chrono_literals;

constexpr int split_layer = 0;           // 0: the model's default split (config.json)
constexpr double exit_threshold = -1.0;  // -1: the model's default θ (config.json)
constexpr const char* cloud_host = "127.0.0.1";
constexpr std::uint16_t cloud_port = 7700;
constexpr std::chrono::milliseconds cloud_load_interval = 1s;
constexpr const char* listen_host = "127.0.0.1";
constexpr std::uint16_t listen_port = 7700;
constexpr bool allow_plain_remote = false;
constexpr int max_connections = 64;
constexpr int max_connections_per_address = 8;  // an eighth of the default cap: one address cannot fill it
constexpr std::chrono::milliseconds handshake_timeout = 1s;  // see ce.listen.handshake-timeout's help
constexpr const char* http_host = "127.0.0.1";
constexpr int http_port = -1;  // -1: no HTTP server, 0: an ephemeral port
constexpr int http_max_concurrent = 4;
constexpr std::chrono::milliseconds idle_timeout = 60s;
constexpr std::chrono::milliseconds drain_timeout = 30s;
constexpr int max_contexts = 64;
constexpr std::int64_t memory_cap_mib = 1024;
constexpr int batch_max_sessions = 32;
constexpr int batch_catch_up_chunk = 64;
constexpr double batch_gather = 0.25;
constexpr std::chrono::milliseconds request_deadline = 5s;
constexpr bool speculation_enabled = true;
constexpr std::chrono::milliseconds latency_budget = 10ms;
constexpr double threshold_floor = 0.5;
constexpr int speculation_max_ahead = 256;
constexpr int speculation_max_requests = 16;
constexpr double speculation_min_path_confidence = 0.35;
constexpr int upload_batch = 32;
constexpr int upload_queue_limit = 4096;
constexpr int compute_threads = 0;  // 0: all cores
constexpr int actor_threads = 2;
constexpr int max_tokens = 64;
constexpr double temperature = 0.0;  // 0: greedy
constexpr double top_p = 1.0;
constexpr std::int64_t seed = 0;

// Limits that are not plain defaults.
constexpr std::chrono::milliseconds min_idle_timeout = 10ms;
constexpr std::chrono::milliseconds max_duration = 24h * 365;  // keeps now() + d from overflowing

}  // namespace ce::defaults
