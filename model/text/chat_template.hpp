#pragma once
// Chat templates: the Jinja source a Hugging Face model publishes as `chat_template` in its
// tokenizer_config.json, turned into the prompt text the model was trained on. Debian packages no
// C++ Jinja, so this is a small interpreter of the Jinja subset chat templates use, rendered the
// way transformers' apply_chat_template renders them (trim_blocks and lstrip_blocks on, Python
// string methods, raise_exception, strftime_now, a tojson that leaves non-ASCII as is). Its
// output is checked byte for byte against @huggingface/jinja (tests/model/text).
//
// Supported: text, {{ }}, {# #}, whitespace control ({%- -%} {{- -}} {#- -#}), if/elif/else,
// for (tuple unpacking, `if` filter, else, loop.*, break/continue), set (names, tuples,
// namespace attributes, {% set x %}...{% endset %}), macro, generation; literals, attribute
// and subscript access, slices, arithmetic, ~, comparisons, and/or/not, in, tests, ternaries,
// filters, string and dict methods, range/namespace/raise_exception/strftime_now.
// Not supported (a clear TemplateError names the construct): call blocks, filter blocks, raw,
// include/extends/import, recursive loops.
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model_config.hpp"  // ModelError

namespace ce {

namespace chat_template_detail {
struct Program;
}

// A template that does not parse, or fails while rendering (an undefined variable where Jinja
// requires one, a type error, or the template's own raise_exception). The message names the line
// and column in the template and what was expected; for raise_exception it carries the
// template's message.
struct TemplateError : ModelError {
  using ModelError::ModelError;
};

struct ChatMessage {
  std::string role;
  std::string content;
};

// The chat template a model directory publishes: tokenizer_config.json's "chat_template" (a
// string, or a list of {name, template}: the one named "default", else the first), else the file
// chat_template.jinja; "" when there is none. Throws ModelError naming the file when
// tokenizer_config.json is not JSON or its chat_template has another shape.
std::string read_chat_template(const std::string& model_dir);

class ChatTemplate {
 public:
  // Parses `source`; throws TemplateError on a syntax error, an unknown tag, filter or test.
  explicit ChatTemplate(std::string source);
  ~ChatTemplate();
  ChatTemplate(ChatTemplate&&) noexcept;
  ChatTemplate& operator=(ChatTemplate&&) noexcept;
  ChatTemplate(const ChatTemplate&) = delete;
  ChatTemplate& operator=(const ChatTemplate&) = delete;

  // Renders with `variables` as the template's globals: what templates expect is `messages`
  // (a list of {role, content, ...}), `add_generation_prompt`, `bos_token`, `eos_token`, and
  // sometimes `tools`, `date_string`, `enable_thinking`, ... An ordered_json keeps the key
  // order of objects, which `tojson` and `items()` show. JSON numbers with an integral value
  // become integers (as JavaScript reads them). `now` is the local time strftime_now() formats;
  // unset, the clock's. Throws TemplateError.
  std::string render(const nlohmann::ordered_json& variables,
                     std::optional<std::tm> now = std::nullopt) const;

  // The common case: `messages` as {role, content} objects, `add_generation_prompt`, and
  // `extra` (bos_token, eos_token, tools, ...) merged in.
  std::string render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                     const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;

  const std::string& source() const;

 private:
  std::unique_ptr<const chat_template_detail::Program> program_;
};

}  // namespace ce
