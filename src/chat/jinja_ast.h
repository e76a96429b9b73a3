// Internals of the Jinja interpreter (jinja.h): values, the AST, and the builtins' entry points.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chat/jinja.h"

namespace fm::jinja {

struct Pos {
  int line = 1, col = 1;
};

// ---- Values -------------------------------------------------------------------------------------

struct Value;
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> named;
};
using Function = std::function<Value(CallArgs&)>;

// namespace() objects (mutable through {% set ns.x = ... %}) and loop objects (read only).
struct Object {
  std::map<std::string, Value> attrs;
  bool is_namespace = false;
};

struct Value {
  enum class Kind { Undefined, Data, Object, Function };
  Kind kind = Kind::Undefined;
  std::shared_ptr<const Json> data;  // Data: may point into a larger shared document (no copies)
  std::shared_ptr<Object> object;
  std::shared_ptr<const Function> function;
  std::string hint;  // Undefined: what was looked up, for messages

  static Value undefined(std::string hint = {}) {
    Value v;
    v.hint = std::move(hint);
    return v;
  }
  static Value from(Json j) {
    Value v;
    v.kind = Kind::Data;
    v.data = std::make_shared<const Json>(std::move(j));
    return v;
  }
  // A node inside the document `root` owns, sharing its lifetime.
  static Value ref(const std::shared_ptr<const Json>& root, const Json& node) {
    Value v;
    v.kind = Kind::Data;
    v.data = std::shared_ptr<const Json>(root, &node);
    return v;
  }
  static Value make_function(Function f) {
    Value v;
    v.kind = Kind::Function;
    v.function = std::make_shared<const Function>(std::move(f));
    return v;
  }

  bool is_undefined() const { return kind == Kind::Undefined; }
  bool is_data() const { return kind == Kind::Data; }
  const Json& json() const { return *data; }
  bool is_string() const { return is_data() && data->is_string(); }
  bool is_none() const { return is_data() && data->is_null(); }
  bool is_number() const { return is_data() && data->is_number(); }  // bools excluded
  bool is_integer() const { return is_data() && data->is_number_integer(); }
  bool is_array() const { return is_data() && data->is_array(); }
  bool is_mapping() const { return is_data() && data->is_object(); }
  const std::string& str() const { return data->get_ref<const std::string&>(); }
};

// ---- AST ------------------------------------------------------------------------------------------

enum class ExprKind {
  Literal,  // literal
  Name,     // name
  Attr,     // args[0].name
  Item,     // args[0][args[1]]
  Slice,    // args[0][args[1]:args[2]:args[3]], each bound may be null
  Call,     // args[0](args[1:], kwargs)
  Filter,   // args[0] | name(args[1:], kwargs)
  Test,     // args[0] is [not] name(args[1:])
  Unary,    // name args[0]: "-", "+"
  Binary,   // args[0] name args[1]: + - * / // % ** ~
  Compare,  // args[0] ops[0] args[1] ops[1] args[2] ...: == != < <= > >= in notin
  And,
  Or,
  Not,
  Cond,   // args[0] if args[1] else args[2] (null: undefined)
  List,   // [args...]
  Tuple,  // (args...)
  Dict,   // {args[0]: args[1], ...}
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;
struct Expr {
  ExprKind kind;
  Pos pos;
  std::string name;
  Value literal;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
  bool negated = false;
};

enum class NodeKind { Text, Output, If, For, Set, SetBlock, Macro, Break, Continue, Scope };

struct Node;
using Body = std::vector<std::unique_ptr<Node>>;
struct Node {
  NodeKind kind;
  Pos pos;
  std::string text;                                // Text
  ExprPtr expr;                                    // Output, Set value, For iterable
  std::vector<std::pair<ExprPtr, Body>> branches;  // If: (condition or null for else, body)
  std::vector<std::string> targets;                // For loop variables; Set / SetBlock names
  std::string attr;                                // Set / SetBlock on targets[0].attr (a namespace)
  ExprPtr filter;                                  // For: the `if` clause
  Body body, else_body;                            // For, Macro, SetBlock, Scope (generation)
  std::string name;                                // Macro
  std::vector<std::string> params;                 // Macro
  std::vector<ExprPtr> defaults;                   // Macro, one per param (null: none)
};

struct Program {
  std::string name;
  Body body;
};

// Parses a template source (jinja_parse.cpp).
std::unique_ptr<Program> parse_template(std::string_view source, std::string name);

// ---- Builtins (jinja_builtins.cpp) -----------------------------------------------------------------

// Raised by the builtins; the evaluator adds the template name and position.
struct EvalError {
  std::string message;
};
[[noreturn]] void eval_fail(std::string message);

bool truthy(const Value& v);
std::string to_str(const Value& v);   // Python str()
std::string to_repr(const Value& v);  // Python repr()
bool equals(const Value& a, const Value& b);
bool less(const Value& a, const Value& b);                 // Python <, EvalError when the types do not order
bool contains(const Value& container, const Value& item);  // Python `item in container`
Value binary_op(const std::string& op, const Value& a, const Value& b);
Value unary_minus(const Value& v);
Value get_attr(const Value& obj, const std::string& name);  // obj.name: attribute, then item
Value get_item(const Value& obj, const Value& key);         // obj[key]: item, then attribute
Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step);
std::vector<Value> iterate(const Value& v);  // for-loop items; Undefined iterates as empty
Value apply_filter(const std::string& name, const Value& input, CallArgs& args);
bool apply_test(const std::string& name, const Value& input, CallArgs& args);
bool has_filter(const std::string& name);
bool has_test(const std::string& name);
// Globals that every render sees: range, namespace, dict, raise_exception, strftime_now.
Value builtin_global(const std::string& name, const std::string& template_name);

}  // namespace fm::jinja
