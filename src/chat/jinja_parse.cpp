// Jinja lexer and parser: template text -> tokens -> AST (jinja_ast.h).
// The lexer applies the whitespace rules of transformers' environment while it splits the text:
// trim_blocks (drop the newline after a block or comment tag), lstrip_blocks (drop the blanks before
// a block or comment tag that starts its line), '-' (strip all whitespace on that side), '+' (keep
// it), and the single trailing newline of the source is dropped (keep_trailing_newline=False).
// The grammar follows jinja2's parser (precedence from loosest: if-else, or, and, not, comparisons,
// + -, ~, * / // %, **, unary -, then postfix . [] () | is).
#include <cctype>
#include <cstdlib>
#include <string>

#include "chat/jinja_ast.h"
#include "tokenizer/utf8.h"

namespace fm::jinja {
namespace {

enum class Tok { Data, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  Tok type;
  std::string value;
  size_t offset = 0;
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

std::string normalize_newlines(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r') {
      out += '\n';
      if (i + 1 < s.size() && s[i + 1] == '\n') ++i;
    } else {
      out += s[i];
    }
  }
  return out;
}


class Lexer {
 public:
  Lexer(std::string source, const std::string& name) : src_(std::move(source)), name_(name) {
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
  }

  const std::string& source() const { return src_; }

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;
    while (pos < src_.size()) {
      size_t start = src_.find('{', pos);
      while (start != std::string::npos && start + 1 < src_.size() && src_[start + 1] != '{' &&
             src_[start + 1] != '%' && src_[start + 1] != '#')
        start = src_.find('{', start + 1);
      if (start == std::string::npos || start + 1 >= src_.size()) {
        emit_data(src_.substr(pos));
        break;
      }
      const char kind = src_[start + 1];
      std::string text = src_.substr(pos, start - pos);
      size_t inner = start + 2;
      const char mod = inner < src_.size() ? src_[inner] : '\0';
      if (mod == '-') {
        while (!text.empty() && is_space(text.back())) text.pop_back();
        ++inner;
      } else {
        if (mod == '+') ++inner;
        if (kind != '{' && mod != '+') {  // lstrip_blocks
          const size_t l_pos = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
          if (l_pos > 0 || line_starting) {
            bool blank = l_pos < text.size();
            for (size_t i = l_pos; i < text.size(); ++i) blank = blank && is_space(text[i]);
            if (blank) text.resize(l_pos);
          }
        }
      }
      emit_data(std::move(text));
      if (kind == '#') {
        pos = end_comment(start, inner, line_starting);
      } else if (kind == '%' && try_raw(start, inner, pos, line_starting)) {
        // raw block consumed
      } else {
        pos = lex_tag(kind, start, inner, line_starting);
      }
    }
    tokens_.push_back({Tok::Eof, "", src_.size()});
    return std::move(tokens_);
  }

  [[noreturn]] void error_at(size_t offset, const std::string& msg) const {
    int line = 1, col = 1;
    for (size_t i = 0; i < offset && i < src_.size(); ++i) {
      if (src_[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    fail("{}:{}:{}: {}", name_, line, col, msg);
  }

 private:
  void emit_data(std::string text) {
    if (!text.empty()) tokens_.push_back({Tok::Data, std::move(text), 0});
  }

  // After a tag's closing delimiter at `end`: '-' strips all whitespace, trim_blocks one newline.
  size_t after_close(size_t end, bool strip, bool trim, bool& line_starting) {
    line_starting = false;
    if (strip) {
      while (end < src_.size() && is_space(src_[end])) ++end;
    } else if (trim && end < src_.size() && src_[end] == '\n') {
      ++end;
      line_starting = true;
    }
    return end;
  }

  size_t end_comment(size_t start, size_t inner, bool& line_starting) {
    const size_t close = src_.find("#}", inner);
    if (close == std::string::npos) error_at(start, "unclosed comment: missing '#}'");
    const bool strip = close > inner && src_[close - 1] == '-';
    const bool plus = close > inner && src_[close - 1] == '+';
    return after_close(close + 2, strip, !plus, line_starting);
  }

  // {% raw %}...{% endraw %}: the text in between is data, unparsed.
  bool try_raw(size_t start, size_t inner, size_t& pos, bool& line_starting) {
    size_t i = inner;
    while (i < src_.size() && is_space(src_[i])) ++i;
    if (src_.compare(i, 3, "raw") != 0) return false;
    i += 3;
    while (i < src_.size() && is_space(src_[i])) ++i;
    bool strip = false;
    if (i < src_.size() && (src_[i] == '-' || src_[i] == '+')) strip = src_[i++] == '-';
    if (src_.compare(i, 2, "%}") != 0) return false;
    size_t body = after_close(i + 2, strip, true, line_starting);
    for (size_t s = src_.find("{%", body); s != std::string::npos; s = src_.find("{%", s + 2)) {
      size_t j = s + 2;
      const bool strip_before = j < src_.size() && src_[j] == '-';
      if (j < src_.size() && (src_[j] == '-' || src_[j] == '+')) ++j;
      while (j < src_.size() && is_space(src_[j])) ++j;
      if (src_.compare(j, 6, "endraw") != 0) continue;
      j += 6;
      while (j < src_.size() && is_space(src_[j])) ++j;
      bool strip_after = false;
      if (j < src_.size() && (src_[j] == '-' || src_[j] == '+')) strip_after = src_[j++] == '-';
      if (src_.compare(j, 2, "%}") != 0) continue;
      std::string text = src_.substr(body, s - body);
      if (strip_before)
        while (!text.empty() && is_space(text.back())) text.pop_back();
      emit_data(std::move(text));
      pos = after_close(j + 2, strip_after, true, line_starting);
      return true;
    }
    error_at(start, "unclosed {% raw %}: missing {% endraw %}");
  }

  size_t lex_tag(char kind, size_t start, size_t i, bool& line_starting) {
    const bool block = kind == '%';
    tokens_.push_back({block ? Tok::BlockBegin : Tok::VarBegin, "", start});
    int depth = 0;
    while (true) {
      while (i < src_.size() && is_space(src_[i])) ++i;
      if (i >= src_.size())
        error_at(start, block ? "unclosed tag: missing '%}'" : "unclosed tag: missing '}}'");
      const char c = src_[i];
      const char close = block ? '%' : '}';
      // Closing delimiter, optionally with '-' or '+'.
      if (depth == 0) {
        const bool modifier =
            (c == '-' || c == '+') && i + 2 < src_.size() + 0 && src_[i + 1] == close && src_[i + 2] == '}';
        if (modifier || (c == close && i + 1 < src_.size() && src_[i + 1] == '}')) {
          tokens_.push_back({block ? Tok::BlockEnd : Tok::VarEnd, "", i});
          const size_t end = i + (modifier ? 3 : 2);
          return after_close(end, modifier && c == '-', block && !(modifier && c == '+'), line_starting);
        }
      }
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t j = i;
        while (j < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[j])) || src_[j] == '_')) ++j;
        tokens_.push_back({Tok::Name, src_.substr(i, j - i), i});
        i = j;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        i = lex_number(i);
      } else if (c == '\'' || c == '"') {
        i = lex_string(i);
      } else {
        static const char* const kOps[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*",
                                           "/",  "%",  "~",  "<",  ">",  "=",  "(", ")", "[",
                                           "]",  "{",  "}",  ",",  ".",  ":",  "|"};
        std::string op;
        for (const char* candidate : kOps)
          if (src_.compare(i, std::char_traits<char>::length(candidate), candidate) == 0) {
            op = candidate;
            break;
          }
        if (op.empty()) error_at(i, fmt::format("unexpected character '{}'", c));
        if (op == "(" || op == "[" || op == "{") ++depth;
        if ((op == ")" || op == "]" || op == "}") && depth > 0) --depth;
        tokens_.push_back({Tok::Op, op, i});
        i += op.size();
      }
    }
  }

  size_t lex_number(size_t i) {
    size_t j = i;
    auto digits = [&] {
      while (j < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[j])) || src_[j] == '_')) ++j;
    };
    digits();
    bool is_float = false;
    if (j + 1 < src_.size() && src_[j] == '.' && std::isdigit(static_cast<unsigned char>(src_[j + 1]))) {
      is_float = true;
      ++j;
      digits();
    }
    if (j < src_.size() && (src_[j] == 'e' || src_[j] == 'E')) {
      size_t k = j + 1;
      if (k < src_.size() && (src_[k] == '+' || src_[k] == '-')) ++k;
      if (k < src_.size() && std::isdigit(static_cast<unsigned char>(src_[k]))) {
        is_float = true;
        j = k;
        digits();
      }
    }
    std::string text;
    for (size_t k = i; k < j; ++k)
      if (src_[k] != '_') text += src_[k];
    tokens_.push_back({is_float ? Tok::Float : Tok::Int, text, i});
    return j;
  }

  // Python string escapes, as jinja2 decodes them (unicode-escape); unknown escapes stay as written.
  size_t lex_string(size_t i) {
    const char quote = src_[i];
    std::string out;
    size_t j = i + 1;
    while (true) {
      if (j >= src_.size()) error_at(i, "unterminated string literal");
      const char c = src_[j];
      if (c == quote) break;
      if (c != '\\') {
        out += c;
        ++j;
        continue;
      }
      if (j + 1 >= src_.size()) error_at(i, "unterminated string literal");
      const char e = src_[j + 1];
      j += 2;
      auto hex = [&](int n) {
        if (j + size_t(n) > src_.size()) error_at(j, "truncated \\x/\\u escape");
        uint32_t cp = 0;
        for (int k = 0; k < n; ++k) {
          const char h = src_[j + size_t(k)];
          if (!std::isxdigit(static_cast<unsigned char>(h))) error_at(j, "bad hex digit in escape");
          cp = cp * 16 +
               uint32_t(std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
        }
        j += size_t(n);
        utf8::append_code_point(out, cp);
      };
      switch (e) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'v':
          out += '\v';
          break;
        case '\n':
          break;  // line continuation
        case 'x':
          hex(2);
          break;
        case 'u':
          hex(4);
          break;
        case 'U':
          hex(8);
          break;
        default:
          if (e >= '0' && e <= '7') {
            uint32_t cp = uint32_t(e - '0');
            for (int k = 0; k < 2 && j < src_.size() && src_[j] >= '0' && src_[j] <= '7'; ++k)
              cp = cp * 8 + uint32_t(src_[j++] - '0');
            utf8::append_code_point(out, cp);
          } else {
            out += '\\';
            out += e;
          }
      }
    }
    tokens_.push_back({Tok::String, out, i});
    return j + 1;
  }

  std::string src_;
  const std::string& name_;
  std::vector<Token> tokens_;
};

class Parser {
 public:
  Parser(std::vector<Token> tokens, Lexer& lexer) : toks_(std::move(tokens)), lexer_(lexer) {}

  Body parse_all() {
    std::string end;
    Body body = parse_body({}, end);
    return body;
  }

 private:
  const Token& cur() const { return toks_[i_]; }
  const Token& peek(size_t k = 1) const { return toks_[std::min(i_ + k, toks_.size() - 1)]; }
  Pos pos_of(const Token& t) const {
    int line = 1, col = 1;
    const std::string& s = lexer_.source();
    for (size_t k = 0; k < t.offset && k < s.size(); ++k) {
      if (s[k] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    return {line, col};
  }
  [[noreturn]] void error(const std::string& msg) const { lexer_.error_at(cur().offset, msg); }
  std::string describe(const Token& t) const {
    switch (t.type) {
      case Tok::Eof:
        return "end of template";
      case Tok::BlockEnd:
        return "'%}'";
      case Tok::VarEnd:
        return "'}}'";
      case Tok::Data:
        return "text";
      case Tok::String:
        return "string";
      default:
        return "'" + t.value + "'";
    }
  }
  bool is_op(const char* op) const { return cur().type == Tok::Op && cur().value == op; }
  bool is_name(const char* name) const { return cur().type == Tok::Name && cur().value == name; }
  void expect_op(const char* op) {
    if (!is_op(op)) error(fmt::format("expected '{}', got {}", op, describe(cur())));
    ++i_;
  }
  std::string expect_name() {
    if (cur().type != Tok::Name) error(fmt::format("expected a name, got {}", describe(cur())));
    return toks_[i_++].value;
  }
  void expect_block_end() {
    if (cur().type != Tok::BlockEnd) error(fmt::format("expected '%}}', got {}", describe(cur())));
    ++i_;
  }

  // Statements until one of `end_tags` (whose name is consumed and returned in `end`).
  Body parse_body(const std::vector<std::string>& end_tags, std::string& end) {
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::Eof) {
        if (end_tags.empty()) return body;
        error(fmt::format("unexpected end of template: missing {{% {} %}}", end_tags.back()));
      }
      if (t.type == Tok::Data) {
        auto n = node(NodeKind::Text, t);
        n->text = t.value;
        body.push_back(std::move(n));
        ++i_;
      } else if (t.type == Tok::VarBegin) {
        auto n = node(NodeKind::Output, t);
        ++i_;
        n->expr = parse_expression();
        if (cur().type != Tok::VarEnd) error(fmt::format("expected '}}}}', got {}", describe(cur())));
        ++i_;
        body.push_back(std::move(n));
      } else if (t.type == Tok::BlockBegin) {
        ++i_;
        if (cur().type != Tok::Name) error(fmt::format("expected a tag name, got {}", describe(cur())));
        const std::string tag = cur().value;
        for (const std::string& e : end_tags)
          if (tag == e) {
            ++i_;
            end = tag;
            return body;
          }
        body.push_back(parse_statement(tag));
      } else {
        error(fmt::format("unexpected {}", describe(t)));
      }
    }
  }

  std::unique_ptr<Node> node(NodeKind kind, const Token& t) {
    auto n = std::make_unique<Node>();
    n->kind = kind;
    n->pos = pos_of(t);
    return n;
  }

  std::unique_ptr<Node> parse_statement(const std::string& tag) {
    if (++depth_ > kMaxDepth) error(fmt::format("blocks nested deeper than {} levels", kMaxDepth));
    struct Leave {
      int& d;
      ~Leave() { --d; }
    } leave{depth_};
    const Token& t = cur();
    ++i_;
    std::string end;
    if (tag == "if") {
      auto n = node(NodeKind::If, t);
      ExprPtr cond = parse_expression();
      expect_block_end();
      while (true) {
        Body b = parse_body({"elif", "else", "endif"}, end);
        n->branches.emplace_back(std::move(cond), std::move(b));
        if (end == "elif") {
          cond = parse_expression();
          expect_block_end();
        } else if (end == "else") {
          expect_block_end();
          n->branches.emplace_back(nullptr, parse_body({"endif"}, end));
          expect_block_end();
          return n;
        } else {
          expect_block_end();
          return n;
        }
      }
    }
    if (tag == "for") {
      auto n = node(NodeKind::For, t);
      n->targets.push_back(expect_name());
      while (is_op(",")) {
        ++i_;
        n->targets.push_back(expect_name());
      }
      if (!is_name("in")) error(fmt::format("expected 'in', got {}", describe(cur())));
      ++i_;
      n->expr = parse_condexpr(false);  // `if` here starts the loop filter
      if (is_name("if")) {
        ++i_;
        n->filter = parse_condexpr(true);
      }
      if (is_name("recursive")) error("recursive for loops are not supported");
      expect_block_end();
      n->body = parse_body({"else", "endfor"}, end);
      expect_block_end();
      if (end == "else") {
        n->else_body = parse_body({"endfor"}, end);
        expect_block_end();
      }
      return n;
    }
    if (tag == "set") {
      auto n = node(NodeKind::Set, t);
      n->targets.push_back(expect_name());
      if (is_op(".")) {
        ++i_;
        n->attr = expect_name();
      } else {
        while (is_op(",")) {
          ++i_;
          n->targets.push_back(expect_name());
        }
      }
      if (cur().type == Tok::BlockEnd) {  // {% set x %}...{% endset %}
        if (n->targets.size() != 1) error("a block set takes one name");
        ++i_;
        n->kind = NodeKind::SetBlock;
        n->body = parse_body({"endset"}, end);
        expect_block_end();
        return n;
      }
      expect_op("=");
      n->expr = parse_tuple_or_expression();
      expect_block_end();
      return n;
    }
    if (tag == "macro") {
      auto n = node(NodeKind::Macro, t);
      n->name = expect_name();
      expect_op("(");
      while (!is_op(")")) {
        n->params.push_back(expect_name());
        if (is_op("=")) {
          ++i_;
          n->defaults.push_back(parse_expression());
        } else {
          n->defaults.push_back(nullptr);
        }
        if (!is_op(")")) expect_op(",");
      }
      ++i_;
      expect_block_end();
      n->body = parse_body({"endmacro"}, end);
      if (cur().type == Tok::Name) ++i_;  // {% endmacro name %}
      expect_block_end();
      return n;
    }
    if (tag == "break" || tag == "continue") {
      auto n = node(tag == "break" ? NodeKind::Break : NodeKind::Continue, t);
      expect_block_end();
      return n;
    }
    if (tag == "generation") {  // transformers' assistant-mask marker: renders its body
      auto n = node(NodeKind::Scope, t);
      expect_block_end();
      n->body = parse_body({"endgeneration"}, end);
      expect_block_end();
      return n;
    }
    --i_;
    error(fmt::format("unknown or unsupported tag '{}'", tag));
  }

  // ---- expressions ----
  ExprPtr make(ExprKind kind, const Token& t) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->pos = pos_of(t);
    return e;
  }

  ExprPtr parse_expression() { return parse_condexpr(true); }

  // `a, b` without parentheses (set targets' values).
  ExprPtr parse_tuple_or_expression() {
    const Token& t = cur();
    ExprPtr first = parse_expression();
    if (!is_op(",")) return first;
    auto tup = make(ExprKind::Tuple, t);
    tup->args.push_back(std::move(first));
    while (is_op(",")) {
      ++i_;
      if (cur().type == Tok::BlockEnd) break;
      tup->args.push_back(parse_expression());
    }
    return tup;
  }

  ExprPtr parse_condexpr(bool allow_if) {
    ExprPtr e = parse_or();
    while (allow_if && is_name("if")) {
      const Token& t = cur();
      ++i_;
      auto c = make(ExprKind::Cond, t);
      ExprPtr cond = parse_or();
      ExprPtr other;
      if (is_name("else")) {
        ++i_;
        other = parse_condexpr(true);
      }
      c->args.push_back(std::move(e));
      c->args.push_back(std::move(cond));
      c->args.push_back(std::move(other));
      e = std::move(c);
    }
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      auto o = make(ExprKind::Or, cur());
      ++i_;
      o->args.push_back(std::move(e));
      o->args.push_back(parse_and());
      e = std::move(o);
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      auto a = make(ExprKind::And, cur());
      ++i_;
      a->args.push_back(std::move(e));
      a->args.push_back(parse_not());
      e = std::move(a);
    }
    return e;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      auto n = make(ExprKind::Not, cur());
      ++i_;
      n->args.push_back(parse_not());
      return n;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const Token& t = cur();
    ExprPtr e = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().type == Tok::Op && (cur().value == "==" || cur().value == "!=" || cur().value == "<" ||
                                    cur().value == "<=" || cur().value == ">" || cur().value == ">=")) {
        op = cur().value;
        ++i_;
      } else if (is_name("in")) {
        op = "in";
        ++i_;
      } else if (is_name("not") && peek().type == Tok::Name && peek().value == "in") {
        op = "notin";
        i_ += 2;
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(ExprKind::Compare, t);
        cmp->args.push_back(std::move(e));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(e);
  }

  ExprPtr binary(const Token& t, std::string op, ExprPtr l, ExprPtr r) {
    auto b = make(ExprKind::Binary, t);
    b->name = std::move(op);
    b->args.push_back(std::move(l));
    b->args.push_back(std::move(r));
    return b;
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& t = cur();
      ++i_;
      e = binary(t, t.value, std::move(e), parse_concat());
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      const Token& t = cur();
      ++i_;
      e = binary(t, "~", std::move(e), parse_math2());
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& t = cur();
      ++i_;
      e = binary(t, t.value, std::move(e), parse_pow());
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      const Token& t = cur();
      ++i_;
      e = binary(t, "**", std::move(e), parse_unary(true));
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    // Expressions nest through here; a bound keeps hostile input from exhausting the stack.
    if (++depth_ > kMaxDepth) error(fmt::format("expression nested deeper than {} levels", kMaxDepth));
    struct Leave {
      int& d;
      ~Leave() { --d; }
    } leave{depth_};
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const Token& t = cur();
      ++i_;
      e = make(ExprKind::Unary, t);
      e->name = t.value;
      e->args.push_back(parse_unary(false));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    if (t.type == Tok::Name) {
      ++i_;
      auto lit = [&](Json j) {
        auto e = make(ExprKind::Literal, t);
        e->literal = Value::from(std::move(j));
        return e;
      };
      if (t.value == "true" || t.value == "True") return lit(true);
      if (t.value == "false" || t.value == "False") return lit(false);
      if (t.value == "none" || t.value == "None") return lit(nullptr);
      auto e = make(ExprKind::Name, t);
      e->name = t.value;
      return e;
    }
    if (t.type == Tok::String) {
      std::string s;
      while (cur().type == Tok::String) s += toks_[i_++].value;  // adjacent literals concatenate
      auto e = make(ExprKind::Literal, t);
      e->literal = Value::from(Json(std::move(s)));
      return e;
    }
    if (t.type == Tok::Int || t.type == Tok::Float) {
      ++i_;
      auto e = make(ExprKind::Literal, t);
      if (t.type == Tok::Int) {
        errno = 0;
        const long long v = std::strtoll(t.value.c_str(), nullptr, 10);
        if (errno == ERANGE) lexer_.error_at(t.offset, "integer literal out of range");
        e->literal = Value::from(Json(int64_t(v)));
      } else {
        e->literal = Value::from(Json(std::strtod(t.value.c_str(), nullptr)));
      }
      return e;
    }
    if (is_op("(")) {
      ++i_;
      if (is_op(")")) {
        ++i_;
        return make(ExprKind::Tuple, t);
      }
      ExprPtr e = parse_expression();
      if (is_op(",")) {
        auto tup = make(ExprKind::Tuple, t);
        tup->args.push_back(std::move(e));
        while (is_op(",")) {
          ++i_;
          if (is_op(")")) break;
          tup->args.push_back(parse_expression());
        }
        e = std::move(tup);
      }
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      ++i_;
      auto e = make(ExprKind::List, t);
      while (!is_op("]")) {
        e->args.push_back(parse_expression());
        if (!is_op("]")) expect_op(",");
      }
      ++i_;
      return e;
    }
    if (is_op("{")) {
      ++i_;
      auto e = make(ExprKind::Dict, t);
      while (!is_op("}")) {
        e->args.push_back(parse_expression());
        expect_op(":");
        e->args.push_back(parse_expression());
        if (!is_op("}")) expect_op(",");
      }
      ++i_;
      return e;
    }
    error(fmt::format("unexpected {} in an expression", describe(t)));
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".")) {
        const Token& t = cur();
        ++i_;
        if (cur().type == Tok::Int) {  // x.0 is x[0]
          auto it = make(ExprKind::Item, t);
          it->args.push_back(std::move(e));
          auto idx = make(ExprKind::Literal, cur());
          idx->literal = Value::from(Json(int64_t(std::strtoll(cur().value.c_str(), nullptr, 10))));
          ++i_;
          it->args.push_back(std::move(idx));
          e = std::move(it);
          continue;
        }
        auto a = make(ExprKind::Attr, t);
        a->name = expect_name();
        a->args.push_back(std::move(e));
        e = std::move(a);
      } else if (is_op("[")) {
        e = parse_subscript(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj) {
    const Token& t = cur();
    ++i_;  // [
    ExprPtr bounds[3];
    bool slice = false;
    int part = 0;
    while (!is_op("]")) {
      if (is_op(":")) {
        slice = true;
        if (++part > 2) error("too many ':' in a slice");
        ++i_;
        continue;
      }
      if (bounds[part]) error(fmt::format("unexpected {} in a subscript", describe(cur())));
      bounds[part] = parse_expression();
    }
    ++i_;
    if (!slice) {
      if (!bounds[0]) error("empty subscript");
      auto it = make(ExprKind::Item, t);
      it->args.push_back(std::move(obj));
      it->args.push_back(std::move(bounds[0]));
      return it;
    }
    auto s = make(ExprKind::Slice, t);
    s->args.push_back(std::move(obj));
    for (auto& b : bounds) s->args.push_back(std::move(b));
    return s;
  }

  void parse_args(Expr& call) {
    expect_op("(");
    while (!is_op(")")) {
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().value == "=") {
        std::string key = cur().value;
        i_ += 2;
        call.kwargs.emplace_back(std::move(key), parse_expression());
      } else {
        if (!call.kwargs.empty()) error("positional argument after a keyword argument");
        call.args.push_back(parse_expression());
      }
      if (!is_op(")")) expect_op(",");
    }
    ++i_;
  }

  ExprPtr parse_call(ExprPtr fn) {
    auto c = make(ExprKind::Call, cur());
    c->args.push_back(std::move(fn));
    parse_args(*c);
    return c;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        ++i_;
        const Token& t = cur();
        auto f = make(ExprKind::Filter, t);
        f->name = expect_name();
        while (is_op(".")) {
          ++i_;
          f->name += "." + expect_name();
        }
        if (!has_filter(f->name)) lexer_.error_at(t.offset, fmt::format("unknown filter '{}'", f->name));
        f->args.push_back(std::move(e));
        if (is_op("(")) parse_args(*f);
        e = std::move(f);
      } else if (is_name("is")) {
        ++i_;
        bool negated = false;
        if (is_name("not")) {
          negated = true;
          ++i_;
        }
        const Token& t = cur();
        auto test = make(ExprKind::Test, t);
        test->negated = negated;
        test->name = expect_name();
        if (!has_test(test->name)) lexer_.error_at(t.offset, fmt::format("unknown test '{}'", test->name));
        test->args.push_back(std::move(e));
        if (is_op("(")) {
          parse_args(*test);
        } else if ((cur().type == Tok::Name || cur().type == Tok::String || cur().type == Tok::Int ||
                    cur().type == Tok::Float || is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and") && !is_name("if")) {
          if (is_name("is")) error("'is' cannot follow a test");
          test->args.push_back(parse_postfix(parse_primary()));
        }
        e = std::move(test);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  static constexpr int kMaxDepth = 256;
  std::vector<Token> toks_;
  Lexer& lexer_;
  size_t i_ = 0;
  int depth_ = 0;  // expression and statement nesting
};

}  // namespace

std::unique_ptr<Program> parse_template(std::string_view source, std::string name) {
  auto program = std::make_unique<Program>();
  program->name = std::move(name);
  Lexer lexer(normalize_newlines(source), program->name);
  Parser parser(lexer.run(), lexer);
  program->body = parser.parse_all();
  return program;
}

}  // namespace fm::jinja
