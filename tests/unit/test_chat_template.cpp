// The Jinja interpreter and ChatTemplate against renderings by transformers' apply_chat_template
// (jinja2), committed by tools/make_chat_fixtures.py: byte-identical output for the real Qwen3.5 and
// Qwen3 templates and for a feature-by-feature set of small templates; errors where jinja2 errs.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "chat/chat_template.h"
#include "chat/jinja.h"
#include "formats/gguf_writer.h"
#include "test_util.h"

namespace fm {
namespace {

using Json = jinja::Json;

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  EXPECT_TRUE(f.good()) << path;
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string fixture(const std::string& name) { return std::string(FM_FIXTURES) + "/chat/" + name; }

Json load_json(const std::string& name) { return Json::parse(read_file(fixture(name))); }

void write_file(const std::filesystem::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::binary);
  f << text;
}

// Every case of one template's fixture: the rendering, or jinja2's error (raise_exception's message
// exactly; for jinja2's own TypeError / UndefinedError, any fm::Error).
void check_cases(const std::string& cases_file) {
  const Json doc = load_json(cases_file);
  const std::string source = read_file(fixture(doc.at("template").get<std::string>()));
  const ChatTemplate tmpl(source, doc.at("special_tokens"), doc.at("template").get<std::string>());
  int checked = 0;
  for (const Json& c : doc.at("cases")) {
    const std::string name = c.at("name").get<std::string>();
    SCOPED_TRACE(cases_file + " / " + name);
    auto render = [&] {
      return tmpl.render(c.at("messages"), c.at("tools"), c.at("add_generation_prompt").get<bool>(),
                         c.at("kwargs"));
    };
    if (c.contains("expected")) {
      EXPECT_EQ(render(), c.at("expected").get<std::string>());
    } else if (c.at("error_type") == "TemplateError") {
      try {
        render();
        ADD_FAILURE() << "no error; jinja2 raised: " << c.at("error");
      } catch (const jinja::RaisedError& e) {
        EXPECT_EQ(e.message(), c.at("error").get<std::string>());
        EXPECT_NE(std::string(e.what()).find(doc.at("template").get<std::string>()), std::string::npos)
            << e.what();
      }
    } else {
      EXPECT_THROW(render(), Error) << "jinja2: " << c.at("error");
    }
    ++checked;
  }
  EXPECT_GE(checked, 20);
}

TEST(ChatTemplate, Qwen35MatchesTransformers) { check_cases("qwen3.5-moe.cases.json"); }
TEST(ChatTemplate, Qwen3MatchesTransformers) { check_cases("qwen3-moe.cases.json"); }
TEST(ChatTemplate, Qwen3CoderStyleMatchesTransformers) { check_cases("qwen3-coder.cases.json"); }

TEST(Jinja, FeaturesMatchJinja2) {
  const Json doc = load_json("jinja_features.json");
  for (const Json& f : doc.at("features")) {
    const std::string name = f.at("name").get<std::string>();
    SCOPED_TRACE(name);
    auto render = [&] {
      return jinja::Template(f.at("template").get<std::string>(), name).render(f.at("context"));
    };
    if (f.contains("expected")) {
      EXPECT_EQ(render(), f.at("expected").get<std::string>());
    } else if (f.at("error_type") == "TemplateError") {
      try {
        render();
        ADD_FAILURE() << "no error; jinja2 raised: " << f.at("error");
      } catch (const jinja::RaisedError& e) {
        EXPECT_EQ(e.message(), f.at("error").get<std::string>());
      }
    } else {
      EXPECT_THROW(render(), Error) << "jinja2: " << f.at("error");
    }
  }
}

TEST(Jinja, SyntaxErrorsNameTemplateLineAndColumn) {
  using test::expect_error;
  auto parse = [](const std::string& src) { return [src] { jinja::Template t(src, "my.jinja"); }; };
  expect_error(parse("a\n{% if x %}\nno end"), {"my.jinja:", "missing {% endif %}"}, "my.jinja:");
  expect_error(parse("line1\nline2 {{ x | nosuchfilter }}"),
               {"my.jinja:2:14:", "unknown filter 'nosuchfilter'"});
  expect_error(parse("{{ x is frobbed }}"), {"my.jinja:1:9:", "unknown test 'frobbed'"});
  expect_error(parse("\n\n  {% frobnicate %}"), {"my.jinja:3:", "unknown or unsupported tag 'frobnicate'"});
  expect_error(parse("{{ 'abc }}"), {"my.jinja:1:4:", "unterminated string literal"});
  expect_error(parse("{{ x "), {"my.jinja:1:1:", "missing '}}'"});
  expect_error(parse("{% for x in %}{% endfor %}"), {"my.jinja:1:13:", "unexpected"});
  expect_error(parse("{{ (1 + }}"), {"my.jinja:"});
  expect_error(parse("{# open comment"), {"my.jinja:1:1:", "unclosed comment"});
  expect_error(parse("{% for x in y recursive %}{% endfor %}"), {"recursive"});
  expect_error(parse("{{ a ? b }}"), {"my.jinja:1:6:", "unexpected character '?'"});
  expect_error(parse("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}"),
               {"nested deeper"});
  std::string nested_ifs;
  for (int i = 0; i < 1000; ++i) nested_ifs += "{% if x %}";
  expect_error(parse(nested_ifs), {"nested deeper"});
}

TEST(Jinja, RuntimeErrors) {
  using test::expect_error;
  auto render = [](const std::string& src, const Json& ctx = Json::object()) {
    return [src, ctx] { jinja::Template(src, "t.jinja").render(ctx); };
  };
  expect_error(render("\n{{ nope.attr }}"), {"t.jinja:2:", "'nope' is undefined"});
  expect_error(render("{{ raise_exception('stop here') }}"), {"t.jinja: stop here"});
  expect_error(render("{{ 'a' + 1 }}"), {"unsupported operand"});
  expect_error(render("{% set x.y = 1 %}", Json{{"x", 1}}), {"not a namespace"});
  expect_error(render("{{ 1 // 0 }}"), {"division"});
  expect_error(render("{{ s|items }}", Json{{"s", "abc"}}), {"Can only get item pairs from a mapping."});
  expect_error(render("{% break %}"), {"outside a for loop"});
  expect_error(render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
               {"macro calls nested deeper"});
  EXPECT_EQ(jinja::Template("{{ x }}", "t").render(Json::object()), "");  // undefined prints empty
  EXPECT_THROW(jinja::Template("x", "t").render(Json::array()), Error);
}

TEST(Jinja, DumpsMatchesPython) {
  const Json v = Json::parse(R"({"b": [1, 2.0, 1e-7, "é\u0001"], "a": {}})");
  EXPECT_EQ(jinja::dumps(v), R"({"b": [1, 2.0, 1e-07, "é\u0001"], "a": {}})");
  EXPECT_EQ(jinja::dumps(v, -1, true), R"({"a": {}, "b": [1, 2.0, 1e-07, "é\u0001"]})");
  EXPECT_EQ(jinja::dumps(Json::parse("[1,[2]]"), 1), "[\n 1,\n [\n  2\n ]\n]");
}

// The Qwen3.5 case with tools, rendered through each way a model carries its template.
class ChatTemplateFromModel : public ::testing::Test {
 protected:
  void SetUp() override {
    source_ = read_file(fixture("qwen3.5-moe.jinja"));
    const Json doc = load_json("qwen3.5-moe.cases.json");
    for (const Json& c : doc.at("cases"))
      if (c.at("name") == "tools_system_and_calls") case_ = c;
    ASSERT_FALSE(case_.is_null());
  }
  void expect_renders(const ChatTemplate& t) {
    EXPECT_EQ(t.render(case_.at("messages"), case_.at("tools"), true, case_.at("kwargs")),
              case_.at("expected").get<std::string>());
  }
  test::TempDir dir_;
  std::string source_;
  Json case_;
};

TEST_F(ChatTemplateFromModel, TokenizerConfig) {
  Json config = {{"eos_token", {{"__type", "AddedToken"}, {"content", "<|im_end|>"}}},
                 {"pad_token", "<|endoftext|>"},
                 {"bos_token", nullptr},
                 {"chat_template", source_}};
  write_file(dir_ / "tokenizer_config.json", config.dump());
  const ChatTemplate t = ChatTemplate::from_model(dir_.path);
  EXPECT_EQ(t.special_tokens(), Json({{"eos_token", "<|im_end|>"}, {"pad_token", "<|endoftext|>"}}));
  expect_renders(t);
  // A bool enable_thinking=false adds the empty think block.
  const std::string off = t.render(Json::parse(R"([{"role":"user","content":"hi"}])"), nullptr, true, false);
  EXPECT_EQ(off, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
}

TEST_F(ChatTemplateFromModel, JinjaFileWinsAndNamedTemplates) {
  write_file(dir_ / "tokenizer_config.json", Json({{"chat_template", "config template"}}).dump());
  write_file(dir_ / "chat_template.jinja", source_);
  expect_renders(ChatTemplate::from_model(dir_.path));

  test::TempDir named;
  Json list = Json::array({{{"name", "default"}, {"template", "plain {{ messages|length }}"}},
                           {{"name", "tool_use"}, {"template", source_}}});
  write_file(named / "tokenizer_config.json", Json({{"chat_template", list}}).dump());
  const ChatTemplate t = ChatTemplate::from_model(named.path);
  expect_renders(t);  // tools given: tool_use
  EXPECT_EQ(t.render(Json::parse(R"([{"role":"user","content":"hi"}])"), nullptr, false, Json::object()),
            "plain 1");
}

TEST_F(ChatTemplateFromModel, Gguf) {
  const auto path = dir_ / "model.gguf";
  {
    GgufWriter w(path);
    w.set_string("general.architecture", "qwen35moe");
    w.set_array("tokenizer.ggml.tokens", std::vector<std::string>{"a", "<|endoftext|>", "<|im_end|>"});
    w.set_u32("tokenizer.ggml.eos_token_id", 2);
    w.set_u32("tokenizer.ggml.padding_token_id", 1);
    w.set_string("tokenizer.chat_template", source_);
    w.begin_data();
    w.finish();
  }
  const ChatTemplate t = ChatTemplate::from_model(path);
  EXPECT_EQ(t.special_tokens(), Json({{"eos_token", "<|im_end|>"}, {"pad_token", "<|endoftext|>"}}));
  expect_renders(t);
}

TEST_F(ChatTemplateFromModel, Errors) {
  using test::expect_error;
  expect_error([&] { ChatTemplate::from_model(dir_.path); }, {"no chat template"}, dir_.path.string());
  write_file(dir_ / "tokenizer_config.json", "{not json");
  expect_error([&] { ChatTemplate::from_model(dir_.path); }, {"invalid JSON"},
               (dir_ / "tokenizer_config.json").string());
  write_file(dir_ / "chat_template.jinja", "{% if %}");
  write_file(dir_ / "tokenizer_config.json", "{}");
  expect_error([&] { ChatTemplate::from_model(dir_.path); }, {"chat_template.jinja:1:"});
  const auto gguf = dir_ / "none.gguf";
  {
    GgufWriter w(gguf);
    w.set_string("general.architecture", "qwen35moe");
    w.begin_data();
    w.finish();
  }
  expect_error([&] { ChatTemplate::from_model(gguf); }, {"tokenizer.chat_template"}, gguf.string());
  const ChatTemplate t(source_);
  expect_error([&] { t.render(Json::array(), nullptr, true, true); }, {"empty conversation"});
  expect_error([&] { t.render(Json::array({1}), nullptr, true, true); }, {"message 0 is not an object"});
}

}  // namespace
}  // namespace fm
