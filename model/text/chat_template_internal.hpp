#pragma once
// Internal to chat_template.cpp: the runtime values and the syntax tree of the Jinja subset that
// Hugging Face chat templates use. The lexer turns the source into tokens, the parser builds the
// tree below, the renderer walks it with the values below. Nothing here is part of the API.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace ce::chat_template_detail {

// ---------------------------------------------------------------------------------------------
// Runtime values

struct Value;
struct CallArgs;
using Array = std::vector<Value>;
using Function = std::function<Value(CallArgs&)>;

// A mapping that keeps insertion order: tojson and items() must list keys in the order the JSON
// (or the dict literal) gave them, as Python's dict and JavaScript's Map do.
struct Object {
  std::vector<std::pair<std::string, Value>> entries;
  const Value* find(const std::string& key) const;
  void set(const std::string& key, Value value);
};

struct Value {
  enum class Kind { Undefined, None, Bool, Int, Float, String, Array, Object, Namespace, Function };
  Kind kind = Kind::Undefined;
  bool boolean = false;
  int64_t integer = 0;
  double real = 0;
  // String: the text (UTF-8). Undefined: a description of what was missing, for error messages.
  std::string text;
  // Arrays and objects are shared, never changed after they are built; a namespace is shared
  // and changed in place by `{% set ns.attr = ... %}`, which is the point of a namespace.
  std::shared_ptr<const Array> array;
  std::shared_ptr<Object> object;  // Object and Namespace
  std::shared_ptr<const Function> function;

  static Value undefined(std::string what = {});
  static Value none();
  static Value from_bool(bool b);
  static Value from_int(int64_t i);
  static Value from_float(double d);
  static Value from_string(std::string s);
  static Value from_array(Array items);
  static Value from_object(Object o);
  static Value new_namespace(Object o);
  static Value from_function(Function f);

  bool is_undefined() const { return kind == Kind::Undefined; }
  bool is_none() const { return kind == Kind::None; }
  bool is_string() const { return kind == Kind::String; }
  bool is_array() const { return kind == Kind::Array; }
  bool is_mapping() const { return kind == Kind::Object; }
  bool is_number() const { return kind == Kind::Int || kind == Kind::Float; }
};

// Arguments of a call, filter or test, evaluated. Keyword arguments keep their order.
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keywords;
};

// ---------------------------------------------------------------------------------------------
// Syntax tree. Every node records the byte offset where it starts in the source; errors turn it
// into a line and a column.

using SourcePos = size_t;

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

enum class UnaryOp { Not, Negate, Plus };
enum class BinaryOp {
  Add, Subtract, Multiply, Divide, FloorDivide, Modulo, Power, Concat,
  Equal, NotEqual, Less, LessEqual, Greater, GreaterEqual, In, NotIn, And, Or
};

struct Arguments {
  std::vector<ExprPtr> positional;
  std::vector<std::pair<std::string, ExprPtr>> keywords;
};

struct LiteralExpr { Value value; };
struct NameExpr { std::string name; };
struct ListExpr { std::vector<ExprPtr> items; };  // [a, b] and (a, b) alike
struct DictExpr { std::vector<std::pair<ExprPtr, ExprPtr>> entries; };
struct AttributeExpr { ExprPtr object; std::string attribute; };  // a.b
struct SubscriptExpr { ExprPtr object; ExprPtr index; };           // a[b]
struct SliceExpr { ExprPtr object, start, stop, step; };           // a[start:stop:step]; parts may be null
struct CallExpr { ExprPtr callee; Arguments args; };
struct FilterExpr { ExprPtr operand; std::string filter; Arguments args; };       // a | f(args)
struct TestExpr { ExprPtr operand; std::string test; bool negated; Arguments args; };  // a is [not] t
struct UnaryExpr { UnaryOp op; ExprPtr operand; };
struct BinaryExpr { BinaryOp op; ExprPtr left, right; };
struct ConditionalExpr { ExprPtr condition, if_true, if_false; };  // if_false null: undefined

struct Expr {
  SourcePos pos = 0;
  std::variant<LiteralExpr, NameExpr, ListExpr, DictExpr, AttributeExpr, SubscriptExpr, SliceExpr, CallExpr,
               FilterExpr, TestExpr, UnaryExpr, BinaryExpr, ConditionalExpr>
      node;
};

struct Stmt;
using Block = std::vector<Stmt>;

struct TextStmt { std::string text; };
struct OutputStmt { ExprPtr value; };  // {{ value }}
// {% if c0 %}b0{% elif c1 %}b1{% else %}b2{% endif %}: bodies has one more entry than
// conditions when there is an else.
struct IfStmt { std::vector<ExprPtr> conditions; std::vector<Block> bodies; };
// {% for t0, t1 in iterable if filter %}body{% else %}else_body{% endfor %}
struct ForStmt {
  std::vector<std::string> targets;
  bool unpack = false;  // targets came as a tuple (a single name in parentheses unpacks too)
  ExprPtr iterable, filter;
  Block body, else_body;
};
// {% set a = v %}, {% set a, b = v %}, {% set ns.attr = v %} (attribute set), {% set a %}body{% endset %}
struct SetStmt {
  std::vector<std::string> targets;
  bool unpack = false;
  std::string attribute;  // non-empty: `set targets[0].attribute = value` on a namespace
  ExprPtr value;          // null: the rendered body is the value
  Block body;
};
struct MacroStmt {
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // one per param; null where the param has no default
  Block body;
};
struct LoopControlStmt { bool is_break; };

struct Stmt {
  SourcePos pos = 0;
  std::variant<TextStmt, OutputStmt, IfStmt, ForStmt, SetStmt, MacroStmt, LoopControlStmt> node;
};

struct Program {
  Block body;
  std::vector<size_t> line_starts;  // byte offsets where each line of the source starts
  std::string source;
};

}  // namespace ce::chat_template_detail
