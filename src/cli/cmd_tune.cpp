// flashmoe tune: search this machine's fastest engine setting that keeps the model's quality
// (tune/tune.h), log every trial, write the best setting as a --config file and plot the trials.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/commands.h"
#include "cli/options.h"
#include "model/model.h"
#include "tune/tune.h"
#include "util/error.h"
#include "util/sysinfo.h"

namespace fm::cli {

namespace {

struct TuneArgs {
  EngineArgs engine;
  std::string text_file;
  std::string time_budget = "10m";
  std::vector<std::string> alt_models;
  std::string out = "tune";
  tune::TuneOptions options;
  bool no_confirm = false;
};

// "90s", "10m", "1.5h", "600" (seconds) -> seconds.
double parse_duration(const std::string& text) {
  double v = 0;
  const char* begin = text.data();
  const auto [p, ec] = std::from_chars(begin, begin + text.size(), v);
  const std::string unit(p, begin + text.size());
  const double scale = unit.empty() || unit == "s" ? 1 : unit == "m" ? 60 : unit == "h" ? 3600 : 0;
  if (ec != std::errc() || p == begin || scale == 0 || !(v > 0))
    fail("--time-budget: '{}' is not a duration (e.g. 90s, 10m, 1h)", text);
  return v * scale;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("{}: cannot open the evaluation text", path);
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail("{}: read failed", path);
  return ss.str();
}

// The evaluation text when -f is not given: the held-out corpus text the set-up prepares
// (data/corpus/eval.txt, docs/default_model.md), looked for beside the executable's tree and in the
// source tree it was built from.
std::string default_text_path() {
  std::string where;
  const std::filesystem::path found =
      find_project_file(std::filesystem::path("data") / "corpus" / "eval.txt", where);
  if (found.empty())
    fail(
        "no evaluation text given (-f FILE) and the held-out corpus text is missing (looked in {}; "
        "scripts/get_corpus.sh makes it)",
        where);
  return found.string();
}

void tune_command(TuneArgs& a, const CLI::App& cmd) {
  tune::TuneOptions o = a.options;
  const EngineArgs& e = a.engine;
  // Options given on the command line are held fixed; those from --config are starting points.
  static const char* const kSwept[] = {"threads",    "moe-top-k",    "io-threads", "io-split",    "direct-io",
                                       "io-backend", "cache-policy", "predict",    "expert-cache"};
  for (const char* name : kSwept) {
    const CLI::Option* opt = cmd.get_option_no_throw(std::string("--") + name);
    const bool from_config =
        std::find(e.from_config.begin(), e.from_config.end(), name) != e.from_config.end();
    if (opt && opt->count() > 0 && !from_config) o.fixed.insert(name);
  }
  tune::Setting& s = o.start;
  s.model = e.model;
  s.threads = resolve_threads(e.threads);
  s.moe_top_k = e.transformer.experts_per_tok;
  s.mem_budget = e.mem_budget;
  s.expert_cache = e.expert_cache;
  s.io_threads = e.transformer.stream.io.threads;
  s.io_split = e.transformer.stream.io.split;
  s.direct_io = e.transformer.stream.io.direct;
  s.io_backend = e.io_backend;
  s.cache_policy = e.cache_policy;
  s.predict = e.predict;
  o.plan_context = e.transformer.max_context;
  {
    const std::unique_ptr<Model> model = Model::load(e.model);
    const bool must =
        tune::needs_streaming(*model, e.mem_budget, e.transformer.max_context, e.transformer.max_batch);
    s.stream = e.stream || e.expert_cache > 0 || must;
    std::fprintf(stderr, "tune: %s: %.2f GB of weights (%.2f GB routed experts)%s\n", e.model.c_str(),
                 double(model->weights.dense_bytes + model->weights.expert_bytes) / 1e9,
                 double(model->weights.expert_bytes) / 1e9,
                 s.stream
                     ? (must ? "; does not fit --mem-budget: experts stream" : "; experts stream (--stream)")
                     : "; resident (mapped)");
  }
  if (s.stream)
    o.fixed.insert("stream");  // asked for, or needed to fit the budget
  else
    s.mem_budget = 0;
  o.alt_models = a.alt_models;
  const std::string text_path = a.text_file.empty() ? default_text_path() : a.text_file;
  o.eval_text = read_text(text_path);
  o.time_budget_s = parse_duration(a.time_budget);
  o.confirm = !a.no_confirm;
  o.out_dir = a.out;
  o.log = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
  std::fprintf(stderr, "tune: evaluation text %s; time budget %.0f s; outputs in %s/\n", text_path.c_str(),
               o.time_budget_s, a.out.c_str());

  const tune::TuneReport r = tune::run_tune(o);
  const tune::Trial& best = r.trials[size_t(r.best)];
  const tune::Trial& base = r.trials[size_t(r.base)];
  std::printf("best: #%d %s\n", best.index, best.change.c_str());
  std::printf(
      "decode %.2f tok/s (base %.2f, %+.1f%%), prefill %.1f tok/s (base %.1f), perplexity %.4f (base %.4f), "
      "mean KL %.3g\n",
      best.decode_tok_s, base.decode_tok_s, 100.0 * (best.decode_tok_s / base.decode_tok_s - 1),
      best.prefill_tok_s, base.prefill_tok_s, best.ppl, base.ppl, best.kl_mean);
  if (r.confirmed_base_tok_s > 0)
    std::printf("re-measured back to back: base %.2f tok/s, best %.2f tok/s (%+.1f%%)\n",
                r.confirmed_base_tok_s, r.confirmed_best_tok_s,
                100.0 * (r.confirmed_best_tok_s / r.confirmed_base_tok_s - 1));
  std::printf("trials: %s\nconfig: %s\nplot:   %s\n", r.results_path.c_str(), r.config_path.c_str(),
              r.plot_path.c_str());
}

}  // namespace

void add_tune(CLI::App& app) {
  auto args = std::make_shared<TuneArgs>();
  CLI::App* cmd = app.add_subcommand(
      "tune",
      "Find the fastest setting on this machine that keeps the model's quality; write it as a --config file");
  add_engine_options(*cmd, args->engine);
  tune::TuneOptions& o = args->options;
  cmd->add_option(
      "-f,--file", args->text_file,
      "Evaluation text for the quality gate (default: the held-out corpus, data/corpus/eval.txt)");
  cmd->add_option("--time-budget", args->time_budget, "Time for the search, e.g. 90s, 10m, 1h (default 10m)");
  cmd->add_option("--alt", args->alt_models,
                  "Another file of the same model to try (e.g. another expert quant type); repeatable");
  cmd->add_option("--max-trials", o.max_trials, "Stop after this many trials (before the confirmation)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("-o,--out", args->out, "Folder for results.tsv, best.conf and trials.png (default: tune)");
  cmd->add_option("--eval-ctx", o.eval_ctx, "Tokens per evaluation window (the second half is scored)")
      ->check(CLI::Range(4, 1 << 20));
  cmd->add_option("--eval-chunks", o.eval_chunks, "Evaluation windows")->check(CLI::PositiveNumber);
  cmd->add_option("--max-kl", o.max_kl, "Mean KL bound (nats) for thread counts that change the logits")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-kl-lossy", o.max_kl_lossy,
                  "Mean KL bound (nats) for fewer experts (--moe-top-k) and other model files (--alt)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-ppl-increase", o.max_ppl_increase,
                  "Perplexity bound for the same, as a fraction above the base's (0.01: 1%)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--min-gain", o.min_gain, "Keep a setting only when its decode is faster by this fraction")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("-n,--n-decode", o.n_decode, "Decode steps timed per repetition")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--prompt-len", o.prompt_len, "Prompt tokens (random ids) prefilled per repetition")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--reps", o.reps, "Repetitions per trial at least; the median counts")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--min-seconds", o.min_seconds, "More repetitions until the timed decoding adds up to this")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-threads", o.max_threads, "Largest compute thread count to try (default: all)")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--no-confirm", args->no_confirm, "Do not re-measure the base and the best at the end");
  cmd->callback([args, cmd] { tune_command(*args, *cmd); });
}

}  // namespace fm::cli
