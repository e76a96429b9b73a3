// Jinja builtins with Python's semantics: str()/repr(), json.dumps, truthiness, comparisons,
// arithmetic, attribute and item access (dict and str methods), slices, filters, tests and globals.
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <ctime>
#include <set>

#include "chat/jinja_ast.h"
#include "tokenizer/utf8.h"

namespace fm::jinja {
namespace {

// ---- UTF-8 ----
std::u32string decode(const std::string& s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (i + size_t(n) > s.size()) n = 1;
    char32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + size_t(k)]) & 0x3F);
    out += cp;
    i += size_t(n);
  }
  return out;
}

std::string encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t cp : s) utf8::append_code_point(out, uint32_t(cp));
  return out;
}

size_t code_points(const std::string& s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

// Python's str.isspace().
bool py_space(char32_t c) {
  return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// str.strip / lstrip / rstrip with an optional set of characters.
std::string py_strip(const std::string& s, const Value* chars, bool left, bool right) {
  const std::u32string u = decode(s);
  std::u32string set;
  const bool ws = !chars || chars->is_none() || chars->is_undefined();
  if (!ws) {
    if (!chars->is_string()) eval_fail("strip arg must be None or str");
    set = decode(chars->str());
  }
  auto strip_it = [&](char32_t c) { return ws ? py_space(c) : set.find(c) != std::u32string::npos; };
  size_t b = 0, e = u.size();
  if (left)
    while (b < e && strip_it(u[b])) ++b;
  if (right)
    while (e > b && strip_it(u[e - 1])) --e;
  return encode(std::u32string_view(u).substr(b, e - b));
}

// ---- numbers ----
bool is_num(const Value& v) { return v.is_data() && (v.json().is_number() || v.json().is_boolean()); }
bool is_int_like(const Value& v) {
  return v.is_data() && (v.json().is_number_integer() || v.json().is_boolean());
}
int64_t as_int(const Value& v) {
  const Json& j = v.json();
  if (j.is_boolean()) return j.get<bool>() ? 1 : 0;
  if (j.is_number_unsigned()) return int64_t(j.get<uint64_t>());
  if (j.is_number_integer()) return j.get<int64_t>();
  return int64_t(j.get<double>());
}
double as_double(const Value& v) {
  const Json& j = v.json();
  if (j.is_number_float()) return j.get<double>();
  return double(as_int(v));
}

// Python's repr(float): the shortest round-trip digits, fixed notation for 1e-4 <= |x| < 1e16.
std::string py_float(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, x, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  const size_t epos = sci.find('e');
  std::string mant = sci.substr(0, epos);
  const int exp = std::stoi(sci.substr(epos + 1));
  const bool neg = mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant)
    if (c != '.') digits += c;
  std::string out;
  if (exp >= -4 && exp < 16) {  // repr's 'r' format: fixed when -4 <= exp10 < 16
    if (exp < 0) {
      out = "0." + std::string(size_t(-exp - 1), '0') + digits;
    } else if (size_t(exp) + 1 >= digits.size()) {
      out = digits + std::string(size_t(exp) + 1 - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, size_t(exp) + 1) + "." + digits.substr(size_t(exp) + 1);
    }
  }
  if (out.empty()) {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    out += fmt::format("e{}{:02d}", exp < 0 ? '-' : '+', std::abs(exp));
  }
  return neg ? "-" + out : out;
}

// ---- JSON (Python json.dumps) ----
void dump_string(std::string& out, const std::string& s) {
  out += '"';
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += fmt::format("\\u{:04x}", int(c));
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

struct DumpStyle {
  std::string indent;  // used when has_indent
  bool has_indent = false;
  std::string item_sep = ", ", key_sep = ": ";
  bool sort_keys = false;
};

void dump(std::string& out, const Json& j, const DumpStyle& st, int level) {
  auto newline = [&](int lvl) {
    out += '\n';
    for (int i = 0; i < lvl; ++i) out += st.indent;
  };
  switch (j.type()) {
    case Json::value_t::null:
      out += "null";
      break;
    case Json::value_t::boolean:
      out += j.get<bool>() ? "true" : "false";
      break;
    case Json::value_t::number_integer:
      out += std::to_string(j.get<int64_t>());
      break;
    case Json::value_t::number_unsigned:
      out += std::to_string(j.get<uint64_t>());
      break;
    case Json::value_t::number_float: {
      const double d = j.get<double>();
      out += std::isnan(d) ? "NaN" : std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity") : py_float(d);
      break;
    }
    case Json::value_t::string:
      dump_string(out, j.get_ref<const std::string&>());
      break;
    case Json::value_t::array: {
      if (j.empty()) {
        out += "[]";
        break;
      }
      out += '[';
      bool first = true;
      for (const Json& e : j) {
        if (!first) out += st.item_sep;
        first = false;
        if (st.has_indent) newline(level + 1);
        dump(out, e, st, level + 1);
      }
      if (st.has_indent) newline(level);
      out += ']';
      break;
    }
    case Json::value_t::object: {
      if (j.empty()) {
        out += "{}";
        break;
      }
      std::vector<std::pair<const std::string*, const Json*>> items;
      for (auto it = j.begin(); it != j.end(); ++it) items.emplace_back(&it.key(), &it.value());
      if (st.sort_keys)
        std::stable_sort(items.begin(), items.end(),
                         [](const auto& a, const auto& b) { return *a.first < *b.first; });
      out += '{';
      bool first = true;
      for (const auto& [k, v] : items) {
        if (!first) out += st.item_sep;
        first = false;
        if (st.has_indent) newline(level + 1);
        dump_string(out, *k);
        out += st.key_sep;
        dump(out, *v, st, level + 1);
      }
      if (st.has_indent) newline(level);
      out += '}';
      break;
    }
    default:
      eval_fail("value is not JSON serializable");
  }
}

// ---- repr ----
std::string py_str_repr(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos, has_double = s.find('"') != std::string::npos;
  const char q = has_single && !has_double ? '"' : '\'';
  std::string out(1, q);
  for (char c : s) {
    if (c == q || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      out += fmt::format("\\x{:02x}", int(static_cast<unsigned char>(c)));
    } else {
      out += c;
    }
  }
  out += q;
  return out;
}

std::string json_repr(const Json& j) {
  switch (j.type()) {
    case Json::value_t::null:
      return "None";
    case Json::value_t::boolean:
      return j.get<bool>() ? "True" : "False";
    case Json::value_t::number_integer:
      return std::to_string(j.get<int64_t>());
    case Json::value_t::number_unsigned:
      return std::to_string(j.get<uint64_t>());
    case Json::value_t::number_float:
      return py_float(j.get<double>());
    case Json::value_t::string:
      return py_str_repr(j.get_ref<const std::string&>());
    case Json::value_t::array: {
      std::string out = "[";
      for (size_t i = 0; i < j.size(); ++i) out += (i ? ", " : "") + json_repr(j[i]);
      return out + "]";
    }
    case Json::value_t::object: {
      std::string out = "{";
      bool first = true;
      for (auto it = j.begin(); it != j.end(); ++it) {
        out += (first ? "" : ", ") + py_str_repr(it.key()) + ": " + json_repr(it.value());
        first = false;
      }
      return out + "}";
    }
    default:
      return "<binary>";
  }
}

const char* type_name(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
      return "undefined";
    case Value::Kind::Object:
      return v.object->is_namespace ? "namespace" : "loop";
    case Value::Kind::Function:
      return "function";
    case Value::Kind::Data:
      break;
  }
  switch (v.json().type()) {
    case Json::value_t::null:
      return "NoneType";
    case Json::value_t::boolean:
      return "bool";
    case Json::value_t::number_float:
      return "float";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      return "int";
    case Json::value_t::string:
      return "str";
    case Json::value_t::array:
      return "list";
    case Json::value_t::object:
      return "dict";
    default:
      return "binary";
  }
}

[[noreturn]] void undefined_error(const Value& v) { eval_fail(v.hint.empty() ? "undefined value" : v.hint); }

Value str_value(std::string s) { return Value::from(Json(std::move(s))); }
Value bool_value(bool b) { return Value::from(Json(b)); }

const Value* arg(CallArgs& a, size_t index, const char* name) {
  for (auto& [k, v] : a.named)
    if (k == name) return &v;
  return index < a.positional.size() ? &a.positional[index] : nullptr;
}

const std::string& need_str(const Value* v, const char* what) {
  if (!v || !v->is_string()) eval_fail(fmt::format("{} must be a string", what));
  return v->str();
}

int64_t need_int(const Value* v, const char* what) {
  if (!v || !is_int_like(*v)) eval_fail(fmt::format("{} must be an integer", what));
  return as_int(*v);
}

// Python slice bounds (slice.indices) for a sequence of length n.
std::vector<int64_t> slice_indices(int64_t n, const Value& start, const Value& stop, const Value& step) {
  const int64_t st = step.is_none() ? 1 : need_int(&step, "slice step");
  if (st == 0) eval_fail("slice step cannot be zero");
  auto clamp = [&](const Value& v, int64_t dflt) {
    if (v.is_none()) return dflt;
    int64_t x = need_int(&v, "slice index");
    if (x < 0) x += n;
    if (st > 0) return std::clamp<int64_t>(x, 0, n);
    return std::clamp<int64_t>(x, -1, n - 1);
  };
  const int64_t b = clamp(start, st > 0 ? 0 : n - 1), e = clamp(stop, st > 0 ? n : -1);
  std::vector<int64_t> idx;
  for (int64_t i = b; st > 0 ? i < e : i > e; i += st) idx.push_back(i);
  return idx;
}

// str.split(sep=None, maxsplit=-1) and rsplit.
Value py_split(const std::string& s, const Value* sep_v, const Value* max_v, bool from_right) {
  const int64_t maxsplit = max_v && !max_v->is_none() ? need_int(max_v, "maxsplit") : -1;
  std::vector<std::string> parts;
  if (!sep_v || sep_v->is_none()) {
    const std::u32string u = decode(s);
    std::vector<std::pair<size_t, size_t>> words;  // [b, e)
    size_t i = 0;
    while (i < u.size()) {
      while (i < u.size() && py_space(u[i])) ++i;
      if (i >= u.size()) break;
      size_t j = i;
      while (j < u.size() && !py_space(u[j])) ++j;
      words.emplace_back(i, j);
      i = j;
    }
    if (maxsplit >= 0 && int64_t(words.size()) > maxsplit + 1) {
      if (!from_right) {
        size_t rest = words[size_t(maxsplit)].first, end = u.size();
        while (end > rest && py_space(u[end - 1])) --end;
        words.resize(size_t(maxsplit) + 1);
        words.back() = {rest, end};
      } else {
        const size_t keep_from = words.size() - size_t(maxsplit);
        size_t begin = 0;
        while (begin < u.size() && py_space(u[begin])) ++begin;
        std::vector<std::pair<size_t, size_t>> w{{begin, words[keep_from - 1].second}};
        w.insert(w.end(), words.begin() + long(keep_from), words.end());
        words = std::move(w);
      }
    }
    for (auto [b, e] : words) parts.push_back(encode(std::u32string_view(u).substr(b, e - b)));
  } else {
    const std::string& sep = need_str(sep_v, "separator");
    if (sep.empty()) eval_fail("empty separator");
    if (!from_right) {
      size_t pos = 0;
      int64_t n = 0;
      while (maxsplit < 0 || n < maxsplit) {
        const size_t f = s.find(sep, pos);
        if (f == std::string::npos) break;
        parts.push_back(s.substr(pos, f - pos));
        pos = f + sep.size();
        ++n;
      }
      parts.push_back(s.substr(pos));
    } else {
      size_t end = s.size();
      int64_t n = 0;
      std::vector<std::string> rev;
      while (maxsplit < 0 || n < maxsplit) {
        if (end < sep.size()) break;
        const size_t f = s.rfind(sep, end - sep.size());
        if (f == std::string::npos) break;
        rev.push_back(s.substr(f + sep.size(), end - f - sep.size()));
        end = f;
        ++n;
      }
      rev.push_back(s.substr(0, end));
      parts.assign(rev.rbegin(), rev.rend());
    }
  }
  Json arr = Json::array();
  for (auto& p : parts) arr.push_back(std::move(p));
  return Value::from(std::move(arr));
}

std::string py_replace(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
  std::string out;
  if (from.empty()) {  // Python inserts `to` between every character
    const std::u32string u = decode(s);
    int64_t n = 0;
    for (size_t i = 0; i <= u.size(); ++i) {
      if (count < 0 || n < count) {
        out += to;
        ++n;
      }
      if (i < u.size()) out += encode(std::u32string_view(u).substr(i, 1));
    }
    return out;
  }
  size_t pos = 0;
  int64_t n = 0;
  while (count < 0 || n < count) {
    const size_t f = s.find(from, pos);
    if (f == std::string::npos) break;
    out += s.substr(pos, f - pos);
    out += to;
    pos = f + from.size();
    ++n;
  }
  return out + s.substr(pos);
}

std::string ascii_case(std::string s, int mode) {  // 0 lower, 1 upper
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x80) c = char(mode ? std::toupper(c) : std::tolower(c));
  return s;
}

std::string ascii_title(const std::string& s) {
  std::string out = s;
  bool prev_alpha = false;
  for (char& c : out) {
    const bool alpha = std::isalpha(static_cast<unsigned char>(c)) != 0;
    if (alpha) c = char(prev_alpha ? std::tolower(c) : std::toupper(c));
    prev_alpha = alpha;
  }
  return out;
}

bool starts_or_ends(const std::string& s, const Value* what, bool start) {
  auto one = [&](const std::string& p) {
    return p.size() <= s.size() &&
           (start ? s.compare(0, p.size(), p) == 0 : s.compare(s.size() - p.size(), p.size(), p) == 0);
  };
  if (what && what->is_array()) {
    for (const Json& p : what->json())
      if (p.is_string() && one(p.get_ref<const std::string&>())) return true;
    return false;
  }
  return one(need_str(what, start ? "startswith's prefix" : "endswith's suffix"));
}

Value string_method(const Value& self, const std::string& name) {
  static const std::set<std::string> kMethods = {"startswith", "endswith",   "split",   "rsplit",    "strip",
                                                 "lstrip",     "rstrip",     "replace", "lower",     "upper",
                                                 "title",      "capitalize", "find",    "count",     "join",
                                                 "isdigit",    "isalpha",    "isspace", "splitlines"};
  if (!kMethods.count(name)) return Value::undefined(fmt::format("'str object' has no attribute '{}'", name));
  return Value::make_function([self, name](CallArgs& a) -> Value {
    const std::string& s = self.str();
    if (name == "startswith" || name == "endswith")
      return bool_value(starts_or_ends(s, arg(a, 0, "prefix"), name == "startswith"));
    if (name == "split" || name == "rsplit")
      return py_split(s, arg(a, 0, "sep"), arg(a, 1, "maxsplit"), name == "rsplit");
    if (name == "strip") return str_value(py_strip(s, arg(a, 0, "chars"), true, true));
    if (name == "lstrip") return str_value(py_strip(s, arg(a, 0, "chars"), true, false));
    if (name == "rstrip") return str_value(py_strip(s, arg(a, 0, "chars"), false, true));
    if (name == "replace") {
      const Value* c = arg(a, 2, "count");
      return str_value(py_replace(s, need_str(arg(a, 0, "old"), "old"), need_str(arg(a, 1, "new"), "new"),
                                  c ? need_int(c, "count") : -1));
    }
    if (name == "lower") return str_value(ascii_case(s, 0));
    if (name == "upper") return str_value(ascii_case(s, 1));
    if (name == "title") return str_value(ascii_title(s));
    if (name == "capitalize")
      return str_value(s.empty() ? s : ascii_case(s.substr(0, 1), 1) + ascii_case(s.substr(1), 0));
    if (name == "find") {
      const size_t f = s.find(need_str(arg(a, 0, "sub"), "sub"));
      return Value::from(Json(f == std::string::npos ? int64_t(-1) : int64_t(code_points(s.substr(0, f)))));
    }
    if (name == "count") {
      const std::string& sub = need_str(arg(a, 0, "sub"), "sub");
      if (sub.empty()) return Value::from(Json(int64_t(code_points(s) + 1)));
      int64_t n = 0;
      for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++n;
      return Value::from(Json(n));
    }
    if (name == "join") {
      const Value* items = arg(a, 0, "iterable");
      if (!items) eval_fail("join() takes one argument");
      std::string out;
      bool first = true;
      for (const Value& v : iterate(*items)) {
        if (!v.is_string())
          eval_fail(fmt::format("sequence item: expected str instance, {} found", type_name(v)));
        if (!first) out += s;
        out += v.str();
        first = false;
      }
      return str_value(std::move(out));
    }
    if (name == "splitlines") {
      Json arr = Json::array();
      size_t pos = 0;
      while (pos < s.size()) {
        size_t f = s.find('\n', pos);
        if (f == std::string::npos) f = s.size();
        arr.push_back(s.substr(pos, f - pos));
        pos = f + 1;
      }
      return Value::from(std::move(arr));
    }
    const std::u32string u = decode(s);
    bool all = !u.empty();
    for (char32_t c : u)
      all = all && (name == "isdigit"   ? (c >= '0' && c <= '9')
                    : name == "isalpha" ? ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')
                                        : py_space(c));
    return bool_value(all);
  });
}

Value dict_method(const Value& self, const std::string& name) {
  if (name != "items" && name != "keys" && name != "values" && name != "get") return Value::undefined();
  return Value::make_function([self, name](CallArgs& a) -> Value {
    const Json& d = self.json();
    if (name == "get") {
      const Value* key = arg(a, 0, "key");
      const Value* dflt = arg(a, 1, "default");
      if (key && key->is_string()) {
        auto it = d.find(key->str());
        if (it != d.end()) return Value::ref(self.data, *it);
      }
      return dflt ? *dflt : Value::from(nullptr);
    }
    Json arr = Json::array();
    for (auto it = d.begin(); it != d.end(); ++it) {
      if (name == "items")
        arr.push_back(Json::array({it.key(), it.value()}));
      else if (name == "keys")
        arr.push_back(it.key());
      else
        arr.push_back(it.value());
    }
    return Value::from(std::move(arr));
  });
}

// ---- filters ----
Value attribute_of(const Value& v, const std::string& path) {
  Value cur = v;
  size_t pos = 0;
  while (true) {
    const size_t dot = path.find('.', pos);
    const std::string part = path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    cur = get_item(cur, str_value(part));
    if (dot == std::string::npos) return cur;
    pos = dot + 1;
  }
}

Value list_of(const std::vector<Value>& items) {
  Json arr = Json::array();
  for (const Value& v : items) {
    if (!v.is_data()) eval_fail("lists may hold only plain values");
    arr.push_back(v.json());
  }
  return Value::from(std::move(arr));
}

// select / reject / selectattr / rejectattr
Value select_filter(const Value& input, CallArgs& a, bool by_attr, bool keep) {
  size_t first = 0;
  std::string attr;
  if (by_attr) {
    attr = need_str(a.positional.empty() ? nullptr : &a.positional[0], "the attribute");
    first = 1;
  }
  std::vector<Value> out;
  for (const Value& item : iterate(input)) {
    const Value subject = by_attr ? attribute_of(item, attr) : item;
    bool ok;
    if (a.positional.size() <= first) {
      ok = truthy(subject);
    } else {
      const std::string& test = need_str(&a.positional[first], "the test name");
      CallArgs targs;
      targs.positional.assign(a.positional.begin() + long(first) + 1, a.positional.end());
      ok = apply_test(test, subject, targs);
    }
    if (ok == keep) out.push_back(item);
  }
  return list_of(out);
}

Value tojson_filter(const Value& input, CallArgs& a) {
  if (!input.is_data())
    eval_fail(fmt::format("Object of type {} is not JSON serializable", type_name(input)));
  DumpStyle st;
  if (const Value* ind = arg(a, 0, "indent"); ind && !ind->is_none()) {
    st.has_indent = true;
    st.item_sep = ",";
    st.indent = ind->is_string() ? ind->str()
                                 : std::string(size_t(std::max<int64_t>(0, need_int(ind, "indent"))), ' ');
  }
  if (const Value* sep = arg(a, 2, "separators"); sep && !sep->is_none()) {
    if (!sep->is_array() || sep->json().size() != 2 || !sep->json()[0].is_string() ||
        !sep->json()[1].is_string())
      eval_fail("separators must be a pair of strings");
    st.item_sep = sep->json()[0].get<std::string>();
    st.key_sep = sep->json()[1].get<std::string>();
  }
  if (const Value* sk = arg(a, 3, "sort_keys")) st.sort_keys = truthy(*sk);
  if (const Value* ea = arg(a, 1, "ensure_ascii"); ea && truthy(*ea))
    eval_fail("tojson(ensure_ascii=true) is not supported");
  std::string out;
  dump(out, input.json(), st, 0);
  return str_value(std::move(out));
}

Value sort_values(std::vector<Value> items, CallArgs& a) {
  const Value* rev = arg(a, 0, "reverse");
  const Value* attr = arg(a, 2, "attribute");
  auto key = [&](const Value& v) { return attr && attr->is_string() ? attribute_of(v, attr->str()) : v; };
  auto key_ci = [&](const Value& v) {
    Value k = key(v);
    const Value* cs = arg(a, 1, "case_sensitive");
    if (k.is_string() && !(cs && truthy(*cs))) return str_value(ascii_case(k.str(), 0));
    return k;
  };
  std::stable_sort(items.begin(), items.end(),
                   [&](const Value& x, const Value& y) { return less(key_ci(x), key_ci(y)); });
  if (rev && truthy(*rev)) std::reverse(items.begin(), items.end());
  return list_of(items);
}

using FilterFn = Value (*)(const Value&, CallArgs&);

const std::map<std::string, FilterFn>& filters() {
  static const std::map<std::string, FilterFn> kFilters = {
      {"abs",
       [](const Value& v, CallArgs&) {
         if (!is_num(v)) eval_fail("abs needs a number");
         return v.json().is_number_float() ? Value::from(Json(std::fabs(as_double(v))))
                                           : Value::from(Json(std::abs(as_int(v))));
       }},
      {"capitalize",
       [](const Value& v, CallArgs&) {
         const std::string s = to_str(v);
         return str_value(s.empty() ? s : ascii_case(s.substr(0, 1), 1) + ascii_case(s.substr(1), 0));
       }},
      {"count", [](const Value& v, CallArgs& a) { return apply_filter("length", v, a); }},
      {"d", [](const Value& v, CallArgs& a) { return apply_filter("default", v, a); }},
      {"default",
       [](const Value& v, CallArgs& a) {
         const Value* dflt = arg(a, 0, "default_value");
         const Value* boolean = arg(a, 1, "boolean");
         const bool use = v.is_undefined() || (boolean && truthy(*boolean) && !truthy(v));
         return use ? (dflt ? *dflt : str_value("")) : v;
       }},
      {"first",
       [](const Value& v, CallArgs&) {
         std::vector<Value> items = iterate(v);
         return items.empty() ? Value::undefined("first of an empty sequence") : items.front();
       }},
      {"float",
       [](const Value& v, CallArgs& a) {
         if (is_num(v)) return Value::from(Json(as_double(v)));
         if (v.is_string()) {
           try {
             size_t used = 0;
             const double d = std::stod(v.str(), &used);
             if (used == v.str().size()) return Value::from(Json(d));
           } catch (const std::exception&) {
           }
         }
         const Value* dflt = arg(a, 0, "default");
         return dflt ? *dflt : Value::from(Json(0.0));
       }},
      {"indent",
       [](const Value& v, CallArgs& a) {
         const Value* w = arg(a, 0, "width");
         const std::string pad =
             w && w->is_string() ? w->str() : std::string(size_t(w ? need_int(w, "width") : 4), ' ');
         const Value* f = arg(a, 1, "first");
         const Value* b = arg(a, 2, "blank");
         const std::string s = to_str(v);
         std::string out;
         size_t pos = 0;
         bool first = true;
         while (true) {
           const size_t nl = s.find('\n', pos);
           const std::string line = s.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
           const bool add = first ? (f && truthy(*f)) : (!line.empty() || (b && truthy(*b)));
           if (add) out += pad;
           out += line;
           if (nl == std::string::npos) break;
           out += '\n';
           pos = nl + 1;
           first = false;
         }
         return str_value(std::move(out));
       }},
      {"int",
       [](const Value& v, CallArgs& a) {
         if (is_num(v)) return Value::from(Json(int64_t(std::trunc(as_double(v)))));
         if (v.is_string()) {
           try {
             size_t used = 0;
             const long long x = std::stoll(v.str(), &used, 10);
             if (used == v.str().size()) return Value::from(Json(int64_t(x)));
           } catch (const std::exception&) {
           }
         }
         const Value* dflt = arg(a, 0, "default");
         return dflt ? *dflt : Value::from(Json(int64_t(0)));
       }},
      {"items",
       [](const Value& v, CallArgs&) {
         if (v.is_undefined()) return Value::from(Json::array());
         if (!v.is_mapping()) eval_fail("Can only get item pairs from a mapping.");
         Json arr = Json::array();
         for (auto it = v.json().begin(); it != v.json().end(); ++it)
           arr.push_back(Json::array({it.key(), it.value()}));
         return Value::from(std::move(arr));
       }},
      {"join",
       [](const Value& v, CallArgs& a) {
         const Value* sep = arg(a, 0, "d");
         const Value* attr = arg(a, 1, "attribute");
         std::string out;
         bool first = true;
         for (const Value& item : iterate(v)) {
           if (!first) out += sep ? to_str(*sep) : "";
           out += to_str(attr && attr->is_string() ? attribute_of(item, attr->str()) : item);
           first = false;
         }
         return str_value(std::move(out));
       }},
      {"last",
       [](const Value& v, CallArgs&) {
         std::vector<Value> items = iterate(v);
         return items.empty() ? Value::undefined("last of an empty sequence") : items.back();
       }},
      {"length",
       [](const Value& v, CallArgs&) {
         if (v.is_undefined()) return Value::from(Json(int64_t(0)));
         if (v.is_string()) return Value::from(Json(int64_t(code_points(v.str()))));
         if (v.is_array() || v.is_mapping()) return Value::from(Json(int64_t(v.json().size())));
         eval_fail(fmt::format("object of type '{}' has no len()", type_name(v)));
       }},
      {"list",
       [](const Value& v, CallArgs&) {
         if (v.is_string()) {
           Json arr = Json::array();
           const std::u32string u = decode(v.str());
           for (size_t i = 0; i < u.size(); ++i) arr.push_back(encode(std::u32string_view(u).substr(i, 1)));
           return Value::from(std::move(arr));
         }
         return list_of(iterate(v));
       }},
      {"lower", [](const Value& v, CallArgs&) { return str_value(ascii_case(to_str(v), 0)); }},
      {"map",
       [](const Value& v, CallArgs& a) {
         std::vector<Value> out;
         const Value* attr = arg(a, 99, "attribute");
         for (const Value& item : iterate(v)) {
           if (attr) {
             Value x = attribute_of(item, need_str(attr, "attribute"));
             if (x.is_undefined()) {
               const Value* dflt = arg(a, 99, "default");
               x = dflt ? *dflt : x;
             }
             out.push_back(x);
           } else {
             if (a.positional.empty()) eval_fail("map needs a filter name or attribute=");
             CallArgs rest;
             rest.positional.assign(a.positional.begin() + 1, a.positional.end());
             rest.named = a.named;
             out.push_back(apply_filter(need_str(&a.positional[0], "the filter name"), item, rest));
           }
         }
         return list_of(out);
       }},
      {"max",
       [](const Value& v, CallArgs&) {
         std::vector<Value> items = iterate(v);
         if (items.empty()) return Value::undefined("max of an empty sequence");
         return *std::max_element(items.begin(), items.end(),
                                  [](const Value& x, const Value& y) { return less(x, y); });
       }},
      {"min",
       [](const Value& v, CallArgs&) {
         std::vector<Value> items = iterate(v);
         if (items.empty()) return Value::undefined("min of an empty sequence");
         return *std::min_element(items.begin(), items.end(),
                                  [](const Value& x, const Value& y) { return less(x, y); });
       }},
      {"reject", [](const Value& v, CallArgs& a) { return select_filter(v, a, false, false); }},
      {"rejectattr", [](const Value& v, CallArgs& a) { return select_filter(v, a, true, false); }},
      {"replace",
       [](const Value& v, CallArgs& a) {
         const Value* c = arg(a, 2, "count");
         return str_value(py_replace(to_str(v), to_str(*arg(a, 0, "old")), to_str(*arg(a, 1, "new")),
                                     c && !c->is_none() ? need_int(c, "count") : -1));
       }},
      {"reverse",
       [](const Value& v, CallArgs&) {
         if (v.is_string()) {
           std::u32string u = decode(v.str());
           std::reverse(u.begin(), u.end());
           return str_value(encode(u));
         }
         std::vector<Value> items = iterate(v);
         std::reverse(items.begin(), items.end());
         return list_of(items);
       }},
      {"round",
       [](const Value& v, CallArgs& a) {
         const Value* p = arg(a, 0, "precision");
         const double scale = std::pow(10.0, double(p ? need_int(p, "precision") : 0));
         const double x = as_double(v) * scale;
         double r = std::round(x);
         if (std::fabs(x - std::trunc(x)) == 0.5) r = 2.0 * std::round(x / 2.0);  // half to even
         return Value::from(Json(r / scale));
       }},
      {"safe", [](const Value& v, CallArgs&) { return v; }},
      {"select", [](const Value& v, CallArgs& a) { return select_filter(v, a, false, true); }},
      {"selectattr", [](const Value& v, CallArgs& a) { return select_filter(v, a, true, true); }},
      {"sort", [](const Value& v, CallArgs& a) { return sort_values(iterate(v), a); }},
      {"string", [](const Value& v, CallArgs&) { return str_value(to_str(v)); }},
      {"sum",
       [](const Value& v, CallArgs& a) {
         const Value* attr = arg(a, 0, "attribute");
         const Value* start = arg(a, 1, "start");
         Value total = start ? *start : Value::from(Json(int64_t(0)));
         for (const Value& item : iterate(v))
           total = binary_op("+", total, attr && attr->is_string() ? attribute_of(item, attr->str()) : item);
         return total;
       }},
      {"title", [](const Value& v, CallArgs&) { return str_value(ascii_title(to_str(v))); }},
      {"tojson", tojson_filter},
      {"trim", [](const Value& v,
                  CallArgs& a) { return str_value(py_strip(to_str(v), arg(a, 0, "chars"), true, true)); }},
      {"unique",
       [](const Value& v, CallArgs&) {
         std::vector<Value> out;
         for (const Value& item : iterate(v)) {
           bool seen = false;
           for (const Value& o : out) seen = seen || equals(o, item);
           if (!seen) out.push_back(item);
         }
         return list_of(out);
       }},
      {"upper", [](const Value& v, CallArgs&) { return str_value(ascii_case(to_str(v), 1)); }},
      {"wordcount",
       [](const Value& v, CallArgs&) {
         return Value::from(Json(int64_t(py_split(to_str(v), nullptr, nullptr, false).json().size())));
       }},
  };
  return kFilters;
}

// ---- tests ----
using TestFn = bool (*)(const Value&, CallArgs&);

const Value& test_arg(CallArgs& a, const char* test) {
  if (a.positional.empty()) eval_fail(fmt::format("test '{}' needs an argument", test));
  return a.positional[0];
}

const std::map<std::string, TestFn>& tests() {
  static const std::map<std::string, TestFn> kTests = {
      {"defined", [](const Value& v, CallArgs&) { return !v.is_undefined(); }},
      {"undefined", [](const Value& v, CallArgs&) { return v.is_undefined(); }},
      {"none", [](const Value& v, CallArgs&) { return v.is_none(); }},
      {"boolean", [](const Value& v, CallArgs&) { return v.is_data() && v.json().is_boolean(); }},
      {"true", [](const Value& v,
                  CallArgs&) { return v.is_data() && v.json().is_boolean() && v.json().get<bool>(); }},
      {"false", [](const Value& v,
                   CallArgs&) { return v.is_data() && v.json().is_boolean() && !v.json().get<bool>(); }},
      {"integer", [](const Value& v, CallArgs&) { return v.is_integer(); }},
      {"float", [](const Value& v, CallArgs&) { return v.is_data() && v.json().is_number_float(); }},
      {"number", [](const Value& v, CallArgs&) { return is_num(v); }},
      {"string", [](const Value& v, CallArgs&) { return v.is_string(); }},
      {"mapping", [](const Value& v, CallArgs&) { return v.is_mapping(); }},
      {"sequence", [](const Value& v, CallArgs&) { return v.is_string() || v.is_array() || v.is_mapping(); }},
      {"iterable",
       [](const Value& v, CallArgs&) {
         return v.is_undefined() || v.is_string() || v.is_array() || v.is_mapping();
       }},
      {"callable", [](const Value& v, CallArgs&) { return v.kind == Value::Kind::Function; }},
      {"odd", [](const Value& v, CallArgs&) { return is_int_like(v) && as_int(v) % 2 != 0; }},
      {"even", [](const Value& v, CallArgs&) { return is_int_like(v) && as_int(v) % 2 == 0; }},
      {"divisibleby",
       [](const Value& v, CallArgs& a) {
         const int64_t d = need_int(&test_arg(a, "divisibleby"), "divisibleby's argument");
         return d != 0 && as_int(v) % d == 0;
       }},
      {"lower", [](const Value& v, CallArgs&) { return v.is_string() && ascii_case(v.str(), 0) == v.str(); }},
      {"upper", [](const Value& v, CallArgs&) { return v.is_string() && ascii_case(v.str(), 1) == v.str(); }},
      {"eq", [](const Value& v, CallArgs& a) { return equals(v, test_arg(a, "eq")); }},
      {"equalto", [](const Value& v, CallArgs& a) { return equals(v, test_arg(a, "equalto")); }},
      {"ne", [](const Value& v, CallArgs& a) { return !equals(v, test_arg(a, "ne")); }},
      {"lt", [](const Value& v, CallArgs& a) { return less(v, test_arg(a, "lt")); }},
      {"lessthan", [](const Value& v, CallArgs& a) { return less(v, test_arg(a, "lessthan")); }},
      {"gt", [](const Value& v, CallArgs& a) { return less(test_arg(a, "gt"), v); }},
      {"greaterthan", [](const Value& v, CallArgs& a) { return less(test_arg(a, "greaterthan"), v); }},
      {"le", [](const Value& v, CallArgs& a) { return !less(test_arg(a, "le"), v); }},
      {"ge", [](const Value& v, CallArgs& a) { return !less(v, test_arg(a, "ge")); }},
      {"in", [](const Value& v, CallArgs& a) { return contains(test_arg(a, "in"), v); }},
      {"sameas",
       [](const Value& v, CallArgs& a) {
         const Value& o = test_arg(a, "sameas");
         if (v.is_data() && o.is_data() && (v.json().is_primitive() && o.json().is_primitive()))
           return v.json().type() == o.json().type() && v.json() == o.json();
         return v.data == o.data && v.object == o.object && v.function == o.function && v.kind == o.kind;
       }},
  };
  return kTests;
}

}  // namespace

// ---- public helpers ----

std::string dumps(const Json& value, int indent, bool sort_keys) {
  DumpStyle st;
  if (indent >= 0) {
    st.has_indent = true;
    st.indent = std::string(size_t(indent), ' ');
    st.item_sep = ",";
  }
  st.sort_keys = sort_keys;
  std::string out;
  try {
    dump(out, value, st, 0);
  } catch (const EvalError& e) {
    fail("json: {}", e.message);
  }
  return out;
}

bool truthy(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
      return false;
    case Value::Kind::Object:
    case Value::Kind::Function:
      return true;
    case Value::Kind::Data:
      break;
  }
  const Json& j = v.json();
  switch (j.type()) {
    case Json::value_t::null:
      return false;
    case Json::value_t::boolean:
      return j.get<bool>();
    case Json::value_t::number_integer:
      return j.get<int64_t>() != 0;
    case Json::value_t::number_unsigned:
      return j.get<uint64_t>() != 0;
    case Json::value_t::number_float:
      return j.get<double>() != 0.0;
    case Json::value_t::string:
      return !j.get_ref<const std::string&>().empty();  // json::empty() is false for strings
    case Json::value_t::array:
    case Json::value_t::object:
      return !j.empty();
    default:
      return true;
  }
}

std::string to_str(const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined:
      return "";
    case Value::Kind::Function:
      return "<function>";
    case Value::Kind::Object: {
      std::string out = v.object->is_namespace ? "<Namespace {" : "<LoopContext {";
      bool first = true;
      for (const auto& [k, val] : v.object->attrs) {
        out += (first ? "" : ", ") + py_str_repr(k) + ": " + to_repr(val);
        first = false;
      }
      return out + "}>";
    }
    case Value::Kind::Data:
      break;
  }
  if (v.is_string()) return v.str();
  return json_repr(v.json());
}

std::string to_repr(const Value& v) {
  if (v.is_data()) return json_repr(v.json());
  if (v.is_undefined()) return "Undefined";
  return to_str(v);
}

bool equals(const Value& a, const Value& b) {
  if (a.is_undefined() || b.is_undefined()) return a.is_undefined() && b.is_undefined();
  if (!a.is_data() || !b.is_data())
    return a.object == b.object && a.function == b.function && a.kind == b.kind;
  if (is_num(a) && is_num(b)) {
    if (a.json().is_number_float() || b.json().is_number_float()) return as_double(a) == as_double(b);
    return as_int(a) == as_int(b);
  }
  const Json &x = a.json(), &y = b.json();
  if (x.is_array() && y.is_array()) {
    if (x.size() != y.size()) return false;
    for (size_t i = 0; i < x.size(); ++i)
      if (!equals(Value::ref(a.data, x[i]), Value::ref(b.data, y[i]))) return false;
    return true;
  }
  if (x.is_object() && y.is_object()) {
    if (x.size() != y.size()) return false;
    for (auto it = x.begin(); it != x.end(); ++it) {
      auto jt = y.find(it.key());
      if (jt == y.end() || !equals(Value::ref(a.data, it.value()), Value::ref(b.data, *jt))) return false;
    }
    return true;
  }
  return x.type() == y.type() && x == y;
}

bool less(const Value& a, const Value& b) {
  if (is_num(a) && is_num(b)) {
    if (a.json().is_number_float() || b.json().is_number_float()) return as_double(a) < as_double(b);
    return as_int(a) < as_int(b);
  }
  if (a.is_string() && b.is_string()) return a.str() < b.str();  // UTF-8 byte order is code point order
  if (a.is_array() && b.is_array()) {
    const Json &x = a.json(), &y = b.json();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      const Value xi = Value::ref(a.data, x[i]), yi = Value::ref(b.data, y[i]);
      if (!equals(xi, yi)) return less(xi, yi);
    }
    return x.size() < y.size();
  }
  eval_fail(fmt::format("'<' not supported between instances of '{}' and '{}'", type_name(a), type_name(b)));
}

bool contains(const Value& container, const Value& item) {
  if (container.is_undefined()) return false;  // jinja2: `in` iterates the undefined, which is empty
  if (container.is_string()) {
    if (!item.is_string())
      eval_fail(fmt::format("'in <string>' requires string as left operand, not {}", type_name(item)));
    return container.str().find(item.str()) != std::string::npos;
  }
  if (container.is_array()) {
    for (const Json& e : container.json())
      if (equals(Value::ref(container.data, e), item)) return true;
    return false;
  }
  if (container.is_mapping()) return item.is_string() && container.json().contains(item.str());
  if (container.kind == Value::Kind::Object)
    return item.is_string() && container.object->attrs.count(item.str()) > 0;
  eval_fail(fmt::format("argument of type '{}' is not iterable", type_name(container)));
}

Value unary_minus(const Value& v) {
  if (!is_num(v)) eval_fail(fmt::format("bad operand type for unary -: '{}'", type_name(v)));
  if (v.json().is_number_float()) return Value::from(Json(-as_double(v)));
  return Value::from(Json(-as_int(v)));
}

Value binary_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") return str_value(to_str(a) + to_str(b));
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  if (is_num(a) && is_num(b)) {
    const bool fl = a.json().is_number_float() || b.json().is_number_float();
    if (op == "/") {
      if (as_double(b) == 0.0) eval_fail("division by zero");
      return Value::from(Json(as_double(a) / as_double(b)));
    }
    if (op == "**") {
      if (!fl && as_int(b) >= 0) {
        int64_t r = 1;
        for (int64_t i = 0; i < as_int(b); ++i) r *= as_int(a);
        return Value::from(Json(r));
      }
      return Value::from(Json(std::pow(as_double(a), as_double(b))));
    }
    if (fl) {
      const double x = as_double(a), y = as_double(b);
      if (op == "+") return Value::from(Json(x + y));
      if (op == "-") return Value::from(Json(x - y));
      if (op == "*") return Value::from(Json(x * y));
      if (y == 0.0) eval_fail("float division by zero");
      if (op == "//") return Value::from(Json(std::floor(x / y)));
      if (op == "%") {
        double m = std::fmod(x, y);
        if (m != 0.0 && ((m < 0) != (y < 0))) m += y;
        return Value::from(Json(m));
      }
    } else {
      const int64_t x = as_int(a), y = as_int(b);
      if (op == "+") return Value::from(Json(x + y));
      if (op == "-") return Value::from(Json(x - y));
      if (op == "*") return Value::from(Json(x * y));
      if (y == 0) eval_fail("integer division or modulo by zero");
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {
        --q;
        m += y;
      }
      if (op == "//") return Value::from(Json(q));
      if (op == "%") return Value::from(Json(m));
    }
  }
  if (op == "+") {
    if (a.is_string() && b.is_string()) return str_value(a.str() + b.str());
    if (a.is_array() && b.is_array()) {
      Json r = a.json();
      for (const Json& e : b.json()) r.push_back(e);
      return Value::from(std::move(r));
    }
  }
  if (op == "*" && ((a.is_string() && is_int_like(b)) || (b.is_string() && is_int_like(a)))) {
    const std::string& s = a.is_string() ? a.str() : b.str();
    std::string r;
    for (int64_t i = 0, n = as_int(a.is_string() ? b : a); i < n; ++i) r += s;
    return str_value(std::move(r));
  }
  eval_fail(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(a), type_name(b)));
}

Value get_attr(const Value& obj, const std::string& name) {
  if (obj.is_undefined())
    eval_fail(fmt::format("{} has no attribute '{}'", obj.hint.empty() ? "undefined value" : obj.hint, name));
  if (obj.kind == Value::Kind::Object) {
    auto it = obj.object->attrs.find(name);
    return it != obj.object->attrs.end()
               ? it->second
               : Value::undefined(fmt::format("'{}' has no attribute '{}'", type_name(obj), name));
  }
  if (obj.kind == Value::Kind::Function)
    return Value::undefined(fmt::format("function has no attribute '{}'", name));
  if (obj.is_string()) return string_method(obj, name);
  if (obj.is_mapping()) {
    Value m = dict_method(obj, name);
    if (!m.is_undefined()) return m;
    auto it = obj.json().find(name);
    if (it != obj.json().end()) return Value::ref(obj.data, *it);
  }
  return Value::undefined(fmt::format("'{} object' has no attribute '{}'", type_name(obj), name));
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.is_undefined())
    eval_fail(
        fmt::format("{} has no item {}", obj.hint.empty() ? "undefined value" : obj.hint, to_repr(key)));
  if (obj.is_mapping() && key.is_string()) {
    auto it = obj.json().find(key.str());
    if (it != obj.json().end()) return Value::ref(obj.data, *it);
  } else if ((obj.is_array() || obj.is_string()) && is_int_like(key)) {
    int64_t i = as_int(key);
    if (obj.is_array()) {
      const int64_t n = int64_t(obj.json().size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return Value::ref(obj.data, obj.json()[size_t(i)]);
    } else {
      const std::u32string u = decode(obj.str());
      const int64_t n = int64_t(u.size());
      if (i < 0) i += n;
      if (i >= 0 && i < n) return str_value(encode(std::u32string_view(u).substr(size_t(i), 1)));
    }
    return Value::undefined(fmt::format("{} index {} out of range", type_name(obj), as_int(key)));
  }
  if (key.is_string()) return get_attr(obj, key.str());
  return Value::undefined(fmt::format("'{} object' has no item {}", type_name(obj), to_repr(key)));
}

Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (obj.is_array()) {
    Json r = Json::array();
    for (int64_t i : slice_indices(int64_t(obj.json().size()), start, stop, step))
      r.push_back(obj.json()[size_t(i)]);
    return Value::from(std::move(r));
  }
  if (obj.is_string()) {
    const std::u32string u = decode(obj.str());
    std::u32string r;
    for (int64_t i : slice_indices(int64_t(u.size()), start, stop, step)) r += u[size_t(i)];
    return str_value(encode(r));
  }
  if (obj.is_undefined()) undefined_error(obj);
  eval_fail(fmt::format("'{}' object is not subscriptable with a slice", type_name(obj)));
}

std::vector<Value> iterate(const Value& v) {
  std::vector<Value> items;
  if (v.is_undefined()) return items;
  if (v.is_array()) {
    items.reserve(v.json().size());
    for (const Json& e : v.json()) items.push_back(Value::ref(v.data, e));
  } else if (v.is_mapping()) {
    for (auto it = v.json().begin(); it != v.json().end(); ++it) items.push_back(str_value(it.key()));
  } else if (v.is_string()) {
    const std::u32string u = decode(v.str());
    for (size_t i = 0; i < u.size(); ++i)
      items.push_back(str_value(encode(std::u32string_view(u).substr(i, 1))));
  } else if (v.kind == Value::Kind::Object) {
    for (const auto& [k, val] : v.object->attrs) items.push_back(str_value(k));
  } else {
    eval_fail(fmt::format("'{}' object is not iterable", type_name(v)));
  }
  return items;
}

bool has_filter(const std::string& name) { return filters().count(name) > 0; }
bool has_test(const std::string& name) { return tests().count(name) > 0; }

Value apply_filter(const std::string& name, const Value& input, CallArgs& args) {
  auto it = filters().find(name);
  if (it == filters().end()) eval_fail(fmt::format("unknown filter '{}'", name));
  return it->second(input, args);
}

bool apply_test(const std::string& name, const Value& input, CallArgs& args) {
  static const std::map<std::string, std::string> kAliases = {{"==", "eq"}, {"!=", "ne"}, {"<", "lt"},
                                                              {">", "gt"},  {"<=", "le"}, {">=", "ge"}};
  auto alias = kAliases.find(name);
  auto it = tests().find(alias != kAliases.end() ? alias->second : name);
  if (it == tests().end()) eval_fail(fmt::format("unknown test '{}'", name));
  return it->second(input, args);
}

Value builtin_global(const std::string& name, const std::string& template_name) {
  if (name == "raise_exception") {
    return Value::make_function([template_name](CallArgs& a) -> Value {
      throw RaisedError(template_name, a.positional.empty() ? std::string() : to_str(a.positional[0]));
    });
  }
  if (name == "range") {
    return Value::make_function([](CallArgs& a) {
      const size_t n = a.positional.size();
      if (n < 1 || n > 3) eval_fail("range expects 1 to 3 arguments");
      int64_t start = 0, stop, step = 1;
      if (n == 1) {
        stop = need_int(&a.positional[0], "range's stop");
      } else {
        start = need_int(&a.positional[0], "range's start");
        stop = need_int(&a.positional[1], "range's stop");
        if (n == 3) step = need_int(&a.positional[2], "range's step");
      }
      if (step == 0) eval_fail("range() arg 3 must not be zero");
      Json arr = Json::array();
      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        arr.push_back(i);
        if (arr.size() > 1000000) eval_fail("range too large");
      }
      return Value::from(std::move(arr));
    });
  }
  if (name == "namespace" || name == "dict") {
    const bool ns = name == "namespace";
    return Value::make_function([ns](CallArgs& a) {
      auto attrs = std::make_shared<Object>();
      attrs->is_namespace = true;
      for (const Value& p : a.positional) {
        if (!p.is_mapping()) eval_fail("namespace()/dict() take a mapping and keyword arguments");
        for (auto it = p.json().begin(); it != p.json().end(); ++it)
          attrs->attrs[it.key()] = Value::ref(p.data, it.value());
      }
      for (auto& [k, v] : a.named) {
        if (ns && !k.empty() && k[0] == '_')
          eval_fail(fmt::format("namespace attributes may not start with '_': '{}'", k));
        attrs->attrs[k] = v;
      }
      if (ns) {
        Value out;
        out.kind = Value::Kind::Object;
        out.object = std::move(attrs);
        return out;
      }
      Json obj = Json::object();
      for (auto& [k, v] : attrs->attrs) {
        if (!v.is_data()) eval_fail("dict() values must be plain values");
        obj[k] = v.json();
      }
      return Value::from(std::move(obj));
    });
  }
  if (name == "strftime_now") {
    return Value::make_function([](CallArgs& a) {
      const std::string& format =
          need_str(a.positional.empty() ? nullptr : &a.positional[0], "strftime_now's format");
      const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
      std::tm tm{};
      localtime_r(&now, &tm);
      char buf[256];
      const size_t n = std::strftime(buf, sizeof buf, format.c_str(), &tm);
      return str_value(std::string(buf, n));
    });
  }
  return Value::undefined();
}

}  // namespace fm::jinja
