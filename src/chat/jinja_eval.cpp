// Jinja evaluator: walks the AST (jinja_ast.h) with a chain of scopes. As in jinja2, a for-loop
// iteration and a macro call get their own scope (a {% set %} inside does not leak out; namespaces
// carry state across), while if-branches share their enclosing one.
#include <chrono>
#include <ctime>

#include "chat/jinja_ast.h"

namespace fm::jinja {

void eval_fail(std::string message) { throw EvalError{std::move(message)}; }

namespace {

struct Scope {
  std::map<std::string, Value> vars;
  const Scope* parent = nullptr;

  const Value* find(const std::string& name) const {
    for (const Scope* s = this; s; s = s->parent) {
      auto it = s->vars.find(name);
      if (it != s->vars.end()) return &it->second;
    }
    return nullptr;
  }
};

enum class Flow { Normal, Break, Continue };

class Evaluator {
 public:
  explicit Evaluator(const Program& program) : program_(program) {}

  Flow exec(const Body& body, Scope& scope, std::string& out, int loop_depth) {
    for (const auto& node : body) {
      const Flow f = exec(*node, scope, out, loop_depth);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  [[noreturn]] void fail_at(Pos pos, const std::string& msg) const {
    fail("{}:{}:{}: {}", program_.name, pos.line, pos.col, msg);
  }

 private:
  Flow exec(const Node& n, Scope& scope, std::string& out, int loop_depth) {
    try {
      return exec_node(n, scope, out, loop_depth);
    } catch (const EvalError& e) {
      fail_at(n.pos, e.message);
    }
  }

  Flow exec_node(const Node& n, Scope& scope, std::string& out, int loop_depth) {
    switch (n.kind) {
      case NodeKind::Text:
        out += n.text;
        return Flow::Normal;
      case NodeKind::Output:
        out += to_str(eval(*n.expr, scope));
        return Flow::Normal;
      case NodeKind::If:
        for (const auto& [cond, body] : n.branches)
          if (!cond || truthy(eval(*cond, scope))) return exec(body, scope, out, loop_depth);
        return Flow::Normal;
      case NodeKind::For:
        exec_for(n, scope, out, loop_depth);
        return Flow::Normal;
      case NodeKind::Set:
        assign(n, scope, eval(*n.expr, scope));
        return Flow::Normal;
      case NodeKind::SetBlock: {
        std::string captured;
        Scope inner{{}, &scope};
        exec(n.body, inner, captured, 0);
        assign(n, scope, Value::from(Json(std::move(captured))));
        return Flow::Normal;
      }
      case NodeKind::Macro:
        scope.vars[n.name] = make_macro(n, scope);
        return Flow::Normal;
      case NodeKind::Break:
      case NodeKind::Continue:
        if (loop_depth == 0)
          fail_at(n.pos,
                  fmt::format("'{}' outside a for loop", n.kind == NodeKind::Break ? "break" : "continue"));
        return n.kind == NodeKind::Break ? Flow::Break : Flow::Continue;
      case NodeKind::Scope:
        return exec(n.body, scope, out, loop_depth);
    }
    return Flow::Normal;
  }

  void assign(const Node& n, Scope& scope, Value v) {
    if (!n.attr.empty()) {
      const Value* target = scope.find(n.targets[0]);
      if (!target || target->kind != Value::Kind::Object || !target->object->is_namespace)
        eval_fail(fmt::format("cannot assign attribute '{}' on '{}': not a namespace", n.attr, n.targets[0]));
      target->object->attrs[n.attr] = std::move(v);
      return;
    }
    if (n.targets.size() == 1) {
      scope.vars[n.targets[0]] = std::move(v);
      return;
    }
    std::vector<Value> items = iterate(v);
    if (items.size() != n.targets.size())
      eval_fail(fmt::format("cannot unpack {} values into {} names", items.size(), n.targets.size()));
    for (size_t i = 0; i < items.size(); ++i) scope.vars[n.targets[i]] = std::move(items[i]);
  }

  void bind_targets(const Node& n, Scope& scope, const Value& item) {
    if (n.targets.size() == 1) {
      scope.vars[n.targets[0]] = item;
      return;
    }
    std::vector<Value> parts = iterate(item);
    if (parts.size() != n.targets.size())
      eval_fail(
          fmt::format("cannot unpack {} values into {} loop variables", parts.size(), n.targets.size()));
    for (size_t i = 0; i < parts.size(); ++i) scope.vars[n.targets[i]] = std::move(parts[i]);
  }

  void exec_for(const Node& n, Scope& scope, std::string& out, int loop_depth) {
    std::vector<Value> items = iterate(eval(*n.expr, scope));
    if (n.filter) {  // the `if` clause filters before the loop, so loop.length counts what passes
      std::vector<Value> kept;
      for (Value& item : items) {
        Scope probe{{}, &scope};
        bind_targets(n, probe, item);
        if (truthy(eval(*n.filter, probe))) kept.push_back(std::move(item));
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      exec(n.else_body, scope, out, loop_depth);
      return;
    }
    const int64_t length = int64_t(items.size());
    for (int64_t i = 0; i < length; ++i) {
      Scope inner{{}, &scope};
      auto loop = std::make_shared<Object>();
      auto num = [](int64_t x) { return Value::from(Json(x)); };
      loop->attrs["index0"] = num(i);
      loop->attrs["index"] = num(i + 1);
      loop->attrs["revindex0"] = num(length - i - 1);
      loop->attrs["revindex"] = num(length - i);
      loop->attrs["first"] = Value::from(Json(i == 0));
      loop->attrs["last"] = Value::from(Json(i == length - 1));
      loop->attrs["length"] = num(length);
      loop->attrs["depth"] = num(1);
      loop->attrs["depth0"] = num(0);
      loop->attrs["previtem"] = i > 0 ? items[size_t(i - 1)] : Value::undefined("loop.previtem");
      loop->attrs["nextitem"] = i + 1 < length ? items[size_t(i + 1)] : Value::undefined("loop.nextitem");
      loop->attrs["cycle"] = Value::make_function([i](CallArgs& a) {
        if (a.positional.empty()) eval_fail("loop.cycle() needs at least one value");
        return a.positional[size_t(i) % a.positional.size()];
      });
      Value loop_value;
      loop_value.kind = Value::Kind::Object;
      loop_value.object = std::move(loop);
      inner.vars["loop"] = std::move(loop_value);
      bind_targets(n, inner, items[size_t(i)]);
      if (exec(n.body, inner, out, loop_depth + 1) == Flow::Break) break;
    }
  }

  Value make_macro(const Node& n, Scope& scope) {
    const Scope* defining = &scope;
    return Value::make_function([this, &n, defining](CallArgs& a) {
      if (a.positional.size() > n.params.size())
        eval_fail(fmt::format("macro '{}' takes {} arguments, got {}", n.name, n.params.size(),
                              a.positional.size()));
      Scope inner{{}, defining};
      for (size_t i = 0; i < n.params.size(); ++i) {
        if (i < a.positional.size()) {
          inner.vars[n.params[i]] = a.positional[i];
        } else if (n.defaults[i]) {
          inner.vars[n.params[i]] = eval(*n.defaults[i], inner);
        } else {
          inner.vars[n.params[i]] = Value::undefined(n.params[i]);
        }
      }
      for (auto& [key, value] : a.named) {
        bool found = false;
        for (const std::string& p : n.params) found = found || p == key;
        if (!found) eval_fail(fmt::format("macro '{}' has no parameter '{}'", n.name, key));
        inner.vars[key] = value;
      }
      if (++call_depth_ > kMaxCallDepth)
        eval_fail(fmt::format("macro calls nested deeper than {}", kMaxCallDepth));
      struct Leave {
        int& d;
        ~Leave() { --d; }
      } leave{call_depth_};
      std::string out;
      exec(n.body, inner, out, 0);
      return Value::from(Json(std::move(out)));
    });
  }

  CallArgs eval_args(const Expr& e, size_t first, const Scope& scope) {
    CallArgs a;
    for (size_t i = first; i < e.args.size(); ++i) a.positional.push_back(eval(*e.args[i], scope));
    for (const auto& [key, value] : e.kwargs) a.named.emplace_back(key, eval(*value, scope));
    return a;
  }

  Value eval(const Expr& e, const Scope& scope) {
    try {
      return eval_expr(e, scope);
    } catch (const EvalError& err) {
      fail_at(e.pos, err.message);
    }
  }

  Value lookup(const std::string& name, const Scope& scope) {
    if (const Value* v = scope.find(name)) return *v;
    Value g = builtin_global(name, program_.name);
    if (!g.is_undefined()) return g;
    return Value::undefined(fmt::format("'{}' is undefined", name));
  }

  Value eval_expr(const Expr& e, const Scope& scope) {
    switch (e.kind) {
      case ExprKind::Literal:
        return e.literal;
      case ExprKind::Name:
        return lookup(e.name, scope);
      case ExprKind::Attr:
        return get_attr(eval(*e.args[0], scope), e.name);
      case ExprKind::Item:
        return get_item(eval(*e.args[0], scope), eval(*e.args[1], scope));
      case ExprKind::Slice: {
        auto bound = [&](size_t i) { return e.args[i] ? eval(*e.args[i], scope) : Value::from(nullptr); };
        return get_slice(eval(*e.args[0], scope), bound(1), bound(2), bound(3));
      }
      case ExprKind::Call: {
        Value fn = eval(*e.args[0], scope);
        CallArgs a = eval_args(e, 1, scope);
        if (fn.kind != Value::Kind::Function) {
          if (fn.is_undefined()) eval_fail(fmt::format("cannot call an undefined value ({})", fn.hint));
          eval_fail(fmt::format("{} is not callable", to_repr(fn)));
        }
        return (*fn.function)(a);
      }
      case ExprKind::Filter: {
        Value input = eval(*e.args[0], scope);
        CallArgs a = eval_args(e, 1, scope);
        return apply_filter(e.name, input, a);
      }
      case ExprKind::Test: {
        Value input = eval(*e.args[0], scope);
        CallArgs a = eval_args(e, 1, scope);
        return Value::from(Json(apply_test(e.name, input, a) != e.negated));
      }
      case ExprKind::Unary: {
        Value v = eval(*e.args[0], scope);
        return e.name == "-" ? unary_minus(v) : v;
      }
      case ExprKind::Binary:
        return binary_op(e.name, eval(*e.args[0], scope), eval(*e.args[1], scope));
      case ExprKind::Compare: {
        Value left = eval(*e.args[0], scope);
        for (size_t i = 0; i < e.ops.size(); ++i) {
          Value right = eval(*e.args[i + 1], scope);
          const std::string& op = e.ops[i];
          bool r;
          if (op == "==")
            r = equals(left, right);
          else if (op == "!=")
            r = !equals(left, right);
          else if (op == "<")
            r = less(left, right);
          else if (op == ">")
            r = less(right, left);
          else if (op == "<=")
            r = !less(right, left);
          else if (op == ">=")
            r = !less(left, right);
          else if (op == "in")
            r = contains(right, left);
          else
            r = !contains(right, left);
          if (!r) return Value::from(Json(false));
          left = std::move(right);
        }
        return Value::from(Json(true));
      }
      case ExprKind::And: {
        Value l = eval(*e.args[0], scope);
        return truthy(l) ? eval(*e.args[1], scope) : l;
      }
      case ExprKind::Or: {
        Value l = eval(*e.args[0], scope);
        return truthy(l) ? l : eval(*e.args[1], scope);
      }
      case ExprKind::Not:
        return Value::from(Json(!truthy(eval(*e.args[0], scope))));
      case ExprKind::Cond:
        if (truthy(eval(*e.args[1], scope))) return eval(*e.args[0], scope);
        return e.args[2] ? eval(*e.args[2], scope) : Value::undefined("conditional expression without else");
      case ExprKind::List:
      case ExprKind::Tuple: {
        Json arr = Json::array();
        for (const auto& a : e.args) {
          Value v = eval(*a, scope);
          if (!v.is_data())
            eval_fail("lists may hold only plain values (not undefined, namespaces or functions)");
          arr.push_back(v.json());
        }
        return Value::from(std::move(arr));
      }
      case ExprKind::Dict: {
        Json obj = Json::object();
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          Value k = eval(*e.args[i], scope);
          Value v = eval(*e.args[i + 1], scope);
          if (!k.is_string()) eval_fail("dict keys must be strings");
          if (!v.is_data())
            eval_fail("dicts may hold only plain values (not undefined, namespaces or functions)");
          obj[k.str()] = v.json();
        }
        return Value::from(std::move(obj));
      }
    }
    eval_fail("unknown expression");
  }

  static constexpr int kMaxCallDepth = 100;  // a recursive macro fails instead of exhausting the stack
  const Program& program_;
  int call_depth_ = 0;
};

}  // namespace

Template::Template(std::string_view source, std::string name)
    : program_(parse_template(source, std::move(name))) {}
Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;
const std::string& Template::name() const { return program_->name; }

std::string Template::render(const Json& variables) const {
  if (!variables.is_object()) fail("{}: the render context must be a JSON object", program_->name);
  auto root = std::make_shared<const Json>(variables);
  Scope globals;
  for (auto it = root->begin(); it != root->end(); ++it)
    globals.vars[it.key()] = Value::ref(root, it.value());
  Evaluator ev(*program_);
  std::string out;
  try {
    ev.exec(program_->body, globals, out, 0);
  } catch (const EvalError& e) {  // from a builtin outside any node (should not happen)
    fail("{}: {}", program_->name, e.message);
  }
  return out;
}

}  // namespace fm::jinja
