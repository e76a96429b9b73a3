// The tokenizer against Hugging Face tokenizers: ids and decoded text that tools/make_tokenizer_fixtures.py
// recorded with `tokenizers` on the real Qwen3.5 and Qwen2/3 vocabularies (and small tokenizers cut
// from them), for tokenizer.json, GGUF (gguf-py's, and our writer's) and tiktoken sources alike.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "convert/convert.h"
#include "formats/gguf.h"
#include "formats/gguf_writer.h"
#include "test_util.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_gguf.h"
#include "tokenizer/utf8.h"

namespace fm {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::expect_error;
using test::TempDir;

const fs::path kDir = fs::path(FM_FIXTURES) / "tokenizer";

json read_json(const fs::path& p) {
  std::ifstream f(p);
  return json::parse(f);
}

std::string unhex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(char(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

// The input bytes of a fixture case.
std::string case_input(const json& c) {
  return c.contains("text") ? c["text"].get<std::string>() : unhex(c["bytes_hex"]);
}

// Every case: encode (with and without special-token parsing), decode, streaming decode.
void check_cases(const Tokenizer& tok, const json& fixture, const std::string& label) {
  size_t n = 0;
  for (const json& c : fixture.at("cases")) {
    const std::string input = case_input(c);
    const auto ids = c.at("ids").get<std::vector<int32_t>>();
    const std::string where = label + " case " + c.at("name").get<std::string>();
    EXPECT_EQ(tok.encode(input), ids) << where;
    EXPECT_EQ(tok.encode(input, false), c.at("ids_no_special").get<std::vector<int32_t>>()) << where;
    const std::string decoded = c.at("decoded").get<std::string>();
    EXPECT_EQ(tok.decode(ids), decoded) << where;
    StreamDecoder stream(tok);
    std::string joined;
    for (int32_t id : ids) {
      const std::string piece = stream.push(id);
      EXPECT_TRUE(utf8::is_valid(piece)) << where;
      joined += piece;
    }
    joined += stream.flush();
    EXPECT_EQ(joined, decoded) << where;
    ++n;
  }
  for (const json& c : fixture.at("decode_cases")) {
    const auto ids = c.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(tok.decode(ids), c.at("text").get<std::string>()) << label << " decode " << c.at("ids").dump();
    StreamDecoder stream(tok);
    std::string joined;
    for (int32_t id : ids) joined += stream.push(id);
    EXPECT_EQ(joined + stream.flush(), c.at("text").get<std::string>())
        << label << " stream " << c.at("ids").dump();
  }
  EXPECT_GT(n, 10u) << label;
}

void check_eos(const Tokenizer& tok, const json& fixture) {
  for (const json& name : fixture.at("eos")) {
    const std::optional<int32_t> id = tok.token_id(name.get<std::string>());
    ASSERT_TRUE(id) << name;
    EXPECT_TRUE(tok.is_special(*id)) << name;
    EXPECT_NE(std::find(tok.eos_ids().begin(), tok.eos_ids().end(), *id), tok.eos_ids().end()) << name;
  }
}

Tokenizer load_tiktoken_fixture(const json& f) {
  TiktokenSpec spec;
  spec.pattern = f.at("pattern");
  spec.nfc = f.at("nfc");
  for (const json& s : f.at("special_tokens"))
    spec.special_tokens.emplace_back(s[0].get<int32_t>(), s[1].get<std::string>());
  return Tokenizer::from_tiktoken(kDir / f.at("rank_file").get<std::string>(), spec);
}

// Writes the tokenizer into a GGUF with no tensors and reads it back.
Tokenizer gguf_round_trip(const Tokenizer& tok, const fs::path& file,
                          const TokenizerMetadataOptions& o = {}) {
  GgufWriter w(file);
  w.set_string("general.architecture", "qwen35moe");
  write_tokenizer_metadata(w, tok, o);
  w.begin_data();
  w.finish();
  return Tokenizer::load(file);
}

// ---- real vocabularies ----

class RealVocab : public ::testing::TestWithParam<const char*> {};

TEST_P(RealVocab, MatchesHuggingFace) {
  const json f = read_json(kDir / (std::string(GetParam()) + ".json"));
  const Tokenizer tok = load_tiktoken_fixture(f);
  EXPECT_EQ(tok.vocab_size(), f.at("vocab_size").get<int32_t>());
  EXPECT_TRUE(tok.ignore_merges());
  EXPECT_TRUE(tok.nfc());
  check_cases(tok, f, GetParam());
  check_eos(tok, f);
}

// Our GGUF writer and reader keep the tokenizer: same ids on every case.
TEST_P(RealVocab, GgufRoundTrip) {
  const json f = read_json(kDir / (std::string(GetParam()) + ".json"));
  const Tokenizer tok = load_tiktoken_fixture(f);
  TempDir dir;
  TokenizerMetadataOptions padded;
  padded.vocab_size = tok.vocab_size() + 5;
  const Tokenizer back = gguf_round_trip(tok, dir / "tok.gguf", padded);
  EXPECT_EQ(back.vocab_size(), tok.vocab_size() + 5);
  EXPECT_EQ(back.token_type(tok.vocab_size()), TokenType::Unused);
  EXPECT_EQ(back.merges(), tok.merges());
  EXPECT_EQ(back.pattern(), tok.pattern());
  EXPECT_TRUE(back.ignore_merges());
  EXPECT_TRUE(back.nfc());
  for (int32_t id = 0; id < tok.vocab_size(); ++id)
    ASSERT_EQ(back.token_bytes(id), tok.token_bytes(id)) << id;
  check_cases(back, f, std::string(GetParam()) + " via GGUF");
}

INSTANTIATE_TEST_SUITE_P(Qwen, RealVocab, ::testing::Values("qwen35", "qwen2"));

// ---- small tokenizers: tokenizer.json, and gguf-py's GGUF ----

TEST(Tokenizer, TinyQwen35FromJson) {
  const json f = read_json(kDir / "tiny-qwen35.expected.json");
  const Tokenizer tok = Tokenizer::load(kDir / "tiny-qwen35");
  check_cases(tok, f, "tiny-qwen35.json");
  check_eos(tok, f);
  EXPECT_EQ(tok.eos_id(), tok.token_id("<|im_end|>"));
  EXPECT_EQ(tok.pad_id(), tok.token_id("<|endoftext|>"));
  EXPECT_FALSE(tok.bos_id());
  EXPECT_EQ(tok.add_bos(), false);
  EXPECT_NE(tok.chat_template().find("<|im_start|>"), std::string::npos);
  EXPECT_FALSE(tok.is_special(*tok.token_id("<think>")));  // an added token, not a control one
  EXPECT_EQ(tok.token_type(*tok.token_id("<think>")), TokenType::UserDefined);
}

// A GGUF written by gguf-py as llama.cpp's converter does: the same ids as the tokenizer.json.
TEST(Tokenizer, TinyQwen35FromLlamaCppGguf) {
  const json f = read_json(kDir / "tiny-qwen35.expected.json");
  const Tokenizer tok = Tokenizer::load(kDir / "tiny-qwen35.gguf");
  const Tokenizer from_json = Tokenizer::load(kDir / "tiny-qwen35");
  EXPECT_EQ(tok.vocab_size(), 512);
  EXPECT_EQ(tok.merges(), from_json.merges());
  check_cases(tok, f, "tiny-qwen35.gguf");
  check_eos(tok, f);
  EXPECT_EQ(tok.eos_id(), from_json.eos_id());
  EXPECT_EQ(tok.pad_id(), from_json.pad_id());
  EXPECT_EQ(tok.chat_template(), from_json.chat_template());
  EXPECT_EQ(tok.decode(std::vector<int32_t>{500}), "");  // a [PAD500] id decodes to nothing
}

TEST(Tokenizer, SmallQwen2FromJsonWithAddedTokenFlags) {
  const json f = read_json(kDir / "small-qwen2.expected.json");
  const Tokenizer tok = Tokenizer::load(kDir / "small-qwen2" / "tokenizer.json");
  EXPECT_FALSE(tok.ignore_merges());
  check_cases(tok, f, "small-qwen2");
  check_eos(tok, f);
}

TEST(Tokenizer, JsonAndGgufAgree) {
  const Tokenizer tok = Tokenizer::load(kDir / "tiny-qwen35");
  TempDir dir;
  const Tokenizer back = gguf_round_trip(tok, dir / "tiny.gguf");
  const json f = read_json(kDir / "tiny-qwen35.expected.json");
  for (const json& c : f.at("cases"))
    EXPECT_EQ(back.encode(case_input(c)), tok.encode(case_input(c))) << c["name"];
  EXPECT_EQ(back.eos_ids(), tok.eos_ids());
  EXPECT_EQ(back.chat_template(), tok.chat_template());
}

// ---- behaviour ----

TEST(Tokenizer, TokenBytesAndIds) {
  const Tokenizer tok = Tokenizer::load(kDir / "tiny-qwen35");
  const int32_t space = *tok.token_id(" ");
  EXPECT_EQ(tok.token_bytes(space), " ");
  EXPECT_EQ(tok.token_bytes(*tok.token_id("<|im_end|>")), "<|im_end|>");
  EXPECT_FALSE(tok.token_id("no such token"));
  expect_error([&] { tok.token_bytes(tok.vocab_size()); }, {"token id", "outside the vocabulary"});
  expect_error([&] { tok.token_bytes(-1); }, {"token id -1"});
  expect_error([&] { tok.decode(std::vector<int32_t>{1, 99999}); }, {"99999"});
}

TEST(Tokenizer, StreamDecoderHoldsSplitCharacters) {
  const Tokenizer tok = Tokenizer::load(kDir / "tiny-qwen35");
  // "€" is E2 82 AC: with 480 tokens it is three byte tokens.
  const std::vector<int32_t> ids = tok.encode("a€b");
  ASSERT_GE(ids.size(), 4u);
  StreamDecoder s(tok);
  std::vector<std::string> pieces;
  for (int32_t id : ids) pieces.push_back(s.push(id));
  EXPECT_EQ(pieces.front(), "a");
  EXPECT_EQ(pieces[1], "");
  EXPECT_EQ(pieces[2], "");
  EXPECT_EQ(pieces[3], "€");
  EXPECT_EQ(s.flush(), "");
  StreamDecoder cut(tok);
  EXPECT_EQ(cut.push(ids[0]), "a");
  EXPECT_EQ(cut.push(ids[1]), "");
  EXPECT_EQ(cut.flush(), "\xEF\xBF\xBD");  // never completed
}

TEST(Tokenizer, ConcurrentEncodesAgree) {
  const Tokenizer tok = Tokenizer::load(kDir / "small-qwen2");
  const json f = read_json(kDir / "small-qwen2.expected.json");
  std::vector<std::thread> threads;
  std::vector<int> bad(4, 0);
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int rep = 0; rep < 5; ++rep)
        for (const json& c : f.at("cases"))
          if (tok.encode(case_input(c)) != c.at("ids").get<std::vector<int32_t>>()) ++bad[size_t(t)];
    });
  for (auto& th : threads) th.join();
  for (int b : bad) EXPECT_EQ(b, 0);
}

TEST(Utf8, IncompleteTail) {
  EXPECT_EQ(utf8::incomplete_tail(""), 0u);
  EXPECT_EQ(utf8::incomplete_tail("abc"), 0u);
  EXPECT_EQ(utf8::incomplete_tail("a\xE2\x82"), 2u);
  EXPECT_EQ(utf8::incomplete_tail("a\xE2"), 1u);
  EXPECT_EQ(utf8::incomplete_tail("a\xE2\x82\xAC"), 0u);
  EXPECT_EQ(utf8::incomplete_tail("\xF0\x9F\x98"), 3u);
  EXPECT_EQ(utf8::incomplete_tail("\xE0\x80"), 0u);  // E0 80 can never complete
  EXPECT_EQ(utf8::incomplete_tail("\x80\x80"), 0u);
  EXPECT_EQ(utf8::lossy("a\xF0\x9F\x98z"), "a\xEF\xBF\xBDz");
  EXPECT_EQ(utf8::lossy("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(Utf8, ByteLevelAlphabet) {
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(char(b));
  const std::string mapped = utf8::byte_level_encode(all);
  EXPECT_EQ(utf8::byte_level_decode(mapped), all);
  EXPECT_EQ(utf8::byte_level_encode(" hello\n"), "\xC4\xA0hello\xC4\x8A");  // Ġhello Ċ
  EXPECT_FALSE(utf8::byte_level_decode("a b"));                             // a space is not in the alphabet
}

TEST(PreTokenizer, PatternNames) {
  EXPECT_EQ(pre_name_for_pattern(kQwen35Pattern), "qwen35");
  EXPECT_EQ(pre_name_for_pattern(kQwen2Pattern), "qwen2");
  EXPECT_EQ(pattern_for_pre_name("deepseek-r1-qwen"), kQwen2Pattern);
  EXPECT_FALSE(pattern_for_pre_name("llama-bpe"));
}

// ---- bad input ----

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
}

TEST(TokenizerErrors, Files) {
  TempDir dir;
  expect_error([&] { Tokenizer::load(dir / "nothing"); }, {"no such file"});
  expect_error([&] { Tokenizer::load(dir.path); }, {"no tokenizer.json"}, dir.path.string());
  write_text(dir / "tokenizer.json", "{ not json");
  expect_error([&] { Tokenizer::load(dir.path); }, {"not valid JSON"}, (dir / "tokenizer.json").string());
  expect_error([&] { Tokenizer::load(fs::path(FM_FIXTURES) / "gguf" / "reference_v3.gguf"); },
               {"tokenizer.ggml.model", "missing"});
}

TEST(TokenizerErrors, UnsupportedOrBrokenJson) {
  const json good = read_json(kDir / "tiny-qwen35" / "tokenizer.json");
  TempDir dir;
  auto try_with = [&](const std::function<void(json&)>& edit, std::initializer_list<std::string> needles) {
    json j = good;
    edit(j);
    write_text(dir / "tokenizer.json", j.dump());
    expect_error([&] { Tokenizer::load(dir.path); }, needles, (dir / "tokenizer.json").string());
  };
  try_with([](json& j) { j["normalizer"] = {{"type", "NFKC"}}; }, {"normalizer 'NFKC'"});
  try_with([](json& j) { j["model"]["type"] = "Unigram"; }, {"Unigram"});
  try_with(
      [](json& j) {
        j["model"]["merges"][3] = json::array({"nope", "x"});
      },
      {"merge 3", "not in the vocabulary"});
  try_with([](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed"; },
           {"regex does not compile"});
  try_with([](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"; }, {"Removed"});
  try_with([](json& j) { j["model"].erase("vocab"); }, {"structure"});
}

TEST(TokenizerErrors, MetadataThatGgufCannotCarry) {
  const Tokenizer tok = Tokenizer::load(kDir / "tiny-qwen35");
  TempDir dir;
  GgufWriter w(dir / "x.gguf");
  TokenizerMetadataOptions small;
  small.vocab_size = 100;
  expect_error([&] { write_tokenizer_metadata(w, tok, small); }, {"vocab_size 100"});
}

// ---- the converter carries the tokenizer ----

TEST(Tokenizer, ConvertedModelCarriesTokenizer) {
  TempDir dir;
  const fs::path model = dir / "model";
  fs::copy(fs::path(FM_FIXTURES) / "qwen35moe-text-f32", model, fs::copy_options::recursive);
  for (const char* name : {"tokenizer.json", "tokenizer_config.json"})
    fs::copy(kDir / "tiny-qwen35" / name, model / name);
  ConvertOptions options;
  options.type = DType::F32;
  convert_to_gguf(model, dir / "out.gguf", options);
  const Tokenizer from_json = Tokenizer::load(model);
  const Tokenizer from_gguf = Tokenizer::load(dir / "out.gguf");
  EXPECT_EQ(from_gguf.vocab_size(), 512);  // padded to the model's embedding
  EXPECT_EQ(from_gguf.merges(), from_json.merges());
  EXPECT_EQ(from_gguf.chat_template(), from_json.chat_template());
  EXPECT_EQ(from_gguf.eos_ids(), from_json.eos_ids());
  const json f = read_json(kDir / "tiny-qwen35.expected.json");
  check_cases(from_gguf, f, "converted");
}

// ---- the command ----

struct CliResult {
  int status = -1;
  std::string out;
};

CliResult run_cli(const std::string& args, const std::string& input, const TempDir& dir) {
  write_text(dir / "stdin", input);
  const std::string cmd = std::string(FM_CLI) + " " + args + " <" + (dir / "stdin").string() + " >" +
                          (dir / "stdout").string() + " 2>&1";
  const int raw = std::system(cmd.c_str());
  std::ifstream f(dir / "stdout", std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, ss.str()};
}

TEST(TokenizeCommand, TextToIdsAndBack) {
  TempDir dir;
  const std::string model = (kDir / "tiny-qwen35").string();
  const std::string text = "<|im_start|>user\nHello, world! 你好 🚀<|im_end|>";
  const Tokenizer tok = Tokenizer::load(model);
  std::string expected;
  for (int32_t id : tok.encode(text)) expected += (expected.empty() ? "" : " ") + std::to_string(id);
  CliResult r = run_cli("tokenize -m " + model, text, dir);
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(r.out, expected + "\n");
  r = run_cli("tokenize --text -m " + (kDir / "tiny-qwen35.gguf").string(), text, dir);
  EXPECT_EQ(r.out, expected + "\n");
  r = run_cli("tokenize --ids -m " + model, expected + "\n", dir);
  EXPECT_EQ(r.status, 0) << r.out;
  EXPECT_EQ(r.out, text);
  r = run_cli("tokenize --ids -m " + model, "1 2 x", dir);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("flashmoe: error:"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("'x'"), std::string::npos) << r.out;
  r = run_cli("tokenize --ids -m " + model, "1 999999", dir);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("999999"), std::string::npos) << r.out;
  r = run_cli("tokenize -m " + (dir / "missing").string(), "x", dir);
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.out.find("no such file"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace fm
