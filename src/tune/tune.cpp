#include "tune/tune.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <memory>
#include <random>
#include <span>

#include "eval/perplexity.h"
#include "model/model.h"
#include "model/qwen_moe.h"
#include "ops/cpu/cpu_backend.h"
#include "stream/memory_plan.h"
#include "tokenizer/tokenizer.h"
#include "tune/config_file.h"
#include "util/error.h"
#include "util/sysinfo.h"

namespace fm::tune {

namespace {

constexpr int kMaxBatch = 128;

// How a stage's settings may change the model's numbers, and so which gate applies.
enum class Kind {
  Exact,      // I/O, cache, predictors, streaming: the same arithmetic on the same bytes
  NearExact,  // threads: the same arithmetic, possibly split differently
  Lossy,      // fewer experts, another file of the model
};

uint64_t fnv1a(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

// Drops what the page cache holds of the model's files (a .gguf, or a folder's files), so that each
// streaming trial reads the disk as a cold run does, whatever the trials before it read. Pages mapped
// by this process (the dense weights in use) stay.
void drop_page_cache(const std::string& model) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  std::error_code ec;
  if (fs::is_directory(model, ec)) {
    for (const fs::directory_entry& e : fs::directory_iterator(model, ec))
      if (e.is_regular_file(ec)) files.push_back(e.path());
  } else {
    files.emplace_back(model);
  }
  for (const fs::path& f : files) {
    const int fd = ::open(f.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;  // the trial's own load reports an unreadable file
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

// --- quality --------------------------------------------------------------------------------------

struct Quality {
  PerplexityResult stats;
  std::vector<uint64_t> hashes;  // [chunks * ctx]: FNV-1a 64 of every logit row of every window
  int64_t identical = 0;         // rows equal to the base's
  int64_t rows() const { return int64_t(hashes.size()); }
};

// The evaluation windows of eval/perplexity.h (non-overlapping, BOS first where the tokenizer adds
// one, the second half scored), run here so that every logit row can also be compared bitwise with
// the base run's (as 64-bit hashes); the statistics are PerplexityScorer's.
class Evaluator {
 public:
  Evaluator(std::vector<int32_t> tokens, int ctx, int chunks, int32_t bos, uint64_t hash)
      : tokens_(std::move(tokens)), ctx_(ctx), chunks_(chunks), bos_(bos), hash_(hash) {
    if (ctx < 4) fail("tune: --eval-ctx {} is too small (at least 4)", ctx);
    if (chunks < 1) fail("tune: --eval-chunks {} must be at least 1", chunks);
    const int64_t needed = int64_t(ctx) * chunks;
    if (int64_t(tokens_.size()) < needed)
      fail(
          "tune: the evaluation text has {} tokens; --eval-ctx {} x --eval-chunks {} needs {} (give a longer "
          "-f)",
          tokens_.size(), ctx, chunks, needed);
  }
  int ctx() const { return ctx_; }

  // The first call (make_base) records the reference; later calls compare with it.
  Quality run(Transformer& tf, bool make_base) {
    const int32_t vocab = tf.config().vocab_size;
    if (!make_base && vocab != base_.vocab)
      fail("the model's vocabulary has {} tokens, the base model's {}: not the same model", vocab,
           base_.vocab);
    if (make_base) {
      base_ = BaseLogProbs{};
      base_.ctx = ctx_;
      base_.vocab = vocab;
      base_.chunks = chunks_;
      base_.bos = bos_;
      base_.text_hash = hash_;
      base_.tokens.assign(tokens_.begin(), tokens_.begin() + int64_t(ctx_) * chunks_);
      base_hashes_.clear();
    }
    for (int32_t t : tokens_)
      if (t >= vocab)
        fail("the evaluation text has token id {}, outside the model's vocabulary of {}", t, vocab);
    PerplexityScorer scorer(vocab, make_base ? nullptr : &base_, make_base ? &base_ : nullptr);
    Quality q;
    const int first = ctx_ / 2, scored = ctx_ - 1 - first;
    const int batch = std::max(1, tf.options().max_batch);
    std::vector<float> logits(size_t(batch) * size_t(vocab));
    std::vector<int32_t> window(static_cast<size_t>(ctx_));
    SequenceState state = tf.new_sequence();
    const auto t0 = std::chrono::steady_clock::now();
    for (int c = 0; c < chunks_; ++c) {
      std::copy(tokens_.begin() + int64_t(c) * ctx_, tokens_.begin() + int64_t(c + 1) * ctx_, window.begin());
      if (bos_ >= 0) window[0] = bos_;
      state.reset();
      for (int start = 0; start < ctx_; start += batch) {
        const int n = std::min(batch, ctx_ - start);
        tf.forward(state, std::span<const int32_t>(window.data() + start, size_t(n)), logits.data(), true);
        for (int i = 0; i < n; ++i) {
          const float* row = logits.data() + size_t(i) * size_t(vocab);
          const uint64_t h = fnv1a(row, size_t(vocab) * sizeof(float));
          if (make_base)
            base_hashes_.push_back(h);
          else if (h == base_hashes_[q.hashes.size()])
            ++q.identical;
          q.hashes.push_back(h);
          const int p = start + i;
          if (p >= first && p <= ctx_ - 2)
            scorer.add(row, window[size_t(p + 1)], int64_t(c) * scored + (p - first));
        }
      }
    }
    q.stats = scorer.finish();
    q.stats.chunks = chunks_;
    q.stats.seconds = seconds_since(t0);
    if (make_base) q.identical = q.rows();
    return q;
  }

 private:
  std::vector<int32_t> tokens_;
  int ctx_, chunks_;
  int32_t bos_;
  uint64_t hash_;
  BaseLogProbs base_;
  std::vector<uint64_t> base_hashes_;  // [chunks * ctx] hash of each logit row of the base run
};

// --- speed ----------------------------------------------------------------------------------------

struct Speed {
  double decode_tok_s = 0, prefill_tok_s = 0, io_wait_ms = 0, cache_hit = 0;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t m = v.size();
  return m == 0 ? 0.0 : m % 2 ? v[m / 2] : 0.5 * (v[m / 2 - 1] + v[m / 2]);
}

// As flashmoe bench times it: a random prompt prefilled in one call, then greedy decode steps. The
// same prompts (seeded) for every trial.
Speed measure_speed(Transformer& tf, const TuneOptions& o) {
  const int32_t vocab = tf.config().vocab_size;
  std::vector<float> logits(static_cast<size_t>(vocab));
  std::vector<double> decode, prefill, wait, hit;
  SequenceState state = tf.new_sequence();
  double decode_seconds = 0;
  for (int rep = 0; rep < std::max(1, o.reps) || (decode_seconds < o.min_seconds && rep < 1000); ++rep) {
    std::mt19937 rng(uint32_t(1000 + rep));
    std::vector<int32_t> prompt(size_t(o.prompt_len));
    for (int32_t& t : prompt) t = int32_t(rng() % uint32_t(vocab));
    state.reset();
    auto t0 = std::chrono::steady_clock::now();
    tf.forward(state, prompt, logits.data(), false);
    prefill.push_back(o.prompt_len / seconds_since(t0));
    ExpertStore* store = tf.expert_store();
    const ExpertStoreStats s0 = store ? store->stats() : ExpertStoreStats{};
    t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < o.n_decode; ++i) {
      const int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
      tf.forward(state, std::span<const int32_t>(&next, 1), logits.data(), false);
    }
    const double seconds = seconds_since(t0);
    decode_seconds += seconds;
    decode.push_back(o.n_decode / seconds);
    if (store) {
      const ExpertStoreStats s1 = store->stats();
      const double demanded = double(s1.demanded - s0.demanded);
      wait.push_back((s1.wait_seconds - s0.wait_seconds) * 1000.0 / o.n_decode);
      hit.push_back(demanded > 0 ? double(s1.hits - s0.hits + s1.prefetch_hits - s0.prefetch_hits) / demanded
                                 : 0.0);
    }
  }
  return {median(decode), median(prefill), median(wait), median(hit)};
}

// --- the search -----------------------------------------------------------------------------------

struct Stage {
  std::string name;  // the option it varies
  Kind kind;
  bool stop_on_quality = false;  // candidates in decreasing quality: stop at the first that fails
};

class Tuner {
 public:
  explicit Tuner(const TuneOptions& o) : o_(o), t0_(std::chrono::steady_clock::now()) {}

  TuneReport run() {
    base_model_ = Model::load(o_.start.model);
    const Tokenizer tokenizer = Tokenizer::load(o_.start.model);
    std::vector<int32_t> ids = eval_tokens(tokenizer, o_.eval_text);
    evaluator_ = std::make_unique<Evaluator>(std::move(ids), o_.eval_ctx, o_.eval_chunks, eval_bos(tokenizer),
                                             text_hash(o_.eval_text));
    max_context_ = std::max(o_.eval_ctx, o_.prompt_len + o_.n_decode + 1);
    max_threads_ = o_.max_threads > 0 ? o_.max_threads : hardware_threads();
    std::filesystem::create_directories(o_.out_dir);
    report_.results_path = o_.out_dir / "results.tsv";
    report_.config_path = o_.out_dir / "best.conf";
    report_.plot_path = o_.out_dir / "trials.png";

    // The base: the unmodified model (its own top-K) with the starting setting.
    base_setting_ = o_.start;
    base_setting_.moe_top_k = 0;
    run_trial(base_setting_, "base", Kind::Exact, -1);
    best_tok_s_ = report_.trials[0].decode_tok_s;
    best_ = 0;

    const std::vector<Stage> stages = {
        {"threads", Kind::NearExact},     {"stream", Kind::Exact},   {"io-backend", Kind::Exact},
        {"io-threads", Kind::Exact},      {"io-split", Kind::Exact}, {"direct-io", Kind::Exact},
        {"cache-policy", Kind::Exact},    {"predict", Kind::Exact},  {"expert-cache", Kind::Exact},
        {"moe-top-k", Kind::Lossy, true}, {"model", Kind::Lossy},
    };
    bool out_of_time = false;
    for (int pass = 0; pass < 3 && !out_of_time; ++pass) {
      const int best_before = best_;
      for (const Stage& stage : stages) {
        for (const Setting& s : candidates(stage.name)) {
          if (seen(s)) continue;
          if (!time_for(1)) {
            out_of_time = true;
            break;
          }
          const int i = run_trial(s, stage.name, stage.kind, best_);
          if (stage.stop_on_quality && report_.trials[size_t(i)].quality_failed()) break;
        }
        if (out_of_time) break;
      }
      if (best_ == best_before) break;
    }
    if (!out_of_time)
      say(fmt::format("tune: search done after {} trials: no setting left to try", report_.trials.size()));
    if (out_of_time)
      say(fmt::format("tune: time budget ({:.0f} s{}) reached after {} trials", o_.time_budget_s,
                      o_.max_trials > 0 ? fmt::format(", {} trials", o_.max_trials) : "",
                      report_.trials.size()));
    report_.best = best_;
    if (o_.confirm && best_ != 0) confirm();
    write_outputs();
    return report_;
  }

 private:
  void say(const std::string& line) {
    if (o_.log) o_.log(line);
  }

  double elapsed() const { return seconds_since(t0_); }

  // Whether n more trials (and the confirmation) fit in the budget, judged by the trials so far.
  bool time_for(int n) const {
    double sum = 0;
    for (const Trial& t : report_.trials) sum += t.seconds;
    if (o_.max_trials > 0 && int(report_.trials.size()) + n > o_.max_trials) return false;
    const double per = sum / double(std::max<size_t>(report_.trials.size(), 1));
    const int reserve = o_.confirm ? 4 : 0;
    return elapsed() + per * (n + reserve) <= o_.time_budget_s;
  }

  bool seen(const Setting& s) const {
    for (const Trial& t : report_.trials)
      if (t.setting == s) return true;
    return false;
  }

  std::vector<Setting> candidates(const std::string& stage) const {
    const Setting& best = report_.trials[size_t(best_)].setting;
    std::vector<Setting> out;
    auto add = [&](auto mutate) {
      Setting s = best;
      mutate(s);
      if (!(s == best)) out.push_back(s);
    };
    const bool fixed = o_.fixed.contains(stage);
    if (stage == "threads" && !fixed) {
      std::vector<int> counts;
      for (int t = 1; t < max_threads_; t *= 2) counts.push_back(t);
      counts.push_back(max_threads_);
      if (max_threads_ >= 6) counts.push_back(max_threads_ * 3 / 4);
      for (int t : counts) add([t](Setting& s) { s.threads = t; });
    } else if (stage == "stream" && !fixed) {
      // A model that fits may still run faster streamed (its experts packed in the cache's slots).
      add([this](Setting& s) {
        s.stream = !s.stream;
        s.expert_cache = s.stream && s.mem_budget == 0 ? all_experts_bytes() : 0;
      });
    } else if (stage == "moe-top-k") {
      const int k = base_model_->config.num_experts_per_tok;
      if (fixed) {
        add([this](Setting& s) { s.moe_top_k = o_.start.moe_top_k; });
      } else {
        for (int v = k - 1; v >= std::max(1, (k + 1) / 2); --v) add([v](Setting& s) { s.moe_top_k = v; });
      }
    } else if (stage == "model") {
      for (const std::string& m : o_.alt_models) add([&m](Setting& s) { s.model = m; });
    } else if (best.stream && !fixed) {
      if (stage == "io-backend")
        for (const char* b : {"pread", "uring"}) add([b](Setting& s) { s.io_backend = b; });
      if (stage == "io-threads")
        for (int t : {1, 2, 4, 8, 16, 32}) add([t](Setting& s) { s.io_threads = t; });
      if (stage == "io-split")
        for (int t : {1, 2, 4, 8}) add([t](Setting& s) { s.io_split = t; });
      if (stage == "direct-io")
        for (bool d : {false, true}) add([d](Setting& s) { s.direct_io = d; });
      if (stage == "cache-policy")
        for (const char* p : {"lru", "lfu"}) add([p](Setting& s) { s.cache_policy = p; });
      if (stage == "predict")
        for (const char* p : {"none", "lookahead", "temporal", "lookahead,temporal"})
          add([p](Setting& s) { s.predict = p; });
      if (stage == "expert-cache")
        for (uint64_t bytes : cache_sizes()) add([bytes](Setting& s) { s.expert_cache = bytes; });
    }
    return out;
  }

  // An expert cache slot as the store sizes it (stream/memory_plan.cpp), and room for every expert.
  uint64_t slot_bytes() const {
    uint64_t slot = 0;
    for (const LayerWeights& L : base_model_->weights.layers)
      if (L.is_moe)
        slot = std::max(slot, L.moe.experts[0].gate.nbytes() + L.moe.experts[0].up.nbytes() +
                                  L.moe.experts[0].down.nbytes() + 6 * io::kAlign);
    return slot;
  }
  uint64_t all_experts_bytes() const {
    int moe_layers = 0;
    for (const LayerWeights& L : base_model_->weights.layers) moe_layers += L.is_moe;
    return slot_bytes() * uint64_t(moe_layers) * uint64_t(base_model_->config.num_experts);
  }

  // Expert cache sizes to try: what the budget leaves (0) and a half and a quarter of it; without a
  // budget, room for every expert, half and a quarter of that, and the default (0).
  std::vector<uint64_t> cache_sizes() const {
    const Model& m = *base_model_;
    const uint64_t minimum = slot_bytes() * uint64_t(m.config.num_experts_per_tok + 1);
    uint64_t full = all_experts_bytes();
    if (o_.start.mem_budget > 0)
      full = transformer_options(o_.start, m, max_context_, kMaxBatch, o_.plan_context).stream.cache_bytes;
    std::vector<uint64_t> sizes = {0};
    if (o_.start.mem_budget == 0) sizes.push_back(full);
    for (uint64_t part : {full / 2, full / 4})
      if (part >= minimum) sizes.push_back(part);
    return sizes;
  }

  // Runs one trial, gates it, logs it and rewrites results.tsv; returns its index. `parent`: the trial
  // it varies (the best so far; for a confirmation, the trial it repeats; -1 for the base).
  int run_trial(const Setting& s, const std::string& stage, Kind kind, int parent,
                bool confirmation = false) {
    Trial t;
    t.index = int(report_.trials.size());
    t.stage = stage;
    t.setting = s;
    t.change = describe_change(s, base_setting_);
    const bool is_base = parent < 0;
    std::vector<uint64_t> hashes;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      Engine engine(*this, s);
      Quality q = evaluator_->run(engine.tf, is_base);
      const Speed sp = measure_speed(engine.tf, o_);
      t.decode_tok_s = sp.decode_tok_s;
      t.prefill_tok_s = sp.prefill_tok_s;
      t.io_wait_ms = sp.io_wait_ms;
      t.cache_hit = sp.cache_hit;
      t.ppl = q.stats.ppl;
      t.identical = q.identical == q.rows();
      // Identical logits have KL 0; the quantised base (eval/perplexity.h) would give about +-1e-8.
      t.kl_mean = t.identical ? 0.0 : q.stats.kl_mean;
      t.kl_max = t.identical ? 0.0 : q.stats.kl_max;
      t.top1_agree = t.identical ? 1.0 : q.stats.top1_agree;
      hashes = std::move(q.hashes);
      if (is_base) {
        t.verdict = Verdict::Base;
        t.reason = "the reference: unmodified model, starting setting";
      } else if (confirmation) {
        t.verdict = Verdict::Confirm;
        t.reason = fmt::format("re-run of #{}", parent);
        const int64_t differ = differing(hashes, parent);
        t.reason +=
            differ ? fmt::format("; logits differ from its run on {} of {} positions", differ, hashes.size())
                   : "; logits identical to its run";
      } else {
        gate(t, kind, differing(hashes, parent), int64_t(hashes.size()), parent);
      }
    } catch (const Error& e) {
      if (is_base) throw;
      t.verdict = Verdict::Failed;
      t.reason = e.what();
    }
    t.seconds = seconds_since(t0);
    report_.trials.push_back(t);
    hashes_.push_back(std::move(hashes));
    if (t.verdict == Verdict::Kept) best_ = t.index;
    say(fmt::format(
        "tune: #{} {}: decode {:.2f} tok/s, prefill {:.1f} tok/s, ppl {:.4f}, KL {:.3g}{} -> {} ({}) "
        "[{:.1f} s]",
        t.index, t.change, t.decode_tok_s, t.prefill_tok_s, t.ppl, t.kl_mean,
        t.identical ? " (identical to base)" : "", verdict_name(t.verdict), t.reason, t.seconds));
    write_results_tsv(report_.results_path, report_.trials);
    return t.index;
  }

  // Logit rows of a run that differ from trial `other`'s.
  int64_t differing(const std::vector<uint64_t>& hashes, int other) const {
    const std::vector<uint64_t>& ref = hashes_[size_t(other)];
    if (ref.size() != hashes.size()) return int64_t(hashes.size());
    int64_t n = 0;
    for (size_t i = 0; i < hashes.size(); ++i) n += hashes[i] != ref[i];
    return n;
  }

  // Exact settings must reproduce the parent's logits bit for bit; thread counts may add at most max_kl
  // to the parent's KL from the base; fewer experts and other files must stay within max_kl_lossy of
  // the base. Then the trial must beat the best's decode speed by min_gain.
  void gate(Trial& t, Kind kind, int64_t differ, int64_t rows, int parent) {
    const Trial& best = report_.trials[size_t(best_)];
    const Trial& from = report_.trials[size_t(parent)];
    const std::string kl = fmt::format("mean KL vs base {:.3g} (max {:.3g}), top-1 agreement {:.1f}%",
                                       t.kl_mean, t.kl_max, 100.0 * t.top1_agree);
    if (kind == Kind::Exact && differ > 0) {
      t.verdict = Verdict::Discarded;
      t.reason = fmt::format(
          "quality: logits differ from #{} on {} of {} positions ({}); this setting must not "
          "change them",
          parent, differ, rows, kl);
      return;
    }
    if (kind == Kind::NearExact && differ > 0 && t.kl_mean > from.kl_mean + o_.max_kl) {
      t.verdict = Verdict::Discarded;
      t.reason = fmt::format("quality: {}, more than #{}'s {:.3g} + --max-kl {:.3g}", kl, parent,
                             from.kl_mean, o_.max_kl);
      return;
    }
    if (kind == Kind::Lossy && t.kl_mean > o_.max_kl_lossy) {
      t.verdict = Verdict::Discarded;
      t.reason = fmt::format("quality: {} > --max-kl-lossy {:.3g}", kl, o_.max_kl_lossy);
      return;
    }
    const double base_ppl = report_.trials[0].ppl;
    if (kind == Kind::Lossy && t.ppl > base_ppl * (1.0 + o_.max_ppl_increase)) {
      t.verdict = Verdict::Discarded;
      t.reason = fmt::format(
          "quality: perplexity {:.4f} is {:+.2f}% of the base's {:.4f} > --max-ppl-increase {:.3g}%", t.ppl,
          100.0 * (t.ppl / base_ppl - 1), base_ppl, 100.0 * o_.max_ppl_increase);
      return;
    }
    const std::string quality = differ == 0 ? fmt::format("logits identical to #{}", parent) : kl;
    if (!(t.decode_tok_s > best_tok_s_ * (1.0 + o_.min_gain))) {
      t.verdict = Verdict::Discarded;
      t.reason = fmt::format("not faster than #{} by {:.0f}%: {:.2f} vs {:.2f} tok/s; {}", best.index,
                             100.0 * o_.min_gain, t.decode_tok_s, best_tok_s_, quality);
      return;
    }
    // A win is checked once more, the best and the candidate timed back to back, so that a moment of
    // load on the machine does not decide the search.
    const double best_again = remeasure(best.setting).decode_tok_s;
    const double again = remeasure(t.setting).decode_tok_s;
    if (again > best_again * (1.0 + o_.min_gain)) {
      t.verdict = Verdict::Kept;
      t.reason = fmt::format("faster than #{}: {:.2f} vs {:.2f} tok/s, back to back {:.2f} vs {:.2f}; {}",
                             best.index, t.decode_tok_s, best_tok_s_, again, best_again, quality);
      best_tok_s_ = again;
    } else {
      t.verdict = Verdict::Discarded;
      t.reason = fmt::format(
          "faster than #{} at first ({:.2f} vs {:.2f} tok/s) but not back to back ({:.2f} vs "
          "{:.2f}); {}",
          best.index, t.decode_tok_s, best_tok_s_, again, best_again, quality);
      best_tok_s_ = std::max(best_tok_s_, best_again);
    }
  }

  // The speed of a setting alone, on a fresh engine.
  Speed remeasure(const Setting& s) {
    Engine engine(*this, s);
    return measure_speed(engine.tf, o_);
  }

  // A fresh engine for a setting: its model (the base one unless the setting names another file),
  // threads and transformer options; a streaming setting starts from a cold page cache.
  struct Engine {
    std::unique_ptr<Model> other;
    const Model& model;
    CpuBackend backend;
    Transformer tf;
    Engine(const Tuner& tuner, const Setting& s)
        : other(s.model != tuner.base_setting_.model ? Model::load(s.model) : nullptr),
          model(other ? *other : *tuner.base_model_),
          backend(s.threads),
          tf(model, backend, start(tuner, s, model)) {}

   private:
    static TransformerOptions start(const Tuner& tuner, const Setting& s, const Model& model) {
      const TransformerOptions topt =
          transformer_options(s, model, tuner.max_context_, kMaxBatch, tuner.o_.plan_context);
      if (s.stream) drop_page_cache(s.model);
      return topt;
    }
  };

  // The base and the best again, alternating, so that both see the same machine.
  void confirm() {
    const Setting best = report_.trials[size_t(best_)].setting;
    const int best_index = best_;
    std::vector<double> base_tps, best_tps;
    for (int round = 0; round < 2; ++round) {
      int i = run_trial(base_setting_, "confirm", Kind::Exact, 0, true);
      if (report_.trials[size_t(i)].verdict == Verdict::Confirm)
        base_tps.push_back(report_.trials[size_t(i)].decode_tok_s);
      i = run_trial(best, "confirm", Kind::Exact, best_index, true);
      if (report_.trials[size_t(i)].verdict == Verdict::Confirm)
        best_tps.push_back(report_.trials[size_t(i)].decode_tok_s);
    }
    report_.confirmed_base_tok_s = median(base_tps);
    report_.confirmed_best_tok_s = median(best_tps);
  }

  void write_outputs() {
    const Trial& best = report_.trials[size_t(best_)];
    const Trial& base = report_.trials[0];
    const std::time_t now = std::time(nullptr);
    char date[32];
    std::strftime(date, sizeof date, "%Y-%m-%d %H:%M UTC", std::gmtime(&now));
    std::string comment = fmt::format(
        "flashmoe tune, {}: the best of {} trials on {}\n"
        "best #{}: decode {:.2f} tok/s, prefill {:.1f} tok/s, perplexity {:.4f}, mean KL vs the base "
        "{:.3g}{}\n"
        "base #0: decode {:.2f} tok/s, prefill {:.1f} tok/s, perplexity {:.4f}\n",
        date, report_.trials.size(), base.setting.model, best.index, best.decode_tok_s, best.prefill_tok_s,
        best.ppl, best.kl_mean, best.identical ? " (logits identical)" : "", base.decode_tok_s,
        base.prefill_tok_s, base.ppl);
    if (report_.confirmed_base_tok_s > 0)
      comment += fmt::format("re-measured back to back: base {:.2f} tok/s, best {:.2f} tok/s ({:+.1f}%)\n",
                             report_.confirmed_base_tok_s, report_.confirmed_best_tok_s,
                             100.0 * (report_.confirmed_best_tok_s / report_.confirmed_base_tok_s - 1));
    comment +=
        "every trial: results.tsv; use with: flashmoe run --config FILE (command-line options override it)";
    Setting out = best.setting;
    const bool with_model = out.model != o_.start.model;
    if (with_model) out.model = std::filesystem::absolute(out.model).string();
    write_config_file(report_.config_path, comment, setting_entries(out, with_model));
    write_plot_png(
        report_.plot_path, report_.trials,
        {.title = fmt::format("flashmoe tune: {}", std::filesystem::path(o_.start.model).filename().string()),
         .best = best_,
         .base = 0});
  }

  const TuneOptions& o_;
  std::chrono::steady_clock::time_point t0_;
  std::unique_ptr<Model> base_model_;
  std::unique_ptr<Evaluator> evaluator_;
  Setting base_setting_;
  int max_context_ = 0, max_threads_ = 1;
  int best_ = 0;
  double best_tok_s_ = 0;  // the best's decode speed, from its latest measurement
  TuneReport report_;
  std::vector<std::vector<uint64_t>> hashes_;  // [trial]: Quality::hashes
};

}  // namespace

bool needs_streaming(const Model& model, uint64_t mem_budget, int max_context, int max_batch) {
  if (mem_budget == 0) return false;
  TransformerOptions t;
  t.max_context = max_context;
  t.max_batch = max_batch;
  const MemoryPlan p = plan_memory(model, t, 0, 0);
  return p.dense + model.weights.expert_bytes + p.state + p.scratch + p.overhead > mem_budget;
}

TuneReport run_tune(const TuneOptions& options) { return Tuner(options).run(); }

}  // namespace fm::tune
