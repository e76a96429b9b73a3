// flashmoe tune: the search for the fastest engine setting on this machine that keeps the model's
// quality, as a staged coordinate descent within a time budget.
//
//   base trial: the starting setting (defaults + the options the user gave) at the model's full top-K;
//               its log-probs on the evaluation text are the quality reference, kept in memory
//   stages:     threads; streaming on/off (when the model fits without); with streaming io-backend,
//               io-threads, io-split, direct-io, cache-policy, predict, expert-cache; then moe-top-k
//               (fewer experts) and the other model files
//   each trial: a fresh Transformer with the setting (streaming: the model's files dropped from the page
//               cache first, so every trial starts as cold as the first); quality = perplexity and KL(base ||
//               trial) over the evaluation windows (eval/perplexity.h, llama.cpp's statistics) plus a bitwise
//               comparison of every position's logits (64-bit hashes); speed = median of at least
//               `reps` runs (more until min_seconds of decoding) of a random prompt's prefill and
//               `n_decode` greedy steps
//   gate:       settings that must not change the numbers (I/O, cache, predictors, streaming) must
//               reproduce the logits of the trial they vary bit for bit; threads may add at most
//               max_kl to its KL; fewer experts and other model files must stay within max_kl_lossy
//               and max_ppl_increase of the base. A trial that passes is kept when its decode tok/s
//               beats the best so far by min_gain, and again when both are timed once more back to
//               back; the next stage starts from the best.
//   passes:     the stages repeat while a pass changed the best and time is left; settings already
//               measured are not run again
//   confirm:    the base and the best are measured again back to back (twice each) for the gain
//
// Every trial is appended to results.tsv (rewritten whole after each), the best setting is written as
// a configuration file (tune/config_file.h) and the trials are plotted (tune/results.h).
#pragma once
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "tune/results.h"
#include "tune/setting.h"

namespace fm::tune {

struct TuneOptions {
  Setting start;                // model, threads, streaming... as the user gave them, defaults elsewhere
  std::set<std::string> fixed;  // option names the user set explicitly: not swept
  std::vector<std::string> alt_models;  // other files of the same model (e.g. other quant types)
  std::string eval_text;                // the evaluation text
  int eval_ctx = 128;                   // window length
  int eval_chunks = 4;                  // windows (the text must hold eval_ctx * eval_chunks tokens)
  int plan_context = 4096;              // context the memory plan (expert cache within a budget) is made for
  int max_threads = 0;                  // largest thread count tried (0: the hardware's)
  double time_budget_s = 600;           // no new trial starts once the next one would overrun it
  int max_trials = 0;                   // nor once this many have run (the confirmation apart; 0: no limit)
  double max_kl = 0.01;            // bound on mean KL for threads (should be exact, may round differently)
  double max_kl_lossy = 0.05;      // bound on mean KL for fewer experts and other model files
  double max_ppl_increase = 0.01;  // ... and on their perplexity, as a fraction above the base's
  double min_gain = 0.03;          // a trial is kept when faster than the best by this fraction
  int n_decode = 32;               // decode steps timed per repetition
  int prompt_len = 32;             // random prompt tokens prefilled per repetition
  int reps = 3;                    // repetitions at least; the median counts
  double min_seconds = 1.0;        // ... and more until the decode steps timed add up to this
  bool confirm = true;             // re-measure base and best at the end
  std::filesystem::path out_dir;   // results.tsv, best.conf, trials.png
  std::function<void(const std::string&)> log;  // a line per trial (stderr in the CLI)
};

struct TuneReport {
  std::vector<Trial> trials;
  int base = 0;                                               // index of the base trial
  int best = 0;                                               // index of the best kept trial
  double confirmed_base_tok_s = 0, confirmed_best_tok_s = 0;  // medians of the confirmation runs (0: none)
  std::filesystem::path results_path, config_path, plot_path;
};

// Runs the search and writes the three outputs. An fm::Error for a model or text that cannot be used
// (the base trial must succeed); a later trial that fails (e.g. a budget too small for it) is logged
// as failed with the reason and the search goes on.
TuneReport run_tune(const TuneOptions& options);

// Whether the model must stream its experts to fit `mem_budget` (0: no budget) at the given context.
bool needs_streaming(const Model& model, uint64_t mem_budget, int max_context, int max_batch);

}  // namespace fm::tune
