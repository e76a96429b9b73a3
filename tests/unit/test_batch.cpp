// Batched decoding (Transformer::decode_batch): one step of several independent sequences in one
// pass must give each sequence the logits that its own one-token forward() gives.
//
// Exactness. Each token is one row of every matmul, norm and elementwise op, and the mixer runs
// per sequence with the single-token code. The kernels sum each (row, token) in the same order
// whatever the tile: the quantized kernels quantize activations per row and sum integer blocks the
// same way for any tile; the float kernels (scalar and AVX2, ops/cpu/matmul_avx2.cpp) keep the same
// four partial sums per row and token for tiles of 1 to 4 tokens. So batched logits equal each
// sequence's own to the bit, every model, every kernel set. (Before the AVX2 float kernel used one
// blocking for all tile widths they differed by up to 0.08 on Q8_0 models, whose F32 router and
// DeltaNet a/b matrices moved 8-bit activation roundings.)
// Streamed experts vs resident: bit-identical (the same arithmetic, summed in ascending expert
// order). Against transformers: decode_batch reproduces the fixtures' reference decoding logits
// within 1e-3, the tolerance of test_model_fixtures.cpp.
#include <gtest/gtest.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>

#include "convert/convert.h"
#include "fixture_util.h"
#include "model/model.h"
#include "model/qwen_moe.h"
#include "ops/cpu/cpu_backend.h"
#include "ops/cpu/kernels.h"
#include "test_util.h"
#include "util/error.h"

namespace fm {
namespace {

namespace fs = std::filesystem;
using test::expect_error;

const std::string kDefaultModel = std::string(FM_FIXTURES) + "/../../models/default/flashmoe-default.gguf";

// Sequences with their prompts, the step at which each joins the batch, and the tokens each decodes.
struct Plan {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int> join;                     // first step of sequence i
  std::vector<std::vector<int32_t>> tokens;  // decode input of sequence i at its own step j
  int steps = 0;
  bool active(size_t i, int step) const { return step >= join[i] && step - join[i] < int(tokens[i].size()); }
};

// Prompts of different lengths cut from `ids`, joining at different steps; decode inputs from `ids`
// too (any valid ids: both runs feed the same ones).
Plan make_plan(const std::vector<int32_t>& ids, int n_seq, int steps, int max_prompt = 40) {
  Plan p;
  p.steps = steps;
  for (int i = 0; i < n_seq; ++i) {
    const size_t len = size_t(1 + (i * 37 + 11) % max_prompt);
    const size_t start = size_t(i * 13) % (ids.size() - len);
    p.prompts.emplace_back(ids.begin() + int64_t(start), ids.begin() + int64_t(start + len));
    p.join.push_back(i % 3 == 2 ? 2 : 0);  // some join later: the batch changes size and mix
    std::vector<int32_t> t;
    for (int j = 0; j < steps - p.join.back(); ++j) t.push_back(ids[size_t(i * 7 + j * 5) % ids.size()]);
    p.tokens.push_back(t);
  }
  return p;
}

// Logits [sequence][step][vocab] of every decode step, each sequence alone with forward().
std::vector<std::vector<float>> run_alone(Transformer& t, const Plan& p) {
  const int64_t V = t.config().vocab_size;
  std::vector<std::vector<float>> out(p.prompts.size());
  std::vector<float> logits(static_cast<size_t>(V));
  for (size_t i = 0; i < p.prompts.size(); ++i) {
    SequenceState s = t.new_sequence();
    t.forward(s, p.prompts[i], logits.data(), false);
    for (const int32_t token : p.tokens[i]) {
      t.forward(s, std::span<const int32_t>(&token, 1), logits.data(), false);
      out[i].insert(out[i].end(), logits.begin(), logits.end());
    }
  }
  return out;
}

// The same steps with decode_batch: at each step, every active sequence in one call.
std::vector<std::vector<float>> run_batched(Transformer& t, const Plan& p) {
  const int64_t V = t.config().vocab_size;
  const size_t n = p.prompts.size();
  std::vector<SequenceState> states;
  std::vector<float> logits(n * size_t(V));
  for (size_t i = 0; i < n; ++i) {
    states.push_back(t.new_sequence());
    t.forward(states.back(), p.prompts[i], logits.data(), false);
  }
  std::vector<std::vector<float>> out(n);
  for (int step = 0; step < p.steps; ++step) {
    std::vector<SequenceState*> batch;
    std::vector<int32_t> tokens;
    std::vector<size_t> who;
    for (size_t i = 0; i < n; ++i)
      if (p.active(i, step)) {
        batch.push_back(&states[i]);
        tokens.push_back(p.tokens[i][size_t(step - p.join[i])]);
        who.push_back(i);
      }
    std::fill(logits.begin(), logits.end(), std::numeric_limits<float>::quiet_NaN());
    t.decode_batch(batch, tokens, logits.data());
    for (size_t b = 0; b < who.size(); ++b) {
      EXPECT_EQ(states[who[b]].n_past, int(p.prompts[who[b]].size()) + step - p.join[who[b]] + 1);
      out[who[b]].insert(out[who[b]].end(), logits.begin() + int64_t(b) * V,
                         logits.begin() + int64_t(b + 1) * V);
    }
  }
  return out;
}

// Largest and mean |difference| over all sequences and steps, and the steps whose greedy token
// differs.
struct Diff {
  double max = 0.0, mean = 0.0;
  int argmax_differs = 0;
};
Diff compare(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b, int64_t V) {
  EXPECT_EQ(a.size(), b.size());
  Diff d;
  size_t count = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].size(), b[i].size());
    if (a[i].size() != b[i].size()) continue;
    for (size_t j = 0; j < a[i].size(); ++j) {
      const double e = std::abs(double(a[i][j]) - double(b[i][j]));
      d.max = std::max(d.max, std::isnan(e) ? INFINITY : e);
      d.mean += e;
    }
    count += a[i].size();
    for (size_t r = 0; r < a[i].size(); r += size_t(V))
      d.argmax_differs +=
          std::max_element(a[i].begin() + int64_t(r), a[i].begin() + int64_t(r) + V) - a[i].begin() !=
          std::max_element(b[i].begin() + int64_t(r), b[i].begin() + int64_t(r) + V) - b[i].begin();
  }
  if (count) d.mean /= double(count);
  return d;
}

TransformerOptions options(int max_batch = 16) {
  return TransformerOptions{.max_context = 256, .max_batch = max_batch};
}

TransformerOptions streaming(const Model& model, int slots, int max_batch = 16) {
  TransformerOptions o = options(max_batch);
  o.stream_experts = true;
  o.stream.io = io::IoOptions{.threads = 2, .split = 1, .direct = false, .backend = io::Backend::Pread};
  const FfnWeights& e = model.weights.layers[0].moe.experts[0];
  o.stream.cache_bytes =
      (e.gate.nbytes() + e.up.nbytes() + e.down.nbytes() + 6 * io::kAlign) * uint64_t(slots);
  return o;
}

// Every model: batched vs alone, vector and scalar kernels: bit-identical.
void check_model(const Model& model, const std::vector<int32_t>& ids, const std::string& name) {
  CpuBackend backend(2);
  const int64_t V = model.config.vocab_size;
  const Plan plan = make_plan(ids, 6, 5);
  for (const bool scalar : {false, true}) {
    cpu::set_force_scalar(scalar);
    Transformer alone(model, backend, options()), batched(model, backend, options());
    const Diff diff = compare(run_alone(alone, plan), run_batched(batched, plan), V);
    cpu::set_force_scalar(false);
    std::printf("%s %s: |batched - alone| max %.3g mean %.3g, greedy token differs at %d steps\n",
                name.c_str(), scalar ? "scalar" : cpu::matmul_isa(), diff.max, diff.mean,
                diff.argmax_differs);
    EXPECT_EQ(diff.max, 0.0) << name << (scalar ? " scalar" : " vector kernels");
    EXPECT_EQ(diff.argmax_differs, 0) << name;
  }
}

class BatchFixture : public ::testing::TestWithParam<const char*> {};

TEST_P(BatchFixture, SameLogitsAsOneSequenceAtATime) {
  const test::Reference ref = test::load_reference(GetParam());
  const auto model = Model::load(ref.dir);
  check_model(*model, ref.prompt, GetParam());
}

// The Q8_0 GGUF of the fixture: quantized matmuls (the same bits per row for any tile) with the F32
// matrices a GGUF keeps.
TEST_P(BatchFixture, SameLogitsAsOneSequenceAtATimeQ8) {
  const test::Reference ref = test::load_reference(GetParam());
  test::TempDir tmp;
  const fs::path gguf = tmp / "q8.gguf";
  convert_to_gguf(ref.dir, gguf,
                  ConvertOptions{.type = DType::Q8_0, .expert_type = {}, .rules = {}, .threads = 2});
  const auto model = Model::load(gguf);
  check_model(*model, ref.prompt, std::string(GetParam()) + " Q8_0");
}

// A sequence decoded in a batch with others reproduces transformers' decoding logits.
TEST_P(BatchFixture, MatchesTransformersInABatch) {
  const test::Reference ref = test::load_reference(GetParam());
  const auto model = Model::load(ref.dir);
  const int64_t V = model->config.vocab_size;
  CpuBackend backend(2);
  Transformer t(*model, backend, TransformerOptions{.max_context = 512, .max_batch = 8});
  std::vector<SequenceState> states;
  std::vector<float> logits(4 * size_t(V));
  for (int i = 0; i < 4; ++i) {
    states.push_back(t.new_sequence());
    // Sequence 0 is the reference prompt; the others are shorter pieces of it.
    const std::span<const int32_t> prompt =
        i == 0 ? std::span<const int32_t>(ref.prompt)
               : std::span<const int32_t>(ref.prompt).subspan(size_t(i * 20), size_t(i * 9));
    t.forward(states.back(), prompt, logits.data(), false);
  }
  const std::vector<SequenceState*> batch = {&states[0], &states[1], &states[2], &states[3]};
  const int64_t n_prompt = int64_t(ref.prompt.size());
  double worst = 0.0;
  for (size_t j = 0; j + 1 < ref.greedy.size(); ++j) {
    const std::vector<int32_t> tokens = {ref.greedy[j], ref.prompt[j], ref.prompt[j + 1], ref.prompt[j + 2]};
    t.decode_batch(batch, tokens, logits.data());
    worst = std::max(
        worst,
        test::max_abs_diff(logits.data(), ref.logits.data.data() + (n_prompt + int64_t(j)) * V, size_t(V)));
  }
  EXPECT_LE(worst, 1e-3);
  std::printf("%s: decode_batch vs transformers max |diff| %.3g\n", GetParam(), worst);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, BatchFixture, ::testing::Values("qwen35moe-vl-bf16", "qwen3moe-f16"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

std::vector<int32_t> default_model_ids() {
  std::ifstream f(std::string(FM_FIXTURES) + "/default_model/ref.json");
  return nlohmann::json::parse(f).at("ref_ids").get<std::vector<int32_t>>();
}

TEST(BatchDefaultModel, SameLogitsAsOneSequenceAtATime) {
  const auto model = Model::load(kDefaultModel);
  check_model(*model, default_model_ids(), "default Q8_0");
}

// A batch of one runs every matmul on one row, as forward() does: bit-identical, any kernels.
TEST(BatchDefaultModel, BatchOfOneIsForward) {
  const auto model = Model::load(kDefaultModel);
  const Plan plan = make_plan(default_model_ids(), 1, 6);
  CpuBackend backend(2);
  Transformer alone(*model, backend, options()), batched(*model, backend, options());
  EXPECT_EQ(compare(run_alone(alone, plan), run_batched(batched, plan), model->config.vocab_size).max, 0.0);
}

// Streamed experts (a cache smaller than a batch's union of experts, and one that holds them all)
// give the resident batched logits to the bit; the predictors see the batch's experts.
TEST(BatchStream, SameLogitsAsResident) {
  const auto model = Model::load(kDefaultModel);
  const Plan plan = make_plan(default_model_ids(), 8, 4, 12);
  CpuBackend backend(2);
  Transformer resident(*model, backend, options());
  const auto expected = run_batched(resident, plan);
  const int k = model->config.num_experts_per_tok;
  for (const int slots : {k + 1, model->config.num_experts * 2}) {
    SCOPED_TRACE(::testing::Message() << slots << " slots");
    Transformer t(*model, backend, streaming(*model, slots));
    EXPECT_EQ(compare(expected, run_batched(t, plan), model->config.vocab_size).max, 0.0);
    const ExpertStoreStats s = t.expert_store()->stats();
    EXPECT_EQ(s.demanded, s.hits + s.prefetch_hits + s.misses);
    EXPECT_GT(t.lookahead_stats().predicted, 0u);
    EXPECT_GT(t.temporal_stats().used, 0u);
  }
}

// Bad input names the sequence at fault and leaves every state as it was.
TEST(BatchErrors, ValidatedBeforeAnyStateChanges) {
  const test::Reference ref = test::load_reference("qwen35moe-vl-bf16");
  const auto model = Model::load(ref.dir);
  const int64_t V = model->config.vocab_size;
  CpuBackend backend(1);
  Transformer t(*model, backend, TransformerOptions{.max_context = 40, .max_batch = 3});
  std::vector<float> logits(4 * size_t(V));
  SequenceState a = t.new_sequence(), b = t.new_sequence(), c = t.new_sequence(), d = t.new_sequence();
  t.forward(a, std::span<const int32_t>(ref.prompt).first(10), logits.data(), false);
  t.forward(b, std::span<const int32_t>(ref.prompt).first(40), logits.data(), false);  // full
  t.forward(c, std::span<const int32_t>(ref.prompt).first(3), logits.data(), false);
  const SequenceState a0 = a, b0 = b, c0 = c;
  const auto unchanged = [&] {
    for (const auto& [s, s0] : {std::pair{&a, &a0}, {&b, &b0}, {&c, &c0}}) {
      EXPECT_EQ(s->n_past, s0->n_past);
      EXPECT_FALSE(s->failed);
      EXPECT_EQ(s->k_cache, s0->k_cache);
      EXPECT_EQ(s->v_cache, s0->v_cache);
      EXPECT_EQ(s->conv_state, s0->conv_state);
      EXPECT_EQ(s->recurrent_state, s0->recurrent_state);
    }
  };
  using Batch = std::vector<SequenceState*>;
  using Tokens = std::vector<int32_t>;
  expect_error(
      [&] {
        t.decode_batch(Batch{&a, &c}, Tokens{1, int32_t(V)}, logits.data());
      },
      {"token id 512", "sequence 1", "out of range"});
  expect_error(
      [&] {
        t.decode_batch(Batch{&a, &c}, Tokens{-1, 2}, logits.data());
      },
      {"token id -1", "sequence 0"});
  expect_error(
      [&] {
        t.decode_batch(Batch{&a, &b}, Tokens{1, 2}, logits.data());
      },
      {"context overflow", "sequence 1", "40 cached"});
  expect_error(
      [&] {
        t.decode_batch(Batch{&a, &c, &a}, Tokens{1, 2, 3}, logits.data());
      },
      {"sequences 0 and 2", "same sequence"});
  expect_error(
      [&] {
        t.decode_batch(Batch{&a, &c, &d, &b}, Tokens{1, 2, 3, 4}, logits.data());
      },
      {"4 sequences", "batch of 3"});
  expect_error(
      [&] {
        t.decode_batch(Batch{&a, &c}, Tokens{1}, logits.data());
      },
      {"2 sequences but 1 tokens"});
  d.failed = true;
  expect_error([&] { t.decode_batch(Batch{&c, &d}, Tokens{1, 2}, logits.data()); }, {"sequence 1", "reset"});
  unchanged();
  t.decode_batch(Batch{}, Tokens{}, logits.data());  // nothing to do
  unchanged();
}

// An expert read failing mid-step marks every sequence of the batch failed; the transformer and
// its cache stay usable.
TEST(BatchStream, ReadFailureMarksEveryBatchSequence) {
  const auto model = Model::load(kDefaultModel);
  const Plan plan = make_plan(default_model_ids(), 3, 4, 12);
  CpuBackend backend(2);
  Transformer resident(*model, backend, options());
  const auto expected = run_batched(resident, plan);
  Transformer t(*model, backend, streaming(*model, model->config.num_experts_per_tok + 2));
  std::vector<float> logits(3 * size_t(model->config.vocab_size));
  std::vector<SequenceState> states;
  for (size_t i = 0; i < 3; ++i) {
    states.push_back(t.new_sequence());
    t.forward(states.back(), plan.prompts[i], logits.data(), false);
  }
  int reads = 0;
  t.expert_store()->io().set_fault_injector([&](const io::PieceInfo&) {
    return ++reads == 3 ? io::Fault{.error = EIO, .short_by = 0} : io::Fault{};
  });
  const std::vector<SequenceState*> batch = {&states[0], &states[1], &states[2]};
  const std::vector<int32_t> tokens = {plan.tokens[0][0], plan.tokens[1][0], plan.tokens[2][0]};
  expect_error([&] { t.decode_batch(batch, tokens, logits.data()); },
               {"flashmoe-default.gguf", "Input/output error"});
  for (const SequenceState& s : states) EXPECT_TRUE(s.failed);
  expect_error([&] { t.decode_batch(batch, tokens, logits.data()); }, {"sequence 0", "reset"});
  t.expert_store()->io().set_fault_injector({});
  // Fresh sequences on the same transformer: the same results as the resident run.
  EXPECT_EQ(compare(expected, run_batched(t, plan), model->config.vocab_size).max, 0.0);
}

// `flashmoe bench --sequences N`: N sequences decode together; the per-token figures count them
// all, so the dense weights are read once per step for N tokens.
TEST(BatchBench, SequencesOption) {
  test::TempDir tmp;
  const auto bench = [&](int sequences) {
    const fs::path json = tmp / fmt::format("bench{}.json", sequences);
    const std::string cmd = fmt::format(
        "{} bench -m {}/qwen35moe-vl-bf16 -n 3 --prompt-len 4 -t 2 --sequences {} --json {} "
        ">/dev/null 2>{}",
        FM_CLI, FM_FIXTURES, sequences, json.string(), (tmp / "err").string());
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    std::ifstream f(json);
    return nlohmann::json::parse(std::string(std::istreambuf_iterator<char>(f), {}));
  };
  const nlohmann::json four = bench(4);
  EXPECT_EQ(four.at("batch"), 4);
  EXPECT_EQ(four.at("decode_tokens"), 12);
  EXPECT_EQ(four.at("prefill_tokens"), 16);
  EXPECT_GT(four.at("decode_tok_s").get<double>(), 0.0);
  // One token alone reads 128 (embedding row) + 347648 (dense matrices: see test_cli's
  // BenchReportsSpeedAgainstTheFloor) + 4 layers x 2 experts x 12288 (routed). Four tokens per step:
  // the dense matrices once, each distinct expert of the step once (between 2 and 8 per layer).
  const double bytes = four.at("bytes_read_per_token").get<double>();
  const double dense = 347648.0 / 4 + 128, expert = 12288.0 / 4;
  EXPECT_GE(bytes, dense + 4 * 2 * expert);
  EXPECT_LE(bytes, dense + 4 * 8 * expert);
  EXPECT_EQ(std::fmod((bytes - dense) * 12, 12288.0), 0.0);  // whole experts over the 12 tokens
}

}  // namespace
}  // namespace fm
