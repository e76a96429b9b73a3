// Decoding allocates nothing: every buffer is sized when the transformer and the sequence are made.
// Counted by replacing the global operator new in this test binary.
// The replacement operators below pair malloc with free on purpose.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <vector>

#include "fixture_util.h"
#include "model/model.h"
#include "model/qwen_moe.h"
#include "ops/cpu/cpu_backend.h"

namespace {
std::atomic<long> g_allocations{0};
}

void* operator new(size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace fm {
namespace {

TEST(NoAlloc, DecodeStepsAndPromptChunksAllocateNothing) {
  for (const char* name : {"qwen35moe-vl-bf16", "qwen3moe-f16"}) {
    const test::Reference ref = test::load_reference(name);
    const auto model = Model::load(ref.dir);
    CpuBackend backend(2);
    Transformer transformer(*model, backend, TransformerOptions{.max_context = 512, .max_batch = 64});
    SequenceState state = transformer.new_sequence();
    std::vector<float> logits(size_t(model->config.vocab_size));
    const std::span<const int32_t> prompt(ref.prompt);
    transformer.forward(state, prompt.first(70), logits.data(), false);  // warm-up: two chunks

    const long before = g_allocations.load();
    transformer.forward(state, prompt.subspan(70, 100), logits.data(), false);
    for (int i = 0; i < 8; ++i) transformer.forward(state, prompt.subspan(170 + i, 1), logits.data(), false);
    EXPECT_EQ(g_allocations.load() - before, 0) << name;
  }
}

// A batched decode step of several sequences (the server's step) allocates nothing either.
TEST(NoAlloc, BatchedDecodeStepsAllocateNothing) {
  for (const char* name : {"qwen35moe-vl-bf16", "qwen3moe-f16"}) {
    const test::Reference ref = test::load_reference(name);
    const auto model = Model::load(ref.dir);
    CpuBackend backend(2);
    Transformer transformer(*model, backend, TransformerOptions{.max_context = 512, .max_batch = 64});
    std::vector<SequenceState> states;
    for (int i = 0; i < 3; ++i) states.push_back(transformer.new_sequence());
    const std::vector<SequenceState*> batch = {&states[0], &states[1], &states[2]};
    std::vector<float> logits(3 * size_t(model->config.vocab_size));
    const std::span<const int32_t> prompt(ref.prompt);
    for (int i = 0; i < 3; ++i)
      transformer.forward(states[size_t(i)], prompt.subspan(size_t(i) * 10, 20), logits.data(), false);
    std::vector<int32_t> tokens = {prompt[40], prompt[41], prompt[42]};
    transformer.decode_batch(batch, tokens, logits.data());  // warm-up

    const long before = g_allocations.load();
    for (int step = 0; step < 4; ++step) {
      for (int i = 0; i < 3; ++i) tokens[size_t(i)] = prompt[size_t(50 + step * 3 + i)];
      transformer.decode_batch(batch, tokens, logits.data());
    }
    EXPECT_EQ(g_allocations.load() - before, 0) << name;
  }
}

}  // namespace
}  // namespace fm
