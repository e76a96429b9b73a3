// The forward pass against transformers: every fixture model's prompt logits, cached greedy
// decoding ids and per-step logits. Tolerance: max |logit difference| <= 1e-3 (the reference is
// float32 on the same stored weights; our sums are float32 in another order).
#include <gtest/gtest.h>

#include "fixture_util.h"
#include "model/model.h"
#include "model/qwen_moe.h"
#include "ops/cpu/cpu_backend.h"
#include "ops/cpu/kernels.h"
#include "runtime/generate.h"
#include "util/error.h"

namespace fm {
namespace {

constexpr double kTolerance = 1e-3;

struct Case {
  const char* model;
  int threads;
  int batch;  // prompt tokens per forward call: < prompt length exercises chunked prefill
  bool scalar;
};

class FixtureTest : public ::testing::TestWithParam<Case> {};

TEST_P(FixtureTest, MatchesTransformers) {
  const Case c = GetParam();
  cpu::set_force_scalar(c.scalar);
  const test::Reference ref = test::load_reference(c.model);
  const auto model = Model::load(ref.dir);
  const int64_t V = model->config.vocab_size;
  ASSERT_EQ(ref.logits.shape.size(), 2u);
  ASSERT_EQ(ref.logits.shape[1], V);
  const int64_t n_prompt = int64_t(ref.prompt.size());
  ASSERT_GE(n_prompt, 200);

  CpuBackend backend(c.threads);
  Transformer transformer(*model, backend, TransformerOptions{.max_context = 512, .max_batch = c.batch});
  SequenceState state = transformer.new_sequence();
  GenerateOptions opt{.max_new_tokens = int(ref.greedy.size()), .sampling = {}, .stop_ids = {}, .keep_logits = true};
  const GenerateResult r = generate(transformer, state, ref.prompt, opt);
  cpu::set_force_scalar(false);

  EXPECT_EQ(r.tokens, ref.greedy);
  ASSERT_EQ(r.logits_rows, ref.logits.shape[0]);
  double worst_prompt = 0.0, worst_decode = 0.0;
  for (int64_t row = 0; row < r.logits_rows; ++row) {
    const double d = test::max_abs_diff(r.logits.data() + row * V, ref.logits.data.data() + row * V, size_t(V));
    (row < n_prompt ? worst_prompt : worst_decode) = std::max(row < n_prompt ? worst_prompt : worst_decode, d);
  }
  EXPECT_LE(worst_prompt, kTolerance) << "prompt logits";
  EXPECT_LE(worst_decode, kTolerance) << "decoding logits";
  RecordProperty("max_prompt_diff", std::to_string(worst_prompt));
  RecordProperty("max_decode_diff", std::to_string(worst_decode));
  std::printf("%s: max |diff| prompt %.2e decode %.2e\n", c.model, worst_prompt, worst_decode);
}

std::vector<Case> cases() {
  std::vector<Case> v;
  for (const char* m : test::kFixtureModels) {
    v.push_back({m, 2, 128, false});  // chunked prefill: 230 prompt tokens in 128 + 102
    v.push_back({m, 1, 512, true});   // one chunk, scalar kernels, one thread
  }
  v.push_back({"qwen35moe-vl-bf16", 3, 1, false});  // token-by-token prefill, odd thread count
  return v;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureTest, ::testing::ValuesIn(cases()), [](const auto& info) {
  std::string name = std::string(info.param.model) + "_t" + std::to_string(info.param.threads) + "_b" +
                     std::to_string(info.param.batch) + (info.param.scalar ? "_scalar" : "");
  for (char& ch : name)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return name;
});

// Two sequences on one transformer do not disturb each other, and reset() starts over.
TEST(Sequences, IndependentStates) {
  const test::Reference ref = test::load_reference("qwen35moe-vl-bf16");
  const auto model = Model::load(ref.dir);
  const int64_t V = model->config.vocab_size;
  CpuBackend backend(2);
  Transformer transformer(*model, backend, TransformerOptions{.max_context = 512, .max_batch = 64});
  SequenceState a = transformer.new_sequence(), b = transformer.new_sequence();
  std::vector<float> la(static_cast<size_t>(V)), lb(static_cast<size_t>(V));
  const std::span<const int32_t> prompt(ref.prompt);
  transformer.forward(a, prompt.first(100), la.data(), false);
  transformer.forward(b, prompt.first(30), lb.data(), false);  // interleaved with a
  transformer.forward(a, prompt.subspan(100), la.data(), false);
  const float* want = ref.logits.data.data() + (int64_t(prompt.size()) - 1) * V;
  EXPECT_LE(test::max_abs_diff(la.data(), want, size_t(V)), kTolerance);
  EXPECT_LE(test::max_abs_diff(lb.data(), ref.logits.data.data() + 29 * V, size_t(V)), kTolerance);
  a.reset();
  transformer.forward(a, prompt.first(30), la.data(), false);
  EXPECT_EQ(la, lb);
}

TEST(Sequences, RejectsBadTokensAndOverflowWithoutChangingState) {
  const test::Reference ref = test::load_reference("qwen3moe-f16");
  const auto model = Model::load(ref.dir);
  CpuBackend backend(1);
  Transformer transformer(*model, backend, TransformerOptions{.max_context = 8, .max_batch = 4});
  SequenceState s = transformer.new_sequence();
  std::vector<float> logits(size_t(model->config.vocab_size));
  const std::vector<int32_t> bad = {1, 2, 512};
  EXPECT_THROW(transformer.forward(s, bad, logits.data(), false), Error);
  EXPECT_EQ(s.n_past, 0);
  const std::vector<int32_t> long_prompt(9, 1);
  EXPECT_THROW(transformer.forward(s, long_prompt, logits.data(), false), Error);
  EXPECT_EQ(s.n_past, 0);
}

}  // namespace
}  // namespace fm

namespace fm {
namespace {

// Layer by layer: the residual stream after the embedding and after each decoder layer against
// transformers' hidden states (the last one transformers reports is after the final norm, so it is
// left out). Points at the layer where a mismatch starts.
TEST(LayerByLayer, ResidualStreamMatches) {
  for (const char* name : {"qwen35moe-text-f32", "qwen3moe-f16"}) {
    const test::Reference ref = test::load_reference(name);
    const NpyArray hidden = read_npy(ref.dir + "/hidden.npy");
    const auto model = Model::load(ref.dir);
    const int H = model->config.hidden_size, L = model->config.num_layers;
    ASSERT_EQ(hidden.shape, (std::vector<int64_t>{L + 1, int64_t(ref.prompt.size()), H}));
    CpuBackend backend(2);
    Transformer transformer(*model, backend, TransformerOptions{.max_context = 512, .max_batch = 512});
    std::vector<double> worst(size_t(L) + 1, 0.0);
    transformer.layer_observer = [&](int layer, const float* x, int n) {
      if (layer + 1 >= L + 1 || layer + 1 == L) return;  // transformers' last entry is post-norm
      const float* want = hidden.data.data() + int64_t(layer + 1) * n * H;
      worst[size_t(layer + 1)] = test::max_abs_diff(x, want, size_t(n) * H);
    };
    SequenceState state = transformer.new_sequence();
    std::vector<float> logits(size_t(model->config.vocab_size));
    transformer.forward(state, ref.prompt, logits.data(), false);
    for (int l = 0; l < L; ++l) {
      EXPECT_LE(worst[size_t(l)], 1e-4) << name << " after " << (l == 0 ? "embedding" : "layer " + std::to_string(l - 1));
      std::printf("%s %s: max |diff| %.2e\n", name, l == 0 ? "embedding" : ("layer " + std::to_string(l - 1)).c_str(),
                  worst[size_t(l)]);
    }
  }
}

}  // namespace
}  // namespace fm
