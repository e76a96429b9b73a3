// Expert streaming: routed experts read from the model files into a small cache must give the same
// logits as the experts used in place from the mapping, whatever the I/O options, cache size,
// policy and predictors; read failures end the pass with an error naming the file and leave the
// transformer and its cache usable.
#include <gtest/gtest.h>

#include <cerrno>
#include <filesystem>

#include "convert/convert.h"
#include "fixture_util.h"
#include "model/model.h"
#include "model/qwen_moe.h"
#include "ops/cpu/cpu_backend.h"
#include "stream/expert_store.h"
#include "stream/memory_plan.h"
#include "test_util.h"
#include "util/error.h"

namespace fm {
namespace {

namespace fs = std::filesystem;

TransformerOptions base_options() {
  TransformerOptions o;
  o.max_context = 512;
  o.max_batch = 64;
  return o;
}

// Prompt logits of every position, then the logits of 8 decode steps fed `decode` (the resident
// run's greedy tokens, so that both runs see the same inputs).
std::vector<float> run(const Model& model, const TransformerOptions& options, const std::vector<int32_t>& prompt,
                       std::vector<int32_t>* decode, std::unique_ptr<Transformer>* owner = nullptr) {
  static CpuBackend backend(2);
  auto t = std::make_unique<Transformer>(model, backend, options);
  const int64_t V = model.config.vocab_size;
  SequenceState state = t->new_sequence();
  std::vector<float> out(size_t(prompt.size()) * size_t(V));
  t->forward(state, prompt, out.data(), true);
  std::vector<float> step(static_cast<size_t>(V));
  const bool record = decode->empty();
  int32_t next = int32_t(std::max_element(out.end() - V, out.end()) - (out.end() - V));
  for (int i = 0; i < 8; ++i) {
    if (record) decode->push_back(next);
    t->forward(state, std::span<const int32_t>(&(*decode)[size_t(i)], 1), step.data(), false);
    out.insert(out.end(), step.begin(), step.end());
    next = int32_t(std::max_element(step.begin(), step.end()) - step.begin());
  }
  if (owner) *owner = std::move(t);
  return out;
}

TransformerOptions streaming(const Model& model, int slots_over_k, io::Backend backend, int split, bool direct) {
  TransformerOptions o = base_options();
  o.stream_experts = true;
  o.stream.io = io::IoOptions{.threads = 3, .split = split, .direct = direct, .backend = backend};
  const FfnWeights& e = model.weights.layers[0].moe.experts[0];
  const uint64_t slot = e.gate.nbytes() + e.up.nbytes() + e.down.nbytes() + 6 * io::kAlign;
  o.stream.cache_bytes = slot * uint64_t(model.config.num_experts_per_tok + slots_over_k);
  return o;
}

bool direct_io_supported(const fs::path& file) {
  try {
    io::IoEngine engine(io::IoOptions{.threads = 1, .split = 1, .direct = true});
    engine.add_file(file.string());
    return true;
  } catch (const Error&) {
    return false;
  }
}

class Stream : public ::testing::TestWithParam<const char*> {};

// The safetensors fixture itself (experts per expert or fused) and its Q8_0 GGUF (3-D expert tensors).
TEST_P(Stream, SameLogitsAsResident) {
  const test::Reference ref = test::load_reference(GetParam());
  test::TempDir tmp;
  const fs::path gguf = tmp / "q8.gguf";
  convert_to_gguf(ref.dir, gguf, ConvertOptions{.type = DType::Q8_0, .expert_type = {}, .rules = {}, .threads = 2});
  for (const fs::path& path : {fs::path(ref.dir), gguf}) {
    SCOPED_TRACE(path.string());
    const auto model = Model::load(path);
    std::vector<int32_t> decode;
    const std::vector<float> resident = run(*model, base_options(), ref.prompt, &decode);
    struct Case {
      io::Backend backend;
      int split, extra_slots;
      bool direct, lookahead, temporal;
      CachePolicy policy;
    };
    const bool direct = direct_io_supported(path.extension() == ".gguf" ? path : path / "model.safetensors") &&
                        fs::exists(path.extension() == ".gguf" ? path : path / "model.safetensors");
    const Case cases[] = {
        {io::Backend::Pread, 1, 1, false, false, false, CachePolicy::Lru},
        {io::Backend::Pread, 3, 4, false, true, true, CachePolicy::Lru},
        {io::Backend::Uring, 2, 2, direct, true, false, CachePolicy::Lfu},
        {io::Backend::Uring, 1, 64, false, false, true, CachePolicy::Lru},
    };
    for (const Case& c : cases) {
      SCOPED_TRACE(::testing::Message() << "backend " << int(c.backend) << " split " << c.split << " slots k+"
                                        << c.extra_slots << " direct " << c.direct);
      TransformerOptions o = streaming(*model, c.extra_slots, c.backend, c.split, c.direct);
      o.predict_lookahead = c.lookahead;
      o.predict_temporal = c.temporal;
      o.stream.policy = c.policy;
      std::unique_ptr<Transformer> owner;
      const std::vector<float> streamed = run(*model, o, ref.prompt, &decode, &owner);
      Transformer* t = owner.get();
      ASSERT_EQ(streamed.size(), resident.size());
      // The same arithmetic in the same order of summation, whatever order the reads complete in.
      EXPECT_EQ(test::max_abs_diff(streamed.data(), resident.data(), resident.size()), 0.0);
      const ExpertStoreStats s = t->expert_store()->stats();
      EXPECT_GT(s.demanded, 0u);
      EXPECT_EQ(s.demanded, s.hits + s.prefetch_hits + s.misses);
      EXPECT_GT(t->expert_store()->io_stats().bytes_read, 0u);
      if (c.lookahead) {
        EXPECT_GT(t->lookahead_stats().predicted, 0u);
      }
      if (c.extra_slots == 64) {
        EXPECT_GT(s.hits, 0u);  // a cache this size keeps experts between steps
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Stream, ::testing::Values("qwen35moe-vl-bf16", "qwen3moe-f16"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

TEST(StreamFaults, ReadErrorNamesTheFileAndLeavesTheCacheUsable) {
  const test::Reference ref = test::load_reference("qwen35moe-vl-bf16");
  test::TempDir tmp;
  const fs::path gguf = tmp / "m.gguf";
  convert_to_gguf(ref.dir, gguf, ConvertOptions{.type = DType::F16, .expert_type = {}, .rules = {}, .threads = 2});
  const auto model = Model::load(gguf);
  std::vector<int32_t> decode;
  const std::vector<float> resident = run(*model, base_options(), ref.prompt, &decode);

  CpuBackend backend(2);
  Transformer t(*model, backend, streaming(*model, 2, io::Backend::Pread, 2, false));
  const int64_t V = model->config.vocab_size;
  std::vector<float> logits(ref.prompt.size() * size_t(V));
  for (const io::Fault fault : {io::Fault{.error = EIO, .short_by = 0}, io::Fault{.error = 0, .short_by = 100}}) {
    int reads = 0;
    t.expert_store()->io().set_fault_injector([&](const io::PieceInfo&) { return ++reads == 5 ? fault : io::Fault{}; });
    SequenceState state = t.new_sequence();
    test::expect_error([&] { t.forward(state, ref.prompt, logits.data(), true); },
                       {gguf.string(), fault.error ? "Input/output error" : "short read"});
    EXPECT_TRUE(state.failed);
    test::expect_error([&] { t.forward(state, ref.prompt, logits.data(), true); }, {"reset"});
    t.expert_store()->io().set_fault_injector({});
    state.reset();
    t.forward(state, ref.prompt, logits.data(), true);
    EXPECT_EQ(test::max_abs_diff(logits.data(), resident.data(), logits.size()), 0.0);
  }
}

// The policies on a known pattern: one expert used ten times, then five others once each, in a cache of
// five slots. The sixth distinct expert evicts one: LRU drops the often used one (the least recent),
// LFU one used once. Then the often used one again: a hit under LFU only.
TEST(StreamPolicy, LfuKeepsTheOftenUsedExpertLruDoesNot) {
  const test::Reference ref = test::load_reference("qwen3moe-f16");
  const auto model = Model::load(ref.dir);
  const int k = model->config.num_experts_per_tok;
  ASSERT_GE(model->config.num_experts, 6);
  uint64_t slot_bytes = 0;
  {
    const ExpertStore probe(*model, StreamOptions{.io = {.threads = 1}, .cache_bytes = 1ull << 30}, k);
    slot_bytes = probe.slot_bytes();
  }
  const uint64_t slots = uint64_t(std::max(k + 1, 5));
  for (const CachePolicy policy : {CachePolicy::Lru, CachePolicy::Lfu}) {
    ExpertStore store(*model, StreamOptions{.io = {.threads = 1}, .cache_bytes = slots * slot_bytes, .policy = policy},
                      k);
    ASSERT_EQ(uint64_t(store.slots()), slots);
    auto use = [&](int expert) {
      const int32_t e[1] = {expert};
      store.demand(0, e);
      store.acquire(0, expert);
      store.release(0, expert);
    };
    for (int i = 0; i < 10; ++i) use(0);
    for (int e = 1; e <= int(slots); ++e) use(e);
    const bool lfu = policy == CachePolicy::Lfu;
    EXPECT_EQ(store.cached(0, 0), lfu) << (lfu ? "LFU" : "LRU");
    EXPECT_EQ(store.cached(0, 1), !lfu) << (lfu ? "LFU" : "LRU");
    const uint64_t hits = store.stats().hits;
    use(0);
    EXPECT_EQ(store.stats().hits - hits, lfu ? 1u : 0u);
  }
}

TEST(StreamMemory, BudgetTooSmallSaysWhy) {
  const test::Reference ref = test::load_reference("qwen3moe-f16");
  const auto model = Model::load(ref.dir);
  const TransformerOptions o = base_options();
  test::expect_error([&] { plan_memory(*model, o, 1 << 20, 0); }, {"--mem-budget", "too small", "dense weights"});
  const MemoryPlan p = plan_memory(*model, o, 4ull << 30, 0);
  EXPECT_EQ(p.dense + p.state + p.scratch + p.overhead + p.expert_cache, 4ull << 30);
  CpuBackend backend(1);
  TransformerOptions tiny = o;
  tiny.stream_experts = true;
  tiny.stream.cache_bytes = 1000;
  test::expect_error([&] { Transformer t(*model, backend, tiny); }, {"expert cache", "at least"});
}

}  // namespace
}  // namespace fm
