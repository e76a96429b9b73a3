// Perplexity windows and the statistics of llama.cpp's llama-perplexity and --kl-divergence (see
// perplexity.h for the definitions).
#include "eval/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "model/qwen_moe.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace fm {

namespace {

// Mean and standard error as llama.cpp's kl_divergence computes them: sqrt(var / (N - 1)), 0 when
// the variance is not positive or N <= 10.
std::pair<double, double> mean_and_uncertainty(double sum, double sum2, int64_t count) {
  if (count < 1) return {0.0, 0.0};
  const double f = sum / double(count);
  const double var = sum2 / double(count) - f * f;
  return {f, var > 0 && count > 10 ? std::sqrt(var / double(count - 1)) : 0.0};
}

double covariance(double sum_a, double sum_b, double sum_ab, int64_t count) {
  if (count < 10) return 0.0;
  const double n = double(count);
  return (sum_ab / n - (sum_a / n) * (sum_b / n)) / (n - 1);
}

// llama.cpp's percentile: linear interpolation between the sorted values at fraction * (n - 1).
double percentile(const std::vector<float>& sorted, double fraction) {
  if (sorted.empty()) return 0.0;
  if (fraction <= 0) return sorted.front();
  if (fraction >= 1) return sorted.back();
  double p = fraction * double(sorted.size() - 1);
  const size_t ip = size_t(p);
  p -= double(ip);
  return (1 - p) * sorted[ip] + p * sorted[std::min(ip + 1, sorted.size() - 1)];
}

int nearest_int(float v) { return int(std::lround(v)); }

}  // namespace

uint64_t text_hash(std::string_view text) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : text) {
    h ^= ch;
    h *= 0x100000001b3ull;
  }
  return h;
}

int32_t eval_bos(const Tokenizer& tokenizer) {
  return tokenizer.add_bos().value_or(false) && tokenizer.bos_id() ? *tokenizer.bos_id() : -1;
}

std::vector<int32_t> eval_tokens(const Tokenizer& tokenizer, std::string_view text) {
  if (text.empty()) fail("the evaluation text is empty");
  std::vector<int32_t> ids = tokenizer.encode(text, /*parse_special=*/false);
  const int32_t bos = eval_bos(tokenizer);
  if (bos >= 0) ids.insert(ids.begin(), bos);
  return ids;
}

// --- PerplexityScorer -------------------------------------------------------------------------------

PerplexityScorer::PerplexityScorer(int32_t vocab, const BaseLogProbs* base, BaseLogProbs* save)
    : vocab_(vocab), base_(base), save_(save), logp_(static_cast<size_t>(vocab)) {
  FM_CHECK(vocab > 0, "vocab {}", vocab);
  FM_CHECK(!base || base->vocab == vocab, "base vocab {} vs {}", base ? base->vocab : 0, vocab);
  FM_CHECK(!save || save->vocab == vocab, "save vocab {} vs {}", save ? save->vocab : 0, vocab);
}

void PerplexityScorer::add(const float* logits, int32_t target, int64_t base_row) {
  FM_CHECK(target >= 0 && target < vocab_, "target {} outside [0, {})", target, vocab_);
  const int32_t V = vocab_;
  float max_logit = logits[0];
  float min_logit = logits[0];
  int32_t imax = 0;
  for (int32_t i = 1; i < V; ++i) {
    if (logits[i] > max_logit) {
      max_logit = logits[i];
      imax = i;
    }
    min_logit = std::min(min_logit, logits[i]);
  }
  double sum_exp = 0.0;
  for (int32_t i = 0; i < V; ++i) sum_exp += std::exp(double(logits[i]) - double(max_logit));
  const double log_sum_exp = std::log(sum_exp);
  const double nll = double(max_logit) + log_sum_exp - double(logits[target]);
  sum_nll_ += nll;
  sum_nll2_ += nll * nll;
  ++count_;

  if (save_) {
    // Quantise log p over [max - 16, max] to uint16, as llama.cpp's --kl-divergence-base does.
    const float lo = std::max(min_logit, max_logit - 16.0f);
    const float scale = (max_logit - lo) / 65535.0f;
    const size_t at = save_->q.size();
    save_->q.resize(at + size_t(V));
    uint16_t* q = save_->q.data() + at;
    if (scale > 0) {
      const float inv = 1.0f / scale;
      for (int32_t i = 0; i < V; ++i)
        q[i] = logits[i] > lo ? uint16_t(std::clamp(nearest_int(inv * (logits[i] - lo)), 0, 65535)) : 0;
    } else {
      std::memset(q, 0, size_t(V) * sizeof(uint16_t));
    }
    save_->row_scale.push_back(scale);
    save_->row_min.push_back(float(double(lo) - double(max_logit) - log_sum_exp));
    save_->nll.push_back(float(nll));
    save_->top1.push_back(imax);
  }

  if (base_) {
    FM_CHECK(base_row >= 0 && base_row < base_->rows(), "base row {} of {}", base_row, base_->rows());
    const double nll_base = base_->nll[size_t(base_row)];
    sum_nll_base_ += nll_base;
    sum_nll_base2_ += nll_base * nll_base;
    sum_nll_nll_base_ += nll * nll_base;

    // KL(base || this) over the base's entries above e^-16 (llama.cpp drops the rest).
    const float scale = base_->row_scale[size_t(base_row)];
    const float lo = base_->row_min[size_t(base_row)];
    const uint16_t* q = base_->q.data() + size_t(base_row) * size_t(V);
    const double log_norm = double(max_logit) + log_sum_exp;
    double kl = 0.0;
    for (int32_t i = 0; i < V; ++i) {
      const float lp_base = lo + scale * float(q[i]);
      if (lp_base > -16.0f)
        kl += std::exp(double(lp_base)) * (double(lp_base) - (double(logits[i]) - log_norm));
    }
    sum_kl_ += kl;
    sum_kl2_ += kl * kl;
    kl_values_.push_back(float(kl));
    if (imax == base_->top1[size_t(base_row)]) ++same_top_;

    const double dp = std::exp(-nll) - std::exp(-nll_base);
    sum_dp_ += dp;
    sum_dp2_ += dp * dp;
    sum_dp4_ += dp * dp * dp * dp;
    max_dp_ = std::max(max_dp_, std::fabs(dp));
  }
}

double PerplexityScorer::running_ppl() const { return count_ ? std::exp(sum_nll_ / double(count_)) : 0.0; }
double PerplexityScorer::running_kl() const { return count_ && base_ ? sum_kl_ / double(count_) : 0.0; }
double PerplexityScorer::running_top1() const {
  return count_ && base_ ? double(same_top_) / double(count_) : 0.0;
}

PerplexityResult PerplexityScorer::finish() const {
  PerplexityResult r;
  r.tokens = count_;
  if (count_ == 0) return r;
  const double n = double(count_);
  // llama-perplexity's final estimate: the standard error of the mean nll, times PPL.
  r.nll = sum_nll_ / n;
  const double var = sum_nll2_ / n - r.nll * r.nll;
  r.nll_err = var > 0 && count_ > 1 ? std::sqrt(var / (n - 1)) : 0.0;
  r.ppl = std::exp(r.nll);
  r.ppl_err = r.ppl * r.nll_err;
  if (!base_) return r;

  r.has_base = true;
  const auto [log_ppl, log_ppl_unc] = mean_and_uncertainty(sum_nll_, sum_nll2_, count_);
  const auto [log_base, log_base_unc] = mean_and_uncertainty(sum_nll_base_, sum_nll_base2_, count_);
  r.base_ppl = std::exp(log_base);
  r.base_ppl_err = r.base_ppl * log_base_unc;
  const double cov = covariance(sum_nll_, sum_nll_base_, sum_nll_nll_base_, count_);
  r.ln_ppl_ratio = log_ppl - log_base;
  r.ln_ppl_ratio_err =
      std::sqrt(std::max(0.0, log_ppl_unc * log_ppl_unc + log_base_unc * log_base_unc - 2 * cov));

  const auto [kl, kl_unc] = mean_and_uncertainty(sum_kl_, sum_kl2_, count_);
  r.kl_mean = kl;
  r.kl_err = kl_unc;
  std::vector<float> sorted = kl_values_;
  std::sort(sorted.begin(), sorted.end());
  r.kl_max = sorted.back();
  const size_t m = sorted.size();
  r.kl_median =
      m % 2 == 0 ? 0.5 * (double(sorted[m / 2]) + double(sorted[m / 2 - 1])) : double(sorted[m / 2]);
  r.kl_p99 = percentile(sorted, 0.99);
  r.kl_p999 = percentile(sorted, 0.999);

  r.top1_agree = double(same_top_) / n;
  r.top1_agree_err = count_ > 1 ? std::sqrt(r.top1_agree * (1 - r.top1_agree) / (n - 1)) : 0.0;
  const auto [dp, dp_unc] = mean_and_uncertainty(sum_dp_, sum_dp2_, count_);
  r.dp_mean = dp;
  r.dp_mean_err = dp_unc;
  const auto [mse, mse_unc] = mean_and_uncertainty(sum_dp2_, sum_dp4_, count_);
  r.dp_rms = std::sqrt(mse);
  r.dp_rms_err = r.dp_rms > 0 ? 0.5 / r.dp_rms * mse_unc : 0.0;
  r.dp_max = max_dp_;
  return r;
}

// --- the windows ------------------------------------------------------------------------------------

namespace {

void check_base(const BaseLogProbs& base, std::span<const int32_t> tokens, int ctx, int chunks, int32_t vocab,
                const PerplexityOptions& o) {
  if (base.ctx != ctx)
    fail("the base log-probs were computed with --ctx {}, this run uses --ctx {}", base.ctx, ctx);
  if (base.vocab != vocab)
    fail("the base log-probs are over a vocabulary of {} tokens, this model's has {} (another model family)",
         base.vocab, vocab);
  if (base.bos != o.bos)
    fail("the base log-probs were computed with BOS {}, this run with BOS {} (another tokenizer)", base.bos,
         o.bos);
  if (base.text_hash != 0 && o.text_hash != 0 && base.text_hash != o.text_hash)
    fail("the base log-probs were computed on another text (text hash {:016x}, this one {:016x})",
         base.text_hash, o.text_hash);
  if (base.chunks < chunks)
    fail("the base log-probs hold {} windows of {} tokens, this run needs {} (use --chunks {} or fewer)",
         base.chunks, ctx, chunks, base.chunks);
  const size_t n = size_t(chunks) * size_t(ctx);
  for (size_t i = 0; i < n; ++i)
    if (base.tokens[i] != tokens[i])
      fail(
          "the base log-probs were computed on other tokens (another tokenizer or text): token {} is {} "
          "there, "
          "{} here",
          i, base.tokens[i], tokens[i]);
}

}  // namespace

PerplexityResult evaluate_perplexity(Transformer& tf, std::span<const int32_t> tokens,
                                     const PerplexityOptions& o, const BaseLogProbs* base,
                                     BaseLogProbs* save) {
  const int ctx = o.ctx;
  const int32_t vocab = tf.config().vocab_size;
  if (tokens.empty()) fail("the evaluation text has no tokens");
  if (ctx < 4) fail("perplexity: --ctx {} is too small (at least 4)", ctx);
  if (ctx > tf.options().max_context)
    fail("perplexity: --ctx {} exceeds the context the model runs with ({})", ctx, tf.options().max_context);
  if (tf.config().max_position_embeddings > 0 && ctx > tf.config().max_position_embeddings)
    fail("perplexity: --ctx {} exceeds the model's context of {} tokens (max_position_embeddings)", ctx,
         tf.config().max_position_embeddings);
  if (int64_t(tokens.size()) < 2 * int64_t(ctx))
    fail("perplexity needs at least {} tokens (2 * --ctx {}); the text has only {}", 2 * int64_t(ctx), ctx,
         tokens.size());
  if (o.bos >= vocab) fail("perplexity: BOS id {} is outside the model's vocabulary of {}", o.bos, vocab);
  const int max_chunks = int(std::min<int64_t>(int64_t(tokens.size()) / ctx, INT32_MAX));
  const int chunks = o.chunks > 0 ? std::min(o.chunks, max_chunks) : max_chunks;
  if (base) check_base(*base, tokens, ctx, chunks, vocab, o);
  if (save) {
    *save = BaseLogProbs{};
    save->ctx = ctx;
    save->vocab = vocab;
    save->chunks = chunks;
    save->bos = o.bos;
    save->text_hash = o.text_hash;
    save->tokens.assign(tokens.begin(), tokens.begin() + int64_t(chunks) * ctx);
    const size_t rows = size_t(save->rows());
    save->q.reserve(rows * size_t(vocab));
    save->row_scale.reserve(rows);
    save->row_min.reserve(rows);
    save->nll.reserve(rows);
    save->top1.reserve(rows);
  }

  const auto t0 = std::chrono::steady_clock::now();
  PerplexityScorer scorer(vocab, base, save);
  PerplexityResult result;
  const int first = ctx / 2;
  const int scored = ctx - 1 - first;
  const int batch = std::max(1, tf.options().max_batch);
  std::vector<float> logits(size_t(batch) * size_t(vocab));  // [batch][vocab]
  std::vector<int32_t> window(static_cast<size_t>(ctx));
  SequenceState state = tf.new_sequence();
  for (int c = 0; c < chunks; ++c) {
    const int32_t* w = tokens.data() + int64_t(c) * ctx;
    std::copy(w, w + ctx, window.begin());
    if (o.bos >= 0) window[0] = o.bos;
    state.reset();
    for (int start = 0; start < ctx; start += batch) {
      const int n = std::min(batch, ctx - start);
      tf.forward(state, std::span<const int32_t>(window.data() + start, size_t(n)), logits.data(), true);
      // Position p predicts token p + 1; positions first .. ctx - 2 are scored.
      for (int p = std::max(start, first); p < start + n && p < ctx - 1; ++p)
        scorer.add(logits.data() + size_t(p - start) * size_t(vocab), w[p + 1],
                   int64_t(c) * scored + (p - first));
    }
    result.chunk_ppl.push_back(scorer.running_ppl());
    if (o.on_chunk)
      o.on_chunk({.chunk = c + 1,
                  .chunks = chunks,
                  .ppl = scorer.running_ppl(),
                  .kl_mean = scorer.running_kl(),
                  .top1_agree = scorer.running_top1(),
                  .seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()});
  }
  std::vector<double> chunk_ppl = std::move(result.chunk_ppl);
  result = scorer.finish();
  result.chunk_ppl = std::move(chunk_ppl);
  result.chunks = chunks;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

}  // namespace fm
