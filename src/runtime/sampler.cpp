#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace fm {

void validate(const SamplerOptions& o) {
  if (!(o.temperature >= 0.0f) || !std::isfinite(o.temperature)) fail("--temp must be >= 0, got {}", o.temperature);
  if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) fail("--top-p must be in (0, 1], got {}", o.top_p);
  if (o.top_k < 0) fail("--top-k must be >= 0, got {}", o.top_k);
}

Sampler::Sampler(const SamplerOptions& options, int vocab_size)
    : options_(options), vocab_(vocab_size), rng_(options.seed), order_(size_t(vocab_size)), probs_(size_t(vocab_size)) {
  validate(options_);
}

int32_t Sampler::sample(const float* logits) {
  if (options_.temperature == 0.0f) {
    int32_t best = 0;
    for (int32_t i = 1; i < vocab_; ++i)
      if (logits[i] > logits[best]) best = i;
    return best;
  }
  // Candidates sorted by logit (only the top k when k is set).
  for (int32_t i = 0; i < vocab_; ++i) order_[size_t(i)] = i;
  const int k = options_.top_k > 0 ? std::min(options_.top_k, vocab_) : vocab_;
  auto by_logit = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  if (k < vocab_ || options_.top_p < 1.0f) {
    std::partial_sort(order_.begin(), order_.begin() + k, order_.end(), by_logit);
  } else {  // plain temperature sampling needs no order, only the top logit first
    std::swap(order_[0], order_[size_t(std::max_element(logits, logits + vocab_) - logits)]);
  }

  const float inv_t = 1.0f / options_.temperature;
  const float top = logits[order_[0]];
  double sum = 0.0;
  for (int i = 0; i < k; ++i) {
    probs_[size_t(i)] = std::exp((logits[order_[size_t(i)]] - top) * inv_t);
    sum += probs_[size_t(i)];
  }
  // Nucleus: the smallest prefix whose probability reaches top_p.
  int kept = k;
  if (options_.top_p < 1.0f) {
    double acc = 0.0;
    for (int i = 0; i < k; ++i) {
      acc += probs_[size_t(i)] / sum;
      if (acc >= options_.top_p) {
        kept = i + 1;
        break;
      }
    }
  }
  double kept_sum = 0.0;
  for (int i = 0; i < kept; ++i) kept_sum += probs_[size_t(i)];
  const double u = std::uniform_real_distribution<double>(0.0, kept_sum)(rng_);
  double acc = 0.0;
  for (int i = 0; i < kept; ++i) {
    acc += probs_[size_t(i)];
    if (u < acc) return order_[size_t(i)];
  }
  return order_[size_t(kept - 1)];
}

}  // namespace fm
