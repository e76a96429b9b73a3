#include "runtime/generate.h"

#include <algorithm>
#include <chrono>

#include "util/error.h"
#include "util/sysinfo.h"

namespace fm {

GenerateResult generate(Transformer& model, SequenceState& state, std::span<const int32_t> prompt,
                        const GenerateOptions& options, const std::function<bool(int32_t)>& on_token) {
  if (prompt.empty()) fail("the prompt is empty");
  if (options.max_new_tokens < 0) fail("-n must be >= 0");
  const int64_t V = model.config().vocab_size;
  GenerateResult r;
  r.n_prompt = int(prompt.size());
  Sampler sampler(options.sampling, int(V));

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
    const bool stop = std::find(options.stop_ids.begin(), options.stop_ids.end(), id) != options.stop_ids.end();
    if ((on_token && !on_token(id)) || stop || step + 1 == options.max_new_tokens) break;
    model.forward(state, std::span<const int32_t>(&id, 1), last.data(), false);
    ++r.decode_steps;
    if (options.keep_logits) std::copy_n(last.data(), V, r.logits.data() + (row++) * V);
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
