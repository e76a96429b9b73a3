// flashmoe tune: configuration files (and --config on the command line), the results ledger, the
// plot, and short real searches on the default model.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "test_util.h"
#include "tune/config_file.h"
#include "tune/results.h"
#include "tune/tune.h"

namespace fm {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

const std::string kModel = std::string(FM_FIXTURES) + "/../../models/default/flashmoe-default.gguf";
const std::string kText = std::string(FM_FIXTURES) + "/tune/persuasion-ch1.txt";

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void spit(const fs::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::binary);
  f << text;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

std::vector<std::string> split_tabs(const std::string& line) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (true) {
    const size_t t = line.find('\t', pos);
    out.push_back(line.substr(pos, t == std::string::npos ? std::string::npos : t - pos));
    if (t == std::string::npos) return out;
    pos = t + 1;
  }
}

// --- configuration files --------------------------------------------------------------------------

TEST(TuneConfig, RoundTrip) {
  TempDir dir;
  tune::Setting s{.model = "m.gguf",
                  .threads = 3,
                  .moe_top_k = 2,
                  .stream = true,
                  .expert_cache = 123456789,
                  .io_threads = 8,
                  .io_split = 2,
                  .direct_io = true,
                  .io_backend = "uring",
                  .cache_policy = "lfu",
                  .predict = "temporal"};
  const tune::KeyValues kv = tune::setting_entries(s, true);
  tune::write_config_file(dir / "best.conf", "first line\n\nsecond = line", kv);
  const std::vector<tune::ConfigEntry> read = tune::read_config_file(dir / "best.conf");
  ASSERT_EQ(read.size(), kv.size());
  for (size_t i = 0; i < kv.size(); ++i) {
    EXPECT_EQ(read[i].key, kv[i].first);
    EXPECT_EQ(read[i].value, kv[i].second);
  }
  EXPECT_EQ(read[0].line, 4);  // after three comment lines
  EXPECT_EQ(
      slurp(dir / "best.conf").rfind("# first line\n#\n# second = line\nmodel = m.gguf\nthreads = 3\n", 0),
      0u);
  EXPECT_EQ(tune::describe(s),
            "model=m.gguf;threads=3;moe-top-k=2;stream=true;expert-cache=123456789;io-threads=8;io-split=2;"
            "direct-io=true;io-backend=uring;cache-policy=lfu;predict=temporal");
  // Without streaming, no streaming keys; the change against a base names only what differs.
  tune::Setting base{.model = "m.gguf", .threads = 3};
  EXPECT_EQ(tune::describe(base), "model=m.gguf;threads=3;stream=false");
  EXPECT_EQ(tune::describe_change(base, base), "base");
  tune::Setting fewer = base;
  fewer.moe_top_k = 3;
  EXPECT_EQ(tune::describe_change(fewer, base), "moe-top-k=3");
  // Quoted values and spaces.
  spit(dir / "q.conf", "  # c\n\n model =  \"/a path/x.gguf\" \nthreads=2\r\n");
  const auto q = tune::read_config_file(dir / "q.conf");
  ASSERT_EQ(q.size(), 2u);
  EXPECT_EQ(q[0].value, "/a path/x.gguf");
  EXPECT_EQ(q[1].key, "threads");
  EXPECT_EQ(q[1].value, "2");
  EXPECT_EQ(q[1].line, 4);
}

TEST(TuneConfig, Errors) {
  TempDir dir;
  const fs::path p = dir / "bad.conf";
  spit(p, "threads = 2\njust words\n");
  test::expect_error([&] { tune::read_config_file(p); }, {":2:", "just words", "key = value"}, p.string());
  spit(p, "threads = 2\n = 3\n");
  test::expect_error([&] { tune::read_config_file(p); }, {":2:", "no key"}, p.string());
  spit(p, "threads = 2\n\nthreads = 3\n");
  test::expect_error([&] { tune::read_config_file(p); }, {":3:", "'threads' given twice", "line 1"},
                     p.string());
  test::expect_error([&] { tune::read_config_file(dir / "missing.conf"); }, {"cannot open"},
                     (dir / "missing.conf").string());
  // Nothing half-written is left when the folder does not exist.
  test::expect_error([&] { tune::write_config_file(dir / "no" / "x.conf", "", {{"threads", "1"}}); }, {});
  EXPECT_FALSE(fs::exists(dir / "no"));
}

// --- results.tsv and the plot ---------------------------------------------------------------------

std::vector<tune::Trial> sample_trials() {
  std::vector<tune::Trial> t(5);
  const double tps[] = {100, 120, 90, 150, 118};
  const double ppl[] = {50, 50, 50, 58, 50};
  const tune::Verdict v[] = {tune::Verdict::Base, tune::Verdict::Kept, tune::Verdict::Discarded,
                             tune::Verdict::Discarded, tune::Verdict::Confirm};
  for (int i = 0; i < 5; ++i) {
    t[size_t(i)].index = i;
    t[size_t(i)].setting = tune::Setting{.model = "/x/m.gguf", .threads = 1 + i};
    t[size_t(i)].decode_tok_s = tps[i];
    t[size_t(i)].prefill_tok_s = 10 * tps[i];
    t[size_t(i)].ppl = ppl[i];
    t[size_t(i)].verdict = v[i];
    t[size_t(i)].identical = ppl[i] == 50;
    t[size_t(i)].reason = i == 3 ? "quality: mean KL 0.2\tmax" : "fine";
  }
  return t;
}

TEST(TuneResults, TsvColumns) {
  TempDir dir;
  const std::vector<tune::Trial> trials = sample_trials();
  tune::write_results_tsv(dir / "results.tsv", trials);
  const std::vector<std::string> lines = lines_of(slurp(dir / "results.tsv"));
  ASSERT_EQ(lines.size(), 6u);
  const std::vector<std::string> head = split_tabs(lines[0]);
  const std::vector<std::string> first8 = {"trial",   "setting", "decode_tok_s", "prefill_tok_s",
                                           "kl_mean", "ppl",     "verdict",      "reason"};
  ASSERT_GE(head.size(), 8u);
  EXPECT_EQ(std::vector<std::string>(head.begin(), head.begin() + 8), first8);
  for (size_t i = 1; i < lines.size(); ++i) EXPECT_EQ(split_tabs(lines[i]).size(), head.size()) << lines[i];
  const std::vector<std::string> row3 = split_tabs(lines[4]);
  EXPECT_EQ(row3[0], "3");
  EXPECT_EQ(row3[1], "model=m.gguf;threads=4;stream=false");
  EXPECT_EQ(row3[2], "150.000");
  EXPECT_EQ(row3[6], "discarded");
  EXPECT_EQ(row3[7], "quality: mean KL 0.2 max");  // the tab replaced
  EXPECT_EQ(split_tabs(lines[1])[6], "base");
  EXPECT_EQ(split_tabs(lines[5])[6], "confirm");
}

// PNG: the 8-byte signature, then the IHDR chunk with width and height (big-endian).
void expect_png(const fs::path& p, uint32_t width, uint32_t height) {
  const std::string png = slurp(p);
  ASSERT_GT(png.size(), 1000u);
  EXPECT_EQ(png.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(png.substr(12, 4), "IHDR");
  auto be32 = [&](size_t at) {
    return uint32_t(uint8_t(png[at])) << 24 | uint32_t(uint8_t(png[at + 1])) << 16 |
           uint32_t(uint8_t(png[at + 2])) << 8 | uint32_t(uint8_t(png[at + 3]));
  };
  EXPECT_EQ(be32(16), width);
  EXPECT_EQ(be32(20), height);
  EXPECT_EQ(png.substr(png.size() - 8, 4), "IEND");
}

TEST(TuneResults, PlotIsAPng) {
  TempDir dir;
  tune::write_plot_png(dir / "trials.png", sample_trials(),
                       {.title = "test", .width = 640, .height = 400, .best = 1});
  expect_png(dir / "trials.png", 640, 400);
  // No trials, or all at one perplexity: still a plot.
  tune::write_plot_png(dir / "empty.png", {}, {.title = "none"});
  expect_png(dir / "empty.png", 900, 600);
  std::vector<tune::Trial> one(1, sample_trials()[0]);
  tune::write_plot_png(dir / "one.png", one, {});
  expect_png(dir / "one.png", 900, 600);
}

// --- --config on the command line -----------------------------------------------------------------

struct CliResult {
  int status = -1;
  std::string out, err;
};

CliResult cli(const TempDir& dir, const std::string& args) {
  const fs::path out = dir / "stdout", err = dir / "stderr";
  const std::string cmd = std::string(FM_CLI) + " " + args + " >" + out.string() + " 2>" + err.string();
  const int raw = std::system(cmd.c_str());
  return {WIFEXITED(raw) ? WEXITSTATUS(raw) : -1, slurp(out), slurp(err)};
}

TEST(TuneConfig, CommandLineOverridesFile) {
  TempDir dir;
  const fs::path conf = dir / "c.conf";
  spit(conf, "# from tune\nthreads = 1\nstream = true\nio-threads = 3\npredict = none\n");
  const std::string run =
      "run -m " + kModel + " --prompt-ids 1,2,3 -n 1 --print-ids --config " + conf.string();
  CliResult r = cli(dir, run);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("| 1 threads |"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("stream: dense weights"), std::string::npos) << r.err;  // stream = true applied
  r = cli(dir, run + " -t 2");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("| 2 threads |"), std::string::npos) << r.err;

  // A value the option refuses, an unknown key, a bad line: one error line naming file, line and key.
  auto expect_cli_error = [&](const std::string& text, std::initializer_list<std::string> needles) {
    spit(conf, text);
    const CliResult e = cli(dir, run);
    EXPECT_EQ(e.status, 1) << e.err;
    EXPECT_EQ(e.err.rfind("flashmoe: error: " + conf.string(), 0), 0u) << e.err;
    EXPECT_EQ(std::count(e.err.begin(), e.err.end(), '\n'), 1) << e.err;
    for (const std::string& n : needles)
      EXPECT_NE(e.err.find(n), std::string::npos) << n << " not in " << e.err;
  };
  expect_cli_error("threads = 1\nio-threads = 0\n", {":2:", "io-threads = 0"});
  expect_cli_error("threads = 1\ntemp = 0.5\n", {":2:", "unknown key 'temp'"});
  expect_cli_error("mem-budget = lots\n", {":1:", "--mem-budget", "'lots'"});
  expect_cli_error("io-backend = floppy\n", {":1:", "io-backend = floppy"});
  expect_cli_error("threads\n", {":1:", "key = value"});
  // A flag as a key (the value says whether it is given).
  spit(conf, "no-repack = true\n");
  r = cli(dir, run);
  EXPECT_EQ(r.status, 0) << r.err;
  // The command line wins: the file's value of an option given there is not even checked.
  spit(conf, "io-threads = 0\n");
  r = cli(dir, run + " --io-threads 2");
  EXPECT_EQ(r.status, 0) << r.err;
}

// --- the search -----------------------------------------------------------------------------------

std::string read_text() {
  const std::string text = slurp(kText);
  EXPECT_GT(text.size(), 4000u);
  return text;
}

// Streaming on the default model: every I/O, cache and predictor setting must give the base's logits
// bit for bit, and the outputs must all be written.
TEST(Tune, StreamingSettingsAreExact) {
  TempDir dir;
  tune::TuneOptions o;
  o.start = tune::Setting{.model = kModel, .threads = 2, .stream = true};
  o.fixed = {"threads", "moe-top-k", "stream"};  // only the exact stages, streaming throughout
  o.eval_text = read_text();
  o.eval_ctx = 32;
  o.eval_chunks = 2;
  o.time_budget_s = 120;  // bounded by the trial count instead, so a busy machine runs the same trials
  o.max_trials = 4;
  o.n_decode = 4;
  o.prompt_len = 4;
  o.reps = 1;
  o.min_seconds = 0;
  o.confirm = false;
  o.out_dir = dir.path;
  const tune::TuneReport r = tune::run_tune(o);
  ASSERT_EQ(r.trials.size(), 4u);
  EXPECT_EQ(r.trials[0].verdict, tune::Verdict::Base);
  EXPECT_GT(r.trials[0].ppl, 1.0);
  for (const tune::Trial& t : r.trials) {
    EXPECT_NE(t.verdict, tune::Verdict::Failed) << t.change << ": " << t.reason;
    EXPECT_TRUE(t.identical) << t.change << ": " << t.reason;
    EXPECT_EQ(t.ppl, r.trials[0].ppl) << t.change;  // bit-identical logits: the same perplexity
    EXPECT_GT(t.decode_tok_s, 0) << t.change;
    EXPECT_TRUE(t.setting.stream);
  }
  EXPECT_EQ(lines_of(slurp(r.results_path)).size(), r.trials.size() + 1);
  EXPECT_TRUE(fs::exists(r.config_path));
  expect_png(r.plot_path, 900, 600);
}

// Fewer experts than the model's change the numbers: their KL is measured against the unmodified
// model and gated; once one fails the gate, fewer still are not tried.
TEST(Tune, FewerExpertsAreGated) {
  TempDir dir;
  tune::TuneOptions o;
  o.start = tune::Setting{.model = kModel, .threads = 1};
  o.fixed = {"threads", "stream"};
  o.eval_text = read_text();
  o.eval_ctx = 32;
  o.eval_chunks = 2;
  o.time_budget_s = 120;
  o.n_decode = 4;
  o.prompt_len = 4;
  o.reps = 1;
  o.min_seconds = 0;
  o.confirm = false;
  o.out_dir = dir.path;
  // Loose bounds: the base, top-3 and top-2 of the model's 4 all pass the quality gate.
  o.max_kl_lossy = o.max_ppl_increase = 1000;
  tune::TuneReport r = tune::run_tune(o);
  ASSERT_EQ(r.trials.size(), 3u);
  for (int i = 1; i < 3; ++i) {
    const tune::Trial& t = r.trials[size_t(i)];
    EXPECT_EQ(t.setting.moe_top_k, 4 - i);
    EXPECT_FALSE(t.identical);
    EXPECT_GT(t.kl_mean, 1e-4);
    EXPECT_GE(t.kl_max, t.kl_mean);
    EXPECT_LT(t.top1_agree, 1.0);
    EXPECT_NE(t.ppl, r.trials[0].ppl);
    EXPECT_FALSE(t.quality_failed()) << t.reason;
  }
  EXPECT_GT(r.trials[2].kl_mean, r.trials[1].kl_mean);  // two experts fewer diverge more than one

  // A tight bound: top-3 fails it, top-2 is not tried, the base stays best and the configuration
  // holds no moe-top-k.
  o.max_kl_lossy = 1e-6;
  r = tune::run_tune(o);
  ASSERT_EQ(r.trials.size(), 2u);
  EXPECT_TRUE(r.trials[1].quality_failed()) << r.trials[1].reason;
  EXPECT_NE(r.trials[1].reason.find("--max-kl-lossy"), std::string::npos) << r.trials[1].reason;
  EXPECT_EQ(r.best, 0);
  EXPECT_EQ(slurp(r.config_path).find("moe-top-k"), std::string::npos) << slurp(r.config_path);
}

// The command as a user runs it: the ledger, the configuration (which `run --config` accepts) and
// the plot are written.
TEST(Tune, CommandWritesAllOutputs) {
  TempDir dir;
  const fs::path out = dir / "out";
  const CliResult r = cli(dir, "tune -m " + kModel + " -f " + kText + " -o " + out.string() +
                                   " -t 1 --time-budget 2m --max-trials 3 --eval-ctx 32 --eval-chunks 2 -n 4"
                                   " --prompt-len 4 --reps 1 --min-seconds 0 --no-confirm");
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("best: #"), std::string::npos) << r.out;
  const std::vector<std::string> lines = lines_of(slurp(out / "results.tsv"));
  ASSERT_EQ(lines.size(), 4u) << r.err;
  EXPECT_EQ(split_tabs(lines[1])[6], "base");
  EXPECT_EQ(split_tabs(lines[1])[1], "model=flashmoe-default.gguf;threads=1;stream=false");
  for (size_t i = 2; i < lines.size(); ++i)
    EXPECT_NE(split_tabs(lines[i])[1].find("threads=1;"), std::string::npos);
  expect_png(out / "trials.png", 900, 600);
  const std::string conf = slurp(out / "best.conf");
  EXPECT_NE(conf.find("\nthreads = 1\n"), std::string::npos) << conf;
  const CliResult again = cli(dir, "run -m " + kModel + " --prompt-ids 1,2,3 -n 2 --print-ids --config " +
                                       (out / "best.conf").string());
  EXPECT_EQ(again.status, 0) << again.err << conf;
  EXPECT_NE(again.err.find("| 1 threads |"), std::string::npos) << again.err;
}

TEST(Tune, BadInput) {
  TempDir dir;
  CliResult r =
      cli(dir, "tune -m " + kModel + " -f " + (dir / "missing.txt").string() + " -o " + (dir / "o").string());
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("missing.txt: cannot open"), std::string::npos) << r.err;
  r = cli(dir, "tune -m " + kModel + " -f " + kText + " --time-budget soon -o " + (dir / "o").string());
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--time-budget: 'soon'"), std::string::npos) << r.err;
  spit(dir / "short.txt", "Too short.");
  r = cli(dir, "tune -m " + kModel + " -f " + (dir / "short.txt").string() + " -o " + (dir / "o").string());
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--eval-chunks"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "o" / "results.tsv"));
}

}  // namespace
}  // namespace fm
