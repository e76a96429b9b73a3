// Token sampling from logits, and text-level stop strings.
//
// Sampler, per step, in the order transformers and vLLM apply them:
//   1. penalties on the raw logits, for each token seen so far:
//        repetition (HF): l > 0 ? l / r : l * r, for every token in the prompt or generated (once per token);
//        presence / frequency (OpenAI): l -= presence * (count > 0) + frequency * count, over generated
//        tokens;
//   2. temperature 0: greedy argmax (ties to the lower id); otherwise p = softmax(l / T);
//   3. top-k: the k most likely tokens;
//   4. top-p (HF's rule): drop a token when it and every less likely one hold <= 1 - top_p of the mass
//      (renormalised after top-k); the most likely token always stays;
//   5. min-p: drop tokens with p < min_p * p_max;
//   6. draw from what is left, renormalised, with a 64-bit Mersenne Twister seeded by `seed`, so a seed
//      reproduces a run.
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace fm {

struct SamplerOptions {
  float temperature = 0.0f;         // 0: greedy (argmax, ties to the lower id)
  int top_k = 0;                    // 0: all tokens
  float top_p = 1.0f;               // 1: no nucleus cut
  float min_p = 0.0f;               // 0: off
  float repetition_penalty = 1.0f;  // 1: off; > 1 discourages repeats
  float presence_penalty = 0.0f;    // 0: off; OpenAI's range is [-2, 2]
  float frequency_penalty = 0.0f;   // 0: off
  uint64_t seed = 0;
};

// Throws fm::Error for values out of range (temperature < 0, top_p outside (0, 1], top_k < 0, min_p outside
// [0, 1], repetition_penalty <= 0, non-finite penalties).
void validate(const SamplerOptions& options);

struct Candidate {
  int32_t id;
  float prob;  // after every filter, renormalised
};

class Sampler {
 public:
  Sampler(const SamplerOptions& options, int vocab_size);

  // Tokens that count for the repetition penalty before any is generated (the prompt).
  void add_prompt(std::span<const int32_t> ids);
  // Records a token as generated (sample() does this for the token it returns).
  void accept(int32_t id);

  // Chooses the next token from logits[vocab] (left unchanged) and accepts it.
  int32_t sample(const float* logits);

  // The distribution sample() draws from for these logits, most likely first (one candidate with
  // probability 1 when greedy). Valid until the next call.
  const std::vector<Candidate>& distribution(const float* logits);

 private:
  const float* penalised(const float* logits);

  SamplerOptions options_;
  int vocab_;
  std::mt19937_64 rng_;
  std::vector<int32_t> order_;   // [vocab] candidate ids, reused each call
  std::vector<float> adjusted_;  // [vocab] logits after penalties, when any penalty is on
  std::vector<double> weights_;  // [k] unnormalised probabilities of the sorted candidates
  std::vector<Candidate> candidates_;
  std::vector<uint8_t> seen_;                    // [vocab] in the prompt or generated (repetition penalty)
  std::unordered_map<int32_t, int32_t> counts_;  // generated token -> count (presence / frequency)
};

// Stop strings matched on the decoded text stream. Text that could be the start of a stop string is held
// back until it either completes one (generation stops; the text before it is released and the stop
// string itself is cut) or can no longer match (it is released).
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stop_strings);  // throws fm::Error for an empty string

  // Appends decoded text; returns the part that is final now. After a stop, returns "" forever.
  std::string push(std::string_view text);
  // At the end of generation: the held-back text (empty after a stop).
  std::string finish();

  bool stopped() const { return stopped_; }
  const std::string& matched() const { return matched_; }  // the stop string found
  // Bytes released so far: once stopped, where the whole decoded text is cut.
  size_t released() const { return released_; }
  bool empty() const { return stops_.empty(); }

 private:
  std::vector<std::string> stops_;
  std::string pending_;  // held back: could begin a stop string
  bool stopped_ = false;
  std::string matched_;
  size_t released_ = 0;
};

}  // namespace fm
