// Token sampling from logits: greedy when temperature is 0, else temperature, top-k, top-p
// (nucleus) and a seeded generator, so a seed reproduces a run.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace fm {

struct SamplerOptions {
  float temperature = 0.0f;  // 0: greedy (argmax, ties to the lower id)
  int top_k = 0;             // 0: all tokens
  float top_p = 1.0f;        // 1: no nucleus cut
  uint64_t seed = 0;
};

class Sampler {
 public:
  Sampler(const SamplerOptions& options, int vocab_size);
  int32_t sample(const float* logits);

 private:
  SamplerOptions options_;
  int vocab_;
  std::mt19937_64 rng_;
  std::vector<int32_t> order_;  // candidate ids, reused each call
  std::vector<float> probs_;
};

// Throws fm::Error for values out of range (temperature < 0, top_p outside (0, 1], top_k < 0).
void validate(const SamplerOptions& options);

}  // namespace fm
