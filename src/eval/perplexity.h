// Perplexity and KL divergence over a text, computed as llama.cpp's llama-perplexity computes them.
//
// The tokens are cut into non-overlapping windows of `ctx` tokens (the tail that does not fill a window
// is dropped). Each window runs from an empty sequence state; when the tokenizer adds a BOS token
// (llama.cpp: llama_vocab_get_add_bos), the window's first token is replaced by BOS. Only the second
// half is scored: the logits at positions first = ctx/2 .. ctx-2 predict the tokens at first+1 .. ctx-1,
// so each window scores ctx - 1 - ctx/2 tokens.
//
//   nll_i = -log softmax(logits_i)[target_i]           PPL = exp(mean nll)
//   PPL uncertainty = PPL * sqrt((mean(nll^2) - mean(nll)^2) / (N - 1))     (llama.cpp's "+/-")
//
// Against a reference ("base") run of the same tokens (BaseLogProbs), per scored position:
//   KL(base || this) = sum_v p_base(v) (log p_base(v) - log p(v)),   over v with log p_base(v) > -16
//   same top = argmax p == argmax p_base;   dp = p(target) - p_base(target)
// with means and uncertainties as llama.cpp's --kl-divergence prints them (mean_and_uncertainty:
// sqrt(var / (N - 1)), 0 for N <= 10).
//
// Typical use (a tuner keeps the base in memory and gates trials on kl_mean / top1_agree):
//   std::vector<int32_t> ids = eval_tokens(tokenizer, text);
//   BaseLogProbs base;
//   PerplexityResult ref = evaluate_perplexity(reference_tf, ids, {.ctx = 512, .chunks = 8}, nullptr, &base);
//   PerplexityResult r = evaluate_perplexity(candidate_tf, ids, {.ctx = 512, .chunks = 8}, &base);
//   r.kl_mean, r.top1_agree, r.ppl ...
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

namespace fm {

class Tokenizer;
class Transformer;

// The log-probabilities of a reference run at its scored positions, kept in memory or saved to a file
// (format in src/eval/base_logprobs.cpp and docs/quality.md). Each row holds the log-softmax quantised
// to uint16 over [max - 16, max] (as llama.cpp's --kl-divergence-base: 16/65535 = 2.4e-4 nats per step;
// entries below max - 16 read as the floor), plus the exact nll of the target and the exact argmax.
struct BaseLogProbs {
  int32_t ctx = 0;               // window length
  int32_t vocab = 0;             // logits per row
  int32_t chunks = 0;            // windows
  int32_t bos = -1;              // the BOS id that replaced each window's first token, -1: none
  uint64_t text_hash = 0;        // FNV-1a 64 of the text the tokens came from (0: not known)
  std::vector<int32_t> tokens;   // [chunks * ctx] the windows' tokens, as in the text
  std::vector<float> row_scale;  // [rows] log p = row_min + scale * q
  std::vector<float> row_min;    // [rows]
  std::vector<uint16_t> q;       // [rows][vocab]
  std::vector<float> nll;        // [rows] exact -log p(target)
  std::vector<int32_t> top1;     // [rows] exact argmax

  int32_t scored_per_chunk() const { return ctx - 1 - ctx / 2; }
  int64_t rows() const { return int64_t(chunks) * scored_per_chunk(); }
  // log p_base(v) of row r, dequantised.
  float log_prob(int64_t row, int32_t v) const;

  // Written atomically (util/atomic_file.h). load() checks the magic, version, sizes and a checksum and
  // throws fm::Error naming the file and what is wrong.
  void save(const std::filesystem::path& path) const;
  static BaseLogProbs load(const std::filesystem::path& path);
};

struct PerplexityProgress {
  int chunk = 0;          // windows done
  int chunks = 0;         // windows in all
  double ppl = 0;         // running estimate
  double kl_mean = 0;     // running, with a base
  double top1_agree = 0;  // running, with a base
  double seconds = 0;     // since the start
};

struct PerplexityOptions {
  int ctx = 512;           // window length n_ctx; must not exceed the transformer's max_context
  int chunks = -1;         // windows to run, at most tokens / ctx; <= 0: all of them
  int32_t bos = -1;        // >= 0: replace each window's first token with this id (llama.cpp's add_bos)
  uint64_t text_hash = 0;  // recorded into a saved base and checked against a loaded one (0: unchecked)
  std::function<void(const PerplexityProgress&)> on_chunk;  // called after each window
};

struct PerplexityResult {
  int chunks = 0;
  int64_t tokens = 0;             // scored tokens
  double nll = 0;                 // mean -log p(target)
  double nll_err = 0;             // its standard error
  double ppl = 0;                 // exp(nll)
  double ppl_err = 0;             // ppl * nll_err, llama.cpp's "+/-"
  double seconds = 0;             // wall time of the forward passes and scoring
  std::vector<double> chunk_ppl;  // running PPL after each window (llama.cpp's "[1]x,[2]y,...")

  // With a base; has_base false and the rest 0 otherwise.
  bool has_base = false;
  double base_ppl = 0, base_ppl_err = 0;
  double ln_ppl_ratio = 0, ln_ppl_ratio_err = 0;  // mean ln(PPL(Q)/PPL(base)), covariance-corrected
  double kl_mean = 0, kl_err = 0;                 // mean KL(base || this) and its uncertainty
  double kl_max = 0, kl_median = 0, kl_p99 = 0, kl_p999 = 0;
  double top1_agree = 0, top1_agree_err = 0;  // fraction of positions whose argmax agrees ("Same top p")
  double dp_mean = 0, dp_mean_err = 0;        // mean p(target) - p_base(target)
  double dp_rms = 0, dp_rms_err = 0;          // its RMS
  double dp_max = 0;                          // max |dp|
};

// The tokens of an evaluation text as llama-perplexity makes them: the text encoded without parsing
// special tokens, BOS prepended when the tokenizer adds one. An fm::Error when the text is empty.
std::vector<int32_t> eval_tokens(const Tokenizer& tokenizer, std::string_view text);
// The BOS id perplexity windows start with (llama.cpp: add_bos ? bos : none), -1 for none.
int32_t eval_bos(const Tokenizer& tokenizer);
// FNV-1a 64 of the text, for PerplexityOptions::text_hash.
uint64_t text_hash(std::string_view text);

// Runs the windows through `tf` (resetting its sequence per window) and scores them. With `base`,
// also the KL statistics against it; the base must come from the same tokens (the windows compared),
// ctx, vocab and BOS, and hold at least as many windows: otherwise an fm::Error saying which differs.
// With `save`, the run's log-probs are stored into it (to keep in memory or save()). Errors (fm::Error):
// no tokens, fewer than 2 * ctx tokens, ctx < 4 or above the transformer's max_context, a token id
// outside the model's vocabulary.
PerplexityResult evaluate_perplexity(Transformer& tf, std::span<const int32_t> tokens,
                                     const PerplexityOptions& options, const BaseLogProbs* base = nullptr,
                                     BaseLogProbs* save = nullptr);

// The statistics alone, on logits the caller computed (used by evaluate_perplexity; tests feed it
// hand-made logits). Add rows in order; finish() fills a PerplexityResult (chunks/seconds left to the
// caller).
class PerplexityScorer {
 public:
  // base may be null; save may be null. vocab: logits per row.
  PerplexityScorer(int32_t vocab, const BaseLogProbs* base, BaseLogProbs* save);
  // One scored position: logits [vocab] predicting `target`; base_row is the row index into base.
  void add(const float* logits, int32_t target, int64_t base_row);
  int64_t count() const { return count_; }
  PerplexityResult finish() const;
  double running_ppl() const;
  double running_kl() const;
  double running_top1() const;

 private:
  int32_t vocab_;
  const BaseLogProbs* base_;
  BaseLogProbs* save_;
  int64_t count_ = 0;
  double sum_nll_ = 0, sum_nll2_ = 0;
  double sum_nll_base_ = 0, sum_nll_base2_ = 0, sum_nll_nll_base_ = 0;
  double sum_kl_ = 0, sum_kl2_ = 0;
  double sum_dp_ = 0, sum_dp2_ = 0, sum_dp4_ = 0, max_dp_ = 0;
  int64_t same_top_ = 0;
  std::vector<float> kl_values_;
  std::vector<float> logp_;  // [vocab] scratch
};

}  // namespace fm
