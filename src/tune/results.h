// The ledger of a tuning run: one row per trial (results.tsv) and a plot of speed against quality
// (a PNG drawn with Cairo). Both are written whole, atomically, so a file that exists is complete.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include "tune/setting.h"

namespace fm::tune {

enum class Verdict { Base, Kept, Discarded, Failed, Confirm };
const char* verdict_name(Verdict v);  // "base", "kept", "discarded", "failed", "confirm"

struct Trial {
  int index = 0;
  std::string stage;  // what was varied: "base", "threads", "io-threads", ..., "confirm"
  Setting setting;
  std::string change;  // describe_change(setting, base setting)
  // Speed: median over the repetitions.
  double decode_tok_s = 0;
  double prefill_tok_s = 0;
  double io_wait_ms = 0;  // per decoded token (streaming)
  double cache_hit = 0;   // fraction of demanded experts found in the cache (streaming)
  // Quality on the evaluation text, against the base run.
  double ppl = 0;
  double kl_mean = 0;
  double kl_max = 0;
  double top1_agree = 0;
  bool identical = false;  // every scored position's logits bit-identical to the base's
  Verdict verdict = Verdict::Discarded;
  std::string reason;
  double seconds = 0;  // wall time of the trial
  bool quality_failed() const { return verdict == Verdict::Discarded && reason.starts_with("quality"); }
};

// Columns: trial, setting (k=v;...), decode_tok_s, prefill_tok_s, kl_mean, ppl, verdict
// (base/kept/discarded/failed/confirm), reason, then change, kl_max, top1_agree, identical,
// io_wait_ms, cache_hit, seconds.
std::string results_tsv(const std::vector<Trial>& trials);
void write_results_tsv(const std::filesystem::path& path, const std::vector<Trial>& trials);

struct PlotOptions {
  std::string title;
  int width = 900, height = 600;
  int best = -1;  // index into trials of the best trial, marked
  int base = 0;   // of the base trial, marked
};

// x = perplexity on the evaluation text, y = decode tok/s; kept, discarded (slower), discarded
// (quality gate) and confirmation trials drawn differently, with a legend. Failed trials are left out.
void write_plot_png(const std::filesystem::path& path, const std::vector<Trial>& trials,
                    const PlotOptions& options);

}  // namespace fm::tune
