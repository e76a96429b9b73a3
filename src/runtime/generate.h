// Generation: prefill the prompt, then decode one token at a time with the cached state.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "model/qwen_moe.h"
#include "runtime/sampler.h"

namespace fm {

struct GenerateOptions {
  int max_new_tokens = 32;
  SamplerOptions sampling = {};
  std::vector<int32_t> stop_ids = {};  // generation ends after emitting one of these (the EOS ids)
  bool keep_logits = false;  // keep a row per prompt position, then per decoding step after the first
  // Text-level stop strings, matched on the decoded stream (StopMatcher). They need `decode`: the
  // tokenizer's streaming decoder, giving the text one more generated id adds (possibly "", e.g. for
  // half a UTF-8 character). A stop token's text is not decoded.
  std::vector<std::string> stop_strings = {};
  std::function<std::string(int32_t)> decode = {};
  // With `decode`: called with each piece of text that is final (never part of a stop string);
  // returning false stops early.
  std::function<bool(std::string_view)> on_text = {};
};

enum class FinishReason { Length, StopToken, StopString, Callback };
const char* finish_reason_name(FinishReason r);  // "length", "stop_token", "stop_string", "callback"

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids, the stop token or the one completing a stop string included
  std::string text;             // with `decode`: the generated text, cut before a stop string
  FinishReason finish_reason = FinishReason::Length;
  std::vector<float> logits;  // [rows][vocab] when keep_logits
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
