#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace fm {

void validate(const SamplerOptions& o) {
  if (!(o.temperature >= 0.0f) || !std::isfinite(o.temperature))
    fail("--temp must be >= 0, got {}", o.temperature);
  if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) fail("--top-p must be in (0, 1], got {}", o.top_p);
  if (o.top_k < 0) fail("--top-k must be >= 0, got {}", o.top_k);
  if (!(o.min_p >= 0.0f && o.min_p <= 1.0f)) fail("--min-p must be in [0, 1], got {}", o.min_p);
  if (!(o.repetition_penalty > 0.0f) || !std::isfinite(o.repetition_penalty))
    fail("--repeat-penalty must be > 0, got {}", o.repetition_penalty);
  if (!std::isfinite(o.presence_penalty))
    fail("--presence-penalty must be finite, got {}", o.presence_penalty);
  if (!std::isfinite(o.frequency_penalty))
    fail("--frequency-penalty must be finite, got {}", o.frequency_penalty);
}

Sampler::Sampler(const SamplerOptions& options, int vocab_size)
    : options_(options),
      vocab_(vocab_size),
      rng_(options.seed),
      order_(static_cast<size_t>(vocab_size)),
      seen_(static_cast<size_t>(vocab_size), 0) {
  validate(options_);
  if (vocab_size <= 0) fail("sampler: vocabulary size must be > 0, got {}", vocab_size);
}

void Sampler::add_prompt(std::span<const int32_t> ids) {
  for (int32_t id : ids)
    if (id >= 0 && id < vocab_) seen_[size_t(id)] = 1;
}

void Sampler::accept(int32_t id) {
  if (id < 0 || id >= vocab_) return;
  seen_[size_t(id)] = 1;
  ++counts_[id];
}

const float* Sampler::penalised(const float* logits) {
  const bool repetition = options_.repetition_penalty != 1.0f;
  const bool openai = options_.presence_penalty != 0.0f || options_.frequency_penalty != 0.0f;
  if (!repetition && !(openai && !counts_.empty())) return logits;
  adjusted_.assign(logits, logits + vocab_);
  if (repetition) {
    const float r = options_.repetition_penalty;
    for (int32_t i = 0; i < vocab_; ++i)
      if (seen_[size_t(i)])
        adjusted_[size_t(i)] = adjusted_[size_t(i)] > 0 ? adjusted_[size_t(i)] / r : adjusted_[size_t(i)] * r;
  }
  for (const auto& [id, count] : counts_)
    adjusted_[size_t(id)] -= options_.presence_penalty + options_.frequency_penalty * float(count);
  return adjusted_.data();
}

const std::vector<Candidate>& Sampler::distribution(const float* raw) {
  const float* logits = penalised(raw);
  candidates_.clear();
  if (options_.temperature == 0.0f) {
    int32_t best = 0;
    for (int32_t i = 1; i < vocab_; ++i)
      if (logits[i] > logits[best]) best = i;
    candidates_.push_back({best, 1.0f});
    return candidates_;
  }
  // Candidates sorted by logit (only the top k when k is set), ties to the lower id.
  for (int32_t i = 0; i < vocab_; ++i) order_[size_t(i)] = i;
  const int k = options_.top_k > 0 ? std::min(options_.top_k, vocab_) : vocab_;
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  std::partial_sort(order_.begin(), order_.begin() + k, order_.end(), by_logit);

  const double inv_t = 1.0 / double(options_.temperature);
  const double top = logits[order_[0]];
  std::vector<double>& w = weights_;
  w.resize(size_t(k));
  double sum = 0.0;
  for (int i = 0; i < k; ++i) {
    w[size_t(i)] = std::exp((double(logits[order_[size_t(i)]]) - top) * inv_t);
    sum += w[size_t(i)];
  }
  // Top-p: keep token i while the mass strictly above it is < top_p (HF: drop when its tail <= 1 - top_p).
  int kept = k;
  if (options_.top_p < 1.0f) {
    double above = 0.0;
    for (int i = 0; i < k; ++i) {
      if (i > 0 && above >= double(options_.top_p)) {
        kept = i;
        break;
      }
      above += w[size_t(i)] / sum;
    }
  }
  // Min-p: p_i >= min_p * p_max, i.e. w_i >= min_p (w of the top token is 1).
  if (options_.min_p > 0.0f) {
    int n = 1;
    while (n < kept && w[size_t(n)] >= double(options_.min_p)) ++n;
    kept = n;
  }
  double kept_sum = 0.0;
  for (int i = 0; i < kept; ++i) kept_sum += w[size_t(i)];
  for (int i = 0; i < kept; ++i) candidates_.push_back({order_[size_t(i)], float(w[size_t(i)] / kept_sum)});
  return candidates_;
}

int32_t Sampler::sample(const float* logits) {
  const std::vector<Candidate>& c = distribution(logits);
  int32_t id = c.front().id;
  if (c.size() > 1) {
    const double u = double(rng_() >> 11) * 0x1.0p-53;  // uniform in [0, 1), the same on every platform
    double acc = 0.0;
    id = c.back().id;
    for (const Candidate& x : c) {
      acc += x.prob;
      if (u < acc) {
        id = x.id;
        break;
      }
    }
  }
  accept(id);
  return id;
}

StopMatcher::StopMatcher(std::vector<std::string> stop_strings) : stops_(std::move(stop_strings)) {
  for (const std::string& s : stops_)
    if (s.empty()) fail("stop strings must not be empty");
}

std::string StopMatcher::push(std::string_view text) {
  if (stopped_) return {};
  pending_ += text;
  // The earliest stop string in the pending text (the longest one when several start there).
  size_t cut = std::string::npos;
  for (const std::string& s : stops_) {
    const size_t at = pending_.find(s);
    if (at != std::string::npos && (at < cut || (at == cut && s.size() > matched_.size()))) {
      cut = at;
      matched_ = s;
    }
  }
  if (cut != std::string::npos) {
    stopped_ = true;
    std::string out = pending_.substr(0, cut);
    pending_.clear();
    released_ += out.size();
    return out;
  }
  // Hold back the longest tail that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string& s : stops_)
    for (size_t n = std::min(s.size() - 1, pending_.size()); n > hold; --n)
      if (pending_.compare(pending_.size() - n, n, s, 0, n) == 0) {
        hold = n;
        break;
      }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  released_ += out.size();
  return out;
}

std::string StopMatcher::finish() {
  std::string out = std::move(pending_);
  pending_.clear();
  released_ += out.size();
  return out;
}

}  // namespace fm
