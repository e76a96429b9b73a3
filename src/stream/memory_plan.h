// How a memory budget is shared out when experts stream: the dense weights (mapped, resident), the
// per-sequence state (KV cache, DeltaNet states), the transformer's scratch and a fixed allowance for
// the process itself; the expert cache gets the rest.
#pragma once
#include <cstdint>

#include "model/model.h"
#include "model/qwen_moe.h"

namespace fm {

struct MemoryPlan {
  uint64_t dense = 0;         // weights outside the routed experts
  uint64_t state = 0;         // one sequence's KV cache and recurrent state at max_context
  uint64_t scratch = 0;       // activations for max_batch tokens, logits
  uint64_t overhead = 0;      // code, heap, thread stacks, I/O rings
  uint64_t expert_cache = 0;  // slots for experts
};

uint64_t sequence_state_bytes(const ModelConfig& c, const TransformerOptions& options);

// With budget > 0 and cache == 0 the cache is what the budget leaves; with both, their sum must fit.
// Throws fm::Error with the breakdown when the budget cannot hold the dense part plus the cache a
// layer's top-k experts need.
MemoryPlan plan_memory(const Model& model, const TransformerOptions& options, uint64_t budget, uint64_t cache);

}  // namespace fm
