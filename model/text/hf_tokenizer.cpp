#include "model/text/hf_tokenizer.hpp"

#include "model/text/chat_template.hpp"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/regex.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/ustring.h>
#include <unicode/utf16.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_set>

#include "model/model_config.hpp"

namespace ce {
namespace {

using json = nlohmann::json;

const std::string kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD
// Ids beyond this are a broken file, not a vocabulary (the largest published ones are ~262k).
constexpr int64_t kMaxTokenId = int64_t{1} << 22;
// Words longer than this are not cached (a long run of one character is rarely repeated).
constexpr size_t kMaxCachedWordBytes = 256;
constexpr size_t kMaxCachedWords = 1 << 18;

[[noreturn]] void fail(const std::string& file, const std::string& what) {
  throw ModelError(file + ": " + what);
}

// ---- UTF-8

void append_utf8(std::string& out, UChar32 c) {
  char buf[U8_MAX_LENGTH];
  int32_t length = 0;
  U8_APPEND_UNSAFE(buf, length, c);
  out.append(buf, static_cast<size_t>(length));
}

// The code point at `at` of valid UTF-8 `text`, moving `at` past it.
UChar32 next_code_point(const std::string& text, size_t& at) {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  UChar32 c;
  U8_NEXT_UNSAFE(s, at, c);
  return c;
}

// `bytes` with every ill-formed UTF-8 sequence (each maximal subpart, as ICU and Rust's
// from_utf8_lossy count them) replaced by U+FFFD.
std::string valid_utf8(const std::string& bytes) {
  const auto* s = reinterpret_cast<const uint8_t*>(bytes.data());
  const int64_t length = static_cast<int64_t>(bytes.size());
  std::string out;
  out.reserve(bytes.size());
  for (int64_t at = 0; at < length;) {
    const int64_t start = at;
    UChar32 c;
    U8_NEXT(s, at, length, c);
    if (c < 0) out += kReplacementChar;
    else out.append(bytes, static_cast<size_t>(start), static_cast<size_t>(at - start));
  }
  return out;
}

bool is_white_space(UChar32 c) { return u_isUWhiteSpace(c); }  // Rust's char::is_whitespace, regex \s

// Rust regex's \w (Unicode): what single_word added tokens must not touch.
bool is_word_char(UChar32 c) {
  constexpr uint32_t kMarksDigitsConnectors = U_GC_M_MASK | U_GC_ND_MASK | U_GC_PC_MASK;
  return u_hasBinaryProperty(c, UCHAR_ALPHABETIC) || (U_GET_GC_MASK(c) & kMarksDigitsConnectors) != 0 ||
         u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL);
}

bool is_numeric(UChar32 c) { return (U_GET_GC_MASK(c) & (U_GC_ND_MASK | U_GC_NL_MASK | U_GC_NO_MASK)) != 0; }

// Rust's char::to_lowercase: the full mapping of one character, without context.
void append_lowercase(std::string& out, UChar32 c) {
  if (c < 0x80) {
    out += static_cast<char>(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
    return;
  }
  UChar source[2];
  int32_t source_length = 0;
  U16_APPEND_UNSAFE(source, source_length, c);
  UChar lower[8];
  UErrorCode status = U_ZERO_ERROR;
  const int32_t lower_length = u_strToLower(lower, 8, source, source_length, "", &status);
  if (U_FAILURE(status)) {
    append_utf8(out, c);
    return;
  }
  for (int32_t i = 0; i < lower_length;) {
    UChar32 l;
    U16_NEXT_UNSAFE(lower, i, l);
    append_utf8(out, l);
  }
}

// ---- GPT-2's byte-level alphabet: each byte stands as a printable character.

struct ByteAlphabet {
  std::string char_of_byte[256];  // UTF-8
  int16_t byte_of_char[324];      // by code point; -1 for one that stands for no byte
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet alphabet = [] {
    ByteAlphabet a;
    std::fill(std::begin(a.byte_of_char), std::end(a.byte_of_char), int16_t{-1});
    UChar32 next_stand_in = 256;  // bytes that are not printable Latin-1 get 256, 257, ... in order
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const UChar32 c = printable ? b : next_stand_in++;
      append_utf8(a.char_of_byte[b], c);
      a.byte_of_char[c] = static_cast<int16_t>(b);
    }
    return a;
  }();
  return alphabet;
}

// ---- Regular expressions (Oniguruma's syntax, as tokenizer.json writes them) on ICU. What the
// published patterns use means the same in both: \p{L}, \p{N}, (?i:...), (?!...), and \s, which
// is Unicode White_Space in both (U+000B and U+0085 included, U+001C..U+001F not).

// The same pattern with \s, \S, \d, \D written as properties: ICU runs a repeated property as a
// tight loop, but backtracks through a repeated \s one stacked state per character, which
// overflows its stack on a long run of spaces.
std::string icu_pattern(const std::string& onig) {
  std::string out;
  for (size_t i = 0; i < onig.size(); ++i) {
    if (onig[i] != '\\' || i + 1 == onig.size()) {
      out += onig[i];
      continue;
    }
    const char escaped = onig[++i];
    if (escaped == 's') out += "\\p{White_Space}";
    else if (escaped == 'S') out += "\\P{White_Space}";
    else if (escaped == 'd') out += "\\p{Nd}";
    else if (escaped == 'D') out += "\\P{Nd}";
    else out += std::string{'\\', escaped};
  }
  return out;
}

// A stretch of a text [begin, end) in bytes; `match`: the pattern matched it.
struct Span {
  size_t begin, end;
  bool match;
};

class Regex {
 public:
  // `literal`: the pattern is a plain string. `where` names the file and field for errors.
  Regex(const std::string& pattern, bool literal, const std::string& where) : where_(where) {
    UErrorCode status = U_ZERO_ERROR;
    UParseError parse_error;
    const auto source = icu::UnicodeString::fromUTF8(literal ? pattern : icu_pattern(pattern));
    pattern_.reset(icu::RegexPattern::compile(source, literal ? UREGEX_LITERAL : 0, parse_error, status));
    if (U_FAILURE(status))
      throw ModelError(where + ": regex '" + pattern + "' is not supported (" + u_errorName(status) + ")");
  }

  // `text` cut into matches and the stretches between them, in order, covering it (as Hugging
  // Face's Pattern::find_matches).
  std::vector<Span> find_matches(const std::string& text) const {
    if (text.empty()) return {{0, 0, false}};
    const auto utf16 = icu::UnicodeString::fromUTF8(text);
    UErrorCode status = U_ZERO_ERROR;
    std::unique_ptr<icu::RegexMatcher> matcher(pattern_->matcher(utf16, status));
    std::vector<Span> spans;
    size_t previous = 0;
    Utf8Offsets offsets(utf16);
    while (U_SUCCESS(status) && matcher->find(status)) {
      const size_t begin = offsets.at(matcher->start(status));
      const size_t end = offsets.at(matcher->end(status));
      if (previous != begin) spans.push_back({previous, begin, false});
      spans.push_back({begin, end, true});
      previous = end;
    }
    if (U_FAILURE(status))
      throw ModelError(where_ + ": regex failed on the text (" + u_errorName(status) + ")");
    if (previous != text.size()) spans.push_back({previous, text.size(), false});
    return spans;
  }

 private:
  // UTF-8 offsets of ascending UTF-16 offsets of the same text.
  class Utf8Offsets {
   public:
    explicit Utf8Offsets(const icu::UnicodeString& s) : units_(s.getBuffer()), length_(s.length()) {}
    size_t at(int32_t utf16_offset) {
      while (utf16_ < utf16_offset && utf16_ < length_) {
        UChar32 c;
        U16_NEXT(units_, utf16_, length_, c);
        utf8_ += static_cast<size_t>(U8_LENGTH(c));
      }
      return utf8_;
    }

   private:
    const char16_t* units_;
    int32_t length_;
    int32_t utf16_ = 0;
    size_t utf8_ = 0;
  };

  std::unique_ptr<icu::RegexPattern> pattern_;
  std::string where_;
};

// Every occurrence of `needle` in `text` as a match of its own.
std::vector<Span> find_string(const std::string& text, const std::string& needle) {
  std::vector<Span> spans;
  size_t previous = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) {
    if (previous != at) spans.push_back({previous, at, false});
    spans.push_back({at, at + needle.size(), true});
    previous = at + needle.size();
  }
  if (previous != text.size() || text.empty()) spans.push_back({previous, text.size(), false});
  return spans;
}

// Every character for which `is_match` holds as a match of its own.
template <class Predicate>
std::vector<Span> find_chars(const std::string& text, Predicate is_match) {
  std::vector<Span> spans;
  size_t previous = 0;
  for (size_t at = 0; at < text.size();) {
    const size_t begin = at;
    if (!is_match(next_code_point(text, at))) continue;
    if (previous != begin) spans.push_back({previous, begin, false});
    spans.push_back({begin, at, true});
    previous = at;
  }
  if (previous != text.size()) spans.push_back({previous, text.size(), false});
  return spans;
}

std::string replace_spans(const std::string& text, const std::vector<Span>& spans,
                          const std::string& content) {
  std::string out;
  for (const auto& span : spans) out += span.match ? content : text.substr(span.begin, span.end - span.begin);
  return out;
}

// What Split does with the matches of its pattern (Hugging Face's SplitDelimiterBehavior).
enum class SplitBehavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

// The [begin, end) stretches that `behavior` makes of `spans`.
std::vector<std::pair<size_t, size_t>> split_ranges(const std::vector<Span>& spans, SplitBehavior behavior) {
  std::vector<std::pair<size_t, size_t>> ranges;
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::isolated:
      for (const auto& s : spans) ranges.emplace_back(s.begin, s.end);
      break;
    case SplitBehavior::removed:
      for (const auto& s : spans)
        if (!s.match) ranges.emplace_back(s.begin, s.end);
      break;
    case SplitBehavior::contiguous:  // consecutive stretches of the same kind join
      for (const auto& s : spans) {
        if (s.match == previous_match && !ranges.empty()) ranges.back().second = s.end;
        else ranges.emplace_back(s.begin, s.end);
        previous_match = s.match;
      }
      break;
    case SplitBehavior::merged_with_previous:
      for (const auto& s : spans) {
        if (s.match && !previous_match && !ranges.empty()) ranges.back().second = s.end;
        else ranges.emplace_back(s.begin, s.end);
        previous_match = s.match;
      }
      break;
    case SplitBehavior::merged_with_next:
      for (auto s = spans.rbegin(); s != spans.rend(); ++s) {
        if (s->match && !previous_match && !ranges.empty()) ranges.back().first = s->begin;
        else ranges.emplace_back(s->begin, s->end);
        previous_match = s->match;
      }
      std::reverse(ranges.begin(), ranges.end());
      break;
  }
  return ranges;
}

// ---- JSON fields, each failure naming the file and the field.

const json& member(const json& object, const std::string& key, const std::string& where,
                   const std::string& file) {
  if (!object.is_object()) fail(file, where + " is not an object");
  const auto it = object.find(key);
  if (it == object.end()) fail(file, where + " has no '" + key + "'");
  return *it;
}

std::string string_member(const json& object, const std::string& key, const std::string& where,
                          const std::string& file) {
  const json& value = member(object, key, where, file);
  if (!value.is_string()) fail(file, where + "." + key + " is not a string");
  return value.get<std::string>();
}

bool bool_member(const json& object, const std::string& key, bool fallback, const std::string& where,
                 const std::string& file) {
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) fail(file, where + "." + key + " is not true or false");
  return it->get<bool>();
}

size_t count_member(const json& object, const std::string& key, const std::string& where,
                    const std::string& file) {
  const json& value = member(object, key, where, file);
  if (!value.is_number_unsigned()) fail(file, where + "." + key + " is not a count");
  return value.get<size_t>();
}

const json& array_member(const json& object, const std::string& key, const std::string& where,
                         const std::string& file) {
  const json& value = member(object, key, where, file);
  if (!value.is_array()) fail(file, where + "." + key + " is not a list");
  return value;
}

// A token named by tokenizer_config.json: "<s>", {"content": "<s>", ...} or null.
std::optional<std::string> config_token(const json& config, const std::string& key, const std::string& file) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  fail(file, key + " is neither a string nor an object with a 'content' string");
}

json read_json(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(file, "cannot open the file");
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  json root;
  try {
    root = json::parse(bytes);
  } catch (const json::parse_error& e) {
    fail(file, std::string("invalid JSON: ") + e.what());
  }
  if (!root.is_object()) fail(file, "the top level is not a JSON object");
  return root;
}

enum class PrependScheme { always, first, never };

// Metaspace's prepend_scheme, or the add_prefix_space that older files write instead.
PrependScheme prepend_scheme(const json& step, const std::string& where, const std::string& file) {
  if (step.contains("prepend_scheme") && !step["prepend_scheme"].is_null()) {
    const auto scheme = string_member(step, "prepend_scheme", where, file);
    if (scheme == "always") return PrependScheme::always;
    if (scheme == "first") return PrependScheme::first;
    if (scheme == "never") return PrependScheme::never;
    fail(file, where + ".prepend_scheme '" + scheme + "' is not always, first or never");
  }
  const bool add_prefix_space = bool_member(step, "add_prefix_space", true, where, file);
  return add_prefix_space ? PrependScheme::always : PrependScheme::never;
}

// A single-character string field (Metaspace's replacement, Strip's content).
std::string char_member(const json& step, const std::string& key, const std::string& where,
                        const std::string& file) {
  const auto text = string_member(step, key, where, file);
  size_t at = 0;
  if (text.empty() || valid_utf8(text) != text || (next_code_point(text, at), at != text.size()))
    fail(file, where + "." + key + " is not one character");
  return text;
}

// Replace's {"String": ...} or {"Regex": ...}.
struct PatternField {
  std::string text;
  bool regex = false;
};

PatternField pattern_member(const json& step, const std::string& where, const std::string& file) {
  const json& pattern = member(step, "pattern", where, file);
  PatternField field;
  if (pattern.is_object() && pattern.contains("String") && pattern["String"].is_string()) {
    field.text = pattern["String"].get<std::string>();
  } else if (pattern.is_object() && pattern.contains("Regex") && pattern["Regex"].is_string()) {
    field.text = pattern["Regex"].get<std::string>();
    field.regex = true;
  } else {
    fail(file, where + ".pattern is neither {\"String\": ...} nor {\"Regex\": ...}");
  }
  if (field.text.empty()) fail(file, where + ".pattern is empty");
  return field;
}

std::string step_type(const json& step, const std::string& where, const std::string& file) {
  return string_member(step, "type", where, file);
}

std::string indexed(const std::string& where, const std::string& list, size_t i) {
  return where + "." + list + "[" + std::to_string(i) + "]";
}

uint64_t code_point_pair(UChar32 left, UChar32 right) {
  return (static_cast<uint64_t>(left) << 32) | static_cast<uint32_t>(right);
}

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

}  // namespace

// ---- What flows through the pipeline

// A stretch of the input: text still to encode, or an added token found in it (id >= 0).
struct HfTokenizer::Segment {
  std::string text;
  int32_t id = -1;
  bool at_text_start = false;  // begins where the input begins (Metaspace's prepend_scheme "first")
};

// A word of the pre-tokeniser, encoded by the model on its own.
struct HfTokenizer::Piece {
  std::string text;
  bool at_text_start = false;
};

// Which characters are tokens by themselves, and which pairs of characters some token holds.
struct HfTokenizer::Junctions {
  std::unordered_set<UChar32> single_characters;
  std::unordered_set<uint64_t> pairs;
};

// ---- Added tokens: matched whole, leftmost first and longest at a position, as Hugging Face's
// AddedVocabulary (an Aho-Corasick automaton in leftmost-longest mode) matches them.

struct HfTokenizer::AddedTokenMatcher {
  struct Token {
    int32_t id;
    std::string pattern;
    bool single_word, lstrip, rstrip;
  };

  void add(Token token) {
    int32_t node = 0;
    for (unsigned char byte : token.pattern) {
      auto [edge, inserted] = edges.emplace(edge_key(node, byte), static_cast<int32_t>(node_token.size()));
      if (inserted) node_token.push_back(-1);
      node = edge->second;
    }
    node_token[static_cast<size_t>(node)] = static_cast<int32_t>(tokens.size());
    first_bytes[static_cast<unsigned char>(token.pattern[0])] = true;
    tokens.push_back(std::move(token));
  }

  // `text` cut into added tokens and the stretches between them (none empty).
  std::vector<Segment> split(const std::string& text, bool at_text_start) const {
    std::vector<Segment> segments;
    size_t done = 0;  // text before this is in `segments`
    for (size_t at = 0; at < text.size();) {
      size_t length = 0;
      const Token* token = longest_at(text, at, length);
      if (!token) {
        ++at;
        continue;
      }
      size_t begin = at, end = at + length;
      at = end;  // a match that is discarded below still consumes its text, as Hugging Face's does
      if (token->single_word && (touches_word_before(text, begin) || touches_word_after(text, end))) continue;
      if (token->lstrip) begin = std::max(done, white_space_start_before(text, begin));
      if (token->rstrip) at = end = white_space_end_after(text, end);
      if (done < begin) segments.push_back({text.substr(done, begin - done), -1, at_text_start && done == 0});
      segments.push_back({text.substr(begin, end - begin), token->id, false});
      done = end;
    }
    if (done < text.size()) segments.push_back({text.substr(done), -1, at_text_start && done == 0});
    return segments;
  }

 private:
  static uint64_t edge_key(int32_t node, unsigned char byte) {
    return (static_cast<uint64_t>(node) << 8) | byte;
  }

  const Token* longest_at(const std::string& text, size_t at, size_t& length) const {
    if (!first_bytes[static_cast<unsigned char>(text[at])]) return nullptr;
    const Token* longest = nullptr;
    int32_t node = 0;
    for (size_t i = at; i < text.size(); ++i) {
      const auto edge = edges.find(edge_key(node, static_cast<unsigned char>(text[i])));
      if (edge == edges.end()) break;
      node = edge->second;
      const int32_t token = node_token[static_cast<size_t>(node)];
      if (token >= 0) {
        longest = &tokens[static_cast<size_t>(token)];
        length = i + 1 - at;
      }
    }
    return longest;
  }

  static bool touches_word_before(const std::string& text, size_t at) {
    if (at == 0) return false;
    UChar32 c;
    int32_t i = static_cast<int32_t>(at);
    U8_PREV_UNSAFE(reinterpret_cast<const uint8_t*>(text.data()), i, c);
    return is_word_char(c);
  }
  static bool touches_word_after(const std::string& text, size_t at) {
    return at < text.size() && is_word_char(next_code_point(text, at));
  }
  static size_t white_space_start_before(const std::string& text, size_t at) {
    const auto* s = reinterpret_cast<const uint8_t*>(text.data());
    int32_t i = static_cast<int32_t>(at);
    while (i > 0) {
      int32_t before = i;
      UChar32 c;
      U8_PREV_UNSAFE(s, before, c);
      if (!is_white_space(c)) break;
      i = before;
    }
    return static_cast<size_t>(i);
  }
  static size_t white_space_end_after(const std::string& text, size_t at) {
    while (at < text.size()) {
      size_t next = at;
      if (!is_white_space(next_code_point(text, next))) break;
      at = next;
    }
    return at;
  }

  std::vector<Token> tokens;
  std::unordered_map<uint64_t, int32_t> edges;  // byte trie: (node, byte) -> node
  std::vector<int32_t> node_token{-1};          // the token ending at each node; node 0 is the root
  bool first_bytes[256] = {};
};

// ---- Normalizers

struct HfTokenizer::NormalizerStep {
  enum class Kind { unicode, lowercase, prepend, replace, strip } kind = Kind::unicode;
  const icu::Normalizer2* unicode_form = nullptr;  // NFC, NFD, NFKC or NFKD
  std::string text;                                // prepend: what; replace: the plain pattern
  std::shared_ptr<const Regex> regex;              // replace with a Regex pattern
  std::string content;                             // replace: by what
  bool strip_left = false, strip_right = false;

  std::string apply(const std::string& s) const {
    switch (kind) {
      case Kind::unicode: return unicode_normalized(s);
      case Kind::lowercase: return lowercased(s);
      case Kind::prepend: return s.empty() ? s : text + s;
      case Kind::replace: return replaced(s);
      case Kind::strip: return stripped(s);
    }
    return s;
  }

 private:
  std::string unicode_normalized(const std::string& s) const {
    UErrorCode status = U_ZERO_ERROR;
    if (unicode_form->isNormalizedUTF8(s, status) && U_SUCCESS(status)) return s;
    status = U_ZERO_ERROR;
    std::string out;
    icu::StringByteSink<std::string> sink(&out, static_cast<int32_t>(s.size()));
    unicode_form->normalizeUTF8(0, s, sink, nullptr, status);
    if (U_FAILURE(status))
      throw ModelError(std::string("unicode normalisation failed: ") + u_errorName(status));
    return out;
  }
  static std::string lowercased(const std::string& s) {
    std::string out;
    out.reserve(s.size());
    for (size_t at = 0; at < s.size();) append_lowercase(out, next_code_point(s, at));
    return out;
  }
  std::string replaced(const std::string& s) const {
    return replace_spans(s, regex ? regex->find_matches(s) : find_string(s, text), content);
  }
  std::string stripped(const std::string& s) const {
    size_t begin = 0, end = s.size();
    while (strip_left && begin < end) {
      size_t next = begin;
      if (!is_white_space(next_code_point(s, next))) break;
      begin = next;
    }
    while (strip_right && end > begin) {
      int32_t before = static_cast<int32_t>(end);
      UChar32 c;
      U8_PREV_UNSAFE(reinterpret_cast<const uint8_t*>(s.data()), before, c);
      if (!is_white_space(c)) break;
      end = static_cast<size_t>(before);
    }
    return s.substr(begin, end - begin);
  }
};

// ---- Pre-tokenizers: each turns the pieces so far into smaller ones.

struct HfTokenizer::PreTokenizerStep {
  enum class Kind { split, byte_level, metaspace, digits } kind = Kind::split;
  std::shared_ptr<const Regex> regex;  // split; byte_level with use_regex
  SplitBehavior behavior = SplitBehavior::isolated;
  bool invert = false;
  bool add_prefix_space = false;  // byte_level
  std::string replacement;        // metaspace
  PrependScheme prepend = PrependScheme::always;
  bool split_words = true;         // metaspace
  bool individual_digits = false;  // digits

  void apply(std::vector<Piece>& pieces) const {
    std::vector<Piece> out;
    out.reserve(pieces.size());
    for (auto& piece : pieces) {
      switch (kind) {
        case Kind::split: {
          auto spans = regex->find_matches(piece.text);
          if (invert)
            for (auto& s : spans) s.match = !s.match;
          cut(piece, spans, behavior, out);
          break;
        }
        case Kind::byte_level: byte_level(piece, out); break;
        case Kind::metaspace: metaspace(piece, out); break;
        case Kind::digits:
          cut(piece, find_chars(piece.text, is_numeric),
              individual_digits ? SplitBehavior::isolated : SplitBehavior::contiguous, out);
          break;
      }
    }
    pieces = std::move(out);
  }

 private:
  static void cut(const Piece& piece, const std::vector<Span>& spans, SplitBehavior how,
                  std::vector<Piece>& out) {
    for (const auto& [begin, end] : split_ranges(spans, how))
      if (end > begin)
        out.push_back({piece.text.substr(begin, end - begin), piece.at_text_start && begin == 0});
  }

  void byte_level(Piece& piece, std::vector<Piece>& out) const {
    if (add_prefix_space && piece.text.rfind(' ', 0) != 0) piece.text.insert(0, 1, ' ');
    const size_t first = out.size();
    if (regex) cut(piece, regex->find_matches(piece.text), SplitBehavior::isolated, out);
    else if (!piece.text.empty()) out.push_back(std::move(piece));
    const auto& alphabet = byte_alphabet();
    for (size_t i = first; i < out.size(); ++i) {
      std::string mapped;
      mapped.reserve(out[i].text.size() * 2);
      for (unsigned char byte : out[i].text) mapped += alphabet.char_of_byte[byte];
      out[i].text = std::move(mapped);
    }
  }

  void metaspace(Piece& piece, std::vector<Piece>& out) const {
    std::string text = replace_spans(piece.text, find_string(piece.text, " "), replacement);
    const bool starts_with_replacement = text.rfind(replacement, 0) == 0;
    if (!starts_with_replacement &&
        (prepend == PrependScheme::always || (prepend == PrependScheme::first && piece.at_text_start)))
      text = replacement + text;
    const Piece replaced{std::move(text), piece.at_text_start};
    if (split_words)
      cut(replaced, find_string(replaced.text, replacement), SplitBehavior::merged_with_next, out);
    else if (!replaced.text.empty())
      out.push_back(replaced);
  }
};

// ---- Decoders: each turns the tokens' texts so far into new ones; decode() joins the last.

struct HfTokenizer::DecoderStep {
  enum class Kind { byte_level, replace, byte_fallback, fuse, strip, metaspace } kind = Kind::byte_level;
  std::string pattern;                 // replace: the plain pattern
  std::shared_ptr<const Regex> regex;  // replace with a Regex pattern
  std::string content;                 // replace: by what; strip: the character
  size_t strip_start = 0, strip_stop = 0;
  std::string replacement;  // metaspace
  bool drop_first_replacements = true;

  void apply(std::vector<std::string>& tokens) const {
    switch (kind) {
      case Kind::byte_level: tokens = {bytes_of(tokens)}; break;
      case Kind::replace:
        for (auto& t : tokens)
          t = replace_spans(t, regex ? regex->find_matches(t) : find_string(t, pattern), content);
        break;
      case Kind::byte_fallback: tokens = bytes_decoded(tokens); break;
      case Kind::fuse: {
        std::string all;
        for (const auto& t : tokens) all += t;
        tokens = {std::move(all)};
        break;
      }
      case Kind::strip:
        for (auto& t : tokens) t = stripped(t);
        break;
      case Kind::metaspace:
        for (size_t i = 0; i < tokens.size(); ++i)
          tokens[i] = replace_spans(tokens[i], find_string(tokens[i], replacement),
                                    i == 0 && drop_first_replacements ? "" : " ");
        break;
    }
  }

 private:
  // ByteLevel: the bytes the tokens' characters stand for (a token with a character outside the
  // alphabet, an added token say, stands for its own bytes), read as lossy UTF-8.
  static std::string bytes_of(const std::vector<std::string>& tokens) {
    const auto& alphabet = byte_alphabet();
    std::string bytes;
    for (const auto& token : tokens) {
      std::string token_bytes;
      bool in_alphabet = true;
      for (size_t at = 0; at < token.size() && in_alphabet;) {
        const UChar32 c = next_code_point(token, at);
        const int byte = c < 324 ? alphabet.byte_of_char[c] : -1;
        if (byte < 0) in_alphabet = false;
        else token_bytes += static_cast<char>(byte);
      }
      bytes += in_alphabet ? token_bytes : token;
    }
    return valid_utf8(bytes);
  }

  // ByteFallback: runs of "<0x41>" tokens become the text their bytes spell, or one U+FFFD per
  // byte when that is not valid UTF-8.
  static std::vector<std::string> bytes_decoded(const std::vector<std::string>& tokens) {
    std::vector<std::string> out;
    std::string run;
    size_t run_length = 0;
    auto flush = [&] {
      if (run_length == 0) return;
      if (valid_utf8(run) == run) {
        out.push_back(run);
      } else {
        for (size_t i = 0; i < run_length; ++i) out.push_back(kReplacementChar);
      }
      run.clear();
      run_length = 0;
    };
    for (const auto& token : tokens) {
      auto hex = [&](size_t i) { return std::isxdigit(static_cast<unsigned char>(token[i])) != 0; };
      int byte = -1;
      if (token.size() == 6 && token.compare(0, 3, "<0x") == 0 && token[5] == '>' && hex(3) && hex(4))
        byte = std::stoi(token.substr(3, 2), nullptr, 16);
      if (byte >= 0) {
        run += static_cast<char>(byte);
        ++run_length;
      } else {
        flush();
        out.push_back(token);
      }
    }
    flush();
    return out;
  }

  // Strip: up to strip_start leading and strip_stop trailing `content` characters.
  std::string stripped(const std::string& token) const {
    size_t begin = 0, end = token.size();
    for (size_t i = 0; i < strip_start && token.compare(begin, content.size(), content) == 0; ++i)
      begin += content.size();
    for (size_t i = 0; i < strip_stop && end >= begin + content.size() &&
                       token.compare(end - content.size(), content.size(), content) == 0;
         ++i)
      end -= content.size();
    return token.substr(begin, end - begin);
  }
};

// ---- Loading

struct HfTokenizer::Loader {
  HfTokenizer& t;
  const std::string& file;

  void load() {
    const json root = read_json(file);
    const auto model = root.find("model");
    if (model == root.end() || model->is_null()) fail(file, "no 'model'");
    load_model(*model);
    load_normalizers(root.value("normalizer", json()), "normalizer");
    load_pre_tokenizers(root.value("pre_tokenizer", json()), "pre_tokenizer");
    const json decoder = root.value("decoder", json());
    t.has_decoder_ = !decoder.is_null();
    load_decoders(decoder, "decoder");
    load_added_tokens(root.value("added_tokens", json::array()));
    load_config(root.value("post_processor", json()));
  }

  void load_model(const json& model) {
    if (!model.is_object()) fail(file, "model is not an object");
    // Hugging Face reads a model without "type" as whichever kind its fields fit.
    const std::string type = model.contains("type") ? string_member(model, "type", "model", file) : "BPE";
    if (type != "BPE") fail(file, "model type '" + type + "' is not supported (only BPE)");
    const auto dropout = model.find("dropout");
    const bool no_dropout = dropout == model.end() || dropout->is_null() ||
                            (dropout->is_number() && dropout->get<double>() == 0);
    if (!no_dropout)
      fail(file, "model.dropout is not supported (BPE dropout is for training)");

    const json& vocab = member(model, "vocab", "model", file);
    if (!vocab.is_object()) fail(file, "model.vocab is not an object of token: id");
    t.vocab_.reserve(vocab.size());
    for (const auto& [token, id] : vocab.items()) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= kMaxTokenId)
        fail(file, "model.vocab: the id of '" + token + "' is not a token id");
      t.vocab_.emplace(token, id.get<int32_t>());
      set_token_text(id.get<int32_t>(), token, false);
    }

    t.subword_prefix_ = optional_string(model, "continuing_subword_prefix", "model");
    t.word_suffix_ = optional_string(model, "end_of_word_suffix", "model");
    t.byte_fallback_ = bool_member(model, "byte_fallback", false, "model", file);
    t.fuse_unk_ = bool_member(model, "fuse_unk", false, "model", file);
    t.ignore_merges_ = bool_member(model, "ignore_merges", false, "model", file);
    const std::string unk = optional_string(model, "unk_token", "model");
    if (!unk.empty()) {
      const auto it = t.vocab_.find(unk);
      if (it == t.vocab_.end()) fail(file, "model.unk_token '" + unk + "' is not in model.vocab");
      t.unk_id_ = it->second;
    }
    for (int byte = 0; byte < 256; ++byte) {
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", byte);
      const auto it = t.vocab_.find(name);
      t.byte_token_ids_[byte] = it == t.vocab_.end() ? -1 : it->second;
    }
    load_merges(array_member(model, "merges", "model", file));
  }

  void load_merges(const json& merges) {
    t.merges_.reserve(merges.size());
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const json& merge = merges[rank];
      const std::string where = "model.merges[" + std::to_string(rank) + "]";
      std::string left, right;
      if (merge.is_string()) {  // "a b"
        const auto text = merge.get<std::string>();
        const auto space = text.find(' ');
        if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos)
          fail(file, where + " '" + text + "' is not two tokens separated by a space");
        left = text.substr(0, space);
        right = text.substr(space + 1);
      } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
        left = merge[0].get<std::string>();
        right = merge[1].get<std::string>();
      } else {
        fail(file, where + " is neither \"a b\" nor [\"a\", \"b\"]");
      }
      const int32_t left_id = vocab_id(left, where), right_id = vocab_id(right, where);
      // The right part's continuing_subword_prefix does not appear inside the merged token.
      const bool prefixed = !t.subword_prefix_.empty() && right.rfind(t.subword_prefix_, 0) == 0;
      const int32_t merged_id =
          vocab_id(left + (prefixed ? right.substr(t.subword_prefix_.size()) : right), where);
      // A pair listed twice keeps its last rank, as Hugging Face's map of merges does.
      t.merges_[pair_key(left_id, right_id)] = {static_cast<int32_t>(rank), merged_id};
    }
  }

  int32_t vocab_id(const std::string& token, const std::string& where) const {
    const auto it = t.vocab_.find(token);
    if (it == t.vocab_.end()) fail(file, where + " names '" + token + "', which is not in model.vocab");
    return it->second;
  }

  std::string optional_string(const json& object, const std::string& key, const std::string& where) const {
    const auto it = object.find(key);
    if (it == object.end() || it->is_null()) return "";
    if (!it->is_string()) fail(file, where + "." + key + " is not a string");
    return it->get<std::string>();
  }

  void set_token_text(int32_t id, const std::string& text, bool replace) {
    const auto at = static_cast<size_t>(id);
    if (at >= t.token_texts_.size()) {
      t.token_texts_.resize(at + 1);
      t.has_token_.resize(at + 1, false);
    }
    if (t.has_token_[at] && !replace) return;
    t.token_texts_[at] = text;
    t.has_token_[at] = true;
  }

  // Ids as Hugging Face gives them, whatever "id" says (it only warns): a content already added
  // or in the vocabulary keeps that id, a new one takes the next after the vocabulary's entries.
  // A content listed again replaces the earlier options; an empty one is skipped.
  void load_added_tokens(const json& added) {
    if (!added.is_array()) fail(file, "added_tokens is not a list");
    struct Options {
      AddedTokenMatcher::Token token;
      bool normalized;
    };
    std::map<int32_t, Options> by_id;
    auto next_id = static_cast<int32_t>(t.vocab_.size());
    for (size_t i = 0; i < added.size(); ++i) {
      const json& token = added[i];
      const std::string where = "added_tokens[" + std::to_string(i) + "]";
      const json& listed_id = member(token, "id", where, file);
      if (!listed_id.is_number_integer() || listed_id.get<int64_t>() < 0)
        fail(file, where + ".id is not a token id");
      const std::string content = string_member(token, "content", where, file);
      const bool special = bool_member(token, "special", false, where, file);
      const bool normalized = bool_member(token, "normalized", !special, where, file);
      const bool single_word = bool_member(token, "single_word", false, where, file);
      const bool lstrip = bool_member(token, "lstrip", false, where, file);
      const bool rstrip = bool_member(token, "rstrip", false, where, file);
      if (content.empty()) continue;
      const int32_t id = t.token_id(content).value_or(next_id);
      if (id == next_id) ++next_id;
      if (id >= kMaxTokenId) fail(file, where + ": too many added tokens");
      t.added_ids_[content] = id;
      by_id[id] = {{id, content, single_word, lstrip, rstrip}, normalized};
    }
    t.raw_added_ = std::make_unique<AddedTokenMatcher>();
    t.normalized_added_ = std::make_unique<AddedTokenMatcher>();
    for (auto& [id, options] : by_id) {
      auto& token = options.token;
      // A normalized token is looked for in normalised text, so as the normalizer writes it; that
      // is also its text for decode(), as Hugging Face keeps it.
      if (options.normalized) token.pattern = t.normalize(token.pattern);
      set_token_text(id, token.pattern, true);
      if (token.pattern.empty()) continue;
      (options.normalized ? t.normalized_added_ : t.raw_added_)->add(std::move(token));
    }
  }

  void load_normalizers(const json& step, const std::string& where) {
    if (step.is_null()) return;
    const auto type = step_type(step, where, file);
    NormalizerStep n;
    UErrorCode status = U_ZERO_ERROR;
    if (type == "Sequence") {
      const json& steps = array_member(step, "normalizers", where, file);
      for (size_t i = 0; i < steps.size(); ++i) load_normalizers(steps[i], indexed(where, "normalizers", i));
      return;
    } else if (type == "NFC") {
      n.unicode_form = icu::Normalizer2::getNFCInstance(status);
    } else if (type == "NFD") {
      n.unicode_form = icu::Normalizer2::getNFDInstance(status);
    } else if (type == "NFKC") {
      n.unicode_form = icu::Normalizer2::getNFKCInstance(status);
    } else if (type == "NFKD") {
      n.unicode_form = icu::Normalizer2::getNFKDInstance(status);
    } else if (type == "Lowercase") {
      n.kind = NormalizerStep::Kind::lowercase;
    } else if (type == "Prepend") {
      n.kind = NormalizerStep::Kind::prepend;
      n.text = string_member(step, "prepend", where, file);
    } else if (type == "Replace") {
      n.kind = NormalizerStep::Kind::replace;
      load_replace(step, where, n.text, n.regex, n.content);
    } else if (type == "Strip") {
      n.kind = NormalizerStep::Kind::strip;
      n.strip_left = bool_member(step, "strip_left", false, where, file);
      n.strip_right = bool_member(step, "strip_right", false, where, file);
    } else {
      fail(file, where + " type '" + type + "' is not supported");
    }
    if (U_FAILURE(status)) fail(file, where + ": ICU has no " + type + " data (" + u_errorName(status) + ")");
    t.normalizers_.push_back(std::move(n));
  }

  void load_replace(const json& step, const std::string& where, std::string& plain,
                    std::shared_ptr<const Regex>& regex, std::string& content) {
    const auto pattern = pattern_member(step, where, file);
    if (pattern.regex) regex = std::make_shared<Regex>(pattern.text, false, file + ": " + where);
    else plain = pattern.text;
    content = string_member(step, "content", where, file);
  }

  void load_pre_tokenizers(const json& step, const std::string& where) {
    if (step.is_null()) return;
    const auto type = step_type(step, where, file);
    PreTokenizerStep p;
    if (type == "Sequence") {
      const json& steps = array_member(step, "pretokenizers", where, file);
      for (size_t i = 0; i < steps.size(); ++i)
        load_pre_tokenizers(steps[i], indexed(where, "pretokenizers", i));
      return;
    } else if (type == "Split") {
      const auto pattern = pattern_member(step, where, file);
      p.regex = std::make_shared<Regex>(pattern.text, !pattern.regex, file + ": " + where);
      p.behavior = split_behavior(string_member(step, "behavior", where, file), where);
      p.invert = bool_member(step, "invert", false, where, file);
    } else if (type == "ByteLevel") {
      p.kind = PreTokenizerStep::Kind::byte_level;
      p.add_prefix_space = bool_member(step, "add_prefix_space", true, where, file);
      if (bool_member(step, "use_regex", true, where, file)) p.regex = gpt2_regex();
    } else if (type == "Metaspace") {
      p.kind = PreTokenizerStep::Kind::metaspace;
      p.replacement = char_member(step, "replacement", where, file);
      p.prepend = prepend_scheme(step, where, file);
      p.split_words = bool_member(step, "split", true, where, file);
    } else if (type == "Digits") {
      p.kind = PreTokenizerStep::Kind::digits;
      p.individual_digits = bool_member(step, "individual_digits", false, where, file);
    } else {
      fail(file, where + " type '" + type + "' is not supported");
    }
    t.pre_tokenizers_.push_back(std::move(p));
  }

  SplitBehavior split_behavior(const std::string& name, const std::string& where) const {
    if (name == "Isolated") return SplitBehavior::isolated;
    if (name == "Removed") return SplitBehavior::removed;
    if (name == "MergedWithPrevious") return SplitBehavior::merged_with_previous;
    if (name == "MergedWithNext") return SplitBehavior::merged_with_next;
    if (name == "Contiguous") return SplitBehavior::contiguous;
    fail(file, where + ".behavior '" + name + "' is not supported");
  }

  std::shared_ptr<const Regex> gpt2_regex() const {
    static const auto regex = std::make_shared<const Regex>(
        R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)", false, "ByteLevel");
    return regex;
  }

  void load_decoders(const json& step, const std::string& where) {
    if (step.is_null()) return;
    const auto type = step_type(step, where, file);
    DecoderStep d;
    if (type == "Sequence") {
      const json& steps = array_member(step, "decoders", where, file);
      for (size_t i = 0; i < steps.size(); ++i) load_decoders(steps[i], indexed(where, "decoders", i));
      return;
    } else if (type == "ByteLevel") {
      d.kind = DecoderStep::Kind::byte_level;
    } else if (type == "Replace") {
      d.kind = DecoderStep::Kind::replace;
      load_replace(step, where, d.pattern, d.regex, d.content);
    } else if (type == "ByteFallback") {
      d.kind = DecoderStep::Kind::byte_fallback;
    } else if (type == "Fuse") {
      d.kind = DecoderStep::Kind::fuse;
    } else if (type == "Strip") {
      d.kind = DecoderStep::Kind::strip;
      d.content = char_member(step, "content", where, file);
      d.strip_start = count_member(step, "start", where, file);
      d.strip_stop = count_member(step, "stop", where, file);
    } else if (type == "Metaspace") {
      d.kind = DecoderStep::Kind::metaspace;
      d.replacement = char_member(step, "replacement", where, file);
      d.drop_first_replacements = prepend_scheme(step, where, file) != PrependScheme::never;
    } else {
      fail(file, where + " type '" + type + "' is not supported");
    }
    t.decoders_.push_back(std::move(d));
  }

  // The BOS id a TemplateProcessing post_processor puts before a single sequence, or -1.
  int32_t template_bos(const json& processor) const {
    if (!processor.is_object()) return -1;
    const std::string type = processor.value("type", "");
    if (type == "Sequence" && processor.contains("processors") && processor["processors"].is_array()) {
      for (const auto& p : processor["processors"])
        if (const int32_t id = template_bos(p); id >= 0) return id;
      return -1;
    }
    if (type != "TemplateProcessing") return -1;
    const auto& single = member(processor, "single", "post_processor", file);
    if (!single.is_array() || single.empty() || !single[0].is_object() || !single[0].contains("SpecialToken"))
      return -1;
    const std::string name = single[0]["SpecialToken"].value("id", "");
    const auto& specials = member(processor, "special_tokens", "post_processor", file);
    if (!specials.contains(name) || !specials[name].contains("ids") || !specials[name]["ids"].is_array() ||
        specials[name]["ids"].empty() || !specials[name]["ids"][0].is_number_integer())
      fail(file, "post_processor.special_tokens has no ids for '" + name + "'");
    return specials[name]["ids"][0].get<int32_t>();
  }

  void load_config(const json& post_processor) {
    namespace fs = std::filesystem;
    const fs::path directory = fs::path(file).parent_path();
    const std::string config_file = (directory / "tokenizer_config.json").string();
    std::optional<bool> add_bos_token;
    if (fs::exists(config_file)) {
      const json config = read_json(config_file);
      t.bos_id_ = config_token_id(config, "bos_token", config_file);
      t.eos_id_ = config_token_id(config, "eos_token", config_file);
      if (config.contains("add_bos_token") && !config["add_bos_token"].is_null())
        add_bos_token = bool_member(config, "add_bos_token", false, "tokenizer_config", config_file);
    }
    t.chat_template_ = read_chat_template(directory.string());
    const int32_t template_bos_id = template_bos(post_processor);
    if (t.bos_id_ < 0) t.bos_id_ = template_bos_id;
    if (add_bos_token) {
      t.adds_bos_ = *add_bos_token && t.bos_id_ >= 0;
    } else if (template_bos_id >= 0) {
      t.adds_bos_ = template_bos_id == t.bos_id_;
    } else {
      // Neither file says. A chat template that writes bos_token shows the model was trained with
      // BOS first: the first Llama 3 release's tokenizer.json lacked its BOS template.
      t.adds_bos_ = t.bos_id_ >= 0 && t.chat_template_.find("bos_token") != std::string::npos;
    }
  }

  int32_t config_token_id(const json& config, const std::string& key, const std::string& config_file) const {
    const auto name = config_token(config, key, config_file);
    if (!name) return -1;
    const auto id = t.token_id(*name);
    if (!id) fail(config_file, key + " '" + *name + "' is neither an added token nor in the vocabulary");
    return *id;
  }
};

HfTokenizer::HfTokenizer(const std::string& tokenizer_json) : file_(tokenizer_json) {
  std::fill(std::begin(byte_token_ids_), std::end(byte_token_ids_), -1);
  try {
    Loader{*this, file_}.load();
  } catch (const json::exception& e) {  // a field of an unexpected JSON type the checks missed
    fail(file_, std::string("unexpected structure: ") + e.what());
  }
}

HfTokenizer::~HfTokenizer() = default;

std::optional<int32_t> HfTokenizer::token_id(const std::string& token) const {
  if (const auto it = added_ids_.find(token); it != added_ids_.end()) return it->second;
  if (const auto it = vocab_.find(token); it != vocab_.end()) return it->second;
  return std::nullopt;
}

const std::string& HfTokenizer::token_text(int32_t id) const {
  if (id < 0 || id >= vocab_size())
    fail(file_, "token id " + std::to_string(id) + " is outside [0, " + std::to_string(vocab_size()) + ")");
  return token_texts_[static_cast<size_t>(id)];
}

std::string HfTokenizer::normalize(const std::string& text) const {
  std::string s = text;
  for (const auto& step : normalizers_) s = step.apply(s);
  return s;
}

// Hugging Face's order: added tokens in the raw text, normalisation of what is between them,
// normalized added tokens in that, pre-tokenisation into words, the model on each word.
std::vector<int32_t> HfTokenizer::encode(const std::string& input) const {
  const std::string text = valid_utf8(input);
  std::vector<int32_t> ids;
  for (const auto& segment : raw_added_->split(text, true)) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
      continue;
    }
    const std::string normalized = normalize(segment.text);
    for (const auto& part : normalized_added_->split(normalized, segment.at_text_start)) {
      if (part.id >= 0) {
        ids.push_back(part.id);
        continue;
      }
      std::vector<Piece> pieces{{part.text, part.at_text_start}};
      for (const auto& step : pre_tokenizers_) step.apply(pieces);
      for (const auto& piece : pieces) encode_piece(piece, ids);
    }
  }
  return ids;
}

void HfTokenizer::encode_piece(const Piece& piece, std::vector<int32_t>& ids) const {
  const std::string& word = piece.text;
  if (word.empty()) return;
  if (ignore_merges_) {  // a word the vocabulary has is taken whole
    if (const auto it = vocab_.find(word); it != vocab_.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  if (word.size() <= kMaxCachedWordBytes) return encode_merged(word, ids);
  // A long word (a whole text, where there is no pre-tokenizer) in pieces BPE treats alike.
  for (const auto& chunk : independent_chunks(word)) encode_merged(chunk, ids);
}

void HfTokenizer::encode_merged(const std::string& word, std::vector<int32_t>& ids) const {
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (const auto it = word_cache_.find(word); it != word_cache_.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  auto word_ids = merge_word(word);
  ids.insert(ids.end(), word_ids.begin(), word_ids.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (word_cache_.size() >= kMaxCachedWords) word_cache_.clear();
    word_cache_.emplace(word, std::move(word_ids));
  }
}

// Between two characters that are tokens by themselves and that no token of the vocabulary holds
// side by side, no merge can ever cross (a merge makes a token of its two sides), so BPE on each
// side alone gives the same tokens. Cut there. Not with a subword prefix or suffix, which change
// the characters' tokens.
std::vector<std::string> HfTokenizer::independent_chunks(const std::string& word) const {
  if (!subword_prefix_.empty() || !word_suffix_.empty()) return {word};
  std::call_once(junctions_once_, [this] {
    auto junctions = std::make_unique<Junctions>();
    for (const auto& entry : vocab_) {
      const std::string& token = entry.first;
      size_t at = 0;
      UChar32 previous = next_code_point(token, at);
      if (at == token.size()) junctions->single_characters.insert(previous);
      while (at < token.size()) {
        const UChar32 c = next_code_point(token, at);
        junctions->pairs.insert(code_point_pair(previous, c));
        previous = c;
      }
    }
    junctions_ = std::move(junctions);
  });
  std::vector<std::string> chunks;
  size_t chunk_start = 0, at = 0;
  UChar32 previous = next_code_point(word, at);
  bool previous_is_token = junctions_->single_characters.count(previous) > 0;
  while (at < word.size()) {
    const size_t boundary = at;
    const UChar32 c = next_code_point(word, at);
    const bool is_token = junctions_->single_characters.count(c) > 0;
    if (previous_is_token && is_token && !junctions_->pairs.count(code_point_pair(previous, c))) {
      chunks.push_back(word.substr(chunk_start, boundary - chunk_start));
      chunk_start = boundary;
    }
    previous = c;
    previous_is_token = is_token;
  }
  chunks.push_back(word.substr(chunk_start));
  return chunks;
}

// BPE: the word's characters as tokens, then, again and again, the adjacent pair of lowest merge
// rank (leftmost among equals) joined, until no pair has a merge.
std::vector<int32_t> HfTokenizer::merge_word(const std::string& word) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;  // neighbours' indices, -1 at the ends
    bool alive;
  };
  std::vector<Symbol> symbols;
  auto add = [&](int32_t id) {
    const auto index = static_cast<int32_t>(symbols.size());
    if (index > 0) symbols.back().next = index;
    symbols.push_back({id, index - 1, -1, true});
  };
  bool unk_pending = false;  // an unknown character waiting: fuse_unk joins the next one into it
  for (size_t at = 0; at < word.size();) {
    const size_t begin = at;
    next_code_point(word, at);
    std::string character = word.substr(begin, at - begin);
    if (begin > 0) character.insert(0, subword_prefix_);
    if (at == word.size()) character += word_suffix_;
    if (const auto it = vocab_.find(character); it != vocab_.end()) {
      if (unk_pending) add(unk_id_);
      unk_pending = false;
      add(it->second);
      continue;
    }
    if (byte_fallback_ && std::all_of(character.begin(), character.end(), [&](char b) {
          return byte_token_ids_[static_cast<unsigned char>(b)] >= 0;
        })) {
      // As Hugging Face does, a pending unknown character is not written before these bytes.
      for (unsigned char b : character) add(byte_token_ids_[b]);
      continue;
    }
    if (unk_id_ < 0) continue;  // no unk_token: the character is dropped, as Hugging Face drops it
    if (unk_pending && !fuse_unk_) add(unk_id_);
    unk_pending = true;
  }
  if (unk_pending) add(unk_id_);

  struct Candidate {
    int32_t rank, left, merged_id;
    bool operator<(const Candidate& o) const {  // the queue's top: lowest rank, then leftmost
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  std::priority_queue<Candidate> queue;
  auto consider = [&](int32_t left) {
    const int32_t right = symbols[static_cast<size_t>(left)].next;
    if (right < 0) return;
    const auto it =
        merges_.find(pair_key(symbols[static_cast<size_t>(left)].id, symbols[static_cast<size_t>(right)].id));
    if (it != merges_.end()) queue.push({it->second.rank, left, it->second.merged_id});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) consider(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[static_cast<size_t>(top.left)];
    if (!left.alive || left.next < 0) continue;
    Symbol& right = symbols[static_cast<size_t>(left.next)];
    const auto it = merges_.find(pair_key(left.id, right.id));
    if (it == merges_.end() || it->second.merged_id != top.merged_id) continue;  // stale: a side has changed
    left.id = top.merged_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[static_cast<size_t>(right.next)].prev = top.left;
    if (left.prev >= 0) consider(left.prev);
    consider(top.left);
  }
  std::vector<int32_t> ids;
  for (const auto& s : symbols)
    if (s.alive) ids.push_back(s.id);
  return ids;
}

std::string HfTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const int32_t id : ids) {
    if (id < 0 || id >= vocab_size())
      fail(file_, "cannot decode token id " + std::to_string(id) + ": outside [0, " +
                      std::to_string(vocab_size()) + ")");
    if (has_token_[static_cast<size_t>(id)]) tokens.push_back(token_texts_[static_cast<size_t>(id)]);
  }
  std::string text;
  if (!has_decoder_) {
    for (size_t i = 0; i < tokens.size(); ++i) text += (i ? " " : "") + tokens[i];
    return text;
  }
  for (const auto& step : decoders_) step.apply(tokens);
  for (const auto& t : tokens) text += t;
  return text;
}

}  // namespace ce
