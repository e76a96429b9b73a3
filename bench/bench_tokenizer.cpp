// Tokenizer encode speed on one core, in bytes of text per second, with the real Qwen3.5 vocabulary
// (tests/fixtures/tokenizer/qwen3_6.tiktoken, 248,077 tokens):
//   BM_encode_prose  ~4 MB of English prose: the licence texts every Debian system carries in
//                    /usr/share/common-licenses (GPL, Apache, MPL, ...), repeated;
//   BM_encode_mixed  ~4 MB of the tokenizer fixture corpus: prose, code, CJK, emoji, combining marks,
//                    whitespace runs, numbers, special tokens, long words;
//   BM_encode_unseen the prose with every word made new (a digit suffix rotates per pass), so the word
//                    cache never hits: the regex + BPE merge speed.
#include <benchmark/benchmark.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "tokenizer/tokenizer.h"

namespace {

namespace fs = std::filesystem;
const fs::path kDir = fs::path(FM_FIXTURES) / "tokenizer";
constexpr size_t kTextBytes = 4 << 20;

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

const fm::Tokenizer& tokenizer() {
  static const fm::Tokenizer tok = [] {
    const nlohmann::json f = nlohmann::json::parse(slurp(kDir / "qwen35.json"));
    fm::TiktokenSpec spec;
    spec.pattern = f.at("pattern");
    spec.nfc = f.at("nfc");
    for (const auto& s : f.at("special_tokens"))
      spec.special_tokens.emplace_back(s[0].get<int32_t>(), s[1].get<std::string>());
    return fm::Tokenizer::from_tiktoken(kDir / f.at("rank_file").get<std::string>(), spec);
  }();
  return tok;
}

std::string repeat_to_size(const std::string& unit) {
  std::string out;
  if (unit.empty()) return out;
  while (out.size() < kTextBytes) out += unit;
  return out;
}

std::string prose() {
  std::string unit;
  for (const auto& e : fs::directory_iterator("/usr/share/common-licenses"))
    if (e.is_regular_file()) unit += slurp(e.path()) + "\n";
  return unit;
}

std::string mixed() {
  const nlohmann::json f = nlohmann::json::parse(slurp(kDir / "qwen35.json"));
  std::string unit;
  for (const auto& c : f.at("cases"))
    if (c.contains("text")) unit += c["text"].get<std::string>() + "\n";
  return unit;
}

void run(benchmark::State& state, const std::string& text) {
  const fm::Tokenizer& tok = tokenizer();
  size_t tokens = 0;
  for (auto _ : state) {
    const std::vector<int32_t> ids = tok.encode(text);
    tokens = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(text.size()));
  state.counters["bytes/token"] = double(text.size()) / double(tokens);
  state.counters["MB"] = double(text.size()) / 1e6;
}

void BM_encode_prose(benchmark::State& state) {
  static const std::string text = repeat_to_size(prose());
  run(state, text);
}

void BM_encode_mixed(benchmark::State& state) {
  static const std::string text = repeat_to_size(mixed());
  run(state, text);
}

void BM_encode_unseen(benchmark::State& state) {
  const fm::Tokenizer& tok = tokenizer();
  static const std::string base = prose();
  size_t pass = 0, bytes = 0;
  for (auto _ : state) {
    state.PauseTiming();
    // Each pass appends a different number to every word, so no word was seen before.
    std::string text;
    text.reserve(base.size() * 2);
    const std::string tag = std::to_string(1000003 * ++pass);
    for (size_t i = 0; i < base.size(); ++i) {
      text.push_back(base[i]);
      if (base[i] >= 'a' && base[i] <= 'z' && (i + 1 == base.size() || base[i + 1] == ' ')) text += "q" + tag;
    }
    state.ResumeTiming();
    const std::vector<int32_t> ids = tok.encode(text);
    benchmark::DoNotOptimize(ids.data());
    bytes += text.size();
  }
  state.SetBytesProcessed(int64_t(bytes));
}

}  // namespace

BENCHMARK(BM_encode_prose)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_encode_mixed)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_encode_unseen)->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
