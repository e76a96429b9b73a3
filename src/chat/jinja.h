// A compact Jinja interpreter for chat templates: lexer -> AST -> evaluator over JSON values.
//
// It follows what Hugging Face transformers renders with (jinja2's ImmutableSandboxedEnvironment with
// trim_blocks, lstrip_blocks and the loopcontrols extension; tojson is json.dumps with ensure_ascii=False;
// globals raise_exception, strftime_now, namespace, dict, range), so a model's chat template renders
// byte-identically to apply_chat_template. Values are nlohmann::ordered_json (key order matters to
// tojson), plus Jinja's undefined, namespace() objects and callables (macros, methods).
//
// Supported: {{ }}, {% if/elif/else %}, {% for x[, y] in ... [if ...] %} with {% else %}, loop.*,
// break/continue, {% set %} (names, ns.attr, block set), {% macro %}, {% raw %}, {% generation %},
// comments, whitespace control (- and +), literals (str, int, float, list, dict, tuple), arithmetic,
// ~, comparisons, in / not in, and/or/not, a if b else c, attribute/item access, slices with negative
// indexes and steps, the common filters, tests and str/dict methods (see jinja_builtins.cpp). String
// lengths, indexes and slices count Unicode code points as Python does; lower/upper/title change ASCII
// letters only. Anything else is an fm::Error naming the template and line:column.
#pragma once
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "util/error.h"

namespace fm::jinja {

using Json = nlohmann::ordered_json;

// Thrown by the template's raise_exception(message); what() is "<template>: <message>".
class RaisedError : public Error {
 public:
  RaisedError(const std::string& where, std::string message)
      : Error(where + ": " + message), message_(std::move(message)) {}
  const std::string& message() const { return message_; }

 private:
  std::string message_;
};

struct Program;  // the parsed template (jinja_ast.h)

class Template {
 public:
  // Parses `source`; `name` stands for the template in messages. Throws fm::Error on a syntax error.
  Template(std::string_view source, std::string name);
  ~Template();
  Template(Template&&) noexcept;
  Template& operator=(Template&&) noexcept;

  // Renders with `variables` (a JSON object) as the template's context.
  std::string render(const Json& variables) const;
  const std::string& name() const;

 private:
  std::unique_ptr<Program> program_;
};

// Python's json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sort_keys) with its default
// separators (", " and ": ", or "," and ": " with an indent); indent < 0 means None.
std::string dumps(const Json& value, int indent = -1, bool sort_keys = false);

}  // namespace fm::jinja
