// Tests of the node config: the strict INI parser, overrides, validate(), describe and help.
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <random>
#include <string>

#include "config/node_config.hpp"

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// A fresh directory under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    std::random_device random;
    path_ = fs::temp_directory_path() /
            ("ce-config-test-" + std::to_string(random()) + "-" + std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const fs::path& path() const { return path_; }
  std::string str() const { return path_.string(); }

  fs::path write(const std::string& relative, const std::string& text = "") const {
    const fs::path p = path_ / relative;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
    return p;
  }
  // A directory that passes validate(): empty config.json and model.safetensors.
  fs::path make_model(const std::string& relative = "model") const {
    write(relative + "/config.json");
    write(relative + "/model.safetensors");
    return path_ / relative;
  }

 private:
  fs::path path_;
};

// The message of the ConfigError that f throws (the test fails if it throws none).
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ce::ConfigError& e) {
    return e.what();
  }
  BOOST_ERROR("expected a ConfigError");
  return "";
}

void check_contains(const std::string& message, std::initializer_list<const char*> parts) {
  for (const char* part : parts)
    BOOST_CHECK_MESSAGE(message.find(part) != std::string::npos, "'" << message << "' lacks '" << part << "'");
}

// The error of parsing text as "t.ini".
std::string parse_error(const std::string& text) {
  return error_of([&] { ce::parse_node_config_text(text, "t.ini", "/base"); });
}

const std::string minimal = "[ce]\nrole = edge\nmodel.path = \"/m\"\n";

}  // namespace

BOOST_AUTO_TEST_SUITE(node_config)

BOOST_AUTO_TEST_CASE(full_file_parses_to_expected_fields) {
  TempDir dir;
  dir.make_model("models/tiny");
  dir.write("tls/cert.pem");
  dir.write("tls/key.pem");
  dir.write("tls/ca.pem");
  const std::string text = R"(; a complete cloud config
# with both comment styles
[ce]
role = cloud                 ; bare word
model.path = "models/tiny"   # quoted, relative
mode = "naive-split"
threads = 6
actor-threads = 3

[ce.split]
layer = 4
[ce.exit]
threshold = 0.75
[ce.cloud]
host = "cloud.example.org"
port = 7801
[ce.listen]
host = "0.0.0.0"
port = 0
allow-plain-remote = false
[ce.session]
idle-timeout = 2min
max-contexts = 8
memory-cap = 512
[ce.request]
deadline = 250ms
[ce.batch]
gather = 0.5
[ce.upload]
batch = 16
queue-limit = 100
[ce.tls]
certificate = "tls/cert.pem"
key = "tls/key.pem"
ca = "tls/ca.pem"
[ce.generate]
max-tokens = 128
temperature = 0.7
top-p = 0.9
seed = -42
[ce.log]
level = debug
)";
  const ce::NodeConfig c = ce::parse_node_config_text(text, "full.ini", dir.str());
  BOOST_TEST(c.source_path == "full.ini");
  BOOST_TEST((c.role == ce::Role::cloud));
  BOOST_TEST(c.model_path == (dir.path() / "models/tiny").string());
  BOOST_TEST((c.mode == ce::InferenceMode::naive_split));
  BOOST_TEST(c.compute_threads == 6);
  BOOST_TEST(c.actor_threads == 3);
  BOOST_TEST(c.split_layer == 4);
  BOOST_TEST(c.exit_threshold == 0.75);
  BOOST_TEST(c.cloud_host == "cloud.example.org");
  BOOST_TEST(c.cloud_port == 7801);
  BOOST_TEST(c.listen_host == "0.0.0.0");
  BOOST_TEST(c.listen_port == 0);
  BOOST_TEST(!c.allow_plain_remote);
  BOOST_TEST(c.idle_timeout.count() == 120000);
  BOOST_TEST(c.max_contexts == 8);
  BOOST_TEST(c.memory_cap_mib == 512);
  BOOST_TEST(c.memory_cap_bytes() == 512u << 20);
  BOOST_TEST(c.request_deadline.count() == 250);
  BOOST_TEST(c.batch_gather == 0.5);
  BOOST_TEST(c.upload_batch == 16);
  BOOST_TEST(c.upload_queue_limit == 100);
  BOOST_TEST(c.tls_certificate == (dir.path() / "tls/cert.pem").string());
  BOOST_TEST(c.tls_key == (dir.path() / "tls/key.pem").string());
  BOOST_TEST(c.tls_ca == (dir.path() / "tls/ca.pem").string());
  BOOST_TEST(c.tls_enabled());
  BOOST_TEST(c.max_tokens == 128);
  BOOST_TEST(c.temperature == 0.7);
  BOOST_TEST(c.top_p == 0.9);
  BOOST_TEST(c.seed == -42);
  BOOST_TEST((c.log_level == ce::LogLevel::debug));
  BOOST_CHECK_NO_THROW(c.validate());  // TLS set, so the non-loopback listener is allowed
}

BOOST_AUTO_TEST_CASE(defaults_apply_for_unset_keys) {
  const ce::NodeConfig c = ce::parse_node_config_text(minimal, "t.ini", "/base");
  BOOST_TEST((c.role == ce::Role::edge));
  BOOST_TEST(c.model_path == "/m");
  BOOST_TEST(c.split_layer == 0);
  BOOST_TEST(c.exit_threshold == -1.0);
  BOOST_TEST((c.mode == ce::InferenceMode::collaborative));
  BOOST_TEST(c.cloud_host == "127.0.0.1");
  BOOST_TEST(c.cloud_port == 7700);
  BOOST_TEST(c.listen_host == "127.0.0.1");
  BOOST_TEST(c.listen_port == 7700);
  BOOST_TEST(!c.allow_plain_remote);
  BOOST_TEST(c.idle_timeout.count() == 60000);
  BOOST_TEST(c.max_contexts == 64);
  BOOST_TEST(c.memory_cap_mib == 1024);
  BOOST_TEST(c.request_deadline.count() == 5000);
  BOOST_TEST(c.upload_batch == 32);
  BOOST_TEST(c.upload_queue_limit == 4096);
  BOOST_TEST(c.tls_certificate.empty());
  BOOST_TEST(c.tls_key.empty());
  BOOST_TEST(c.tls_ca.empty());
  BOOST_TEST(!c.tls_enabled());
  BOOST_TEST(c.compute_threads == 0);
  BOOST_TEST(c.actor_threads == 2);
  BOOST_TEST(c.max_tokens == 64);
  BOOST_TEST(c.temperature == 0.0);
  BOOST_TEST(c.top_p == 1.0);
  BOOST_TEST(c.seed == 0);
  BOOST_TEST((c.log_level == ce::LogLevel::info));
}

BOOST_AUTO_TEST_CASE(value_syntax) {
  const std::string text =
      "ce.role = both\r\n"                                 // full key outside a section, CRLF
      "ce.model.path = \"/dir with ; and # and \\\"q\\\" and \\\\\"  ; comment\r\n"
      "[ ce.session ]   ; padded header\n"
      "\tidle-timeout=1h\n"
      "[ce.request]\n"
      "deadline = 30s;comment right after the value\n"
      "[ce.upload]\n"
      "batch = 8\n"
      "[ce.exit]\n"
      "threshold = 2\n"                                    // an integer is a float too
      "[ce.generate]\n"
      "top-p = 1e-1\n"
      "seed = +7\n";
  const ce::NodeConfig c = ce::parse_node_config_text(text, "t.ini", "/base");
  BOOST_TEST((c.role == ce::Role::both));
  BOOST_TEST(c.model_path == "/dir with ; and # and \"q\" and \\");
  BOOST_TEST(c.idle_timeout.count() == 3600000);
  BOOST_TEST(c.request_deadline.count() == 30000);
  BOOST_TEST(c.upload_batch == 8);
  BOOST_TEST(c.exit_threshold == 2.0);
  BOOST_TEST(c.top_p == 0.1);
  BOOST_TEST(c.seed == 7);
}

BOOST_AUTO_TEST_CASE(model_weights_key_takes_the_precisions_only) {
  BOOST_TEST(ce::NodeConfig{}.model_weights == "auto");
  for (const char* p : {"auto", "fp32", "fp16", "int8"})
    BOOST_TEST(ce::parse_node_config_text(minimal + "[ce.model]\nweights = " + p + "\n", "t.ini", "/").model_weights == p);
  check_contains(parse_error(minimal + "[ce.model]\nweights = q4\n"), {"t.ini:", "ce.model.weights", "auto|fp32|fp16|int8"});
}

BOOST_AUTO_TEST_CASE(speculation_run_ahead_key_takes_its_three_spellings) {
  BOOST_TEST((ce::NodeConfig{}.speculation_run_ahead == ce::RunAhead::automatic));
  const std::pair<const char*, ce::RunAhead> spellings[] = {
      {"auto", ce::RunAhead::automatic}, {"round-trip", ce::RunAhead::round_trip}, {"wire", ce::RunAhead::wire}};
  for (const auto& [name, value] : spellings) {
    const auto c = ce::parse_node_config_text(minimal + "[ce.speculation]\nrun-ahead = " + name + "\n", "t.ini", "/");
    BOOST_TEST((c.speculation_run_ahead == value));
    BOOST_TEST(std::string(ce::to_string(value)) == name);
  }
  check_contains(parse_error(minimal + "[ce.speculation]\nrun-ahead = always\n"),
                 {"t.ini:5:", "ce.speculation.run-ahead", "auto|round-trip|wire"});
}

// auto: wire where the cloud computes on this machine (role both, every cloud at a loopback
// address), round-trip otherwise; a setting other than auto stands.
BOOST_AUTO_TEST_CASE(automatic_run_ahead_is_the_wire_for_a_cloud_on_this_machine) {
  ce::NodeConfig c;
  c.role = ce::Role::edge;
  c.cloud_host = "127.0.0.1";
  BOOST_TEST((c.run_ahead() == ce::RunAhead::wire));
  c.cloud_host = "cloud.example";
  BOOST_TEST((c.run_ahead() == ce::RunAhead::round_trip));
  c.cloud_host = "10.0.0.7";
  BOOST_TEST((c.run_ahead() == ce::RunAhead::round_trip));
  c.cloud_nodes = "localhost:7700, [::1]:7701";
  BOOST_TEST((c.run_ahead() == ce::RunAhead::wire));
  c.cloud_nodes = "127.0.0.1:7700, cloud.example:7700";
  BOOST_TEST((c.run_ahead() == ce::RunAhead::round_trip));
  c.speculation_run_ahead = ce::RunAhead::wire;
  BOOST_TEST((c.run_ahead() == ce::RunAhead::wire));
  c.speculation_run_ahead = ce::RunAhead::automatic;
  c.role = ce::Role::both;
  BOOST_TEST((c.run_ahead() == ce::RunAhead::wire));
  c.speculation_run_ahead = ce::RunAhead::round_trip;
  BOOST_TEST((c.run_ahead() == ce::RunAhead::round_trip));
}

BOOST_AUTO_TEST_CASE(http_keys_parse_and_are_range_checked) {
  auto c = ce::parse_node_config_text(minimal + "[ce.http]\nhost = \"0.0.0.0\"\nport = 8080\nmax-concurrent = 8\n"
                                      "api-key = \"k\"\n", "t.ini", "/");
  BOOST_TEST(c.http_host == "0.0.0.0");
  BOOST_TEST(c.http_port == 8080);
  BOOST_TEST(c.http_max_concurrent == 8);
  BOOST_TEST(c.http_api_key == "k");
  BOOST_TEST(ce::NodeConfig{}.http_port == -1);  // no HTTP server unless asked for
  check_contains(parse_error(minimal + "[ce.http]\nport = 70000\n"), {"t.ini:5:", "ce.http.port", "65535"});
  check_contains(parse_error(minimal + "[ce.http]\nmax-concurrent = 0\n"), {"t.ini:5:", "ce.http.max-concurrent"});
}

BOOST_AUTO_TEST_CASE(unknown_key_names_line_and_suggests_closest) {
  const std::string m = parse_error(minimal + "[ce.cloud]\nprot = 7801\n");
  check_contains(m, {"t.ini:5:", "unknown key ce.cloud.prot", "did you mean ce.cloud.port?"});
  check_contains(parse_error(minimal + "idle-timeout = 5s\n"),
                 {"t.ini:4:", "ce.idle-timeout", "did you mean ce.session.idle-timeout?"});
  check_contains(parse_error("[caf.scheduler]\nmax-threads = 4\n"),
                 {"t.ini:2:", "unknown key caf.scheduler.max-threads"});
  // A key whose last part matches a known key's is the better guess than a look-alike.
  check_contains(parse_error("port = 7700\n"), {"t.ini:1:", "unknown key port", ".port? "});
  check_contains(parse_error("[ce]\nce.role = edge\n"),
                 {"t.ini:2:", "unknown key ce.ce.role", "did you mean ce.role?"});
}

BOOST_AUTO_TEST_CASE(wrong_type_names_line_and_key) {
  check_contains(parse_error(minimal + "[ce.cloud]\nport = \"7700\"\n"),
                 {"t.ini:5:", "ce.cloud.port", "expected an integer"});
  check_contains(parse_error(minimal + "[ce.listen]\nallow-plain-remote = 1\n"),
                 {"t.ini:5:", "ce.listen.allow-plain-remote = 1", "expected true or false"});
  check_contains(parse_error(minimal + "mode = fast\n"),
                 {"t.ini:4:", "ce.mode = fast", "standalone|collaborative|cloud-only|naive-split"});
  check_contains(parse_error(minimal + "exit.threshold = high\n"),
                 {"t.ini:4:", "ce.exit.threshold", "expected a number"});
  check_contains(parse_error(minimal + "split.layer = 2.5\n"), {"t.ini:4:", "ce.split.layer", "expected an integer"});
  check_contains(parse_error(minimal + "request.deadline = 5 s\n"), {"t.ini:4:", "ce.request.deadline"});
  check_contains(parse_error(minimal + "request.deadline = 5sec\n"),
                 {"t.ini:4:", "ce.request.deadline", "unknown duration unit 'sec'"});
  check_contains(parse_error("[ce]\nrole = \"server\"\n"), {"t.ini:2:", "ce.role", "edge|cloud|both"});
}

BOOST_AUTO_TEST_CASE(out_of_range_names_line_and_key) {
  check_contains(parse_error(minimal + "[ce.cloud]\nport = 70000\n"),
                 {"t.ini:5:", "ce.cloud.port = 70000", "must be in 1..65535"});
  check_contains(parse_error(minimal + "cloud.port = 0\n"), {"t.ini:4:", "ce.cloud.port = 0", "1..65535"});
  check_contains(parse_error(minimal + "exit.threshold = 2.5\n"), {"t.ini:4:", "ce.exit.threshold", "-1 or in 0..2"});
  check_contains(parse_error(minimal + "exit.threshold = -0.5\n"), {"t.ini:4:", "ce.exit.threshold"});
  check_contains(parse_error(minimal + "generate.top-p = 0\n"), {"t.ini:4:", "ce.generate.top-p", "(0, 1]"});
  check_contains(parse_error(minimal + "generate.temperature = -1\n"), {"t.ini:4:", "ce.generate.temperature"});
  check_contains(parse_error(minimal + "generate.max-tokens = 100001\n"), {"t.ini:4:", "ce.generate.max-tokens"});
  check_contains(parse_error(minimal + "actor-threads = 65\n"), {"t.ini:4:", "ce.actor-threads", "1..64"});
  check_contains(parse_error(minimal + "upload.batch = 4097\n"), {"t.ini:4:", "ce.upload.batch", "1..4096"});
  check_contains(parse_error(minimal + "session.max-contexts = 0\n"), {"t.ini:4:", "ce.session.max-contexts", ">= 1"});
  check_contains(parse_error(minimal + "batch.max-sessions = 0\n"), {"t.ini:4:", "ce.batch.max-sessions", "1..4096"});
  check_contains(parse_error(minimal + "batch.catch-up-chunk = -2\n"), {"t.ini:4:", "ce.batch.catch-up-chunk", ">= 1"});
  check_contains(parse_error(minimal + "batch.gather = 1.5\n"), {"t.ini:4:", "ce.batch.gather", "0..1"});
  check_contains(parse_error(minimal + "split.layer = -1\n"), {"t.ini:4:", "ce.split.layer", ">= 0"});
  check_contains(parse_error(minimal + "session.idle-timeout = 5ms\n"),
                 {"t.ini:4:", "ce.session.idle-timeout = 5ms", ">= 10ms"});
  check_contains(parse_error(minimal + "request.deadline = 0ms\n"), {"t.ini:4:", "ce.request.deadline"});
  check_contains(parse_error(minimal + "threads = 99999999999999999999\n"), {"t.ini:4:", "ce.threads", "out of range"});
  check_contains(parse_error(minimal + "cloud.host = \"\"\n"), {"t.ini:4:", "ce.cloud.host", "must not be empty"});
}

BOOST_AUTO_TEST_CASE(duplicate_key_names_both_lines) {
  check_contains(parse_error(minimal + "[ce.cloud]\nport = 1\nport = 2\n"),
                 {"t.ini:6:", "duplicate key ce.cloud.port", "line 5"});
  // The same key reached through different sections is still a duplicate.
  check_contains(parse_error("[ce]\nrole = edge\n[ce.model]\npath = \"/a\"\n[ce]\nmodel.path = \"/b\"\n"),
                 {"t.ini:6:", "duplicate key ce.model.path", "line 4"});
}

BOOST_AUTO_TEST_CASE(missing_required_key_is_named) {
  check_contains(parse_error("[ce]\nmodel.path = \"/m\"\n"), {"t.ini", "missing required key ce.role"});
  check_contains(parse_error("[ce]\nrole = cloud\n"), {"t.ini", "missing required key ce.model.path"});
  check_contains(parse_error(""), {"t.ini", "missing required key ce.role"});
}

BOOST_AUTO_TEST_CASE(bare_integer_duration_asks_for_a_unit) {
  const std::string m = parse_error(minimal + "[ce.session]\nidle-timeout = 60\n");
  check_contains(m, {"t.ini:5:", "ce.session.idle-timeout = 60", "needs a unit", "60s"});
}

BOOST_AUTO_TEST_CASE(unterminated_string_is_reported) {
  check_contains(parse_error("[ce]\nrole = edge\nmodel.path = \"/m\n"),
                 {"t.ini:3:", "ce.model.path", "unterminated string"});
  check_contains(parse_error("[ce]\nrole = edge\nmodel.path = \"/m\\\"\n"), {"t.ini:3:", "unterminated string"});
}

BOOST_AUTO_TEST_CASE(line_without_equals_is_reported) {
  check_contains(parse_error("[ce]\nrole edge\n"), {"t.ini:2:", "expected 'key = value'", "role edge"});
}

BOOST_AUTO_TEST_CASE(other_syntax_errors_are_reported) {
  check_contains(parse_error("[ce\nrole = edge\n"), {"t.ini:1:", "unterminated section header"});
  check_contains(parse_error("[ce..x]\n"), {"t.ini:1:", "bad section name"});
  check_contains(parse_error("[ce] x\n"), {"t.ini:1:", "unexpected text after section header"});
  check_contains(parse_error("[ce]\nrole = edge cloud\n"), {"t.ini:2:", "ce.role", "unexpected text after the value"});
  check_contains(parse_error("[ce]\nrole =\n"), {"t.ini:2:", "ce.role", "missing value"});
  check_contains(parse_error("[ce]\nrole = ; nothing\n"), {"t.ini:2:", "ce.role", "missing value"});
  check_contains(parse_error("[ce]\n= edge\n"), {"t.ini:2:", "missing key"});
  check_contains(parse_error("[ce]\nmy role = edge\n"), {"t.ini:2:", "bad key name 'my role'"});
  check_contains(parse_error("[ce]\nmodel.path = \"C:\\dir\"\n"), {"t.ini:2:", "ce.model.path", "unknown escape"});
  check_contains(parse_error("[ce]\nmodel.path = \"/a\"b\n"), {"t.ini:2:", "ce.model.path", "unexpected text"});
}

BOOST_AUTO_TEST_CASE(durations_take_units) {
  const std::pair<const char*, std::chrono::milliseconds> cases[] = {
      {"500ms", 500ms}, {"30s", 30s}, {"2min", 2min}, {"1h", 1h}, {"15ms", 15ms}};
  for (const auto& [text, expected] : cases) {
    const auto c = ce::parse_node_config_text(minimal + "session.idle-timeout = " + text + "\n", "t.ini", "/");
    BOOST_TEST(c.idle_timeout.count() == expected.count(), text);
  }
  check_contains(parse_error(minimal + "session.idle-timeout = 100000h\n"), {"t.ini:4:", "too long"});
  check_contains(parse_error(minimal + "session.idle-timeout = \"5s\"\n"), {"t.ini:4:", "expected a duration"});
}

BOOST_AUTO_TEST_CASE(relative_paths_resolve_against_base_dir) {
  auto path_of = [](const std::string& value, const std::string& base) {
    return ce::parse_node_config_text("[ce]\nrole = edge\nmodel.path = \"" + value + "\"\n", "t.ini", base).model_path;
  };
  BOOST_TEST(path_of("../models/m", "/etc/ce/config") == "/etc/ce/models/m");
  BOOST_TEST(path_of("./m/../n", "/etc/ce") == "/etc/ce/n");
  BOOST_TEST(path_of("/abs/m", "/etc/ce") == "/abs/m");
  BOOST_TEST(path_of("m", "") == "m");

  // load_node_config resolves against the file's own directory, not the working directory.
  TempDir dir;
  dir.make_model("models/m");
  const fs::path file = dir.write("conf/node.ini", "[ce]\nrole = edge\nmodel.path = \"../models/m\"\n");
  const ce::NodeConfig c = ce::load_node_config(file.string());
  BOOST_TEST(c.model_path == (dir.path() / "models/m").string());
  BOOST_TEST(c.source_path == file.string());
}

BOOST_AUTO_TEST_CASE(load_reports_missing_file_and_validates) {
  TempDir dir;
  check_contains(error_of([&] { ce::load_node_config((dir.path() / "nope.ini").string()); }),
                 {"nope.ini", "does not exist"});
  check_contains(error_of([&] { ce::load_node_config(dir.str()); }), {"is a directory"});
  // Parses fine, but validate() finds no model directory.
  const fs::path file = dir.write("edge.ini", "[ce]\nrole = edge\nmodel.path = \"missing\"\n");
  check_contains(error_of([&] { ce::load_node_config(file.string()); }),
                 {"edge.ini: ce.model.path", "directory does not exist"});
}

BOOST_AUTO_TEST_CASE(validate_checks_model_directory) {
  TempDir dir;
  ce::NodeConfig c;
  c.source_path = "edge.ini";
  check_contains(error_of([&] { c.validate(); }), {"edge.ini: ce.model.path", "must name the model directory"});
  c.model_path = dir.write("file").string();
  check_contains(error_of([&] { c.validate(); }), {"ce.model.path", "not a directory"});
  c.model_path = dir.str();
  dir.write("config.json");
  check_contains(error_of([&] { c.validate(); }), {"ce.model.path", "missing model.safetensors"});
  dir.write("model.safetensors");
  BOOST_CHECK_NO_THROW(c.validate());
}

BOOST_AUTO_TEST_CASE(the_latency_budget_policy_needs_its_calibration_table) {
  TempDir dir;
  ce::NodeConfig c;
  c.source_path = "edge.ini";
  c.model_path = dir.make_model().string();
  c.exit_policy = ce::ExitPolicy::latency_budget;
  check_contains(error_of([&] { c.validate(); }),
                 {"edge.ini: ce.exit.policy = latency-budget needs a calibration table", "eval/valid.csv does not exist"});
  c.exit_calibration = dir.str() + "/my.csv";
  check_contains(error_of([&] { c.validate(); }), {"my.csv does not exist"});
  dir.write("my.csv");
  BOOST_CHECK_NO_THROW(c.validate());
  c.threshold_floor = 1.5;
  check_contains(error_of([&] { c.validate(); }), {"ce.exit.threshold-floor = 1.5", "must be in 0..1"});
  check_contains(parse_error("[ce]\nrole = edge\nmodel.path = m\nexit.policy = fastest\n"),
                 {"ce.exit.policy", "fixed", "latency-budget"});
}

BOOST_AUTO_TEST_CASE(validate_rechecks_ranges_of_fields_set_in_code) {
  TempDir dir;
  ce::NodeConfig c;
  c.source_path = "edge.ini";
  c.model_path = dir.make_model().string();
  BOOST_CHECK_NO_THROW(c.validate());
  c.cloud_port = 0;
  BOOST_TEST(error_of([&] { c.validate(); }) == "edge.ini: ce.cloud.port = 0: must be in 1..65535");
  c.cloud_port = 7700;
  c.exit_threshold = 3.0;
  check_contains(error_of([&] { c.validate(); }), {"edge.ini: ce.exit.threshold = 3", "-1 or in 0..2"});
  c.exit_threshold = -1.0;
  c.idle_timeout = 1ms;
  check_contains(error_of([&] { c.validate(); }), {"ce.session.idle-timeout = 1ms", ">= 10ms"});
}

BOOST_AUTO_TEST_CASE(overrides_apply_with_the_same_checks) {
  TempDir dir;
  ce::NodeConfig c = ce::parse_node_config_text(minimal, "t.ini", "/base");
  ce::apply_override(c, "ce.cloud.port=7801", "/cwd");
  BOOST_TEST(c.cloud_port == 7801);
  ce::apply_override(c, " ce.mode = cloud-only ", "/cwd");
  BOOST_TEST((c.mode == ce::InferenceMode::cloud_only));
  ce::apply_override(c, "ce.model.path=models/m", "/cwd");
  BOOST_TEST(c.model_path == "/cwd/models/m");
  ce::apply_override(c, "ce.model.path=/with blanks/m", "/cwd");
  BOOST_TEST(c.model_path == "/with blanks/m");
  ce::apply_override(c, "ce.cloud.host=\"a.b\"", "/cwd");
  BOOST_TEST(c.cloud_host == "a.b");
  ce::apply_override(c, "ce.session.idle-timeout=90s", "/cwd");
  BOOST_TEST(c.idle_timeout.count() == 90000);

  check_contains(error_of([&] { ce::apply_override(c, "ce.cloud.port=70000", "/"); }),
                 {"--set ce.cloud.port=70000", "must be in 1..65535"});
  check_contains(error_of([&] { ce::apply_override(c, "ce.cloud.prot=7801", "/"); }),
                 {"--set ce.cloud.prot=7801", "did you mean ce.cloud.port?"});
  check_contains(error_of([&] { ce::apply_override(c, "ce.listen.port=abc", "/"); }),
                 {"--set ce.listen.port=abc", "expected an integer"});
  check_contains(error_of([&] { ce::apply_override(c, "ce.request.deadline=5", "/"); }),
                 {"ce.request.deadline", "needs a unit"});
  check_contains(error_of([&] { ce::apply_override(c, "ce.cloud.port", "/"); }), {"--set ce.cloud.port", "KEY=VALUE"});
  check_contains(error_of([&] { ce::apply_override(c, "ce.cloud.port=", "/"); }), {"missing value"});
  BOOST_TEST(c.cloud_port == 7801);  // failed overrides change nothing
}

BOOST_AUTO_TEST_CASE(plaintext_remote_listener_is_refused) {
  TempDir dir;
  ce::NodeConfig c;
  c.source_path = "cloud.ini";
  c.role = ce::Role::cloud;
  c.model_path = dir.make_model().string();
  c.listen_host = "0.0.0.0";
  const std::string m = error_of([&] { c.validate(); });
  check_contains(m, {"cloud.ini: ce.listen.host = \"0.0.0.0\"", "BASP", "payload", "ce.tls.certificate",
                     "ce.listen.allow-plain-remote = true"});

  c.role = ce::Role::both;
  check_contains(error_of([&] { c.validate(); }), {"ce.listen.host"});
  c.role = ce::Role::edge;  // an edge does not listen
  BOOST_CHECK_NO_THROW(c.validate());

  c.role = ce::Role::cloud;
  c.allow_plain_remote = true;
  BOOST_CHECK_NO_THROW(c.validate());
  c.allow_plain_remote = false;
  c.tls_certificate = dir.write("c.pem").string();
  c.tls_key = dir.write("k.pem").string();
  c.tls_ca = dir.write("ca.pem").string();
  BOOST_CHECK_NO_THROW(c.validate());
  c.tls_certificate = c.tls_key = c.tls_ca = "";

  for (const char* host : {"127.0.0.1", "127.1.2.3", "localhost", "LOCALHOST", "::1", "[::1]"}) {
    c.listen_host = host;
    BOOST_CHECK_NO_THROW(c.validate());
  }
  for (const char* host : {"10.0.0.1", "127.0.0", "127.0.0.1.", "128.0.0.1", "::", "127.0.0.256", "example.org"}) {
    c.listen_host = host;
    BOOST_CHECK_MESSAGE(error_of([&] { c.validate(); }).find("BASP") != std::string::npos, host);
  }
}

BOOST_AUTO_TEST_CASE(tls_is_all_or_none) {
  TempDir dir;
  const std::string cert = dir.write("cert.pem").string();
  const std::string key = dir.write("key.pem").string();
  const std::string ca = dir.write("ca.pem").string();
  ce::NodeConfig c;
  c.source_path = "cloud.ini";
  c.model_path = dir.make_model().string();

  c.tls_certificate = cert;
  check_contains(error_of([&] { c.validate(); }),
                 {"cloud.ini:", "set ce.tls.certificate but not ce.tls.key ce.tls.ca", "together"});
  c.tls_key = key;
  check_contains(error_of([&] { c.validate(); }), {"but not ce.tls.ca"});
  c.tls_ca = (dir.path() / "missing-ca.pem").string();
  check_contains(error_of([&] { c.validate(); }), {"cloud.ini: ce.tls.ca = ", "missing-ca.pem", "does not exist"});
  c.tls_ca = ca;
  BOOST_CHECK_NO_THROW(c.validate());
  BOOST_TEST(c.tls_enabled());

  // Through a file, with paths relative to it: one key only is refused by validate().
  const fs::path file = dir.write("cloud.ini", "[ce]\nrole = cloud\nmodel.path = \"model\"\n"
                                               "[ce.tls]\nkey = \"key.pem\"\n");
  check_contains(error_of([&] { ce::load_node_config(file.string()); }),
                 {"cloud.ini: TLS is half configured", "set ce.tls.key but not ce.tls.certificate ce.tls.ca"});
}

BOOST_AUTO_TEST_CASE(describe_lists_every_key_and_parses_back) {
  ce::NodeConfig c = ce::parse_node_config_text(minimal, "t.ini", "/base");
  c.model_path = "/models/with \"quotes\"";
  c.exit_threshold = 0.8;
  c.idle_timeout = 90s;
  c.request_deadline = 1500ms;
  c.mode = ce::InferenceMode::naive_split;
  c.seed = -3;
  const std::string text = ce::describe(c);
  check_contains(text, {"ce.role", "= edge\n", "ce.exit.threshold", "= 0.8\n", "= 90s\n", "= 1500ms\n",
                        "= naive-split\n", "= \"127.0.0.1\"\n", "ce.log.level", "= info\n"});
  const ce::NodeConfig back = ce::parse_node_config_text(text, "described", "/elsewhere");
  auto body = [](const std::string& d) { return d.substr(d.find('\n')); };  // minus the source line
  BOOST_TEST(body(ce::describe(back)) == body(text));
  BOOST_TEST(back.model_path == c.model_path);
}

BOOST_AUTO_TEST_CASE(help_has_one_line_per_key) {
  const std::string help = ce::config_keys_help();
  const std::string described = ce::describe(ce::NodeConfig{});
  std::size_t lines = 0, described_lines = 0;
  for (char ch : help) lines += ch == '\n';
  for (char ch : described) described_lines += ch == '\n';
  BOOST_TEST(lines + 1 == described_lines);  // describe(): a header line, then every key once; help: one line each
  BOOST_TEST(lines >= 54u);
  check_contains(help, {"ce.role", "edge|cloud|both", "[required]", "ce.cloud.port", "int 1..65535", "[default 7700]",
                        "ce.batch.max-sessions", "int 1..4096", "[default 32]", "ce.batch.catch-up-chunk", "[default 64]", "ce.batch.gather",
                        "ce.session.idle-timeout", "[default 60s]", "ce.listen.allow-plain-remote", "ce.log.level",
                        "ce.speculation.enabled", "[default true]", "ce.speculation.max-ahead", "int 1..1024", "[default 256]"});
  BOOST_TEST(described.find("ce.upload.queue-limit") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(enum_names_match_the_file_spelling) {
  BOOST_TEST(std::string(ce::to_string(ce::Role::both)) == "both");
  BOOST_TEST(std::string(ce::to_string(ce::InferenceMode::cloud_only)) == "cloud-only");
  BOOST_TEST(std::string(ce::to_string(ce::InferenceMode::naive_split)) == "naive-split");
  BOOST_TEST(std::string(ce::to_string(ce::LogLevel::warning)) == "warning");
}

BOOST_AUTO_TEST_CASE(example_files_parse) {
  const std::string dir = std::string(CE_SOURCE_DIR) + "/config";
  auto read = [&](const char* name) {
    std::ifstream in(dir + "/" + name);
    BOOST_REQUIRE(in.good());
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const std::string models = (fs::path(CE_SOURCE_DIR) / "models/ce-brown-8l").lexically_normal().string();
  const ce::NodeConfig edge = ce::parse_node_config_text(read("edge.ini"), "edge.ini", dir);
  BOOST_TEST((edge.role == ce::Role::edge));
  BOOST_TEST(edge.model_path == models);
  BOOST_TEST(edge.cloud_host == "127.0.0.1");
  BOOST_TEST(edge.cloud_port == 7700);
  const ce::NodeConfig cloud = ce::parse_node_config_text(read("cloud.ini"), "cloud.ini", dir);
  BOOST_TEST((cloud.role == ce::Role::cloud));
  BOOST_TEST(cloud.listen_host == "127.0.0.1");
  BOOST_TEST(cloud.listen_port == 7700);
  const ce::NodeConfig local = ce::parse_node_config_text(read("local.ini"), "local.ini", dir);
  BOOST_TEST((local.role == ce::Role::both));
  BOOST_TEST(local.model_path == models);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(cloud_nodes)

BOOST_AUTO_TEST_CASE(a_list_of_clouds_parses_in_order) {
  const auto nodes = ce::parse_cloud_nodes(" a.example:7700,b.example:7701  10.0.0.3:80, [::1]:7702 ");
  BOOST_TEST_REQUIRE(nodes.size() == 4u);
  BOOST_TEST(nodes[0].name() == "a.example:7700");
  BOOST_TEST(nodes[1].port == 7701);
  BOOST_TEST(nodes[2].host == "10.0.0.3");
  BOOST_TEST(nodes[3].host == "::1");
  BOOST_TEST(nodes[3].port == 7702);
}

BOOST_AUTO_TEST_CASE(without_the_list_the_one_cloud_host_and_port_are_used) {
  ce::NodeConfig c;
  c.cloud_host = "cloud.example";
  c.cloud_port = 9000;
  const auto nodes = c.cloud_addresses();
  BOOST_TEST_REQUIRE(nodes.size() == 1u);
  BOOST_TEST(nodes[0].name() == "cloud.example:9000");
  c.cloud_nodes = "x:1, y:2";
  BOOST_TEST(c.cloud_addresses().size() == 2u);
}

BOOST_AUTO_TEST_CASE(bad_lists_are_refused_naming_the_entry) {
  check_contains(parse_error(minimal + "cloud.nodes = \"a:7700, b\"\n"), {"t.ini:4:", "ce.cloud.nodes", "\"b\"", "host:port"});
  check_contains(parse_error(minimal + "cloud.nodes = \"a:0\"\n"), {"ce.cloud.nodes", "\"a:0\"", "1..65535"});
  check_contains(parse_error(minimal + "cloud.nodes = \"a:99999\"\n"), {"\"a:99999\"", "1..65535"});
  check_contains(parse_error(minimal + "cloud.nodes = \"a:7700 a:7700\"\n"), {"\"a:7700\"", "listed twice"});
  check_contains(parse_error(minimal + "cloud.nodes = \"::1:7700\"\n"), {"brackets"});
  check_contains(parse_error(minimal + "cloud.nodes = \" , \"\n"), {"ce.cloud.nodes", "no host:port"});
  check_contains(parse_error(minimal + "cloud.load-interval = 1ms\n"), {"ce.cloud.load-interval", ">= 10ms"});
  BOOST_TEST(ce::parse_node_config_text(minimal + "session.drain-timeout = 0s\n", "t.ini", "/b").drain_timeout.count() == 0);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(shipped_configs)

// Every config the project ships (config/, deploy/) parses: a misspelt key or a value out of range
// in a file users copy would otherwise surface only on their machines.
BOOST_AUTO_TEST_CASE(every_shipped_config_file_parses) {
  int files = 0;
  for (const char* dir : {"config", "deploy"}) {
    for (const auto& entry : std::filesystem::directory_iterator(std::string(CE_SOURCE_DIR) + "/" + dir)) {
      if (entry.path().extension() != ".ini") continue;
      ++files;
      std::ifstream in(entry.path());
      const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      try {
        const auto c = ce::parse_node_config_text(text, entry.path().string(), entry.path().parent_path().string());
        if (!c.cloud_nodes.empty()) BOOST_TEST(c.cloud_addresses().size() >= 2u, entry.path());
      } catch (const ce::ConfigError& e) {
        BOOST_ERROR(e.what());
      }
    }
  }
  BOOST_TEST(files >= 6);
}

BOOST_AUTO_TEST_SUITE_END()
