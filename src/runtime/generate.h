// Generation: prefill the prompt, then decode one token at a time with the cached state.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/qwen_moe.h"
#include "runtime/sampler.h"

namespace fm {

struct GenerateOptions {
  int max_new_tokens = 32;
  SamplerOptions sampling;
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these
  bool keep_logits = false;       // keep a row per prompt position, then per decoding step after the first
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids
  std::vector<float> logits;    // [rows][vocab] when keep_logits
  int64_t logits_rows = 0;
  int n_prompt = 0;
  double prefill_seconds = 0.0;  // prompt forward pass
  double decode_seconds = 0.0;   // every later forward pass
  int decode_steps = 0;
  uint64_t decode_weight_bytes = 0;  // weights read by the decoding steps (Transformer::weight_bytes_read)
};

// on_token(id) is called as each token is chosen (for streaming); returning false stops early.
GenerateResult generate(Transformer& model, SequenceState& state, std::span<const int32_t> prompt,
                        const GenerateOptions& options, const std::function<bool(int32_t)>& on_token = {});

}  // namespace fm
