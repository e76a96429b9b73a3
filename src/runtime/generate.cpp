#include "runtime/generate.h"

#include <algorithm>
#include <chrono>

#include "util/error.h"
#include "util/sysinfo.h"

namespace fm {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Length:
      return "length";
    case FinishReason::StopToken:
      return "stop_token";
    case FinishReason::StopString:
      return "stop_string";
    case FinishReason::Callback:
      return "callback";
  }
  return "?";
}

GenerateResult generate(Transformer& model, SequenceState& state, std::span<const int32_t> prompt,
                        const GenerateOptions& options, const std::function<bool(int32_t)>& on_token) {
  if (prompt.empty()) fail("the prompt is empty");
  if (options.max_new_tokens < 0) fail("-n must be >= 0");
  const int64_t V = model.config().vocab_size;
  GenerateResult r;
  r.n_prompt = int(prompt.size());
  if (!options.stop_strings.empty() && !options.decode)
    fail("stop strings need the tokenizer's decoder (GenerateOptions::decode)");
  Sampler sampler(options.sampling, int(V));
  sampler.add_prompt(prompt);
  StopMatcher stops(options.stop_strings);

  // Every buffer is sized before the first forward pass.
  std::vector<float> last(static_cast<size_t>(V));
  if (options.keep_logits) {
    r.logits_rows = int64_t(prompt.size()) + std::max(options.max_new_tokens - 1, 0);
    r.logits.resize(size_t(r.logits_rows * V));
  }
  r.tokens.reserve(size_t(options.max_new_tokens));

  auto t0 = std::chrono::steady_clock::now();
  if (options.keep_logits) {
    model.forward(state, prompt, r.logits.data(), true);
    std::copy_n(r.logits.data() + (int64_t(prompt.size()) - 1) * V, V, last.data());
  } else {
    model.forward(state, prompt, last.data(), false);
  }
  r.prefill_seconds = seconds_since(t0);

  int64_t row = int64_t(prompt.size());
  const uint64_t bytes_before_decode = model.weight_bytes_read();
  t0 = std::chrono::steady_clock::now();
  for (int step = 0; step < options.max_new_tokens; ++step) {
    const int32_t id = sampler.sample(last.data());
    r.tokens.push_back(id);
    const bool stop_token =
        std::find(options.stop_ids.begin(), options.stop_ids.end(), id) != options.stop_ids.end();
    bool go_on = !on_token || on_token(id);
    if (options.decode && !stop_token) {
      const std::string piece = stops.push(options.decode(id));
      r.text += piece;
      if (!piece.empty() && options.on_text && !options.on_text(piece)) go_on = false;
    }
    if (stop_token)
      r.finish_reason = FinishReason::StopToken;
    else if (stops.stopped())
      r.finish_reason = FinishReason::StopString;
    else if (!go_on)
      r.finish_reason = FinishReason::Callback;
    if (r.finish_reason != FinishReason::Length || step + 1 == options.max_new_tokens) break;
    model.forward(state, std::span<const int32_t>(&id, 1), last.data(), false);
    ++r.decode_steps;
    if (options.keep_logits) std::copy_n(last.data(), V, r.logits.data() + (row++) * V);
  }
  if (options.decode && !stops.stopped()) {  // release what was held back as a possible stop string
    const std::string tail = stops.finish();
    r.text += tail;
    if (!tail.empty() && options.on_text) options.on_text(tail);
  }
  r.decode_seconds = seconds_since(t0);
  r.decode_weight_bytes = model.weight_bytes_read() - bytes_before_decode;
  if (options.keep_logits) {  // an early stop leaves fewer rows
    r.logits_rows = row;
    r.logits.resize(size_t(row * V));
  }
  return r;
}

}  // namespace fm
