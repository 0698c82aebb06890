#include "config/node_config.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <limits>
#include <locale>
#include <map>
#include <sstream>
#include <string_view>
#include <vector>

namespace ce {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

// ---------------------------------------------------------------------------------------
// Values as written

// One value as written after '=': a quoted string (escapes resolved) or a bare token.
struct RawValue {
  bool quoted = false;
  std::string text;    // the string's contents, or the bare token
  std::string source;  // as written, for messages
};

// A bad value; the caller prefixes the place and the key.
struct ValueError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

bool is_blank(char c) { return c == ' ' || c == '\t'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_blank(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_blank(s.back())) s.remove_suffix(1);
  return s;
}

// Blanks, optionally followed by a ';' or '#' comment.
bool is_blank_or_comment(std::string_view s) {
  s = trim(s);
  return s.empty() || s.front() == ';' || s.front() == '#';
}

// Reads a double-quoted string starting at s[0] == '"'; returns the index after the
// closing quote.
std::size_t lex_quoted(std::string_view s, std::string& out) {
  for (std::size_t i = 1; i < s.size(); ++i) {
    if (s[i] == '"') return i + 1;
    if (s[i] != '\\') {
      out += s[i];
      continue;
    }
    if (++i == s.size()) break;
    if (s[i] != '"' && s[i] != '\\')
      throw ValueError(std::string("unknown escape '\\") + s[i] + "' in string (only \\\" and \\\\)");
    out += s[i];
  }
  throw ValueError("unterminated string: missing closing '\"'");
}

// Lexes the text after '=': one quoted string or one bare token, then at most a comment.
RawValue lex_value(std::string_view s) {
  s = trim(s);
  if (is_blank_or_comment(s)) throw ValueError("missing value after '='");
  RawValue v;
  std::size_t end = 0;
  if (s.front() == '"') {
    v.quoted = true;
    end = lex_quoted(s, v.text);
  } else {
    while (end < s.size() && !is_blank(s[end]) && s[end] != ';' && s[end] != '#') {
      if (s[end] == '"') throw ValueError("unexpected '\"' inside unquoted value");
      ++end;
    }
    v.text = std::string(s.substr(0, end));
  }
  v.source = std::string(s.substr(0, end));
  if (!is_blank_or_comment(s.substr(end)))
    throw ValueError("unexpected text after the value: '" + std::string(trim(s.substr(end))) +
                     "' (quote strings that contain blanks)");
  return v;
}

std::string what_was_given(const RawValue& v) {
  return v.quoted ? std::string("a quoted string") : "'" + v.text + "'";
}

// ---------------------------------------------------------------------------------------
// Typed conversions

bool looks_like_int(std::string_view s) {
  if (!s.empty() && (s.front() == '+' || s.front() == '-')) s.remove_prefix(1);
  return !s.empty() && std::all_of(s.begin(), s.end(), is_digit);
}

// [+-] digits [. digits] [e [+-] digits], or with the digits after the point only.
bool looks_like_float(std::string_view s) {
  std::size_t i = 0, digits = 0;
  auto skip_digits = [&] {
    std::size_t n = 0;
    for (; i < s.size() && is_digit(s[i]); ++i) ++n;
    return n;
  };
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  digits += skip_digits();
  if (i < s.size() && s[i] == '.') {
    ++i;
    digits += skip_digits();
  }
  if (digits == 0) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    if (skip_digits() == 0) return false;
  }
  return i == s.size();
}

std::int64_t to_int(const RawValue& v) {
  if (v.quoted || !looks_like_int(v.text)) throw ValueError("expected an integer, got " + what_was_given(v));
  errno = 0;
  long long x = std::strtoll(v.text.c_str(), nullptr, 10);
  if (errno == ERANGE) throw ValueError("integer out of range");
  return x;
}

double to_float(const RawValue& v) {
  if (v.quoted || !looks_like_float(v.text)) throw ValueError("expected a number, got " + what_was_given(v));
  std::istringstream in(v.text);
  in.imbue(std::locale::classic());
  double x = 0;
  in >> x;
  if (in.fail()) throw ValueError("number out of range");
  return x;
}

bool to_bool(const RawValue& v) {
  if (!v.quoted && v.text == "true") return true;
  if (!v.quoted && v.text == "false") return false;
  throw ValueError("expected true or false, got " + what_was_given(v));
}

milliseconds to_duration(const RawValue& v) {
  if (!v.quoted && looks_like_int(v.text))
    throw ValueError("a duration needs a unit: write " + v.text + "s or " + v.text + "ms (units: ms, s, min, h)");
  const std::string_view s = v.text;
  std::size_t split = (!s.empty() && (s.front() == '+' || s.front() == '-')) ? 1 : 0;
  while (split < s.size() && is_digit(s[split])) ++split;
  const std::string_view unit = s.substr(split);
  if (v.quoted || !looks_like_int(s.substr(0, split)) || unit.empty())
    throw ValueError("expected a duration like 500ms, 30s, 2min or 1h, got " + what_was_given(v));
  std::int64_t factor = 0;
  if (unit == "ms") factor = 1;
  if (unit == "s") factor = 1000;
  if (unit == "min") factor = 60 * 1000;
  if (unit == "h") factor = 60 * 60 * 1000;
  if (factor == 0) throw ValueError("unknown duration unit '" + std::string(unit) + "' (use ms, s, min or h)");
  const std::int64_t count = to_int(RawValue{false, std::string(s.substr(0, split)), ""});
  if (count > defaults::max_duration.count() / factor || count < -defaults::max_duration.count() / factor)
    throw ValueError("duration too long (at most 8760h)");
  return milliseconds(count * factor);
}

// Relative paths are taken relative to base_dir (the config file's directory).
std::string resolve_path(const std::string& text, const std::string& base_dir) {
  if (text.empty()) return text;
  fs::path p(text);
  if (!p.is_absolute() && !base_dir.empty()) p = fs::path(base_dir) / p;
  return p.lexically_normal().string();
}

// ---------------------------------------------------------------------------------------
// Formatting (the inverse of the conversions; describe() output parses back)

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// The shortest decimal form that reads back to the same double.
std::string format_float(double x) {
  for (int precision = 1;; ++precision) {
    std::ostringstream out;
    out.imbue(std::locale::classic());
    out << std::setprecision(precision) << x;
    std::istringstream in(out.str());
    in.imbue(std::locale::classic());
    double back = 0;
    in >> back;
    if (back == x || precision >= 17) return out.str();
  }
}

std::string format_duration(milliseconds d) {
  const std::int64_t ms = d.count();
  if (ms != 0 && ms % 3600000 == 0) return std::to_string(ms / 3600000) + "h";
  if (ms % 60000 == 0 && (ms >= 120000 || ms <= -120000)) return std::to_string(ms / 60000) + "min";  // 60s, 2min
  if (ms != 0 && ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

// ---------------------------------------------------------------------------------------
// Enumerations: one name table each, used by to_string, the parser and the help text

template <class E>
struct Choice {
  const char* name;
  E value;
};

constexpr Choice<Role> role_choices[] = {{"edge", Role::edge}, {"cloud", Role::cloud}, {"both", Role::both}};
constexpr Choice<InferenceMode> mode_choices[] = {{"standalone", InferenceMode::standalone},
                                                  {"collaborative", InferenceMode::collaborative},
                                                  {"cloud-only", InferenceMode::cloud_only},
                                                  {"naive-split", InferenceMode::naive_split}};
constexpr Choice<ExitPolicy> exit_policy_choices[] = {{"fixed", ExitPolicy::fixed},
                                                     {"latency-budget", ExitPolicy::latency_budget}};
constexpr Choice<RunAhead> run_ahead_choices[] = {
    {"auto", RunAhead::automatic}, {"round-trip", RunAhead::round_trip}, {"wire", RunAhead::wire}};
constexpr Choice<LogLevel> log_level_choices[] = {
    {"error", LogLevel::error}, {"warning", LogLevel::warning}, {"info", LogLevel::info}, {"debug", LogLevel::debug}};

template <class E, std::size_t N>
const char* name_of(const Choice<E> (&choices)[N], E value) {
  for (const auto& c : choices)
    if (c.value == value) return c.name;
  return "?";
}

template <class E, std::size_t N>
std::string choice_list(const Choice<E> (&choices)[N]) {
  std::string out;
  for (const auto& c : choices) out += (out.empty() ? "" : "|") + std::string(c.name);
  return out;
}

// ---------------------------------------------------------------------------------------
// The key table: every known key, how to set it, show it, check it and explain it

struct KeyDescriptor {
  std::string name;  // full name, "ce.cloud.port"
  std::string type;  // "int 1..65535", "duration >= 10ms", "edge|cloud|both", ...
  std::string help;
  bool required = false;
  // Converts and range-checks the value, then stores it; throws ValueError.
  std::function<void(NodeConfig&, const RawValue&, const std::string& base_dir)> set;
  // The current value as it would be written in a file.
  std::function<std::string(const NodeConfig&)> show;
  // Why the current value is out of range, or "" (for validate()).
  std::function<std::string(const NodeConfig&)> check;
};

template <class T>
using Rule = std::function<std::string(const T&)>;  // "" when fine, else why not

template <class T>
KeyDescriptor make_key(std::string name, std::string type, std::string help, T NodeConfig::*member,
                       std::function<T(const RawValue&, const std::string&)> convert,
                       std::function<std::string(const T&)> format, Rule<T> rule) {
  KeyDescriptor d;
  d.name = std::move(name);
  d.type = std::move(type);
  d.help = std::move(help);
  d.set = [=](NodeConfig& c, const RawValue& v, const std::string& base_dir) {
    T x = convert(v, base_dir);
    if (auto why = rule(x); !why.empty()) throw ValueError(why);
    c.*member = std::move(x);
  };
  d.show = [=](const NodeConfig& c) { return format(c.*member); };
  d.check = [=](const NodeConfig& c) { return rule(c.*member); };
  return d;
}

constexpr std::int64_t no_limit = std::numeric_limits<std::int64_t>::max();

template <class T>
KeyDescriptor int_key(const char* name, T NodeConfig::*member, std::int64_t lo, std::int64_t hi, const char* help) {
  const std::int64_t top = std::min<std::int64_t>(hi, std::numeric_limits<T>::max());
  std::string range;
  if (lo != std::numeric_limits<std::int64_t>::min())
    range = hi == no_limit ? ">= " + std::to_string(lo) : std::to_string(lo) + ".." + std::to_string(hi);
  auto in_range = [lo, hi, top, range](std::int64_t x) -> std::string {
    if (x >= lo && x <= top) return "";
    return hi == no_limit ? "must be " + range : "must be in " + range;
  };
  auto convert = [in_range](const RawValue& v, const std::string&) {
    const std::int64_t x = to_int(v);
    if (auto why = in_range(x); !why.empty()) throw ValueError(why);  // before narrowing
    return static_cast<T>(x);
  };
  auto format = [](const T& x) { return std::to_string(x); };
  auto rule = [in_range](const T& x) { return in_range(static_cast<std::int64_t>(x)); };
  return make_key<T>(name, range.empty() ? "int" : "int " + range, help, member, convert, format, rule);
}

KeyDescriptor float_key(const char* name, double NodeConfig::*member, const char* range, Rule<double> rule,
                        const char* help) {
  auto convert = [](const RawValue& v, const std::string&) { return to_float(v); };
  return make_key<double>(name, std::string("float ") + range, help, member, convert, format_float, rule);
}

KeyDescriptor duration_key(const char* name, milliseconds NodeConfig::*member, milliseconds min, const char* help) {
  auto rule = [min](const milliseconds& d) -> std::string {
    if (d < min) return "must be >= " + format_duration(min);
    if (d > defaults::max_duration) return "must be <= " + format_duration(defaults::max_duration);
    return "";
  };
  auto convert = [](const RawValue& v, const std::string&) { return to_duration(v); };
  return make_key<milliseconds>(name, "duration >= " + format_duration(min), help, member, convert,
                                format_duration, rule);
}

KeyDescriptor bool_key(const char* name, bool NodeConfig::*member, const char* help) {
  auto convert = [](const RawValue& v, const std::string&) { return to_bool(v); };
  auto format = [](const bool& b) { return std::string(b ? "true" : "false"); };
  return make_key<bool>(name, "bool", help, member, convert, format, [](const bool&) { return std::string(); });
}

// A string, or with is_path a path resolved against the config file's directory.
KeyDescriptor string_key(const char* name, std::string NodeConfig::*member, bool is_path, Rule<std::string> rule,
                         const char* help) {
  auto convert = [is_path](const RawValue& v, const std::string& base_dir) {
    return is_path ? resolve_path(v.text, base_dir) : v.text;
  };
  return make_key<std::string>(name, is_path ? "path" : "string", help, member, convert, quote, rule);
}

template <class E, std::size_t N>
KeyDescriptor enum_key(const char* name, E NodeConfig::*member, const Choice<E> (&choices)[N], const char* help) {
  auto convert = [&choices](const RawValue& v, const std::string&) {
    for (const auto& c : choices)
      if (v.text == c.name) return c.value;
    throw ValueError("must be one of " + choice_list(choices));
  };
  auto format = [&choices](const E& e) { return std::string(name_of(choices, e)); };
  return make_key<E>(name, choice_list(choices), help, member, convert, format, [](const E&) { return std::string(); });
}

Rule<std::string> not_empty(const char* why) {
  return [why](const std::string& s) { return s.empty() ? std::string(why) : std::string(); };
}
Rule<std::string> anything() {
  return [](const std::string&) { return std::string(); };
}

std::vector<KeyDescriptor> build_key_table() {
  using C = NodeConfig;
  std::vector<KeyDescriptor> t;
  t.push_back(enum_key("ce.role", &C::role, role_choices, "which half of the model this node runs"));
  t.back().required = true;
  t.push_back(string_key("ce.model.path", &C::model_path, true,
                         not_empty("must name the model directory (holding config.json and model.safetensors)"),
                         "model directory with config.json and model.safetensors"));
  t.back().required = true;
  t.push_back(string_key(
      "ce.model.weights", &C::model_weights, false,
      [](const std::string& v) {
        for (const char* ok : {"auto", "fp32", "fp16", "int8"})
          if (v == ok) return std::string();
        return std::string("must be one of auto|fp32|fp16|int8");
      },
      "auto|fp32|fp16|int8: weight matrices in memory; auto = as the file stores them (fp16 stays fp16)"));
  t.push_back(string_key(
      "ce.model.parts", &C::model_parts, false,
      [](const std::string& v) {
        for (const char* ok : {"auto", "role", "all"})
          if (v == ok) return std::string();
        return std::string("must be one of auto|role|all");
      },
      "auto|role|all: tensors loaded; role = the edge's layers, embedding and exits, or the cloud's layers and head; "
      "auto = role on an edge, all on a cloud (it serves the cloud-only baseline)"));
  t.push_back(enum_key("ce.mode", &C::mode, mode_choices, "inference mode (baselines: cloud-only, naive-split)"));
  t.push_back(int_key("ce.split.layer", &C::split_layer, 0, no_limit,
                      "edge runs layers [0, split); 0 = the model's default split"));
  t.push_back(float_key(
      "ce.exit.threshold", &C::exit_threshold, "-1 or 0..2",
      [](const double& x) {
        return x == -1.0 || (x >= 0.0 && x <= 2.0) ? std::string() : std::string("must be -1 or in 0..2");
      },
      "exit confidence θ in [0, 1]; -1 = the model's default; > 1 = never exit early"));
  t.push_back(enum_key("ce.exit.policy", &C::exit_policy, exit_policy_choices,
                       "fixed: θ as set; latency-budget: per response, the highest θ whose expected time per token "
                       "(edge + cloud share at θ x measured round trip) fits ce.exit.latency-budget"));
  t.push_back(duration_key("ce.exit.latency-budget", &C::latency_budget, milliseconds(1),
                           "expected time per token the latency-budget policy aims at"));
  t.push_back(float_key(
      "ce.exit.threshold-floor", &C::threshold_floor, "0..1",
      [](const double& x) { return x >= 0.0 && x <= 1.0 ? std::string() : std::string("must be in 0..1"); },
      "lowest θ the latency-budget policy picks, however slow the link"));
  t.push_back(string_key("ce.exit.calibration", &C::exit_calibration, true, anything(),
                         "CSV of θ and the cloud share it gives (ce-eval's sweep: columns threshold, cloud_share); "
                         "empty = MODEL/eval/valid.csv"));
  t.push_back(string_key("ce.cloud.host", &C::cloud_host, false, not_empty("must not be empty"),
                         "cloud node the edge connects to"));
  t.push_back(int_key("ce.cloud.port", &C::cloud_port, 1, 65535, "port of the cloud node"));
  t.push_back(string_key(
      "ce.cloud.nodes", &C::cloud_nodes, false,
      [](const std::string& s) -> std::string {
        if (s.empty()) return "";
        try {
          parse_cloud_nodes(s);
          return "";
        } catch (const ConfigError& e) {
          return e.what();
        }
      },
      "several cloud nodes, \"host:port, host:port\": each session goes to one (rendezvous hashing by load) and "
      "moves to the next when it fails; empty = ce.cloud.host:ce.cloud.port alone"));
  t.push_back(duration_key("ce.cloud.load-interval", &C::cloud_load_interval, milliseconds(10),
                           "edge: how often it asks each cloud for its load (also its liveness check: a node "
                           "silent for 3 intervals is taken as lost)"));
  t.push_back(string_key("ce.listen.host", &C::listen_host, false, not_empty("must not be empty"),
                         "address the cloud listens on"));
  t.push_back(int_key("ce.listen.port", &C::listen_port, 0, 65535, "port the cloud listens on; 0 = ephemeral"));
  t.push_back(bool_key("ce.listen.allow-plain-remote", &C::allow_plain_remote,
                       "allow a plaintext listener on a non-loopback address (trusted networks only)"));
  t.push_back(int_key("ce.listen.max-connections", &C::max_connections, 1, 65536,
                      "most edge connections the cloud holds at once; at the cap a newcomer takes the slot of one "
                      "still without its handshake (from the address holding most such), else it is closed at once"));
  t.push_back(int_key("ce.listen.max-connections-per-address", &C::max_connections_per_address, 1, 65536,
                      "most connections from one source address; more from it are closed at once, so one address "
                      "cannot take every slot (edges behind one NAT share an address: raise it for them)"));
  t.push_back(duration_key("ce.listen.handshake-timeout", &C::handshake_timeout, milliseconds(10),
                           "a connection without a protocol handshake this long is closed; a real edge sends it "
                           "one round trip after connecting (plus the TLS handshake): 1s covers RTTs up to ~500 ms"));
  t.push_back(string_key("ce.http.host", &C::http_host, false, not_empty("must not be empty"),
                         "address of the HTTP API (edge: OpenAI-style completions; both roles: /health, /metrics)"));
  t.push_back(int_key("ce.http.port", &C::http_port, -1, 65535,
                      "port of the HTTP API; -1 = no HTTP server, 0 = an ephemeral one (see ce-node --ready-file)"));
  t.push_back(int_key("ce.http.max-concurrent", &C::http_max_concurrent, 1, 1024,
                      "completions generated at once; more wait in the queue (ce.http.queue)"));
  t.push_back(string_key("ce.http.api-key", &C::http_api_key, false, anything(),
                         "when set, completions need 'Authorization: Bearer KEY'"));
  t.push_back(string_key("ce.http.api-key-file", &C::http_api_key_file, true, anything(),
                         "file of API keys, one per line (# comments), beside ce.http.api-key and $CE_HTTP_API_KEYS"));
  t.push_back(int_key("ce.http.queue", &C::http_queue, 0, 65536,
                      "completions that wait (first come, first served) for one of the ce.http.max-concurrent slots; "
                      "beyond them, and after ce.http.queue-timeout, 429 with Retry-After; 0 = 429 at once"));
  t.push_back(duration_key("ce.http.queue-timeout", &C::http_queue_timeout, milliseconds(1),
                           "longest a completion waits in the queue before it gets 429"));
  t.push_back(duration_key("ce.http.read-timeout", &C::http_read_timeout, milliseconds(10),
                           "a request's head and body must arrive within this from its first byte (however the bytes "
                           "trickle in); a slower client gets 408 and is disconnected"));
  t.push_back(int_key("ce.http.max-connections-per-address", &C::http_max_connections_per_address, 1, 65536,
                      "HTTP connections one client address may hold open; more are refused at once (429). Behind a "
                      "reverse proxy every client has its address: raise it"));
  t.push_back(string_key(
      "ce.http.cors-origins", &C::http_cors_origins, false,
      [](const std::string& s) -> std::string {
        try {
          parse_cors_origins(s);
          return "";
        } catch (const ConfigError& e) {
          return e.what();
        }
      },
      "web pages of other origins that may call the HTTP API from a browser: \"https://app.example, "
      "http://localhost:5173\" or * (any); their responses carry Access-Control-Allow-Origin and OPTIONS "
      "preflights get 204; empty = no CORS headers (the page at / needs none)"));
  t.push_back(duration_key("ce.session.idle-timeout", &C::idle_timeout, defaults::min_idle_timeout,
                           "cloud evicts a session silent this long"));
  t.push_back(duration_key("ce.session.drain-timeout", &C::drain_timeout, milliseconds(0),
                           "cloud: on SIGTERM it takes no new sessions and waits this long for its open ones to "
                           "end before it exits (edges move what is left to another cloud)"));
  t.push_back(int_key("ce.session.max-contexts", &C::max_contexts, 1, no_limit, "most sessions the cloud holds"));
  t.push_back(int_key("ce.session.memory-cap", &C::memory_cap_mib, 1, 1 << 30,
                      "MiB the cloud's session contexts may use in all"));
  t.push_back(int_key("ce.batch.max-sessions", &C::batch_max_sessions, 1, 4096,
                      "most sessions the cloud computes in one batched step"));
  t.push_back(int_key("ce.batch.catch-up-chunk", &C::batch_catch_up_chunk, 1, no_limit,
                      "most uploaded positions one session fills per batched step (a long catch-up cannot stall the others)"));
  t.push_back(float_key(
      "ce.batch.gather", &C::batch_gather, "0..1",
      [](const double& x) { return x >= 0.0 && x <= 1.0 ? std::string() : std::string("must be in 0..1"); },
      "a step waits at most this share of the last step's time for sessions the last step answered that usually "
      "send their next request that soon, so that they share one step (0: never waits)"));
  t.push_back(duration_key("ce.request.deadline", &C::request_deadline, milliseconds(1),
                           "edge's deadline for each cloud request before it falls back"));
  t.push_back(bool_key("ce.speculation.enabled", &C::speculation_enabled,
                       "collaborative mode goes on with the edge's own guess while the cloud answers, rolling back a miss"));
  t.push_back(int_key("ce.speculation.max-ahead", &C::speculation_max_ahead, 1, 1024,
                      "most tokens the edge runs ahead of the cloud's answers (fewer when a round trip takes fewer edge steps)"));
  t.push_back(enum_key("ce.speculation.run-ahead", &C::speculation_run_ahead, run_ahead_choices,
                       "how long the edge computes on while a request is out: round-trip (until its answer is due: "
                       "a cloud on another machine), wire (only while it is on the wire, none when the cloud's "
                       "compute takes longer: a cloud on this machine's cores, whose compute the edge's steps would "
                       "slow); auto = wire for role both or clouds at loopback addresses only, round-trip otherwise"));
  t.push_back(int_key("ce.speculation.max-requests", &C::speculation_max_requests, 1, 1024,
                      "most guessed tokens asked of the cloud at once; the rows after them go up once those hold (the edge computes on meanwhile)"));
  t.push_back(float_key(
      "ce.speculation.min-path-confidence", &C::speculation_min_path_confidence, "0..1",
      [](const double& x) { return x >= 0.0 && x <= 1.0 ? std::string() : std::string("must be in 0..1"); },
      "a guess is asked of the cloud (and the rows before it uploaded) only while the chance that the unconfirmed "
      "guesses before it all hold reaches this (each guess's chance: how often the cloud confirmed guesses of its exit "
      "confidence so far): a long guessed path is seldom right"));
  t.push_back(int_key("ce.speculation.test-miss-every", &C::speculation_test_miss_every, 0, no_limit,
                      "testing: every Nth guess is made wrong, so that rollbacks happen; 0 = off"));
  t.push_back(int_key("ce.upload.batch", &C::upload_batch, 1, 4096, "most positions in one upload chunk"));
  t.push_back(int_key("ce.upload.queue-limit", &C::upload_queue_limit, 1, no_limit,
                      "most positions queued for upload"));
  t.push_back(string_key("ce.tls.certificate", &C::tls_certificate, true, anything(),
                         "PEM certificate; tls.* are all set or none"));
  t.push_back(string_key("ce.tls.key", &C::tls_key, true, anything(), "PEM private key"));
  t.push_back(string_key("ce.tls.ca", &C::tls_ca, true, anything(), "PEM CA file that signs the peers"));
  t.push_back(int_key("ce.threads", &C::compute_threads, 0, no_limit, "compute threads; 0 = all cores (half of them with role both)"));
  t.push_back(int_key("ce.actor-threads", &C::actor_threads, 1, 64, "CAF scheduler threads"));
  t.push_back(int_key("ce.generate.max-tokens", &C::max_tokens, 1, 100000, "tokens to generate per prompt"));
  t.push_back(float_key(
      "ce.generate.temperature", &C::temperature, ">= 0",
      [](const double& x) { return x >= 0.0 ? std::string() : std::string("must be >= 0"); },
      "sampling temperature; 0 = greedy"));
  t.push_back(float_key(
      "ce.generate.top-p", &C::top_p, "in (0, 1]",
      [](const double& x) { return x > 0.0 && x <= 1.0 ? std::string() : std::string("must be in (0, 1]"); },
      "nucleus sampling mass"));
  t.push_back(int_key("ce.generate.seed", &C::seed, std::numeric_limits<std::int64_t>::min(), no_limit,
                      "sampling seed of ce-node's own prompts (--stdin); an HTTP request without a seed draws a fresh one"));
  t.push_back(enum_key("ce.log.level", &C::log_level, log_level_choices, "log verbosity"));
  return t;
}

const std::vector<KeyDescriptor>& key_table() {
  static const std::vector<KeyDescriptor> table = build_key_table();
  return table;
}

const KeyDescriptor* find_key(const std::string& name) {
  for (const auto& d : key_table())
    if (d.name == name) return &d;
  return nullptr;
}

// ---------------------------------------------------------------------------------------
// Unknown keys: suggest the closest known one

std::size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = up;
    }
  }
  return row[b.size()];
}

std::string last_component(const std::string& name) { return name.substr(name.rfind('.') + 1); }

// The closest known key by edit distance; a key with the same last component ("port" for
// "ce.port") wins over one that is merely spelled alike.
std::string unknown_key_message(const std::string& name) {
  const KeyDescriptor* best = nullptr;
  std::pair<bool, std::size_t> best_score{true, std::numeric_limits<std::size_t>::max()};
  for (const auto& d : key_table()) {
    const std::pair<bool, std::size_t> score{last_component(d.name) != last_component(name),
                                             edit_distance(name, d.name)};
    if (score < best_score) best = &d, best_score = score;
  }
  return "unknown key " + name + "; did you mean " + best->name + "? (--help lists all keys)";
}

// ---------------------------------------------------------------------------------------
// The file parser

// Letters, digits, '_' and '-', in components separated by single dots.
bool is_valid_name(std::string_view name) {
  if (name.empty() || name.front() == '.' || name.back() == '.' || name.find("..") != std::string_view::npos)
    return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
  });
}

class FileParser {
 public:
  FileParser(const std::string& source_name, const std::string& base_dir) : source_(source_name), base_dir_(base_dir) {
    config_.source_path = source_name;
  }

  NodeConfig parse(const std::string& text) {
    std::istringstream in(text);
    std::string line;
    for (int number = 1; std::getline(in, line); ++number) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (number == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);  // UTF-8 BOM
      parse_line(trim(line), number);
    }
    for (const auto& d : key_table())
      if (d.required && seen_.count(d.name) == 0)
        throw ConfigError(source_ + ": missing required key " + d.name + " (" + d.type + ": " + d.help + ")");
    return config_;
  }

 private:
  void parse_line(std::string_view s, int number) {
    const std::string where = source_ + ":" + std::to_string(number) + ": ";
    if (is_blank_or_comment(s)) return;
    if (s.front() == '[') {
      section_ = parse_section(s, where);
      return;
    }
    const std::size_t eq = s.find('=');
    if (eq == std::string_view::npos)
      throw ConfigError(where + "expected 'key = value' or '[section]', got '" + std::string(s) + "'");
    const std::string key(trim(s.substr(0, eq)));
    if (key.empty()) throw ConfigError(where + "missing key before '='");
    if (!is_valid_name(key))
      throw ConfigError(where + "bad key name '" + key + "' (letters, digits, '_', '-' and single dots)");
    const std::string name = section_.empty() ? key : section_ + "." + key;
    const KeyDescriptor* d = find_key(name);
    if (d == nullptr) throw ConfigError(where + unknown_key_message(name));
    if (auto it = seen_.find(name); it != seen_.end())
      throw ConfigError(where + "duplicate key " + name + " (first set on line " + std::to_string(it->second) + ")");
    seen_[name] = number;
    RawValue value;
    try {
      value = lex_value(s.substr(eq + 1));
    } catch (const ValueError& e) {
      throw ConfigError(where + name + ": " + e.what());
    }
    try {
      d->set(config_, value, base_dir_);
    } catch (const ValueError& e) {
      throw ConfigError(where + name + " = " + value.source + ": " + e.what());
    }
  }

  static std::string parse_section(std::string_view s, const std::string& where) {
    const std::size_t close = s.find(']');
    if (close == std::string_view::npos)
      throw ConfigError(where + "unterminated section header '" + std::string(s) + "': missing ']'");
    const std::string name(trim(s.substr(1, close - 1)));
    if (!is_valid_name(name)) throw ConfigError(where + "bad section name '[" + name + "]'");
    if (!is_blank_or_comment(s.substr(close + 1)))
      throw ConfigError(where + "unexpected text after section header [" + name + "]");
    return name;
  }

  std::string source_;
  std::string base_dir_;
  std::string section_;
  std::map<std::string, int> seen_;  // key -> line it was set on
  NodeConfig config_;
};

// ---------------------------------------------------------------------------------------
// Checks between fields and against the file system (validate())

bool is_file(const std::string& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

void check_model_dir(const NodeConfig& c, const std::string& where) {
  const std::string key = where + "ce.model.path = " + quote(c.model_path) + ": ";
  std::error_code ec;
  if (!fs::exists(c.model_path, ec)) throw ConfigError(key + "directory does not exist");
  if (!fs::is_directory(c.model_path, ec)) throw ConfigError(key + "not a directory");
  for (const char* file : {"config.json", "model.safetensors"})
    if (!is_file((fs::path(c.model_path) / file).string()))
      throw ConfigError(key + "missing " + file + " (a model directory holds config.json and model.safetensors)");
}

void check_tls(const NodeConfig& c, const std::string& where) {
  const std::pair<const char*, const std::string*> paths[] = {
      {"ce.tls.certificate", &c.tls_certificate}, {"ce.tls.key", &c.tls_key}, {"ce.tls.ca", &c.tls_ca}};
  std::string set, unset;
  for (const auto& [name, value] : paths) (value->empty() ? unset : set) += (std::string(" ") + name);
  if (set.empty()) return;
  if (!unset.empty())
    throw ConfigError(where + "TLS is half configured: set" + set + " but not" + unset +
                      "; ce.tls.certificate, ce.tls.key and ce.tls.ca must be set together or not at all");
  for (const auto& [name, value] : paths)
    if (!is_file(*value)) throw ConfigError(where + name + " = " + quote(*value) + ": file does not exist");
}

void check_listener(const NodeConfig& c, const std::string& where) {
  const bool listens = c.role == Role::cloud || c.role == Role::both;
  if (!listens || is_loopback(c.listen_host) || c.tls_enabled() || c.allow_plain_remote) return;
  throw ConfigError(where + "ce.listen.host = " + quote(c.listen_host) +
                    ": refusing a plaintext listener on a non-loopback address: CAF 0.17's BASP has no "
                    "payload size cap, so any peer that reaches the port can make this node allocate "
                    "without bound. Set ce.tls.certificate, ce.tls.key and ce.tls.ca, or set "
                    "ce.listen.allow-plain-remote = true on a trusted network");
}

}  // namespace

// -----------------------------------------------------------------------------------------
// Public API

const char* to_string(Role role) { return name_of(role_choices, role); }
const char* to_string(InferenceMode mode) { return name_of(mode_choices, mode); }
const char* to_string(LogLevel level) { return name_of(log_level_choices, level); }
const char* to_string(ExitPolicy policy) { return name_of(exit_policy_choices, policy); }
const char* to_string(RunAhead run_ahead) { return name_of(run_ahead_choices, run_ahead); }

std::string NodeConfig::calibration_path() const {
  return exit_calibration.empty() ? (fs::path(model_path) / "eval" / "valid.csv").string() : exit_calibration;
}

std::vector<CloudAddress> parse_cloud_nodes(const std::string& text) {
  std::vector<CloudAddress> out;
  std::string entry;
  auto take = [&]() {
    if (entry.empty()) return;
    const auto colon = entry.rfind(':');
    const std::string why = "\"" + entry + "\": ";
    if (colon == std::string::npos || colon == 0 || colon + 1 == entry.size())
      throw ConfigError(why + "expected host:port");
    std::string host = entry.substr(0, colon);
    const std::string port_text = entry.substr(colon + 1);
    if (host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);  // [::1]:7700
    if (host.find(':') != std::string::npos && entry.front() != '[')
      throw ConfigError(why + "write an IPv6 address in brackets, [addr]:port");
    if (!std::all_of(port_text.begin(), port_text.end(), is_digit) || port_text.size() > 5 ||
        std::stoi(port_text) < 1 || std::stoi(port_text) > 65535)
      throw ConfigError(why + "port must be in 1..65535");
    CloudAddress a{host, static_cast<std::uint16_t>(std::stoi(port_text))};
    if (std::find(out.begin(), out.end(), a) != out.end()) throw ConfigError(why + "listed twice");
    out.push_back(a);
    entry.clear();
  };
  for (char ch : text) {
    if (ch == ',' || std::isspace(static_cast<unsigned char>(ch))) take();
    else entry += ch;
  }
  take();
  if (out.empty()) throw ConfigError("no host:port in \"" + text + "\"");
  return out;
}

std::vector<std::string> parse_cors_origins(const std::string& text) {
  std::vector<std::string> out;
  std::string entry;
  auto take = [&]() {
    if (entry.empty()) return;
    std::string origin;
    for (char ch : entry) origin += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (origin.size() > 1 && origin.back() == '/') origin.pop_back();
    if (origin != "*") {
      const auto scheme = origin.find("://");
      const std::string rest = scheme == std::string::npos ? "" : origin.substr(scheme + 3);
      const std::string name = origin.substr(0, scheme);
      if ((name != "http" && name != "https") || rest.empty() || rest.front() == ':' ||
          rest.find_first_of("/?#@ ") != std::string::npos)
        throw ConfigError("\"" + entry + "\": an origin is scheme://host[:port] (http or https, no path), or *");
    }
    if (std::find(out.begin(), out.end(), origin) == out.end()) out.push_back(origin);
    entry.clear();
  };
  for (char ch : text) {
    if (ch == ',' || std::isspace(static_cast<unsigned char>(ch))) take();
    else entry += ch;
  }
  take();
  if (out.size() > 1 && std::find(out.begin(), out.end(), "*") != out.end())
    throw ConfigError("\"" + text + "\": * allows every origin; list no others beside it");
  return out;
}

bool is_loopback(const std::string& host) {
  std::string h = host;
  std::transform(h.begin(), h.end(), h.begin(), [](unsigned char ch) { return std::tolower(ch); });
  if (h == "localhost" || h == "::1" || h == "[::1]") return true;
  // 127.a.b.c
  std::istringstream in(h);
  std::string part;
  int parts = 0;
  bool first_is_127 = false;
  while (std::getline(in, part, '.')) {
    if (part.empty() || part.size() > 3 || !std::all_of(part.begin(), part.end(), is_digit) || std::stoi(part) > 255)
      return false;
    if (parts++ == 0) first_is_127 = part == "127";
  }
  return parts == 4 && h.back() != '.' && first_is_127;
}

std::vector<CloudAddress> NodeConfig::cloud_addresses() const {
  if (cloud_nodes.empty()) return {CloudAddress{cloud_host, cloud_port}};
  return parse_cloud_nodes(cloud_nodes);
}

RunAhead NodeConfig::run_ahead() const {
  if (speculation_run_ahead != RunAhead::automatic) return speculation_run_ahead;
  const auto clouds = cloud_addresses();
  const bool local = role == Role::both ||
                     std::all_of(clouds.begin(), clouds.end(), [](const CloudAddress& c) { return is_loopback(c.host); });
  return local ? RunAhead::wire : RunAhead::round_trip;
}

std::optional<InferenceMode> inference_mode_named(const std::string& name) {
  for (const auto& c : mode_choices)
    if (name == c.name) return c.value;
  return std::nullopt;
}
std::string inference_mode_names() { return choice_list(mode_choices); }

void NodeConfig::validate() const {
  const std::string where = (source_path.empty() ? std::string("config") : source_path) + ": ";
  for (const auto& d : key_table())
    if (auto why = d.check(*this); !why.empty()) throw ConfigError(where + d.name + " = " + d.show(*this) + ": " + why);
  check_model_dir(*this, where);
  if (exit_policy == ExitPolicy::latency_budget && !is_file(calibration_path()))
    throw ConfigError(where + "ce.exit.policy = latency-budget needs a calibration table: " + calibration_path() +
                      " does not exist (set ce.exit.calibration, or write it with ce-eval --out-csv MODEL/eval/valid.csv)");
  check_tls(*this, where);
  check_listener(*this, where);
}

NodeConfig parse_node_config_text(const std::string& text, const std::string& source_name,
                                  const std::string& base_dir) {
  return FileParser(source_name, base_dir).parse(text);
}

NodeConfig load_node_config(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw ConfigError("config file " + path + " does not exist");
  if (fs::is_directory(path, ec)) throw ConfigError("config file " + path + " is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError("cannot read config file " + path);
  std::ostringstream text;
  text << in.rdbuf();
  const fs::path absolute = fs::absolute(path, ec);
  const std::string base_dir = (ec ? fs::path(path) : absolute).parent_path().string();
  NodeConfig config = parse_node_config_text(text.str(), path, base_dir);
  config.validate();
  return config;
}

void apply_override(NodeConfig& config, const std::string& assignment, const std::string& base_dir) {
  const std::string where = "--set " + assignment + ": ";
  const std::size_t eq = assignment.find('=');
  if (eq == std::string::npos) throw ConfigError(where + "expected KEY=VALUE, e.g. ce.cloud.port=7801");
  const std::string name(trim(std::string_view(assignment).substr(0, eq)));
  const KeyDescriptor* d = find_key(name);
  if (d == nullptr) throw ConfigError(where + unknown_key_message(name));
  // Unlike a file line, an unquoted override value is everything after '=' (no comments),
  // so paths with blanks need no quotes on a command line.
  const std::string_view rest = trim(std::string_view(assignment).substr(eq + 1));
  try {
    RawValue value{false, std::string(rest), std::string(rest)};
    if (!rest.empty() && rest.front() == '"') value = lex_value(rest);
    if (rest.empty()) throw ValueError("missing value after '='");
    d->set(config, value, base_dir);
  } catch (const ValueError& e) {
    throw ConfigError(where + e.what());
  }
}

std::string describe(const NodeConfig& config) {
  std::size_t width = 0;
  for (const auto& d : key_table()) width = std::max(width, d.name.size());
  std::ostringstream out;
  out << "; effective configuration" << (config.source_path.empty() ? "" : " from " + config.source_path) << "\n";
  for (const auto& d : key_table())
    out << std::left << std::setw(int(width)) << d.name << " = " << d.show(config) << "\n";
  return out.str();
}

std::chrono::milliseconds parse_duration(const std::string& text, const std::string& what) {
  try {
    return to_duration(RawValue{false, text, ""});
  } catch (const ValueError& e) {
    throw ConfigError(what + ": " + e.what());
  }
}

std::string config_keys_help() {
  const NodeConfig defaults_config;
  std::size_t name_width = 0, type_width = 0;
  for (const auto& d : key_table()) {
    name_width = std::max(name_width, d.name.size());
    type_width = std::max(type_width, d.type.size());
  }
  std::ostringstream out;
  for (const auto& d : key_table()) {
    const std::string default_text = d.required ? "required" : "default " + d.show(defaults_config);
    out << "  " << std::left << std::setw(int(name_width)) << d.name << "  " << std::setw(int(type_width)) << d.type
        << "  [" << default_text << "]  " << d.help << "\n";
  }
  return out.str();
}

}  // namespace ce
