#pragma once
// Minimal flag parsing shared by the thin binaries: --name value / --name=value / --flag,
// every flag documented, unknown flags and missing values are errors naming the flag.
#include <cstdlib>
#include <iostream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ce::cli {

struct Flag {
  std::string name;  // without dashes
  std::string value_name;  // empty: boolean switch
  std::string help;
  std::string default_value;
};

class Parser {
 public:
  Parser(std::string program, std::string summary) : program_(std::move(program)), summary_(std::move(summary)) {}
  Parser& add(const std::string& name, const std::string& value_name, const std::string& help,
              const std::string& default_value = "") {
    flags_.push_back({name, value_name, help, default_value});
    return *this;
  }
  // Exits 0 after printing help on --help; exits 2 with a message on a bad command line.
  void parse(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        std::cout << help();
        std::exit(0);
      }
      if (arg.rfind("--", 0) != 0) fail("unexpected argument '" + arg + "'");
      std::string name = arg.substr(2), value;
      bool has_value = false;
      if (auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_value = true;
      }
      const Flag* f = find(name);
      if (!f) fail("unknown flag --" + name);
      if (f->value_name.empty()) {
        if (has_value) fail("--" + name + " takes no value");
        values_[name].push_back("1");
        continue;
      }
      if (!has_value) {
        if (i + 1 >= argc) fail("--" + name + " needs a value (" + f->value_name + ")");
        value = argv[++i];
      }
      values_[name].push_back(value);
    }
  }
  bool has(const std::string& name) const { return values_.count(name) > 0; }
  std::string get(const std::string& name) const {
    auto it = values_.find(name);
    if (it != values_.end()) return it->second.back();
    const Flag* f = find(name);
    return f ? f->default_value : "";
  }
  std::vector<std::string> all(const std::string& name) const {
    auto it = values_.find(name);
    return it == values_.end() ? std::vector<std::string>{} : it->second;
  }
  long long get_int(const std::string& name) const {
    try {
      size_t used = 0;
      auto s = get(name);
      long long v = std::stoll(s, &used);
      if (used != s.size()) throw std::invalid_argument(s);
      return v;
    } catch (const std::exception&) {
      fail("--" + name + " needs an integer, got '" + get(name) + "'");
    }
  }
  double get_double(const std::string& name) const {
    try {
      size_t used = 0;
      auto s = get(name);
      double v = std::stod(s, &used);
      if (used != s.size()) throw std::invalid_argument(s);
      return v;
    } catch (const std::exception&) {
      fail("--" + name + " needs a number, got '" + get(name) + "'");
    }
  }
  // A comma-separated value, its empty items skipped: "full,edge" -> {"full", "edge"}.
  std::vector<std::string> get_list(const std::string& name) const {
    std::vector<std::string> out;
    std::stringstream in(get(name));
    for (std::string item; std::getline(in, item, ',');)
      if (!item.empty()) out.push_back(item);
    return out;
  }
  // The same, every item an integer (the whole item, not a prefix of it).
  std::vector<long long> get_int_list(const std::string& name) const {
    std::vector<long long> out;
    for (const auto& item : get_list(name)) {
      size_t used = 0;
      long long v = 0;
      try {
        v = std::stoll(item, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != item.size())
        fail("--" + name + " needs comma-separated integers, got '" + item + "'");
      out.push_back(v);
    }
    return out;
  }
  std::string require(const std::string& name) const {
    if (!has(name) && get(name).empty()) fail("--" + name + " is required");
    return get(name);
  }
  [[noreturn]] void fail(const std::string& message) const {
    std::cerr << program_ << ": " << message << "\n(see " << program_ << " --help)\n";
    std::exit(2);
  }
  std::string help() const {
    std::string out = "Usage: " + program_ + " [flags]\n" + summary_ + "\n\nFlags:\n";
    for (auto& f : flags_) {
      std::string left = "  --" + f.name + (f.value_name.empty() ? "" : " " + f.value_name);
      if (left.size() < 28) left.append(28 - left.size(), ' ');
      out += left + " " + f.help;
      if (!f.default_value.empty()) out += " (default: " + f.default_value + ")";
      out += "\n";
    }
    out += "  --help                       show this help\n";
    return out;
  }

 private:
  const Flag* find(const std::string& name) const {
    for (auto& f : flags_)
      if (f.name == name) return &f;
    return nullptr;
  }
  std::string program_, summary_;
  std::vector<Flag> flags_;
  std::map<std::string, std::vector<std::string>> values_;
};

}  // namespace ce::cli
