#include "stream/memory_plan.h"

#include <algorithm>

#include "io/io_engine.h"
#include "util/error.h"

namespace fm {

namespace {

constexpr uint64_t kOverhead = 160ull << 20;  // binary, libraries, heap, stacks: measured ~100 MB
// What a cgroup charges beyond the resident pages (page tables, kernel objects of the mappings and
// the I/O, the allocator's slack): with the budget filled to the byte, a cgroup limit of the same
// size was reached and reclaimed mapped dense pages. 1/32 of the budget keeps clear of it.
constexpr uint64_t kMarginShift = 5;

double gb(uint64_t b) { return double(b) / 1e9; }

}  // namespace

uint64_t sequence_state_bytes(const ModelConfig& c, const TransformerOptions& o) {
  uint64_t bytes = 0;
  for (int l = 0; l < c.num_layers; ++l) {
    if (c.layer_kinds[size_t(l)] == LayerKind::FullAttention)
      bytes += 2ull * uint64_t(o.max_context) * uint64_t(c.num_kv_heads) * uint64_t(c.head_dim) * 4;
    else
      bytes += (uint64_t(c.linear_conv_kernel - 1) * uint64_t(c.linear_conv_dim()) +
                uint64_t(c.linear_num_v_heads) * uint64_t(c.linear_k_head_dim) * uint64_t(c.linear_v_head_dim)) *
               4;
  }
  return bytes;
}

MemoryPlan plan_memory(const Model& model, const TransformerOptions& o, uint64_t budget, uint64_t cache) {
  const ModelConfig& c = model.config;
  MemoryPlan p;
  p.dense = model.weights.dense_bytes;
  p.state = sequence_state_bytes(c, o);
  const uint64_t H = uint64_t(c.hidden_size);
  const uint64_t wide = uint64_t(std::max({c.linear_conv_dim(), c.num_heads * c.head_dim * 2,
                                           c.linear_num_v_heads * c.linear_v_head_dim}));
  const uint64_t inter = uint64_t(std::max({c.moe_intermediate_size, c.shared_expert_intermediate_size,
                                            c.intermediate_size}));
  const int k = o.experts_per_tok > 0 ? o.experts_per_tok : c.num_experts_per_tok;
  p.scratch = uint64_t(o.max_batch) * ((8 + uint64_t(k)) * H + 3 * wide + 3 * inter + uint64_t(c.num_experts) * 2) * 4 +
              uint64_t(o.max_batch) * uint64_t(c.vocab_size) * 4;
  p.overhead = kOverhead + (budget >> kMarginShift);
  // One expert's slot: its three matrices rounded out to whole aligned blocks.
  uint64_t slot = 0;
  for (const LayerWeights& L : model.weights.layers)
    if (L.is_moe)
      slot = std::max(slot, L.moe.experts[0].gate.nbytes() + L.moe.experts[0].up.nbytes() +
                                L.moe.experts[0].down.nbytes() + 6 * io::kAlign);
  const uint64_t minimum = slot * uint64_t(k + 1);
  const uint64_t fixed = p.dense + p.state + p.scratch + p.overhead;
  if (budget > 0) {
    if (fixed + std::max(cache, minimum) > budget)
      fail("--mem-budget {:.2f} GB is too small: dense weights {:.2f} GB + KV/state {:.2f} GB + scratch {:.2f} GB + "
           "overhead {:.2f} GB + expert cache {:.2f} GB (at least {} experts of {:.1f} MB) = {:.2f} GB",
           gb(budget), gb(p.dense), gb(p.state), gb(p.scratch), gb(p.overhead), gb(std::max(cache, minimum)), k + 1,
           double(slot) / 1e6, gb(fixed + std::max(cache, minimum)));
    p.expert_cache = cache > 0 ? cache : budget - fixed;
  } else {
    p.expert_cache = cache > 0 ? cache : minimum * 4;
  }
  return p;
}

}  // namespace fm
