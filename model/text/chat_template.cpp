// A Jinja interpreter for chat templates: lexer (source to tokens, whitespace control applied),
// parser (tokens to the tree of chat_template_internal.hpp), renderer (tree and variables to
// text).
//
// Whose semantics: where Jinja2 (as transformers configures it) and @huggingface/jinja (the
// reference the tests compare against) print the same value differently, we print it as the
// reference does: true/false, none as "", lists and dicts as JSON, floats as JavaScript writes
// them, string lengths in UTF-16 units. Where they compute differently, or the reference fails on
// something Jinja2 accepts, we follow Jinja2, since the models were trained on its output:
//  - looking into an undefined value (missing.attr, [][0].role) or computing with it is an error;
//    printing it, testing it, iterating it, |length, |default and string filters are lenient;
//  - str.strip/lstrip/rstrip(chars) strip those characters (the reference strips whitespace);
//  - title and capitalize lower-case the rest of each word;
//  - == compares lists and dicts by content; < > compare strings; 'a' * 3 repeats;
//  - selectattr/rejectattr apply the test to a missing attribute as undefined;
//  - strings iterate by character, tuples print, |list and |reverse take strings.
// Case mapping covers ASCII only. Python-only output formats (True, None, ['a']) never appear.
#include "model/text/chat_template.hpp"

#include <fstream>
#include <iterator>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <unordered_map>

#include "model/text/chat_template_internal.hpp"

namespace ce {
namespace chat_template_detail {
namespace {

constexpr size_t kNoPos = std::numeric_limits<size_t>::max();

// Thrown inside the interpreter; ChatTemplate turns it into a TemplateError with a line and a
// column. `pos` is set by the innermost node that knows where it is.
struct Failure {
  std::string message;
  size_t pos = kNoPos;
  bool raised_by_template = false;  // raise_exception(): the message is the template's own
};

[[noreturn]] void fail(std::string message, size_t pos = kNoPos) { throw Failure{std::move(message), pos}; }

// ---------------------------------------------------------------------------------------------
// UTF-8 and whitespace. Whitespace is JavaScript's \s (what @huggingface/jinja trims and what
// `{%-` strips); Python's str.strip() agrees on every character a chat is likely to contain.

size_t decode_utf8(const std::string& s, size_t i, uint32_t& cp) {
  const auto lead = static_cast<unsigned char>(s[i]);
  cp = lead;
  if (lead < 0x80) return 1;
  const size_t n = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 0;
  if (n == 0 || i + n > s.size()) return 1;  // a stray byte counts as one character
  uint32_t value = lead & (0x3Fu >> (n - 1));
  for (size_t k = 1; k < n; ++k) {
    const auto byte = static_cast<unsigned char>(s[i + k]);
    if ((byte & 0xC0) != 0x80) return 1;
    value = (value << 6) | (byte & 0x3F);
  }
  cp = value;
  return n;
}

void append_utf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

bool is_space(uint32_t cp) {
  if (cp <= 32) return cp == 32 || (cp >= 9 && cp <= 13);
  return cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000 || cp == 0xFEFF;
}

// Byte length of the whitespace character at s[i], 0 if it is not whitespace.
size_t space_at(const std::string& s, size_t i) {
  uint32_t cp;
  const size_t n = decode_utf8(s, i, cp);
  return is_space(cp) ? n : 0;
}

size_t skip_spaces(const std::string& s, size_t i) {
  while (i < s.size()) {
    const size_t n = space_at(s, i);
    if (n == 0) break;
    i += n;
  }
  return i;
}

// Start of the character that ends at `end` (exclusive).
size_t previous_char_start(const std::string& s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80 && end - i < 4) --i;
  return i;
}

std::vector<std::string> split_chars(const std::string& s) {
  std::vector<std::string> chars;
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    const size_t n = decode_utf8(s, i, cp);
    chars.push_back(s.substr(i, n));
    i += n;
  }
  return chars;
}

// Strips characters from both ends (or one): with `chars` unset, whitespace (str.strip());
// otherwise any character of `chars` (str.strip(chars)), as Python does.
std::string strip_text(const std::string& s, const std::string* chars, bool left, bool right) {
  std::set<uint32_t> strip_set;
  if (chars) {
    for (size_t i = 0; i < chars->size();) {
      uint32_t cp;
      i += decode_utf8(*chars, i, cp);
      strip_set.insert(cp);
    }
  }
  auto strips = [&](uint32_t cp) { return chars ? strip_set.count(cp) > 0 : is_space(cp); };
  size_t begin = 0, end = s.size();
  while (left && begin < end) {
    uint32_t cp;
    const size_t n = decode_utf8(s, begin, cp);
    if (!strips(cp)) break;
    begin += n;
  }
  while (right && end > begin) {
    const size_t start = previous_char_start(s, end);
    uint32_t cp;
    decode_utf8(s, start, cp);
    if (!strips(cp)) break;
    end = start;
  }
  return s.substr(begin, end - begin);
}

// Length as JavaScript counts it (UTF-16 code units), which `length` reports in the reference.
int64_t utf16_length(const std::string& s) {
  int64_t length = 0;
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    i += decode_utf8(s, i, cp);
    length += cp >= 0x10000 ? 2 : 1;
  }
  return length;
}

// Case mapping covers ASCII only; a chat template changes the case of role names, not of text.
std::string to_upper(std::string s) {
  for (char& c : s)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  return s;
}
std::string to_lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}
bool is_word_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }
// str.title(): every word starts upper case, the rest is lower case.
std::string title_case(const std::string& s) {
  std::string out = to_lower(s);
  bool in_word = false;
  for (char& c : out) {
    const bool letter = std::isalpha(static_cast<unsigned char>(c)) != 0;
    if (letter && !in_word) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    in_word = letter;
  }
  return out;
}
std::string capitalize(const std::string& s) {
  std::string out = to_lower(s);
  if (!out.empty()) out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
  return out;
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
  if (count == 0) return s;
  std::string out;
  if (from.empty()) {  // Python inserts `to` around every character
    const auto chars = split_chars(s);
    for (size_t i = 0; i < chars.size(); ++i) {
      if (count < 0 || static_cast<int64_t>(i) < count) out += to;
      out += chars[i];
    }
    if (count < 0 || static_cast<int64_t>(chars.size()) < count) out += to;
    return out;
  }
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out += to;
    pos = hit + from.size();
    ++done;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Numbers as JavaScript prints them (Number.prototype.toString): the shortest decimal that reads
// back as the same double, in positional notation from 1e-6 to 1e21.

std::string js_number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v < 0 ? "-Infinity" : "Infinity";
  if (v == 0) return "0";
  const std::string sign = v < 0 ? "-" : "";
  v = std::fabs(v);
  char buffer[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buffer, sizeof buffer, "%.*e", precision - 1, v);
    if (std::strtod(buffer, nullptr) == v) break;
  }
  std::string digits;
  const char* p = buffer;
  for (; *p && *p != 'e'; ++p)
    if (*p != '.') digits += *p;
  const int exponent = *p == 'e' ? std::atoi(p + 1) : 0;
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  const int k = static_cast<int>(digits.size());
  const int n = exponent + 1;  // the decimal point sits after n digits
  if (k <= n && n <= 21) return sign + digits + std::string(n - k, '0');
  if (0 < n && n <= 21) return sign + digits.substr(0, n) + "." + digits.substr(n);
  if (-6 < n && n <= 0) return sign + "0." + std::string(-n, '0') + digits;
  const std::string e = std::string(n - 1 >= 0 ? "+" : "-") + std::to_string(std::abs(n - 1));
  if (k == 1) return sign + digits + "e" + e;
  return sign + digits.substr(0, 1) + "." + digits.substr(1) + "e" + e;
}

// A float rendered by {{ }}: integral values keep a ".0", as in Python.
std::string float_text(double v) {
  if (v == 0 && std::signbit(v)) return "-0.0";
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e21) {
    char buffer[40];
    std::snprintf(buffer, sizeof buffer, "%.1f", v);
    return buffer;
  }
  return js_number(v);
}

// A JSON string literal as JSON.stringify writes it; ensure_ascii escapes everything from 0x7F
// up as UTF-16 \uXXXX escapes.
void append_json_string(const std::string& s, bool ensure_ascii, std::string& out) {
  static const char* hex = "0123456789abcdef";
  auto escape_unit = [&](uint32_t unit) {
    out += "\\u";
    for (int shift = 12; shift >= 0; shift -= 4) out += hex[(unit >> shift) & 0xF];
  };
  out += '"';
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    const size_t n = decode_utf8(s, i, cp);
    switch (cp) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (cp < 0x20) {
          escape_unit(cp);
        } else if (ensure_ascii && cp >= 0x7F) {
          if (cp >= 0x10000) {
            escape_unit(0xD800 + ((cp - 0x10000) >> 10));
            escape_unit(0xDC00 + ((cp - 0x10000) & 0x3FF));
          } else {
            escape_unit(cp);
          }
        } else {
          out.append(s, i, n);
        }
    }
    i += n;
  }
  out += '"';
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Value

const Value* Object::find(const std::string& key) const {
  for (const auto& [k, v] : entries)
    if (k == key) return &v;
  return nullptr;
}

void Object::set(const std::string& key, Value value) {
  for (auto& [k, v] : entries) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  entries.emplace_back(key, std::move(value));
}

Value Value::undefined(std::string what) {
  Value v;
  v.text = std::move(what);
  return v;
}
Value Value::none() {
  Value v;
  v.kind = Kind::None;
  return v;
}
Value Value::from_bool(bool b) {
  Value v;
  v.kind = Kind::Bool;
  v.boolean = b;
  return v;
}
Value Value::from_int(int64_t i) {
  Value v;
  v.kind = Kind::Int;
  v.integer = i;
  return v;
}
Value Value::from_float(double d) {
  Value v;
  v.kind = Kind::Float;
  v.real = d;
  return v;
}
Value Value::from_string(std::string s) {
  Value v;
  v.kind = Kind::String;
  v.text = std::move(s);
  return v;
}
Value Value::from_array(Array items) {
  Value v;
  v.kind = Kind::Array;
  v.array = std::make_shared<const Array>(std::move(items));
  return v;
}
Value Value::from_object(Object o) {
  Value v;
  v.kind = Kind::Object;
  v.object = std::make_shared<Object>(std::move(o));
  return v;
}
Value Value::new_namespace(Object o) {
  Value v = from_object(std::move(o));
  v.kind = Kind::Namespace;
  return v;
}
Value Value::from_function(Function f) {
  Value v;
  v.kind = Kind::Function;
  v.function = std::make_shared<const Function>(std::move(f));
  return v;
}

namespace {

const char* type_name(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined: return "undefined";
    case Value::Kind::None: return "none";
    case Value::Kind::Bool: return "bool";
    case Value::Kind::Int: return "int";
    case Value::Kind::Float: return "float";
    case Value::Kind::String: return "string";
    case Value::Kind::Array: return "list";
    case Value::Kind::Object: return "dict";
    case Value::Kind::Namespace: return "namespace";
    case Value::Kind::Function: return "function";
  }
  return "value";
}

// Using an undefined value where Jinja requires a defined one.
[[noreturn]] void fail_undefined(const Value& v) {
  fail(v.text.empty() ? std::string("use of an undefined value") : v.text);
}

bool truthy(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
    case Value::Kind::None: return false;
    case Value::Kind::Bool: return v.boolean;
    case Value::Kind::Int: return v.integer != 0;
    case Value::Kind::Float: return v.real != 0 && !std::isnan(v.real);
    case Value::Kind::String: return !v.text.empty();
    case Value::Kind::Array: return !v.array->empty();
    case Value::Kind::Object: return !v.object->entries.empty();
    case Value::Kind::Namespace:
    case Value::Kind::Function: return true;
  }
  return false;
}

struct JsonStyle {
  int64_t indent = 0;  // 0: one line
  bool ensure_ascii = false;
  bool sort_keys = false;
  std::string item_separator = ", ", key_separator = ": ";
  bool undefined_as_null = true;  // tojson: null; printing a list: "undefined", as the reference
};

// Key order of sort_keys: the reference sorts with localeCompare, which puts "a" before "B";
// case-folded order, lower case first on ties, agrees with it for the keys of tool schemas.
bool key_less(const std::string& a, const std::string& b) {
  const std::string la = to_lower(a), lb = to_lower(b);
  if (la != lb) return la < lb;
  return a > b;
}

void append_json(const Value& v, const JsonStyle& style, int depth, std::string& out) {
  switch (v.kind) {
    case Value::Kind::Undefined: out += style.undefined_as_null ? "null" : "undefined"; return;
    case Value::Kind::None: out += "null"; return;
    case Value::Kind::Bool: out += v.boolean ? "true" : "false"; return;
    case Value::Kind::Int: out += std::to_string(v.integer); return;
    case Value::Kind::Float: out += std::isfinite(v.real) ? js_number(v.real) : "null"; return;
    case Value::Kind::String: append_json_string(v.text, style.ensure_ascii, out); return;
    case Value::Kind::Function: fail("cannot convert a function to JSON");
    case Value::Kind::Array:
    case Value::Kind::Object:
    case Value::Kind::Namespace: break;
  }
  const std::string unit(static_cast<size_t>(std::max<int64_t>(style.indent, 0)), ' ');
  std::string base_padding = "\n", child_padding;
  for (int i = 0; i < depth; ++i) base_padding += unit;
  child_padding = base_padding + unit;
  const bool pretty = style.indent > 0;
  if (v.kind == Value::Kind::Array) {
    const Array& items = *v.array;
    out += '[';
    for (size_t i = 0; i < items.size(); ++i) {
      if (i > 0) out += style.item_separator;
      if (pretty) out += child_padding;
      append_json(items[i], style, depth + 1, out);
    }
    if (pretty && !items.empty()) out += base_padding;
    out += ']';
    return;
  }
  std::vector<const std::pair<std::string, Value>*> entries;
  for (const auto& entry : v.object->entries) entries.push_back(&entry);
  if (style.sort_keys)
    std::stable_sort(entries.begin(), entries.end(),
                     [](auto* a, auto* b) { return key_less(a->first, b->first); });
  out += '{';
  for (size_t i = 0; i < entries.size(); ++i) {
    if (i > 0) out += style.item_separator;
    if (pretty) out += child_padding;
    append_json_string(entries[i]->first, style.ensure_ascii, out);
    out += style.key_separator;
    append_json(entries[i]->second, style, depth + 1, out);
  }
  if (pretty && !entries.empty()) out += base_padding;
  out += '}';
}

// What {{ value }} prints.
std::string output_text(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
    case Value::Kind::None: return "";
    case Value::Kind::Bool: return v.boolean ? "true" : "false";
    case Value::Kind::Int: return std::to_string(v.integer);
    case Value::Kind::Float: return float_text(v.real);
    case Value::Kind::String: return v.text;
    case Value::Kind::Function: return "<function>";
    default: {
      JsonStyle style;
      style.undefined_as_null = false;
      std::string out;
      append_json(v, style, 0, out);
      return out;
    }
  }
}

// A value as the string operators (~, and + with a string) see it. The reference takes the
// underlying JavaScript value's text: floats lose their ".0", lists join with commas.
std::string concat_text(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined: return "";
    case Value::Kind::Float: return js_number(v.real);
    case Value::Kind::Array: {
      std::string out;
      for (size_t i = 0; i < v.array->size(); ++i) {
        if (i > 0) out += ',';
        const Value& item = (*v.array)[i];
        out += item.is_none() ? "null" : item.is_undefined() ? "undefined" : output_text(item);
      }
      return out;
    }
    default: return output_text(v);
  }
}

bool is_numeric(const Value& v) {
  return v.kind == Value::Kind::Int || v.kind == Value::Kind::Float || v.kind == Value::Kind::Bool;
}
double as_double(const Value& v) {
  return v.kind == Value::Kind::Float  ? v.real
         : v.kind == Value::Kind::Bool ? (v.boolean ? 1 : 0)
                                       : double(v.integer);
}
int64_t as_int(const Value& v) { return v.kind == Value::Kind::Bool ? (v.boolean ? 1 : 0) : v.integer; }

// ==: numbers by value (true == 1), none and undefined equal each other (JavaScript's loose
// equality, which the reference uses), lists and dicts by content (Python).
bool values_equal(const Value& a, const Value& b) {
  if (is_numeric(a) && is_numeric(b)) {
    if (a.kind != Value::Kind::Float && b.kind != Value::Kind::Float) return as_int(a) == as_int(b);
    return as_double(a) == as_double(b);
  }
  const bool a_empty = a.is_undefined() || a.is_none(), b_empty = b.is_undefined() || b.is_none();
  if (a_empty || b_empty) return a_empty && b_empty;
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Kind::String: return a.text == b.text;
    case Value::Kind::Array: {
      if (a.array->size() != b.array->size()) return false;
      for (size_t i = 0; i < a.array->size(); ++i)
        if (!values_equal((*a.array)[i], (*b.array)[i])) return false;
      return true;
    }
    case Value::Kind::Object: {
      if (a.object->entries.size() != b.object->entries.size()) return false;
      for (const auto& [key, value] : a.object->entries) {
        const Value* other = b.object->find(key);
        if (!other || !values_equal(value, *other)) return false;
      }
      return true;
    }
    case Value::Kind::Namespace: return a.object == b.object;
    case Value::Kind::Function: return a.function == b.function;
    default: return false;
  }
}

// <, <=, >, >=: numbers and strings (by code point); -1, 0 or 1.
int compare_values(const Value& a, const Value& b) {
  if (is_numeric(a) && is_numeric(b)) {
    const double x = as_double(a), y = as_double(b);
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) return a.text < b.text ? -1 : a.text > b.text ? 1 : 0;
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  fail(std::string("cannot compare ") + type_name(a) + " with " + type_name(b));
}

Value value_from_json(const nlohmann::ordered_json& j) {
  using Type = nlohmann::ordered_json::value_t;
  switch (j.type()) {
    case Type::null: return Value::none();
    case Type::boolean: return Value::from_bool(j.get<bool>());
    case Type::number_integer: return Value::from_int(j.get<int64_t>());
    case Type::number_unsigned: {
      const auto u = j.get<uint64_t>();
      if (u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return Value::from_int(int64_t(u));
      return Value::from_float(double(u));
    }
    case Type::number_float: {
      // JavaScript has one number type: 2.0 in the JSON is the integer 2 to the reference.
      const double d = j.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) <= 9007199254740992.0)
        return Value::from_int(static_cast<int64_t>(d));
      return Value::from_float(d);
    }
    case Type::string: return Value::from_string(j.get<std::string>());
    case Type::array: {
      Array items;
      items.reserve(j.size());
      for (const auto& item : j) items.push_back(value_from_json(item));
      return Value::from_array(std::move(items));
    }
    case Type::object: {
      Object o;
      o.entries.reserve(j.size());
      for (const auto& [key, item] : j.items()) o.set(key, value_from_json(item));
      return Value::from_object(std::move(o));
    }
    default: fail("variables: unsupported JSON value (binary)");
  }
}

// ---------------------------------------------------------------------------------------------
// Lexer: text, tag delimiters and the tokens inside tags. Whitespace control is applied here:
// `{%-`/`{{-`/`{#-` strip the whitespace before, `-%}`/`-}}`/`-#}` the whitespace after;
// lstrip_blocks drops spaces and tabs between a line start and `{%` or `{#`; trim_blocks drops
// the newline right after `%}` or `#}`. Comments leave no token.

enum class TokenType {
  Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Integer, Float, Operator, End
};

struct Token {
  TokenType type;
  std::string text;  // Text: the text; Name/Operator: as written; String: the value; numbers: digits
  SourcePos pos;
};

class Lexer {
 public:
  explicit Lexer(const std::string& source) : src_(source) {}

  std::vector<Token> run() {
    size_t pos = 0;
    const size_t n = src_.size();
    while (pos < n) {
      const size_t open = find_tag_open(pos);
      std::string text = src_.substr(pos, (open == std::string::npos ? n : open) - pos);
      if (open != std::string::npos) apply_strip_before(open, pos, text);
      if (!text.empty()) tokens_.push_back({TokenType::Text, std::move(text), pos});
      if (open == std::string::npos) break;
      pos = src_[open + 1] == '#' ? lex_comment(open) : lex_tag(open);
    }
    tokens_.push_back({TokenType::End, "", n});
    return std::move(tokens_);
  }

 private:
  size_t find_tag_open(size_t from) const {
    for (size_t i = src_.find('{', from); i != std::string::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    }
    return std::string::npos;
  }

  bool dash_after_open(size_t open) const { return open + 2 < src_.size() && src_[open + 2] == '-'; }

  // `text` runs from `text_start` to the tag at `open`.
  void apply_strip_before(size_t open, size_t text_start, std::string& text) const {
    if (dash_after_open(open)) {
      text = strip_text(text, nullptr, false, true);
    } else if (src_[open + 1] != '{') {  // lstrip_blocks: block tags and comments
      size_t run = text.size();
      while (run > 0 && (text[run - 1] == ' ' || text[run - 1] == '\t')) --run;
      const size_t at = text_start + run;
      if (at == 0 || src_[at - 1] == '\n' || src_[at - 1] == '\r') text.resize(run);
    }
  }

  size_t after_close(size_t pos, bool strip_after, bool trim_newline) const {
    if (strip_after) return skip_spaces(src_, pos);
    if (trim_newline && pos < src_.size() && src_[pos] == '\n') return pos + 1;
    return pos;
  }

  size_t lex_comment(size_t open) {
    const size_t body = open + 2 + (dash_after_open(open) ? 1 : 0);
    const size_t close = src_.find("#}", body);
    if (close == std::string::npos) fail("unclosed comment: '{#' without a matching '#}'", open);
    const bool strip_after = close > body && src_[close - 1] == '-';
    return after_close(close + 2, strip_after, true);
  }

  // Lexes `{{ ... }}` or `{% ... %}` from its opening at `open`; returns where the text resumes.
  size_t lex_tag(size_t open) {
    const bool is_block = src_[open + 1] == '%';
    const char* closer = is_block ? "%}" : "}}";
    tokens_.push_back({is_block ? TokenType::BlockBegin : TokenType::VarBegin, is_block ? "{%" : "{{", open});
    size_t pos = open + 2 + (dash_after_open(open) ? 1 : 0);
    int brace_depth = 0;  // `}}` inside {{ }} closes a dict literal while a brace is open
    while (true) {
      pos = skip_spaces(src_, pos);
      if (pos >= src_.size())
        fail(std::string("unclosed tag: '") + (is_block ? "{%" : "{{") + "' without '" + closer + "'", open);
      const bool dash = src_[pos] == '-' && src_.compare(pos + 1, 2, closer) == 0;
      if ((dash || src_.compare(pos, 2, closer) == 0) && (is_block || brace_depth == 0)) {
        const size_t end = pos + (dash ? 3 : 2);
        tokens_.push_back({is_block ? TokenType::BlockEnd : TokenType::VarEnd, closer, pos});
        return after_close(end, dash, is_block);
      }
      if (!is_block && src_.compare(pos, 2, "%}") == 0)
        fail("expected '}}' to close the '{{' opened here, found '%}'", open);
      pos = lex_token(pos, brace_depth);
    }
  }

  size_t lex_token(size_t pos, int& brace_depth) {
    const char c = src_[pos];
    if (c == '\'' || c == '"') return lex_string(pos);
    if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t end = pos;
      while (end < src_.size() && std::isdigit(static_cast<unsigned char>(src_[end]))) ++end;
      // A fraction, unless this number follows a dot (`xs.0.1` reads as two subscripts).
      const bool after_dot =
          !tokens_.empty() && tokens_.back().type == TokenType::Operator && tokens_.back().text == ".";
      if (!after_dot && end + 1 < src_.size() && src_[end] == '.' &&
          std::isdigit(static_cast<unsigned char>(src_[end + 1]))) {
        ++end;
        while (end < src_.size() && std::isdigit(static_cast<unsigned char>(src_[end]))) ++end;
        tokens_.push_back({TokenType::Float, src_.substr(pos, end - pos), pos});
      } else {
        tokens_.push_back({TokenType::Integer, src_.substr(pos, end - pos), pos});
      }
      return end;
    }
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t end = pos;
      while (end < src_.size() && is_word_char(src_[end])) ++end;
      tokens_.push_back({TokenType::Name, src_.substr(pos, end - pos), pos});
      return end;
    }
    static const char* two_char_operators[] = {"**", "//", "==", "!=", "<=", ">="};
    for (const char* op : two_char_operators) {
      if (src_.compare(pos, 2, op) == 0) {
        tokens_.push_back({TokenType::Operator, op, pos});
        return pos + 2;
      }
    }
    if (std::strchr("+-*/%~<>=()[]{},.:|", c) && c != '\0') {
      if (c == '{') ++brace_depth;
      if (c == '}') --brace_depth;
      tokens_.push_back({TokenType::Operator, std::string(1, c), pos});
      return pos + 1;
    }
    uint32_t cp;
    const size_t n = decode_utf8(src_, pos, cp);
    fail("unexpected character '" + src_.substr(pos, n) + "' in a tag", pos);
  }

  static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  // A string literal with Python's escapes (\n \t \xHH \uHHHH ...; an unknown escape stays as
  // written, backslash included, as in Python).
  size_t lex_string(size_t open) {
    const char quote = src_[open];
    std::string value;
    size_t pos = open + 1;
    auto read_hex = [&](size_t digits, uint32_t& out) {
      if (pos + digits > src_.size()) return false;
      out = 0;
      for (size_t k = 0; k < digits; ++k) {
        const int d = hex_digit(src_[pos + k]);
        if (d < 0) return false;
        out = out * 16 + uint32_t(d);
      }
      pos += digits;
      return true;
    };
    while (true) {
      if (pos >= src_.size()) fail("unterminated string literal", open);
      const char c = src_[pos];
      if (c == quote) break;
      if (c != '\\') {
        value += c;
        ++pos;
        continue;
      }
      if (++pos >= src_.size()) fail("unterminated string literal", open);
      const char e = src_[pos++];
      switch (e) {
        case 'n': value += '\n'; break;
        case 't': value += '\t'; break;
        case 'r': value += '\r'; break;
        case 'b': value += '\b'; break;
        case 'f': value += '\f'; break;
        case 'v': value += '\v'; break;
        case 'a': value += '\a'; break;
        case '0': value += '\0'; break;
        case '\\': value += '\\'; break;
        case '\'': value += '\''; break;
        case '"': value += '"'; break;
        case '\n': break;  // a backslash-newline continues the line
        case 'x':
        case 'u':
        case 'U': {
          uint32_t cp;
          if (!read_hex(e == 'x' ? 2 : e == 'u' ? 4 : 8, cp))
            fail(std::string("bad \\") + e + " escape", pos - 2);
          // A UTF-16 surrogate pair written as two \u escapes is one character.
          if (cp >= 0xD800 && cp < 0xDC00 && src_.compare(pos, 2, "\\u") == 0) {
            const size_t saved = pos;
            pos += 2;
            uint32_t low;
            if (read_hex(4, low) && low >= 0xDC00 && low < 0xE000)
              cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            else
              pos = saved;
          }
          append_utf8(cp, value);
          break;
        }
        default:  // kept as written, as Python keeps an unknown escape
          value += '\\';
          value += e;
      }
    }
    tokens_.push_back({TokenType::String, std::move(value), open});
    return pos + 1;
  }

  const std::string& src_;
  std::vector<Token> tokens_;
};

// ---------------------------------------------------------------------------------------------
// Parser: recursive descent with Jinja's precedence, loosest first: `x if c else y`, or, and,
// not, comparisons and `in`, + -, ~, * / // %, **, unary - +, then postfix (.a [i] (args)) and
// the filters and tests that follow (`| f`, `is t`).

const std::set<std::string>& known_filters() {
  static const std::set<std::string> names = {
      "abs",    "capitalize", "count",   "d",       "default", "first",  "float",      "indent",
      "int",    "items",      "join",    "last",    "length",  "list",   "lower",      "map",
      "reject", "rejectattr", "replace", "reverse", "safe",    "select", "selectattr", "sort",
      "string", "title",      "tojson",  "trim",    "unique",  "upper",  "dictsort"};
  return names;
}

const std::set<std::string>& known_tests() {
  static const std::set<std::string> names = {
      "boolean", "callable", "defined", "divisibleby", "eq",       "equalto",  "even",   "false", "float",
      "ge",      "gt",       "in",      "integer",     "iterable", "le",       "lower",  "lt",    "mapping",
      "ne",      "none",     "number",  "odd",         "sameas",   "sequence", "string", "true",  "undefined",
      "upper",   "==",       "!=",      "<",           "<=",       ">",        ">="};
  return names;
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  Block parse_program() {
    std::string end_tag;
    Block body = parse_block({}, end_tag, 0, "");
    return body;
  }

 private:
  const Token& peek(size_t ahead = 0) const { return tokens_[std::min(index_ + ahead, tokens_.size() - 1)]; }
  const Token& advance() {
    const Token& t = peek();
    if (index_ < tokens_.size() - 1) ++index_;
    return t;
  }
  bool at_operator(const char* op, size_t ahead = 0) const {
    return peek(ahead).type == TokenType::Operator && peek(ahead).text == op;
  }
  bool at_name(const char* name, size_t ahead = 0) const {
    return peek(ahead).type == TokenType::Name && peek(ahead).text == name;
  }

  static std::string describe(const Token& t) {
    switch (t.type) {
      case TokenType::Text: return "text";
      case TokenType::VarBegin: return "'{{'";
      case TokenType::VarEnd: return "'}}'";
      case TokenType::BlockBegin: return "'{%'";
      case TokenType::BlockEnd: return "'%}'";
      case TokenType::String: return "a string";
      case TokenType::Integer:
      case TokenType::Float: return "the number " + t.text;
      case TokenType::End: return "the end of the template";
      default: return "'" + t.text + "'";
    }
  }
  [[noreturn]] void fail_expected(const std::string& what) const {
    fail("expected " + what + ", found " + describe(peek()), peek().pos);
  }
  void expect_operator(const char* op) {
    if (!at_operator(op)) fail_expected(std::string("'") + op + "'");
    advance();
  }
  std::string expect_name(const char* what) {
    if (peek().type != TokenType::Name) fail_expected(what);
    return advance().text;
  }
  void expect_block_end(const std::string& tag) {
    if (peek().type != TokenType::BlockEnd) fail_expected("'%}' to end the '" + tag + "' tag");
    advance();
  }

  // Statements until `{% <one of end_tags> ...`; consumes `{%` and the tag name, reports it in
  // `found`. At the top level (no end tags) it runs to the end of the template.
  Block parse_block(const std::vector<std::string>& end_tags, std::string& found, SourcePos opened_at,
                    const std::string& opener) {
    Block block;
    while (true) {
      const Token& t = peek();
      if (t.type == TokenType::End) {
        if (end_tags.empty()) return block;
        fail("'" + opener + "' tag is never closed: expected '{% " + end_tags.back() + " %}' before the end",
             opened_at);
      }
      if (t.type == TokenType::Text) {
        Stmt s{t.pos, TextStmt{t.text}};
        advance();
        block.push_back(std::move(s));
      } else if (t.type == TokenType::VarBegin) {
        const SourcePos pos = advance().pos;
        ExprPtr value = parse_expression();
        if (peek().type != TokenType::VarEnd) fail_expected("'}}'");
        advance();
        block.push_back(Stmt{pos, OutputStmt{std::move(value)}});
      } else if (t.type == TokenType::BlockBegin) {
        const SourcePos pos = advance().pos;
        const std::string name = expect_name("a tag name after '{%'");
        if (std::find(end_tags.begin(), end_tags.end(), name) != end_tags.end()) {
          found = name;
          return block;
        }
        if (!end_tags.empty() && is_closing_tag(name))
          fail("unexpected '{% " + name + " %}': the '" + opener + "' tag needs '{% " + end_tags.back() +
                   " %}' first",
               pos);
        block.push_back(parse_statement(name, pos));
      } else {
        fail_expected("text, '{{' or '{%'");
      }
    }
  }

  static bool is_closing_tag(const std::string& name) {
    return name == "elif" || name == "else" || name.rfind("end", 0) == 0;
  }

  Stmt parse_statement(const std::string& name, SourcePos pos) {
    const NestingGuard guard(nesting_, pos);
    if (name == "if") return parse_if(pos);
    if (name == "for") return parse_for(pos);
    if (name == "set") return parse_set(pos);
    if (name == "macro") return parse_macro(pos);
    if (name == "break" || name == "continue") {
      if (loop_depth_ == 0) fail("'" + name + "' outside a for loop", pos);
      expect_block_end(name);
      return Stmt{pos, LoopControlStmt{name == "break"}};
    }
    if (name == "generation") {  // transformers' marker of assistant text: renders its body as is
      expect_block_end(name);
      std::string found;
      Block body = parse_block({"endgeneration"}, found, pos, name);
      expect_block_end(found);
      IfStmt always;  // an `if true` keeps the body's statements in their own block
      Expr condition{pos, LiteralExpr{Value::from_bool(true)}};
      always.conditions.push_back(std::make_unique<Expr>(std::move(condition)));
      always.bodies.push_back(std::move(body));
      return Stmt{pos, std::move(always)};
    }
    if (is_closing_tag(name)) fail("unexpected '{% " + name + " %}' without a matching opening tag", pos);
    static const std::set<std::string> unsupported = {
        "call", "filter", "raw", "include", "import", "from", "extends", "block", "with", "autoescape", "do"};
    if (unsupported.count(name)) fail("the '" + name + "' tag is not supported", pos);
    fail("unknown tag '" + name + "'", pos);
  }

  Stmt parse_if(SourcePos pos) {
    IfStmt node;
    std::string found = "if";
    while (found == "if" || found == "elif") {
      node.conditions.push_back(parse_expression());
      expect_block_end(found);
      node.bodies.push_back(parse_block({"elif", "else", "endif"}, found, pos, "if"));
    }
    if (found == "else") {
      expect_block_end("else");
      node.bodies.push_back(parse_block({"endif"}, found, pos, "if"));
    }
    expect_block_end("endif");
    return Stmt{pos, std::move(node)};
  }

  // Names to assign: `a`, `a, b` or `(a, b)`; `unpack` tells whether a tuple was written.
  std::vector<std::string> parse_targets(bool& unpack) {
    const bool parenthesized = at_operator("(");
    if (parenthesized) advance();
    std::vector<std::string> names{expect_name("a variable name")};
    unpack = parenthesized;
    while (at_operator(",")) {
      advance();
      unpack = true;
      if (peek().type != TokenType::Name) break;  // trailing comma
      names.push_back(advance().text);
    }
    if (parenthesized) expect_operator(")");
    return names;
  }

  Stmt parse_for(SourcePos pos) {
    ForStmt node;
    node.targets = parse_targets(node.unpack);
    if (!at_name("in")) fail_expected("'in' after the loop variable");
    advance();
    node.iterable = parse_or();  // no `x if c else y` here: `if` filters the loop
    if (at_operator(",")) node.iterable = parse_tuple_rest(std::move(node.iterable));
    if (at_name("if")) {
      advance();
      node.filter = parse_expression();
    }
    if (at_name("recursive")) fail("recursive loops are not supported", peek().pos);
    expect_block_end("for");
    ++loop_depth_;
    std::string found;
    node.body = parse_block({"else", "endfor"}, found, pos, "for");
    --loop_depth_;
    if (found == "else") {
      expect_block_end("else");
      node.else_body = parse_block({"endfor"}, found, pos, "for");
    }
    expect_block_end("endfor");
    return Stmt{pos, std::move(node)};
  }

  Stmt parse_set(SourcePos pos) {
    SetStmt node;
    if (peek().type == TokenType::Name && at_operator(".", 1)) {  // set ns.attr = value
      node.targets.push_back(advance().text);
      advance();
      node.attribute = expect_name("an attribute name after '.'");
    } else {
      node.targets = parse_targets(node.unpack);
    }
    if (at_operator("=")) {
      advance();
      node.value = parse_expression();
      if (at_operator(",")) node.value = parse_tuple_rest(std::move(node.value));
      expect_block_end("set");
      return Stmt{pos, std::move(node)};
    }
    if (!node.attribute.empty() || node.unpack) fail_expected("'=' in the 'set' tag");
    expect_block_end("set");  // {% set x %}...{% endset %}
    std::string found;
    node.body = parse_block({"endset"}, found, pos, "set");
    expect_block_end("endset");
    return Stmt{pos, std::move(node)};
  }

  Stmt parse_macro(SourcePos pos) {
    MacroStmt node;
    node.name = expect_name("the macro's name");
    expect_operator("(");
    while (!at_operator(")")) {
      node.params.push_back(expect_name("a parameter name"));
      ExprPtr default_value;
      if (at_operator("=")) {
        advance();
        default_value = parse_expression();
      } else if (!node.defaults.empty() && node.defaults.back()) {
        fail("a parameter without a default follows one with a default", peek().pos);
      }
      node.defaults.push_back(std::move(default_value));
      if (!at_operator(",")) break;
      advance();
    }
    expect_operator(")");
    expect_block_end("macro");
    const int saved_depth = loop_depth_;
    loop_depth_ = 0;  // a loop around the definition is not a loop around the body
    std::string found;
    node.body = parse_block({"endmacro"}, found, pos, "macro");
    loop_depth_ = saved_depth;
    expect_block_end("endmacro");
    return Stmt{pos, std::move(node)};
  }

  // --- expressions

  template <class Node>
  static ExprPtr make(SourcePos pos, Node node) {
    auto e = std::make_unique<Expr>();
    e->pos = pos;
    e->node = std::move(node);
    return e;
  }

  ExprPtr parse_tuple_rest(ExprPtr first) {
    ListExpr tuple;
    const SourcePos pos = first->pos;
    tuple.items.push_back(std::move(first));
    while (at_operator(",")) {
      advance();
      if (peek().type == TokenType::BlockEnd || at_operator(")")) break;
      tuple.items.push_back(parse_expression());
    }
    return make(pos, std::move(tuple));
  }

  ExprPtr parse_expression() {
    const NestingGuard guard(nesting_, peek().pos);
    ExprPtr value = parse_or();
    while (at_name("if")) {
      const SourcePos pos = advance().pos;
      ConditionalExpr node;
      node.condition = parse_or();
      node.if_true = std::move(value);
      if (at_name("else")) {
        advance();
        node.if_false = parse_expression();
      }
      value = make(pos, std::move(node));
    }
    return value;
  }

  ExprPtr binary(BinaryOp op, ExprPtr left, ExprPtr right, SourcePos pos) {
    return make(pos, BinaryExpr{op, std::move(left), std::move(right)});
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (at_name("or")) {
      const SourcePos pos = advance().pos;
      left = binary(BinaryOp::Or, std::move(left), parse_and(), pos);
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (at_name("and")) {
      const SourcePos pos = advance().pos;
      left = binary(BinaryOp::And, std::move(left), parse_not(), pos);
    }
    return left;
  }

  ExprPtr parse_not() {
    const NestingGuard guard(nesting_, peek().pos);
    if (at_name("not")) {
      const SourcePos pos = advance().pos;
      return make(pos, UnaryExpr{UnaryOp::Not, parse_not()});
    }
    return parse_comparison();
  }

  ExprPtr parse_comparison() {
    static const std::pair<const char*, BinaryOp> operators[] = {
        {"==", BinaryOp::Equal},     {"!=", BinaryOp::NotEqual}, {"<", BinaryOp::Less},
        {"<=", BinaryOp::LessEqual}, {">", BinaryOp::Greater},   {">=", BinaryOp::GreaterEqual}};
    ExprPtr left = parse_sum();
    while (true) {
      const SourcePos pos = peek().pos;
      std::optional<BinaryOp> op;
      for (const auto& [text, candidate] : operators)
        if (at_operator(text)) op = candidate;
      if (op) {
        advance();
      } else if (at_name("in")) {
        advance();
        op = BinaryOp::In;
      } else if (at_name("not") && at_name("in", 1)) {
        advance();
        advance();
        op = BinaryOp::NotIn;
      } else {
        return left;
      }
      left = binary(*op, std::move(left), parse_sum(), pos);
    }
  }

  ExprPtr parse_sum() {
    ExprPtr left = parse_concat();
    while (at_operator("+") || at_operator("-")) {
      const Token& t = advance();
      left =
          binary(t.text == "+" ? BinaryOp::Add : BinaryOp::Subtract, std::move(left), parse_concat(), t.pos);
    }
    return left;
  }

  ExprPtr parse_concat() {
    ExprPtr left = parse_product();
    while (at_operator("~")) {
      const SourcePos pos = advance().pos;
      left = binary(BinaryOp::Concat, std::move(left), parse_product(), pos);
    }
    return left;
  }

  ExprPtr parse_product() {
    ExprPtr left = parse_power();
    while (at_operator("*") || at_operator("/") || at_operator("//") || at_operator("%")) {
      const Token& t = advance();
      const BinaryOp op = t.text == "*"    ? BinaryOp::Multiply
                          : t.text == "/"  ? BinaryOp::Divide
                          : t.text == "//" ? BinaryOp::FloorDivide
                                           : BinaryOp::Modulo;
      left = binary(op, std::move(left), parse_power(), t.pos);
    }
    return left;
  }

  ExprPtr parse_power() {
    ExprPtr left = parse_unary(true);
    while (at_operator("**")) {
      const SourcePos pos = advance().pos;
      left = binary(BinaryOp::Power, std::move(left), parse_unary(true), pos);
    }
    return left;
  }

  // As in Jinja, `-x | f` applies f to -x: the sign takes the bare operand, the filters follow.
  ExprPtr parse_unary(bool with_filters) {
    const NestingGuard guard(nesting_, peek().pos);
    ExprPtr value;
    if (at_operator("-") || at_operator("+")) {
      const Token& t = advance();
      value = make(t.pos, UnaryExpr{t.text == "-" ? UnaryOp::Negate : UnaryOp::Plus, parse_unary(false)});
    } else {
      value = parse_postfix(parse_primary());
    }
    if (!with_filters) return value;
    return parse_filters_and_tests(std::move(value));
  }

  ExprPtr parse_primary() {
    const Token& t = peek();
    const SourcePos pos = t.pos;
    switch (t.type) {
      case TokenType::Name: {
        const std::string name = advance().text;
        if (name == "true" || name == "True") return make(pos, LiteralExpr{Value::from_bool(true)});
        if (name == "false" || name == "False") return make(pos, LiteralExpr{Value::from_bool(false)});
        if (name == "none" || name == "None") return make(pos, LiteralExpr{Value::none()});
        return make(pos, NameExpr{name});
      }
      case TokenType::String: {
        std::string text = advance().text;
        while (peek().type == TokenType::String) text += advance().text;  // 'a' 'b' is 'ab'
        return make(pos, LiteralExpr{Value::from_string(std::move(text))});
      }
      case TokenType::Integer: {
        const std::string digits = advance().text;
        errno = 0;
        const long long v = std::strtoll(digits.c_str(), nullptr, 10);
        if (errno == ERANGE)
          return make(pos, LiteralExpr{Value::from_float(std::strtod(digits.c_str(), nullptr))});
        return make(pos, LiteralExpr{Value::from_int(v)});
      }
      case TokenType::Float:
        return make(pos, LiteralExpr{Value::from_float(std::strtod(advance().text.c_str(), nullptr))});
      case TokenType::Operator:
        if (t.text == "(") {
          advance();
          if (at_operator(")")) {
            advance();
            return make(pos, ListExpr{});
          }
          ExprPtr inner = parse_expression();
          if (at_operator(",")) inner = parse_tuple_rest(std::move(inner));
          expect_operator(")");
          return inner;
        }
        if (t.text == "[") {
          advance();
          ListExpr list;
          while (!at_operator("]")) {
            list.items.push_back(parse_expression());
            if (!at_operator(",")) break;
            advance();
          }
          expect_operator("]");
          return make(pos, std::move(list));
        }
        if (t.text == "{") {
          advance();
          DictExpr dict;
          while (!at_operator("}")) {
            ExprPtr key = parse_expression();
            expect_operator(":");
            dict.entries.emplace_back(std::move(key), parse_expression());
            if (!at_operator(",")) break;
            advance();
          }
          expect_operator("}");
          return make(pos, std::move(dict));
        }
        break;
      default: break;
    }
    fail_expected("an expression");
  }

  ExprPtr parse_postfix(ExprPtr value) {
    while (true) {
      const SourcePos pos = peek().pos;
      if (at_operator(".")) {
        advance();
        if (peek().type == TokenType::Integer) {  // xs.0 is xs[0]
          ExprPtr index = make(
              peek().pos, LiteralExpr{Value::from_int(std::strtoll(advance().text.c_str(), nullptr, 10))});
          value = make(pos, SubscriptExpr{std::move(value), std::move(index)});
        } else {
          value = make(pos, AttributeExpr{std::move(value), expect_name("an attribute name after '.'")});
        }
      } else if (at_operator("[")) {
        advance();
        value = parse_subscript(std::move(value), pos);
      } else if (at_operator("(")) {
        value = make(pos, CallExpr{std::move(value), parse_arguments()});
      } else {
        return value;
      }
    }
  }

  // After `[`: an index or a slice start:stop:step, any part omitted.
  ExprPtr parse_subscript(ExprPtr object, SourcePos pos) {
    ExprPtr parts[3];
    int colons = 0;
    if (!at_operator(":")) parts[0] = parse_expression();
    while (at_operator(":") && colons < 2) {
      advance();
      ++colons;
      if (!at_operator(":") && !at_operator("]")) parts[colons] = parse_expression();
    }
    expect_operator("]");
    if (colons == 0) {
      if (!parts[0]) fail("empty subscript '[]'", pos);
      return make(pos, SubscriptExpr{std::move(object), std::move(parts[0])});
    }
    return make(pos,
                SliceExpr{std::move(object), std::move(parts[0]), std::move(parts[1]), std::move(parts[2])});
  }

  Arguments parse_arguments() {
    Arguments args;
    expect_operator("(");
    while (!at_operator(")")) {
      if (peek().type == TokenType::Name && at_operator("=", 1)) {
        std::string name = advance().text;
        advance();
        args.keywords.emplace_back(std::move(name), parse_expression());
      } else {
        if (!args.keywords.empty()) fail("a positional argument follows a keyword argument", peek().pos);
        args.positional.push_back(parse_expression());
      }
      if (!at_operator(",")) break;
      advance();
    }
    expect_operator(")");
    return args;
  }

  ExprPtr parse_filters_and_tests(ExprPtr value) {
    while (true) {
      if (at_operator("|")) {
        advance();
        const SourcePos pos = peek().pos;
        std::string name = expect_name("a filter name after '|'");
        if (!known_filters().count(name)) fail("unknown filter '" + name + "'", pos);
        Arguments args;
        if (at_operator("(")) args = parse_arguments();
        value = make(pos, FilterExpr{std::move(value), std::move(name), std::move(args)});
      } else if (at_name("is")) {
        advance();
        const bool negated = at_name("not");
        if (negated) advance();
        const SourcePos pos = peek().pos;
        std::string name;
        if (peek().type == TokenType::Operator && known_tests().count(peek().text)) {
          name = advance().text;  // `x is == 3`, `x is >= 3`
        } else {
          name = expect_name("a test name after 'is'");
        }
        if (!known_tests().count(name)) fail("unknown test '" + name + "'", pos);
        Arguments args;
        if (at_operator("(")) {
          args = parse_arguments();
        } else if (takes_bare_test_argument()) {  // `x is divisibleby 3`, `x is sameas false`
          args.positional.push_back(parse_postfix(parse_primary()));
        }
        value = make(pos, TestExpr{std::move(value), std::move(name), negated, std::move(args)});
      } else {
        return value;
      }
    }
  }

  bool takes_bare_test_argument() const {
    const Token& t = peek();
    if (t.type == TokenType::String || t.type == TokenType::Integer || t.type == TokenType::Float)
      return true;
    if (t.type == TokenType::Operator) return t.text == "[" || t.text == "{";
    if (t.type != TokenType::Name) return false;
    static const std::set<std::string> keywords = {"and", "or", "else", "if", "in", "not", "is"};
    return keywords.count(t.text) == 0;
  }

  // Parsing recurses as deep as the template nests (and rendering follows the tree): a limit
  // keeps a pathological template from overflowing the stack.
  class NestingGuard {
   public:
    NestingGuard(int& depth, SourcePos pos) : depth_(depth) {
      if (++depth_ > 256) fail("the template nests deeper than 256 levels", pos);
    }
    ~NestingGuard() { --depth_; }
    NestingGuard(const NestingGuard&) = delete;
    NestingGuard& operator=(const NestingGuard&) = delete;

   private:
    int& depth_;
  };

  std::vector<Token> tokens_;
  size_t index_ = 0;
  int loop_depth_ = 0;
  int nesting_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Renderer

struct Scope {
  std::unordered_map<std::string, Value> vars;
  std::shared_ptr<Scope> parent;
};
using ScopePtr = std::shared_ptr<Scope>;

enum class Flow { Normal, Break, Continue };

// The argument at `index`, or the keyword `name`; null when neither was given. Keyword-only
// parameters pass kKeywordOnly as the index.
constexpr size_t kKeywordOnly = kNoPos;
const Value* argument(const CallArgs& args, size_t index, const char* name) {
  if (index < args.positional.size()) return &args.positional[index];
  for (const auto& [key, value] : args.keywords)
    if (key == name) return &value;
  return nullptr;
}

const Value& string_argument(const CallArgs& args, size_t index, const char* name, const char* function) {
  const Value* v = argument(args, index, name);
  if (!v || !v->is_string()) fail(std::string(function) + "() needs the string argument '" + name + "'");
  return *v;
}

int64_t int_argument(const CallArgs& args, size_t index, const char* name, int64_t fallback) {
  const Value* v = argument(args, index, name);
  if (!v || v->is_none()) return fallback;
  if (v->kind != Value::Kind::Int && v->kind != Value::Kind::Bool)
    fail(std::string("argument '") + name + "' must be an integer");
  return as_int(*v);
}

bool bool_argument(const CallArgs& args, size_t index, const char* name, bool fallback) {
  const Value* v = argument(args, index, name);
  return v ? truthy(*v) : fallback;
}

// Python's index rules: negative counts from the end; out of range is undefined.
Value element_at(const Value& container, int64_t index) {
  if (container.is_array()) {
    const auto size = static_cast<int64_t>(container.array->size());
    const int64_t i = index < 0 ? index + size : index;
    if (i < 0 || i >= size)
      return Value::undefined("list index " + std::to_string(index) + " is out of range");
    return (*container.array)[static_cast<size_t>(i)];
  }
  const auto chars = split_chars(container.text);
  const auto size = static_cast<int64_t>(chars.size());
  const int64_t i = index < 0 ? index + size : index;
  if (i < 0 || i >= size)
    return Value::undefined("string index " + std::to_string(index) + " is out of range");
  return Value::from_string(chars[static_cast<size_t>(i)]);
}

// obj.name and obj["name"]: a dict's key, a namespace's attribute, an element of a list or a
// character of a string. Missing is undefined; looking into an undefined value is an error.
Value get_item(const Value& object, const Value& key) {
  switch (object.kind) {
    case Value::Kind::Undefined: fail_undefined(object);
    case Value::Kind::Object:
    case Value::Kind::Namespace: {
      if (!key.is_string())
        return Value::undefined(std::string("no key of type ") + type_name(key) + " in a dict");
      if (const Value* v = object.object->find(key.text)) return *v;
      return Value::undefined("'" + std::string(type_name(object)) + " object' has no attribute '" +
                              key.text + "'");
    }
    case Value::Kind::Array:
    case Value::Kind::String:
      if (key.kind == Value::Kind::Int) return element_at(object, key.integer);
      if (object.is_array() && key.is_string() && key.text == "length")  // the reference's JavaScript view
        return Value::from_int(static_cast<int64_t>(object.array->size()));
      return Value::undefined("'" + std::string(type_name(object)) + " object' has no attribute '" +
                              output_text(key) + "'");
    default:
      return Value::undefined("'" + std::string(type_name(object)) + "' has no attribute '" +
                              output_text(key) + "'");
  }
}

// A dotted path of keys and indices (map(attribute='a.b'), sort(attribute=...)).
Value get_path(const Value& object, const std::string& path) {
  Value current = object;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (current.is_undefined()) return current;
    const bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), ::isdigit);
    current = numeric && current.is_array() ? get_item(current, Value::from_int(std::stoll(part)))
                                            : get_item(current, Value::from_string(part));
    if (dot == std::string::npos) return current;
    start = dot + 1;
  }
}

// Python's slice rules, for lists and (by character) strings.
Value slice_of(const Value& object, const Value& start_value, const Value& stop_value,
               const Value& step_value) {
  auto bound = [](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.is_undefined() || v.is_none()) return std::nullopt;
    if (v.kind != Value::Kind::Int) fail(std::string("slice ") + what + " must be an integer");
    return v.integer;
  };
  const auto start_opt = bound(start_value, "start"), stop_opt = bound(stop_value, "stop");
  const int64_t step = bound(step_value, "step").value_or(1);
  if (step == 0) fail("slice step cannot be zero");
  std::vector<std::string> chars;
  if (object.is_string())
    chars = split_chars(object.text);
  else if (!object.is_array())
    fail(std::string("cannot slice a ") + type_name(object));
  const int64_t size = object.is_array() ? static_cast<int64_t>(object.array->size()) : int64_t(chars.size());
  auto clamp = [&](std::optional<int64_t> v, int64_t fallback, int64_t low, int64_t high) {
    if (!v) return fallback;
    int64_t x = *v < 0 ? *v + size : *v;
    return std::min(std::max(x, low), high);
  };
  const int64_t start = step > 0 ? clamp(start_opt, 0, 0, size) : clamp(start_opt, size - 1, -1, size - 1);
  const int64_t stop = step > 0 ? clamp(stop_opt, size, 0, size) : clamp(stop_opt, -1, -1, size - 1);
  Array items;
  std::string text;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    if (object.is_array())
      items.push_back((*object.array)[static_cast<size_t>(i)]);
    else
      text += chars[static_cast<size_t>(i)];
  }
  return object.is_array() ? Value::from_array(std::move(items)) : Value::from_string(std::move(text));
}

// What a for loop, `list` and `join` walk: list elements, dict keys, string characters.
Array iterate(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Array: return *v.array;
    case Value::Kind::Object: {
      Array keys;
      for (const auto& entry : v.object->entries) keys.push_back(Value::from_string(entry.first));
      return keys;
    }
    case Value::Kind::String: {
      Array chars;
      for (auto& c : split_chars(v.text)) chars.push_back(Value::from_string(std::move(c)));
      return chars;
    }
    case Value::Kind::Undefined: return {};  // Jinja iterates an undefined value as empty
    default: fail(std::string("'") + type_name(v) + "' object is not iterable");
  }
}

Value arithmetic(BinaryOp op, const Value& a, const Value& b) {
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  if (op == BinaryOp::Add) {
    if (a.is_string() && b.is_string()) return Value::from_string(a.text + b.text);
    if (a.is_array() && b.is_array()) {
      Array items = *a.array;
      items.insert(items.end(), b.array->begin(), b.array->end());
      return Value::from_array(std::move(items));
    }
    // The reference joins a string with a number as text (Python would raise).
    if ((a.is_string() && is_numeric(b)) || (is_numeric(a) && b.is_string()))
      return Value::from_string(concat_text(a) + concat_text(b));
  }
  if (op == BinaryOp::Multiply) {  // 'ab' * 3, as in Python
    const Value* text = a.is_string() ? &a : b.is_string() ? &b : nullptr;
    const Value* count = a.is_string() ? &b : &a;
    if (text && count->kind == Value::Kind::Int) {
      std::string out;
      for (int64_t i = 0; i < count->integer; ++i) out += text->text;
      return Value::from_string(std::move(out));
    }
  }
  if (!is_numeric(a) || !is_numeric(b))
    fail(std::string("unsupported operand types: ") + type_name(a) + " and " + type_name(b));
  const bool integers = a.kind != Value::Kind::Float && b.kind != Value::Kind::Float;
  const double x = as_double(a), y = as_double(b);
  const int64_t i = as_int(a), j = as_int(b);
  switch (op) {
    case BinaryOp::Add:
    case BinaryOp::Subtract:
    case BinaryOp::Multiply: {
      if (integers) {
        int64_t r;
        const bool overflow = op == BinaryOp::Add        ? __builtin_add_overflow(i, j, &r)
                              : op == BinaryOp::Subtract ? __builtin_sub_overflow(i, j, &r)
                                                         : __builtin_mul_overflow(i, j, &r);
        if (!overflow) return Value::from_int(r);
      }
      return Value::from_float(op == BinaryOp::Add ? x + y : op == BinaryOp::Subtract ? x - y : x * y);
    }
    case BinaryOp::Divide:
      if (y == 0) fail("division by zero");
      return Value::from_float(x / y);
    case BinaryOp::FloorDivide:
      if (y == 0) fail("division by zero");
      if (integers) return Value::from_int(i / j - ((i % j != 0) && ((i < 0) != (j < 0)) ? 1 : 0));
      return Value::from_float(std::floor(x / y));
    case BinaryOp::Modulo:  // Python's: the result takes the divisor's sign
      if (y == 0) fail("modulo by zero");
      if (integers) {
        const int64_t r = i % j;
        return Value::from_int(r != 0 && ((r < 0) != (j < 0)) ? r + j : r);
      }
      return Value::from_float(x - y * std::floor(x / y));
    case BinaryOp::Power: {
      if (integers && j >= 0) {
        int64_t r = 1;
        bool overflow = false;
        for (int64_t k = 0; k < j && !overflow; ++k) overflow = __builtin_mul_overflow(r, i, &r);
        if (!overflow) return Value::from_int(r);
      }
      if (x == 0 && y < 0) fail("0 cannot be raised to a negative power");
      return Value::from_float(std::pow(x, y));
    }
    default: fail("not an arithmetic operator");
  }
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind) {
    case Value::Kind::Undefined: return false;
    case Value::Kind::Array:
      return std::any_of(container.array->begin(), container.array->end(),
                         [&](const Value& v) { return values_equal(v, item); });
    case Value::Kind::String:
      if (!item.is_string())
        fail(std::string("'in <string>' needs a string on the left, not ") + type_name(item));
      return container.text.find(item.text) != std::string::npos;
    case Value::Kind::Object:
    case Value::Kind::Namespace: return item.is_string() && container.object->find(item.text) != nullptr;
    default: fail(std::string("argument of type '") + type_name(container) + "' is not iterable");
  }
}

// str.split(sep=None, maxsplit=-1).
Value split_text(const std::string& s, const Value* separator, int64_t max_split) {
  Array parts;
  if (!separator || separator->is_none()) {  // runs of whitespace, no empty parts
    size_t i = skip_spaces(s, 0);
    while (i < s.size()) {
      if (max_split >= 0 && static_cast<int64_t>(parts.size()) >= max_split) {
        parts.push_back(Value::from_string(strip_text(s.substr(i), nullptr, false, true)));
        break;
      }
      size_t end = i;
      while (end < s.size() && space_at(s, end) == 0) {
        uint32_t cp;
        end += decode_utf8(s, end, cp);
      }
      parts.push_back(Value::from_string(s.substr(i, end - i)));
      i = skip_spaces(s, end);
    }
    return Value::from_array(std::move(parts));
  }
  if (!separator->is_string()) fail("split() separator must be a string or none");
  const std::string& sep = separator->text;
  if (sep.empty()) fail("split(): empty separator");
  size_t start = 0;
  while (true) {
    const size_t hit = s.find(sep, start);
    if (hit == std::string::npos || (max_split >= 0 && static_cast<int64_t>(parts.size()) >= max_split))
      break;
    parts.push_back(Value::from_string(s.substr(start, hit - start)));
    start = hit + sep.size();
  }
  parts.push_back(Value::from_string(s.substr(start)));
  return Value::from_array(std::move(parts));
}

bool starts_or_ends_with(const std::string& s, const Value& pattern, bool at_start, const char* method) {
  auto test = [&](const Value& p) {
    if (!p.is_string()) fail(std::string(method) + "() takes a string or a tuple of strings");
    if (p.text.size() > s.size()) return false;
    return at_start ? s.compare(0, p.text.size(), p.text) == 0
                    : s.compare(s.size() - p.text.size(), p.text.size(), p.text) == 0;
  };
  if (pattern.is_array()) return std::any_of(pattern.array->begin(), pattern.array->end(), test);
  return test(pattern);
}

// Python's str methods the templates call; nullopt when `name` is not one of them.
std::optional<Value> call_string_method(const std::string& s, const std::string& name, const CallArgs& args) {
  if (name == "upper") return Value::from_string(to_upper(s));
  if (name == "lower") return Value::from_string(to_lower(s));
  if (name == "title") return Value::from_string(title_case(s));
  if (name == "capitalize") return Value::from_string(capitalize(s));
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const Value* chars = argument(args, 0, "chars");
    const std::string* set = chars && chars->is_string() ? &chars->text : nullptr;
    return Value::from_string(strip_text(s, set, name != "rstrip", name != "lstrip"));
  }
  if (name == "startswith" || name == "endswith") {
    const Value* pattern = argument(args, 0, "prefix");
    if (!pattern) fail(name + "() needs an argument");
    return Value::from_bool(starts_or_ends_with(s, *pattern, name == "startswith", name.c_str()));
  }
  if (name == "split") return split_text(s, argument(args, 0, "sep"), int_argument(args, 1, "maxsplit", -1));
  if (name == "replace") {
    return Value::from_string(replace_all(s, string_argument(args, 0, "old", "replace").text,
                                          string_argument(args, 1, "new", "replace").text,
                                          int_argument(args, 2, "count", -1)));
  }
  if (name == "join") {
    const Value* items = argument(args, 0, "iterable");
    if (!items) fail("join() needs an argument");
    std::string out;
    const Array list = iterate(*items);
    for (size_t i = 0; i < list.size(); ++i) out += (i ? s : "") + concat_text(list[i]);
    return Value::from_string(std::move(out));
  }
  return std::nullopt;
}

Value items_of(const Value& v) {
  if (v.is_undefined()) return Value::from_array({});
  if (!v.is_mapping()) fail(std::string("items() needs a dict, not ") + type_name(v));
  Array pairs;
  for (const auto& [key, value] : v.object->entries)
    pairs.push_back(Value::from_array({Value::from_string(key), value}));
  return Value::from_array(std::move(pairs));
}

std::optional<Value> call_dict_method(const Value& dict, const std::string& name, const CallArgs& args) {
  if (name == "items") return items_of(dict);
  if (name == "keys") return Value::from_array(iterate(dict));
  if (name == "values") {
    Array values;
    for (const auto& entry : dict.object->entries) values.push_back(entry.second);
    return Value::from_array(std::move(values));
  }
  if (name == "get") {
    const Value* key = argument(args, 0, "key");
    if (!key) fail("get() needs a key");
    if (key->is_string())
      if (const Value* v = dict.object->find(key->text)) return *v;
    const Value* fallback = argument(args, 1, "default");
    return fallback ? *fallback : Value::none();
  }
  return std::nullopt;
}

class Renderer {
 public:
  Renderer(const Program& program, const nlohmann::ordered_json& variables, const std::tm& now)
      : program_(program), now_(now) {
    root_ = std::make_shared<Scope>();
    define_globals();
    if (!variables.is_object() && !variables.is_null()) fail("the template variables must be a JSON object");
    if (variables.is_object())
      for (const auto& [name, value] : variables.items()) root_->vars[name] = value_from_json(value);
  }

  // A namespace can be set into itself (or into another that it holds): emptying them all
  // breaks such cycles.
  ~Renderer() {
    for (const auto& ns : namespaces_) ns->entries.clear();
  }
  Renderer(const Renderer&) = delete;
  Renderer& operator=(const Renderer&) = delete;

  std::string run() {
    std::string out;
    render_block(program_.body, root_, out);
    return out;
  }

 private:
  // --- statements

  Flow render_block(const Block& block, const ScopePtr& scope, std::string& out) {
    for (const Stmt& stmt : block) {
      const Flow flow =
          std::visit([&](const auto& node) { return render(node, stmt.pos, scope, out); }, stmt.node);
      if (flow != Flow::Normal) return flow;
    }
    return Flow::Normal;
  }

  Flow render(const TextStmt& node, SourcePos, const ScopePtr&, std::string& out) {
    out += node.text;
    return Flow::Normal;
  }

  Flow render(const OutputStmt& node, SourcePos, const ScopePtr& scope, std::string& out) {
    out += output_text(eval(*node.value, scope));
    return Flow::Normal;
  }

  Flow render(const IfStmt& node, SourcePos, const ScopePtr& scope, std::string& out) {
    for (size_t i = 0; i < node.bodies.size(); ++i) {
      if (i == node.conditions.size() || truthy(eval(*node.conditions[i], scope)))
        return render_block(node.bodies[i], scope, out);
    }
    return Flow::Normal;
  }

  static void bind_targets(const std::vector<std::string>& targets, bool unpack, const Value& value,
                           Scope& scope, SourcePos pos) {
    if (!unpack) {
      scope.vars[targets[0]] = value;
      return;
    }
    if (!value.is_array())
      fail(std::string("cannot unpack a ") + type_name(value) + " into " + std::to_string(targets.size()) +
               " names",
           pos);
    if (value.array->size() != targets.size())
      fail("cannot unpack " + std::to_string(value.array->size()) + " values into " +
               std::to_string(targets.size()) + " names",
           pos);
    for (size_t i = 0; i < targets.size(); ++i) scope.vars[targets[i]] = (*value.array)[i];
  }

  // The loop has its own scope: loop variables, `loop` and what the body sets stay inside it.
  Flow render(const ForStmt& node, SourcePos pos, const ScopePtr& scope, std::string& out) {
    const Value iterable = eval(*node.iterable, scope);
    if (iterable.is_none()) fail("cannot loop over none", node.iterable->pos);
    Array items;
    try {
      items = iterate(iterable);
    } catch (Failure& f) {
      if (f.pos == kNoPos) f.pos = node.iterable->pos;
      throw;
    }
    auto loop_scope = std::make_shared<Scope>();
    loop_scope->parent = scope;
    if (node.filter) {
      Array kept;
      for (const Value& item : items) {
        bind_targets(node.targets, node.unpack, item, *loop_scope, pos);
        if (truthy(eval(*node.filter, loop_scope))) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) return render_block(node.else_body, loop_scope, out);
    const auto length = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < length; ++i) {
      Object loop;
      loop.entries.reserve(9);
      loop.set("index", Value::from_int(i + 1));
      loop.set("index0", Value::from_int(i));
      loop.set("revindex", Value::from_int(length - i));
      loop.set("revindex0", Value::from_int(length - i - 1));
      loop.set("first", Value::from_bool(i == 0));
      loop.set("last", Value::from_bool(i == length - 1));
      loop.set("length", Value::from_int(length));
      loop.set("previtem", i > 0 ? items[size_t(i - 1)] : Value::undefined("there is no previous item"));
      loop.set("nextitem", i + 1 < length ? items[size_t(i + 1)] : Value::undefined("there is no next item"));
      loop_scope->vars["loop"] = Value::from_object(std::move(loop));
      bind_targets(node.targets, node.unpack, items[size_t(i)], *loop_scope, pos);
      if (render_block(node.body, loop_scope, out) == Flow::Break) break;
    }
    return Flow::Normal;
  }

  Flow render(const SetStmt& node, SourcePos pos, const ScopePtr& scope, std::string&) {
    Value value;
    if (node.value) {
      value = eval(*node.value, scope);
    } else {
      std::string text;
      render_block(node.body, scope, text);
      value = Value::from_string(std::move(text));
    }
    if (!node.attribute.empty()) {
      const Value target = lookup(node.targets[0], scope);
      if (target.kind != Value::Kind::Namespace)
        fail("cannot set attribute '" + node.attribute + "' of '" + node.targets[0] +
                 "': only a namespace() has "
                 "attributes to set",
             pos);
      target.object->set(node.attribute, std::move(value));
    } else {
      bind_targets(node.targets, node.unpack, value, *scope, pos);
    }
    return Flow::Normal;
  }

  // The macro refers to the scope it was defined in through pinned_scopes_, not by owning it:
  // that scope holds the macro, and owning each other they would never be freed.
  Flow render(const MacroStmt& node, SourcePos, const ScopePtr& scope, std::string&) {
    const MacroStmt* macro = &node;
    const size_t pin = pinned_scopes_.size();
    pinned_scopes_.push_back(scope);
    scope->vars[node.name] = Value::from_function(
        [this, macro, pin](CallArgs& args) { return call_macro(*macro, pinned_scopes_[pin], args); });
    return Flow::Normal;
  }

  Flow render(const LoopControlStmt& node, SourcePos, const ScopePtr&, std::string&) {
    return node.is_break ? Flow::Break : Flow::Continue;
  }

  Value call_macro(const MacroStmt& macro, const ScopePtr& defined_in, CallArgs& args) {
    if (++call_depth_ > 100) fail("macro '" + macro.name + "' nests deeper than 100 calls");
    auto scope = std::make_shared<Scope>();
    scope->parent = defined_in;
    if (args.positional.size() > macro.params.size())
      fail("macro '" + macro.name + "' takes at most " + std::to_string(macro.params.size()) + " arguments");
    for (const auto& [key, value] : args.keywords)
      if (std::find(macro.params.begin(), macro.params.end(), key) == macro.params.end())
        fail("macro '" + macro.name + "' has no parameter '" + key + "'");
    for (size_t i = 0; i < macro.params.size(); ++i) {
      if (const Value* v = argument(args, i, macro.params[i].c_str()))
        scope->vars[macro.params[i]] = *v;
      else if (macro.defaults[i])
        scope->vars[macro.params[i]] = eval(*macro.defaults[i], scope);
      else
        scope->vars[macro.params[i]] = Value::undefined("'" + macro.params[i] + "' is undefined");
    }
    std::string text;
    render_block(macro.body, scope, text);
    --call_depth_;
    return Value::from_string(std::move(text));
  }

  // --- expressions

  Value lookup(const std::string& name, const ScopePtr& scope) const {
    for (const Scope* s = scope.get(); s; s = s->parent.get()) {
      const auto it = s->vars.find(name);
      if (it != s->vars.end()) return it->second;
    }
    return Value::undefined("'" + name + "' is undefined");
  }

  // Evaluates; a failure without a place gets this node's place.
  Value eval(const Expr& expr, const ScopePtr& scope) {
    try {
      return std::visit([&](const auto& node) { return eval_node(node, scope); }, expr.node);
    } catch (Failure& f) {
      if (f.pos == kNoPos) f.pos = expr.pos;
      throw;
    }
  }

  CallArgs eval_arguments(const Arguments& args, const ScopePtr& scope) {
    CallArgs values;
    for (const auto& e : args.positional) values.positional.push_back(eval(*e, scope));
    for (const auto& [name, e] : args.keywords) values.keywords.emplace_back(name, eval(*e, scope));
    return values;
  }

  Value eval_node(const LiteralExpr& node, const ScopePtr&) { return node.value; }
  Value eval_node(const NameExpr& node, const ScopePtr& scope) { return lookup(node.name, scope); }

  Value eval_node(const ListExpr& node, const ScopePtr& scope) {
    Array items;
    for (const auto& e : node.items) items.push_back(eval(*e, scope));
    return Value::from_array(std::move(items));
  }

  Value eval_node(const DictExpr& node, const ScopePtr& scope) {
    Object o;
    for (const auto& [key_expr, value_expr] : node.entries) {
      const Value key = eval(*key_expr, scope);
      if (!key.is_string())
        fail(std::string("dict keys must be strings, not ") + type_name(key), key_expr->pos);
      o.set(key.text, eval(*value_expr, scope));
    }
    return Value::from_object(std::move(o));
  }

  Value eval_node(const AttributeExpr& node, const ScopePtr& scope) {
    return get_item(eval(*node.object, scope), Value::from_string(node.attribute));
  }

  Value eval_node(const SubscriptExpr& node, const ScopePtr& scope) {
    const Value object = eval(*node.object, scope);
    return get_item(object, eval(*node.index, scope));
  }

  Value eval_node(const SliceExpr& node, const ScopePtr& scope) {
    const Value object = eval(*node.object, scope);
    auto part = [&](const ExprPtr& e) { return e ? eval(*e, scope) : Value::undefined(); };
    return slice_of(object, part(node.start), part(node.stop), part(node.step));
  }

  Value eval_node(const CallExpr& node, const ScopePtr& scope) {
    // obj.method(...): Python's str and dict methods come before a dict's keys of that name.
    if (const auto* attribute = std::get_if<AttributeExpr>(&node.callee->node)) {
      const Value object = eval(*attribute->object, scope);
      CallArgs args = eval_arguments(node.args, scope);
      std::optional<Value> result;
      if (object.is_string())
        result = call_string_method(object.text, attribute->attribute, args);
      else if (object.is_mapping())
        result = call_dict_method(object, attribute->attribute, args);
      if (result) return *result;
      const Value method = get_item(object, Value::from_string(attribute->attribute));
      if (method.kind == Value::Kind::Function) return (*method.function)(args);
      if (method.is_undefined() && !object.is_undefined())
        fail("'" + std::string(type_name(object)) + "' object has no method '" + attribute->attribute + "'");
      fail("'" + attribute->attribute + "' is not callable");
    }
    const Value callee = eval(*node.callee, scope);
    CallArgs args = eval_arguments(node.args, scope);
    if (callee.kind != Value::Kind::Function) {
      if (callee.is_undefined()) fail_undefined(callee);
      fail(std::string("a ") + type_name(callee) + " is not callable");
    }
    return (*callee.function)(args);
  }

  Value eval_node(const FilterExpr& node, const ScopePtr& scope) {
    const Value operand = eval(*node.operand, scope);
    CallArgs args = eval_arguments(node.args, scope);
    return apply_filter(node.filter, operand, args);
  }

  Value eval_node(const TestExpr& node, const ScopePtr& scope) {
    const Value operand = eval(*node.operand, scope);
    const CallArgs args = eval_arguments(node.args, scope);
    return Value::from_bool(run_test(node.test, operand, args) != node.negated);
  }

  Value eval_node(const UnaryExpr& node, const ScopePtr& scope) {
    const Value v = eval(*node.operand, scope);
    if (node.op == UnaryOp::Not) return Value::from_bool(!truthy(v));
    if (v.is_undefined()) fail_undefined(v);
    if (!is_numeric(v))
      fail(std::string("bad operand for unary ") + (node.op == UnaryOp::Negate ? "-" : "+") + ": " +
           type_name(v));
    if (node.op == UnaryOp::Plus) return v.kind == Value::Kind::Bool ? Value::from_int(as_int(v)) : v;
    return v.kind == Value::Kind::Float ? Value::from_float(-v.real) : Value::from_int(-as_int(v));
  }

  Value eval_node(const BinaryExpr& node, const ScopePtr& scope) {
    const Value left = eval(*node.left, scope);
    switch (node.op) {  // and/or return an operand, and look at the right one only when needed
      case BinaryOp::And: return truthy(left) ? eval(*node.right, scope) : left;
      case BinaryOp::Or: return truthy(left) ? left : eval(*node.right, scope);
      default: break;
    }
    const Value right = eval(*node.right, scope);
    switch (node.op) {
      case BinaryOp::Equal: return Value::from_bool(values_equal(left, right));
      case BinaryOp::NotEqual: return Value::from_bool(!values_equal(left, right));
      case BinaryOp::Less: return Value::from_bool(compare_values(left, right) < 0);
      case BinaryOp::LessEqual: return Value::from_bool(compare_values(left, right) <= 0);
      case BinaryOp::Greater: return Value::from_bool(compare_values(left, right) > 0);
      case BinaryOp::GreaterEqual: return Value::from_bool(compare_values(left, right) >= 0);
      case BinaryOp::In: return Value::from_bool(contains(right, left));
      case BinaryOp::NotIn: return Value::from_bool(!contains(right, left));
      case BinaryOp::Concat:
        if (left.is_none() || right.is_none()) fail("cannot concatenate none with '~'");
        return Value::from_string(concat_text(left) + concat_text(right));
      default: return arithmetic(node.op, left, right);
    }
  }

  Value eval_node(const ConditionalExpr& node, const ScopePtr& scope) {
    if (truthy(eval(*node.condition, scope))) return eval(*node.if_true, scope);
    return node.if_false ? eval(*node.if_false, scope)
                         : Value::undefined(
                               "the condition of an 'if' without 'else' "
                               "was false");
  }

  // --- tests and filters

  bool run_test(const std::string& name, const Value& v, const CallArgs& args) {
    using K = Value::Kind;
    auto other = [&]() -> const Value& {
      const Value* o = argument(args, 0, "other");
      if (!o) fail("test '" + name + "' needs an argument");
      return *o;
    };
    if (name == "defined") return !v.is_undefined();
    if (name == "undefined") return v.is_undefined();
    if (name == "none") return v.is_none();
    if (name == "boolean") return v.kind == K::Bool;
    if (name == "true") return v.kind == K::Bool && v.boolean;
    if (name == "false") return v.kind == K::Bool && !v.boolean;
    if (name == "integer") return v.kind == K::Int;
    if (name == "float") return v.kind == K::Float;
    if (name == "number") return v.is_number();
    if (name == "string") return v.is_string();
    if (name == "mapping") return v.is_mapping();
    if (name == "iterable") return v.is_array() || v.is_string() || v.is_mapping();
    if (name == "sequence") return v.is_array() || v.is_string() || v.is_mapping();
    if (name == "callable") return v.kind == K::Function;
    if (name == "lower") return v.is_string() && to_lower(v.text) == v.text;
    if (name == "upper") return v.is_string() && to_upper(v.text) == v.text;
    if (name == "odd" || name == "even") {
      if (v.kind != K::Int) fail("test '" + name + "' needs an integer, not " + type_name(v));
      return (v.integer % 2 != 0) == (name == "odd");
    }
    if (name == "divisibleby") {
      const Value& d = other();
      if (v.kind != K::Int || d.kind != K::Int || d.integer == 0) fail("divisibleby needs non-zero integers");
      return v.integer % d.integer == 0;
    }
    if (name == "eq" || name == "equalto" || name == "==") return values_equal(v, other());
    if (name == "ne" || name == "!=") return !values_equal(v, other());
    if (name == "lt" || name == "<") return compare_values(v, other()) < 0;
    if (name == "le" || name == "<=") return compare_values(v, other()) <= 0;
    if (name == "gt" || name == ">") return compare_values(v, other()) > 0;
    if (name == "ge" || name == ">=") return compare_values(v, other()) >= 0;
    if (name == "in") return contains(other(), v);
    if (name == "sameas") {
      const Value& o = other();
      if (v.kind != o.kind) return false;
      if (v.kind == K::Array) return v.array == o.array;
      if (v.kind == K::Object || v.kind == K::Namespace) return v.object == o.object;
      return values_equal(v, o);
    }
    fail("unknown test '" + name + "'");
  }

  // A test given by name with its arguments, as select/reject/selectattr/rejectattr take it.
  bool run_named_test(const CallArgs& args, size_t first, const Value& v) {
    if (args.positional.size() <= first) return truthy(v);
    const Value& name = args.positional[first];
    if (!name.is_string()) fail("the test name must be a string");
    if (!known_tests().count(name.text)) fail("unknown test '" + name.text + "'");
    CallArgs test_args;
    test_args.positional.assign(args.positional.begin() + long(first) + 1, args.positional.end());
    return run_test(name.text, v, test_args);
  }

  static std::string text_of(const Value& v) { return v.is_string() ? v.text : output_text(v); }

  Value apply_filter(const std::string& name, const Value& v, const CallArgs& args) {
    using K = Value::Kind;
    if (name == "safe") return v;
    if (name == "tojson") return Value::from_string(to_json(v, args));
    if (name == "default" || name == "d") {
      const Value* fallback = argument(args, 0, "default_value");
      const bool when_falsy = bool_argument(args, 1, "boolean", false);
      if (v.is_undefined() || (when_falsy && !truthy(v)))
        return fallback ? *fallback : Value::from_string("");
      return v;
    }
    if (name == "length" || name == "count") {
      switch (v.kind) {
        case K::Undefined: return Value::from_int(0);
        case K::String: return Value::from_int(utf16_length(v.text));
        case K::Array: return Value::from_int(static_cast<int64_t>(v.array->size()));
        case K::Object:
        case K::Namespace: return Value::from_int(static_cast<int64_t>(v.object->entries.size()));
        default: fail(std::string("a ") + type_name(v) + " has no length");
      }
    }
    if (name == "string") return Value::from_string(output_text(v));
    if (name == "upper") return Value::from_string(to_upper(text_of(v)));
    if (name == "lower") return Value::from_string(to_lower(text_of(v)));
    if (name == "title") return Value::from_string(title_case(text_of(v)));
    if (name == "capitalize") return Value::from_string(capitalize(text_of(v)));
    if (name == "trim") {
      const Value* chars = argument(args, 0, "chars");
      return Value::from_string(
          strip_text(text_of(v), chars && chars->is_string() ? &chars->text : nullptr, true, true));
    }
    if (name == "replace") {
      return Value::from_string(replace_all(text_of(v), string_argument(args, 0, "old", "replace").text,
                                            string_argument(args, 1, "new", "replace").text,
                                            int_argument(args, 2, "count", -1)));
    }
    if (name == "indent") return Value::from_string(indent(text_of(v), args));
    if (name == "first" || name == "last") {
      const Array items = iterate(v);
      if (items.empty()) return Value::undefined("'" + name + "' of an empty sequence");
      return name == "first" ? items.front() : items.back();
    }
    if (name == "list") return Value::from_array(iterate(v));
    if (name == "reverse") {
      if (v.is_string()) return slice_of(v, Value::undefined(), Value::undefined(), Value::from_int(-1));
      Array items = iterate(v);
      std::reverse(items.begin(), items.end());
      return Value::from_array(std::move(items));
    }
    if (name == "items") return items_of(v);
    if (name == "join") {
      const Value* separator = argument(args, 0, "d");
      const Value* attribute = argument(args, 1, "attribute");
      std::string out;
      const Array items = iterate(v);
      for (size_t i = 0; i < items.size(); ++i) {
        if (i > 0 && separator) out += text_of(*separator);
        const Value item = attribute ? get_path(items[i], text_of(*attribute)) : items[i];
        if (!item.is_none() && !item.is_undefined())
          out += concat_text(item);  // JavaScript's join skips null
      }
      return Value::from_string(std::move(out));
    }
    if (name == "int") {
      const Value* fallback = argument(args, 0, "default");
      if (v.kind == K::Int) return v;
      if (v.kind == K::Bool) return Value::from_int(as_int(v));
      if (v.kind == K::Float && std::isfinite(v.real))
        return Value::from_int(static_cast<int64_t>(std::trunc(v.real)));
      if (v.is_string()) {
        const std::string s = strip_text(v.text, nullptr, true, true);
        char* end = nullptr;
        errno = 0;
        const long long i = std::strtoll(s.c_str(), &end, 10);
        if (!s.empty() && *end == '\0' && errno == 0) return Value::from_int(i);
        const double d = std::strtod(s.c_str(), &end);
        if (!s.empty() && *end == '\0' && std::isfinite(d))
          return Value::from_int(static_cast<int64_t>(std::trunc(d)));
      }
      return fallback ? *fallback : Value::from_int(0);
    }
    if (name == "float") {
      const Value* fallback = argument(args, 0, "default");
      if (is_numeric(v)) return Value::from_float(as_double(v));
      if (v.is_string()) {
        const std::string s = strip_text(v.text, nullptr, true, true);
        char* end = nullptr;
        const double d = std::strtod(s.c_str(), &end);
        if (!s.empty() && *end == '\0') return Value::from_float(d);
      }
      return fallback ? *fallback : Value::from_float(0.0);
    }
    if (name == "abs") {
      if (v.kind == K::Int) return Value::from_int(v.integer < 0 ? -v.integer : v.integer);
      if (v.kind == K::Float) return Value::from_float(std::fabs(v.real));
      fail(std::string("abs needs a number, not ") + type_name(v));
    }
    if (name == "unique") {
      Array kept;
      for (const Value& item : iterate(v))
        if (std::none_of(kept.begin(), kept.end(), [&](const Value& k) { return values_equal(k, item); }))
          kept.push_back(item);
      return Value::from_array(std::move(kept));
    }
    if (name == "map") {
      Array mapped;
      const Value* attribute = nullptr;
      for (const auto& [key, value] : args.keywords)
        if (key == "attribute") attribute = &value;
      if (attribute) {
        const Value* fallback = nullptr;
        for (const auto& [key, value] : args.keywords)
          if (key == "default") fallback = &value;
        for (const Value& item : iterate(v)) {
          Value got = get_path(item, text_of(*attribute));
          mapped.push_back(got.is_undefined() && fallback ? *fallback : got);
        }
      } else {
        if (args.positional.empty() || !args.positional[0].is_string())
          fail("map() needs a filter name or attribute=");
        const std::string filter = args.positional[0].text;
        if (!known_filters().count(filter)) fail("unknown filter '" + filter + "'");
        CallArgs filter_args;
        filter_args.positional.assign(args.positional.begin() + 1, args.positional.end());
        filter_args.keywords = args.keywords;
        for (const Value& item : iterate(v)) mapped.push_back(apply_filter(filter, item, filter_args));
      }
      return Value::from_array(std::move(mapped));
    }
    if (name == "select" || name == "reject") {
      Array kept;
      for (const Value& item : iterate(v))
        if (run_named_test(args, 0, item) == (name == "select")) kept.push_back(item);
      return Value::from_array(std::move(kept));
    }
    if (name == "selectattr" || name == "rejectattr") {
      if (args.positional.empty() || !args.positional[0].is_string())
        fail(name + "() needs an attribute name");
      Array kept;
      for (const Value& item : iterate(v))
        if (run_named_test(args, 1, get_path(item, args.positional[0].text)) == (name == "selectattr"))
          kept.push_back(item);
      return Value::from_array(std::move(kept));
    }
    if (name == "sort") return sort(v, args);
    if (name == "dictsort") {
      Array pairs = *items_of(v).array;
      const bool case_sensitive = bool_argument(args, 0, "case_sensitive", false);
      const bool by_value = argument(args, 1, "by") && text_of(*argument(args, 1, "by")) == "value";
      const bool reverse = bool_argument(args, 2, "reverse", false);
      std::stable_sort(pairs.begin(), pairs.end(), [&](const Value& a, const Value& b) {
        const Value& x = (*a.array)[by_value ? 1 : 0];
        const Value& y = (*b.array)[by_value ? 1 : 0];
        const int c = compare_for_sort(x, y, case_sensitive);
        return reverse ? c > 0 : c < 0;
      });
      return Value::from_array(std::move(pairs));
    }
    fail("unknown filter '" + name + "'");
  }

  static int compare_for_sort(const Value& a, const Value& b, bool case_sensitive) {
    if (!case_sensitive && a.is_string() && b.is_string())
      return compare_values(Value::from_string(to_lower(a.text)), Value::from_string(to_lower(b.text)));
    return compare_values(a, b);
  }

  Value sort(const Value& v, const CallArgs& args) {
    Array items = iterate(v);
    const bool reverse = bool_argument(args, 0, "reverse", false);
    const bool case_sensitive = bool_argument(args, 1, "case_sensitive", false);
    const Value* attribute = argument(args, 2, "attribute");
    auto key = [&](const Value& item) { return attribute ? get_path(item, text_of(*attribute)) : item; };
    std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
      const int c = compare_for_sort(key(a), key(b), case_sensitive);
      return reverse ? c > 0 : c < 0;
    });
    return Value::from_array(std::move(items));
  }

  static std::string indent(const std::string& s, const CallArgs& args) {
    const Value* width = argument(args, 0, "width");
    std::string unit = "    ";
    if (width && width->is_string())
      unit = width->text;
    else if (width && width->kind == Value::Kind::Int)
      unit = std::string(size_t(std::max<int64_t>(width->integer, 0)), ' ');
    const bool first = bool_argument(args, 1, "first", false);
    const bool blank = bool_argument(args, 2, "blank", false);
    std::string out;
    size_t start = 0;
    for (size_t line = 0;; ++line) {
      const size_t end = s.find('\n', start);
      const std::string text = s.substr(start, end == std::string::npos ? std::string::npos : end - start);
      if (line > 0) out += '\n';
      if ((line > 0 || first) && (blank || !text.empty())) out += unit;
      out += text;
      if (end == std::string::npos) break;
      start = end + 1;
    }
    return out;
  }

  // tojson as transformers defines it: json.dumps(x, ensure_ascii=False, indent=indent,
  // separators=separators, sort_keys=sort_keys), written as the reference writes it.
  static std::string to_json(const Value& v, const CallArgs& args) {
    JsonStyle style;
    style.indent = int_argument(args, 0, "indent", 0);
    style.ensure_ascii = bool_argument(args, kKeywordOnly, "ensure_ascii", false);
    style.sort_keys = bool_argument(args, kKeywordOnly, "sort_keys", false);
    if (style.indent > 0) style.item_separator = ",";
    const Value* separators = argument(args, kKeywordOnly, "separators");
    if (separators && !separators->is_none()) {
      const Array* pair = separators->is_array() ? separators->array.get() : nullptr;
      if (!pair || pair->size() != 2 || !(*pair)[0].is_string() || !(*pair)[1].is_string())
        fail("tojson separators must be two strings");
      style.item_separator = (*pair)[0].text;
      style.key_separator = (*pair)[1].text;
    }
    std::string out;
    append_json(v, style, 0, out);
    return out;
  }

  // --- globals

  void define_globals() {
    root_->vars["range"] = Value::from_function([](CallArgs& args) {
      auto number = [&](size_t i) {
        const Value& v = args.positional[i];
        if (v.kind != Value::Kind::Int && v.kind != Value::Kind::Bool) fail("range() takes integers");
        return as_int(v);
      };
      if (args.positional.empty() || args.positional.size() > 3) fail("range() takes 1 to 3 arguments");
      const int64_t start = args.positional.size() == 1 ? 0 : number(0);
      const int64_t stop = args.positional.size() == 1 ? number(0) : number(1);
      const int64_t step = args.positional.size() == 3 ? number(2) : 1;
      if (step == 0) fail("range() step must not be zero");
      Array items;
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (items.size() >= 1000000) fail("range() is too long");
        items.push_back(Value::from_int(i));
      }
      return Value::from_array(std::move(items));
    });
    root_->vars["namespace"] = Value::from_function([this](CallArgs& args) {
      Object o;
      if (args.positional.size() > 1) fail("namespace() takes at most one positional argument");
      if (!args.positional.empty()) {
        const Value& init = args.positional[0];
        if (init.is_mapping())
          o = *init.object;
        else
          fail("namespace() takes a dict");
      }
      for (auto& [key, value] : args.keywords) o.set(key, value);
      Value ns = Value::new_namespace(std::move(o));
      namespaces_.push_back(ns.object);
      return ns;
    });
    root_->vars["raise_exception"] = Value::from_function([](CallArgs& args) -> Value {
      Failure failure{args.positional.empty() ? std::string("raise_exception() called")
                                              : text_of(args.positional[0])};
      failure.raised_by_template = true;
      throw failure;
    });
    root_->vars["strftime_now"] = Value::from_function([this](CallArgs& args) {
      const Value* format = argument(args, 0, "format");
      if (!format || !format->is_string()) fail("strftime_now() needs a format string");
      return Value::from_string(strftime(format->text));
    });
  }

  // Python's strftime, with the month names of the reference's en-US locale.
  std::string strftime(const std::string& format) const {
    static const char* months[] = {"January", "February", "March",     "April",   "May",      "June",
                                   "July",    "August",   "September", "October", "November", "December"};
    auto two_digits = [](int n) { return std::string(n < 10 ? "0" : "") + std::to_string(n); };
    std::string out;
    for (size_t i = 0; i < format.size(); ++i) {
      if (format[i] != '%' || i + 1 == format.size()) {
        out += format[i];
        continue;
      }
      const char spec = format[++i];
      switch (spec) {
        case 'Y': out += std::to_string(now_.tm_year + 1900); break;
        case 'm': out += two_digits(now_.tm_mon + 1); break;
        case 'd': out += two_digits(now_.tm_mday); break;
        case 'H': out += two_digits(now_.tm_hour); break;
        case 'M': out += two_digits(now_.tm_min); break;
        case 'B': out += months[now_.tm_mon % 12]; break;
        case 'b': out += std::string(months[now_.tm_mon % 12]).substr(0, 3); break;
        case '%': out += '%'; break;
        default: {
          char buffer[128];
          const char spec_format[3] = {'%', spec, '\0'};
          const size_t n = std::strftime(buffer, sizeof buffer, spec_format, &now_);
          out.append(buffer, n);
        }
      }
    }
    return out;
  }

  const Program& program_;
  std::tm now_;
  ScopePtr root_;
  std::vector<ScopePtr> pinned_scopes_;  // scopes that macros were defined in
  std::vector<std::shared_ptr<Object>> namespaces_;
  int call_depth_ = 0;
};

// 1-based line and column (in characters) of a byte offset.
std::string where(const Program& program, size_t pos) {
  if (pos == kNoPos) return "chat template";
  const auto it = std::upper_bound(program.line_starts.begin(), program.line_starts.end(), pos);
  const size_t line = static_cast<size_t>(it - program.line_starts.begin());
  size_t column = 1;
  for (size_t i = program.line_starts[line - 1]; i < pos && i < program.source.size(); ++column) {
    uint32_t cp;
    i += decode_utf8(program.source, i, cp);
  }
  return "chat template line " + std::to_string(line) + ", column " + std::to_string(column);
}

TemplateError to_error(const Program& program, const Failure& failure) {
  if (failure.raised_by_template)
    return TemplateError(where(program, failure.pos) +
                         ": the template raised an exception: " + failure.message);
  return TemplateError(where(program, failure.pos) + ": " + failure.message);
}

}  // namespace
}  // namespace chat_template_detail

// ---------------------------------------------------------------------------------------------
// ChatTemplate

using namespace chat_template_detail;

ChatTemplate::ChatTemplate(std::string source) {
  auto program = std::make_unique<Program>();
  program->source = std::move(source);
  program->line_starts.push_back(0);
  for (size_t i = 0; i < program->source.size(); ++i)
    if (program->source[i] == '\n') program->line_starts.push_back(i + 1);
  // Jinja drops a single trailing newline of the template (keep_trailing_newline=False).
  std::string text = program->source;
  if (!text.empty() && text.back() == '\n') text.pop_back();
  try {
    program->body = Parser(Lexer(text).run()).parse_program();
  } catch (const Failure& failure) {
    throw to_error(*program, failure);
  }
  program_ = std::move(program);
}

ChatTemplate::~ChatTemplate() = default;
ChatTemplate::ChatTemplate(ChatTemplate&&) noexcept = default;
ChatTemplate& ChatTemplate::operator=(ChatTemplate&&) noexcept = default;

const std::string& ChatTemplate::source() const { return program_->source; }

std::string ChatTemplate::render(const nlohmann::ordered_json& variables, std::optional<std::tm> now) const {
  std::tm local_now{};
  if (now) {
    local_now = *now;
  } else {
    const std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    localtime_r(&t, &local_now);
  }
  try {
    return Renderer(*program_, variables, local_now).run();
  } catch (const Failure& failure) {
    throw to_error(*program_, failure);
  }
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                 const nlohmann::ordered_json& extra) const {
  nlohmann::ordered_json variables = extra.is_object() ? extra : nlohmann::ordered_json::object();
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const auto& m : messages) list.push_back({{"role", m.role}, {"content", m.content}});
  variables["messages"] = std::move(list);
  variables["add_generation_prompt"] = add_generation_prompt;
  return render(variables);
}

std::string read_chat_template(const std::string& model_dir) {
  const std::string config_file = model_dir + "/tokenizer_config.json";
  std::ifstream config_in(config_file);
  if (config_in) {
    nlohmann::json config;
    try {
      config = nlohmann::json::parse(config_in);
    } catch (const nlohmann::json::exception& e) {
      throw ModelError(config_file + ": not valid JSON (" + e.what() + ")");
    }
    const auto it = config.find("chat_template");
    if (it != config.end() && it->is_string()) return it->get<std::string>();
    if (it != config.end() && it->is_array()) {
      const nlohmann::json* chosen = nullptr;
      for (const auto& entry : *it) {
        if (!entry.is_object() || !entry.contains("template") || !entry["template"].is_string())
          throw ModelError(config_file + ": chat_template has an entry without a 'template' string");
        if (!chosen || entry.value("name", "") == "default") chosen = &entry;
        if (entry.value("name", "") == "default") break;
      }
      if (chosen) return (*chosen)["template"].get<std::string>();
    } else if (it != config.end() && !it->is_null()) {
      throw ModelError(config_file + ": chat_template is neither a string nor a list of {name, template}");
    }
  }
  std::ifstream jinja(model_dir + "/chat_template.jinja", std::ios::binary);
  if (!jinja) return "";
  return std::string(std::istreambuf_iterator<char>(jinja), std::istreambuf_iterator<char>());
}

}  // namespace ce
