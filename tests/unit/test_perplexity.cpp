// Perplexity and KL statistics (src/eval/perplexity.h): the formulas on hand-computed logits, the
// saved log-probs file (round trip, corruption), the windows on the default model, and the errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <tuple>

#include <nlohmann/json.hpp>

#include "eval/perplexity.h"
#include "model/model.h"
#include "model/qwen_moe.h"
#include "ops/cpu/cpu_backend.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace fm {
namespace {

using test::expect_error;
using test::TempDir;

const std::string kModel = std::string(FM_FIXTURES) + "/../../models/default/flashmoe-default.gguf";
const std::string kText = std::string(FM_FIXTURES) + "/eval/persuasion-ch2.txt";
const double kLn2 = std::log(2.0);

// Logits whose softmax is the given distribution (log p; the scorer must be shift-invariant).
std::vector<float> logits_of(std::initializer_list<double> p, float shift = 3.0f) {
  std::vector<float> l;
  for (double v : p) l.push_back(float(std::log(v)) + shift);
  return l;
}

TEST(PerplexityScorer, HandComputedNllAndUncertainty) {
  // p(target) = 1/4 and 1/2: nll = {2 ln2, ln2}; mean 1.5 ln2, PPL = 2^1.5;
  // var = mean(nll^2) - mean^2 = 2.5 ln2^2 - 2.25 ln2^2 = 0.25 ln2^2; error = sqrt(var / (N - 1)) = 0.5 ln2.
  PerplexityScorer s(3, nullptr, nullptr);
  s.add(logits_of({0.25, 0.5, 0.25}).data(), 0, -1);
  s.add(logits_of({0.25, 0.5, 0.25}, -7.0f).data(), 1, -1);
  const PerplexityResult r = s.finish();
  EXPECT_EQ(r.tokens, 2);
  EXPECT_NEAR(r.nll, 1.5 * kLn2, 1e-6);
  EXPECT_NEAR(r.ppl, std::pow(2.0, 1.5), 1e-5);
  EXPECT_NEAR(r.nll_err, 0.5 * kLn2, 1e-6);
  EXPECT_NEAR(r.ppl_err, std::pow(2.0, 1.5) * 0.5 * kLn2, 1e-5);
  EXPECT_FALSE(r.has_base);

  // Uniform logits over 3: PPL is 3 exactly, with no spread.
  PerplexityScorer u(3, nullptr, nullptr);
  for (int i = 0; i < 5; ++i) u.add(std::vector<float>{1.f, 1.f, 1.f}.data(), i % 3, -1);
  EXPECT_NEAR(u.finish().ppl, 3.0, 1e-6);
  EXPECT_EQ(u.finish().ppl_err, 0.0);
}

TEST(PerplexityScorer, HandComputedKlTopAndDeltaP) {
  // base p = (1/2, 1/4, 1/4), this q = (1/4, 1/2, 1/4):
  // KL(p||q) = 1/2 ln(2) + 1/4 ln(1/2) + 0 = ln2 / 4; argmax 0 vs 1 disagree;
  // target 0: dp = q0 - p0 = -1/4.
  BaseLogProbs base;
  base.ctx = 4;  // one window of 4 scores 4 - 1 - 2 = 1 row
  base.vocab = 3;
  base.chunks = 1;
  base.tokens = {0, 0, 0, 0};
  PerplexityScorer make(3, nullptr, &base);
  make.add(logits_of({0.5, 0.25, 0.25}).data(), 0, -1);
  ASSERT_EQ(base.rows(), 1);
  EXPECT_EQ(base.top1[0], 0);
  EXPECT_NEAR(base.nll[0], kLn2, 1e-6);
  EXPECT_NEAR(base.log_prob(0, 1), std::log(0.25), 2.5e-4);  // uint16 step: 16/65535 nats at most

  PerplexityScorer s(3, &base, nullptr);
  s.add(logits_of({0.25, 0.5, 0.25}).data(), 0, 0);
  PerplexityResult r = s.finish();
  ASSERT_TRUE(r.has_base);
  EXPECT_NEAR(r.kl_mean, kLn2 / 4, 5e-4);
  EXPECT_NEAR(r.kl_max, kLn2 / 4, 5e-4);
  EXPECT_EQ(r.top1_agree, 0.0);
  EXPECT_NEAR(r.dp_max, 0.25, 1e-6);
  EXPECT_NEAR(r.base_ppl, 2.0, 1e-5);
  EXPECT_NEAR(r.ln_ppl_ratio, std::log(4.0) - kLn2, 1e-6);

  // The same distribution as the base: KL 0 (up to the quantisation), same top.
  PerplexityScorer same(3, &base, nullptr);
  same.add(logits_of({0.5, 0.25, 0.25}, -20.0f).data(), 0, 0);
  r = same.finish();
  EXPECT_NEAR(r.kl_mean, 0.0, 1e-6);
  EXPECT_EQ(r.top1_agree, 1.0);
  EXPECT_NEAR(r.dp_max, 0.0, 1e-6);
}

TEST(PerplexityScorer, KlIgnoresBaseEntriesBelowFloorAsLlamaCpp) {
  // A base whose second entry is e^-30: quantised to the floor (max - 16) and dropped from the sum,
  // as llama.cpp does; the KL is then that of the remaining entries.
  BaseLogProbs base{.ctx = 4, .vocab = 2, .chunks = 1};
  base.tokens = {0, 0, 0, 0};
  PerplexityScorer make(2, nullptr, &base);
  make.add(std::vector<float>{0.0f, -30.0f}.data(), 0, -1);
  EXPECT_NEAR(base.log_prob(0, 1), -16.0, 1e-3);
  PerplexityScorer s(2, &base, nullptr);
  s.add(std::vector<float>{0.0f, 0.0f}.data(), 0, 0);  // q = (1/2, 1/2): KL over entry 0 = ln 2
  EXPECT_NEAR(s.finish().kl_mean, kLn2, 1e-4);
}

TEST(PerplexityScorer, PercentilesAndUncertaintyFollowLlamaCpp) {
  // 20 rows with KL i * c, i = 0..19: median (9c + 10c) / 2, max 19c, p99 = 18.81c (interpolated).
  const int V = 2;
  BaseLogProbs base{.ctx = 42, .vocab = V, .chunks = 1};  // 42 - 1 - 21 = 20 rows
  base.tokens.assign(42, 0);
  PerplexityScorer make(V, nullptr, &base);
  for (int i = 0; i < 20; ++i) make.add(std::vector<float>{0.0f, 0.0f}.data(), 0, -1);  // p = (1/2, 1/2)
  PerplexityScorer s(V, &base, nullptr);
  std::vector<double> kl;
  for (int i = 0; i < 20; ++i) {
    const double q0 = 0.5 + 0.02 * i;  // KL = 1/2 ln(1/(2 q0)) + 1/2 ln(1/(2 (1 - q0)))
    s.add(std::vector<float>{float(std::log(q0)), float(std::log(1 - q0))}.data(), 0, i);
    kl.push_back(0.5 * std::log(0.5 / q0) + 0.5 * std::log(0.5 / (1 - q0)));
  }
  const PerplexityResult r = s.finish();
  double mean = 0, mean2 = 0;
  for (double v : kl) mean += v / 20, mean2 += v * v / 20;
  EXPECT_NEAR(r.kl_mean, mean, 1e-4);
  EXPECT_NEAR(r.kl_err, std::sqrt((mean2 - mean * mean) / 19), 1e-4);
  EXPECT_NEAR(r.kl_max, kl[19], 1e-4);
  EXPECT_NEAR(r.kl_median, 0.5 * (kl[9] + kl[10]), 1e-4);
  EXPECT_NEAR(r.kl_p99, kl[18] + 0.81 * (kl[19] - kl[18]), 1e-4);
  EXPECT_EQ(r.top1_agree, 1.0);  // ties and q0 >= 1/2: argmax 0 everywhere
}

BaseLogProbs small_base() {
  BaseLogProbs b{.ctx = 6, .vocab = 5, .chunks = 2, .bos = 4, .text_hash = 0x1234};
  b.tokens = {4, 1, 2, 3, 0, 1, 2, 2, 1, 0, 3, 3};
  PerplexityScorer make(5, nullptr, &b);
  for (int r = 0; r < 4; ++r)  // 2 rows per window
    make.add(std::vector<float>{0.1f * r, -1.f, 2.f - r, 0.5f, -40.f}.data(), r % 5, -1);
  return b;
}

TEST(BaseLogProbsFile, RoundTrip) {
  TempDir dir;
  const BaseLogProbs b = small_base();
  b.save(dir / "base.fmlp");
  const BaseLogProbs c = BaseLogProbs::load(dir / "base.fmlp");
  EXPECT_EQ(c.ctx, 6);
  EXPECT_EQ(c.vocab, 5);
  EXPECT_EQ(c.chunks, 2);
  EXPECT_EQ(c.bos, 4);
  EXPECT_EQ(c.text_hash, 0x1234u);
  EXPECT_EQ(c.tokens, b.tokens);
  EXPECT_EQ(c.q, b.q);
  EXPECT_EQ(c.row_scale, b.row_scale);
  EXPECT_EQ(c.row_min, b.row_min);
  EXPECT_EQ(c.nll, b.nll);
  EXPECT_EQ(c.top1, b.top1);
  // Header 64 + tokens 12*4 + 4 rows * (16 + 5*2).
  EXPECT_EQ(std::filesystem::file_size(dir / "base.fmlp"), 64u + 48u + 4u * 26u);
  // No temporary left beside it.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path), {}), 1);
}

TEST(BaseLogProbsFile, CorruptionIsAClearError) {
  TempDir dir;
  const auto path = dir / "base.fmlp";
  small_base().save(path);
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto write = [&](const std::string& b) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(b.data(), std::streamsize(b.size()));
  };
  std::string flipped = bytes;
  flipped[bytes.size() - 3] ^= 0x40;
  write(flipped);
  expect_error([&] { BaseLogProbs::load(path); }, {"checksum", "corrupt"}, path.string());
  write(bytes.substr(0, bytes.size() - 1));
  expect_error([&] { BaseLogProbs::load(path); }, {"truncated"}, path.string());
  write(bytes.substr(0, 10));
  expect_error([&] { BaseLogProbs::load(path); }, {"too short"}, path.string());
  std::string magic = bytes;
  magic[0] = 'X';
  write(magic);
  expect_error([&] { BaseLogProbs::load(path); }, {"not a flashmoe log-probs file"}, path.string());
  std::string version = bytes;
  version[8] = 9;
  write(version);
  expect_error([&] { BaseLogProbs::load(path); }, {"version 9"}, path.string());
  expect_error([&] { BaseLogProbs::load(dir / "missing"); }, {"cannot open"});
}

// --- on the default model ---------------------------------------------------------------------------

struct Fixture {
  std::unique_ptr<Model> model = Model::load(kModel);
  CpuBackend backend{2};
  Tokenizer tokenizer = Tokenizer::load(kModel);
  std::string text = [] {
    std::ifstream in(kText, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  std::vector<int32_t> tokens = eval_tokens(tokenizer, text);
  Transformer make(int max_context, int top_k = 0, int batch = 128) {
    return Transformer(*model, backend,
                       {.max_context = max_context, .max_batch = batch, .experts_per_tok = top_k});
  }
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

TEST(Perplexity, WindowsScoreTheSecondHalfAsLlamaCpp) {
  Fixture& f = fixture();
  ASSERT_GT(f.tokens.size(), 200u);
  EXPECT_EQ(eval_bos(f.tokenizer), -1);  // Qwen-style vocabularies add no BOS
  const int ctx = 32;
  Transformer tf = f.make(ctx, 0, 7);  // batches of 7: windows cross forward calls
  const PerplexityResult r = evaluate_perplexity(tf, f.tokens, {.ctx = ctx, .chunks = 3});
  EXPECT_EQ(r.chunks, 3);
  EXPECT_EQ(r.tokens, 3 * (ctx - 1 - ctx / 2));
  ASSERT_EQ(r.chunk_ppl.size(), 3u);

  // The same by hand: whole windows in one forward call, nll of positions 16..30 predicting 17..31.
  Transformer ref = f.make(ctx);
  SequenceState st = ref.new_sequence();
  const int V = f.model->config.vocab_size;
  std::vector<float> logits(size_t(ctx) * size_t(V));
  double sum = 0;
  int n = 0;
  for (int c = 0; c < 3; ++c) {
    st.reset();
    ref.forward(st, std::span<const int32_t>(f.tokens.data() + c * ctx, size_t(ctx)), logits.data(), true);
    for (int p = ctx / 2; p < ctx - 1; ++p) {
      const float* l = logits.data() + size_t(p) * size_t(V);
      double mx = l[0], z = 0;
      for (int v = 0; v < V; ++v) mx = std::max(mx, double(l[v]));
      for (int v = 0; v < V; ++v) z += std::exp(double(l[v]) - mx);
      sum += mx + std::log(z) - l[f.tokens[size_t(c * ctx + p + 1)]];
      ++n;
    }
  }
  EXPECT_EQ(n, r.tokens);
  EXPECT_NEAR(r.nll, sum / n, 1e-4);
  EXPECT_NEAR(r.ppl, std::exp(sum / n), 1e-3 * r.ppl);
  // A trained model does far better than chance on held-out prose.
  EXPECT_LT(r.ppl, 200.0);
  EXPECT_GT(r.ppl, 2.0);
}

TEST(Perplexity, KlAgainstItselfIsZeroAndFewerExpertsCostSome) {
  Fixture& f = fixture();
  const int ctx = 32;
  const PerplexityOptions opt{.ctx = ctx, .chunks = 2, .text_hash = text_hash(f.text)};
  Transformer tf = f.make(ctx);
  BaseLogProbs base;
  const PerplexityResult ref = evaluate_perplexity(tf, f.tokens, opt, nullptr, &base);
  EXPECT_EQ(base.rows(), 2 * 15);
  TempDir dir;
  base.save(dir / "base.fmlp");
  const BaseLogProbs loaded = BaseLogProbs::load(dir / "base.fmlp");

  const PerplexityResult same = evaluate_perplexity(tf, f.tokens, opt, &loaded);
  EXPECT_NEAR(same.ppl, ref.ppl, 1e-9 * ref.ppl);
  EXPECT_NEAR(same.base_ppl, ref.ppl, 1e-5 * ref.ppl);
  EXPECT_LT(same.kl_mean, 1e-5);
  EXPECT_EQ(same.top1_agree, 1.0);

  Transformer top1 = f.make(ctx, 1);
  const PerplexityResult cut = evaluate_perplexity(top1, f.tokens, opt, &loaded);
  EXPECT_GT(cut.kl_mean, 1e-3);
  EXPECT_GE(cut.kl_max, cut.kl_mean);
  EXPECT_LT(cut.top1_agree, 1.0);
  EXPECT_NEAR(cut.base_ppl, ref.ppl, 1e-5 * ref.ppl);
}

TEST(Perplexity, BadInputIsAClearError) {
  Fixture& f = fixture();
  Transformer tf = f.make(64);
  expect_error([&] { eval_tokens(f.tokenizer, ""); }, {"empty"});
  expect_error([&] { evaluate_perplexity(tf, {}, {.ctx = 32}); }, {"no tokens"});
  const std::vector<int32_t> few(f.tokens.begin(), f.tokens.begin() + 63);
  expect_error([&] { evaluate_perplexity(tf, few, {.ctx = 32}); }, {"at least 64 tokens", "only 63"});
  expect_error([&] { evaluate_perplexity(tf, f.tokens, {.ctx = 128}); }, {"--ctx 128", "exceeds"});
  expect_error([&] { evaluate_perplexity(tf, f.tokens, {.ctx = 2}); }, {"too small"});

  // A base from another ctx, text or tokens.
  BaseLogProbs base;
  evaluate_perplexity(tf, f.tokens, {.ctx = 16, .chunks = 2, .text_hash = 7}, nullptr, &base);
  expect_error([&] { evaluate_perplexity(tf, f.tokens, {.ctx = 32, .chunks = 1}, &base); },
               {"--ctx 16", "--ctx 32"});
  expect_error([&] { evaluate_perplexity(tf, f.tokens, {.ctx = 16, .chunks = 2, .text_hash = 8}, &base); },
               {"another text"});
  expect_error([&] { evaluate_perplexity(tf, f.tokens, {.ctx = 16, .chunks = 3}, &base); },
               {"hold 2 windows", "needs 3"});
  std::vector<int32_t> other = f.tokens;
  other[5] = (other[5] + 1) % 100;
  expect_error([&] { evaluate_perplexity(tf, other, {.ctx = 16, .chunks = 2}, &base); },
               {"other tokens", "token 5"});
  expect_error([&] { evaluate_perplexity(tf, f.tokens, {.ctx = 16, .chunks = 2, .bos = 3}, &base); },
               {"BOS"});
}

TEST(PerplexityCli, ReportsAndComparesWithASavedBase) {
  TempDir dir;
  const std::string cli = FM_CLI;
  const std::string base = (dir / "base.fmlp").string();
  auto run = [&](const std::string& args, const std::string& ctx = "32", const std::string& text = kText) {
    const std::string out = (dir / "out.txt").string();
    const int rc = std::system(fmt::format("{} perplexity -m {} -f {} --ctx {} --chunks 2 -t 2 {} > {} 2>&1",
                                           cli, kModel, text, ctx, args, out)
                                   .c_str());
    std::ifstream in(out);
    return std::make_pair(rc, std::string(std::istreambuf_iterator<char>(in), {}));
  };
  auto [rc, out] = run("--save-logits " + base);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("Final estimate: PPL = "), std::string::npos) << out;
  EXPECT_NE(out.find("[1]"), std::string::npos) << out;
  ASSERT_TRUE(std::filesystem::exists(base));
  std::tie(rc, out) = run("--moe-top-k 2 --kl-base " + base);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("Mean    KLD:"), std::string::npos) << out;
  EXPECT_NE(out.find("Same top p:"), std::string::npos) << out;
  std::tie(rc, out) = run("--kl-base " + base, "16");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("--ctx 32, this run uses --ctx 16"), std::string::npos) << out;
  std::tie(rc, out) = run("", "32", "/nonexistent/text.txt");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("cannot open"), std::string::npos) << out;

  // Streamed experts, token by token: the same perplexity to the bit, plus what the expert cache did.
  auto json_of = [&](const std::string& args) {
    const auto [code, text] = run("--json " + args);
    EXPECT_EQ(code, 0) << text;
    return nlohmann::json::parse(text.substr(text.find('{')));
  };
  const nlohmann::json mapped = json_of("--batch 1");
  const nlohmann::json streamed = json_of("--batch 1 --stream --expert-cache 6M --predict none");
  EXPECT_EQ(mapped["ppl"].get<double>(), streamed["ppl"].get<double>());
  EXPECT_FALSE(mapped.contains("cache_hit_rate"));
  ASSERT_TRUE(streamed.contains("cache_hit_rate")) << streamed.dump();
  EXPECT_GT(streamed["cache_hit_rate"].get<double>(), 0.0);
  EXPECT_LT(streamed["cache_hit_rate"].get<double>(), 1.0);
  EXPECT_GT(streamed["disk_bytes_read_per_token"].get<double>(), 0.0);
  EXPECT_GT(streamed["cache_misses"].get<uint64_t>(), 0u);
}

}  // namespace
}  // namespace fm
