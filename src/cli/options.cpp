#include "cli/options.h"

#include <fmt/format.h>

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <cstdlib>

#include "stream/memory_plan.h"
#include "tune/config_file.h"

#include "util/error.h"
#include "util/sysinfo.h"

namespace fm::cli {

namespace {

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find(',', pos);
    if (end == std::string::npos) end = text.size();
    if (end > pos) out.push_back(text.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

// The options a configuration file may set: those add_engine_options adds, by their long names.
constexpr const char* kConfigKeys[] = {"model",      "threads",      "ctx",        "batch",     "moe-top-k",
                                       "stream",     "mem-budget",   "expert-cache", "io-threads", "io-split",
                                       "direct-io",  "io-backend",   "cache-policy", "predict",  "no-repack"};

// Gives each option of the file that the command line left unset the file's value, through the
// option's own parsing and checks.
void apply_config_file(CLI::App& cmd, EngineArgs& args) {
  const std::string& file = args.config;
  for (const tune::ConfigEntry& e : tune::read_config_file(file)) {
    const bool known = std::find(std::begin(kConfigKeys), std::end(kConfigKeys), e.key) != std::end(kConfigKeys);
    CLI::Option* opt = known ? cmd.get_option_no_throw("--" + e.key) : nullptr;
    if (!opt)
      fail("{}:{}: unknown key '{}' (known: {})", file, e.line, e.key, fmt::join(kConfigKeys, ", "));
    if (opt->count() > 0) continue;  // given on the command line
    try {
      opt->add_result(e.value);
      opt->run_callback();
    } catch (const CLI::Error& err) {
      fail("{}:{}: {} = {}: {}", file, e.line, e.key, e.value, err.what());
    } catch (const Error& err) {
      fail("{}:{}: {}", file, e.line, err.what());
    }
    args.from_config.push_back(e.key);
  }
}

}  // namespace

std::filesystem::path find_project_file(const std::filesystem::path& rel, std::string& where) {
  namespace fs = std::filesystem;
  std::vector<fs::path> tried;
  // build/flashmoe -> ../REL; an installed or copied binary beside it too.
  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    const fs::path dir = fs::path(std::string(exe, size_t(n))).parent_path();
    tried.push_back(dir.parent_path() / rel);
    tried.push_back(dir / rel);
  }
#ifdef FM_SOURCE_DIR
  tried.push_back(fs::path(FM_SOURCE_DIR) / rel);
#endif
  where.clear();
  for (const fs::path& p : tried) {
    std::error_code ec;
    if (fs::is_regular_file(p, ec)) return p.lexically_normal();
    where += fmt::format("{}{}", where.empty() ? "" : ", ", p.string());
  }
  return {};
}

std::filesystem::path default_model_path() {
  namespace fs = std::filesystem;
  if (const char* env = std::getenv("FLASHMOE_DEFAULT_MODEL"); env && *env) {
    if (!fs::exists(env)) fail("FLASHMOE_DEFAULT_MODEL names '{}', which does not exist", env);
    return env;
  }
  std::string where;
  fs::path found = find_project_file(fs::path("models") / "default" / "flashmoe-default.gguf", where);
  if (found.empty())
    fail("no model given (-m) and the default model is missing (looked in FLASHMOE_DEFAULT_MODEL, {})", where);
  return found;
}

void add_engine_options(CLI::App& cmd, EngineArgs& args) {
  cmd.add_option("-m,--model", args.model,
                 "Model: a Hugging Face folder (config.json + safetensors) or a .gguf file (default: the "
                 "embedded default model)");
  cmd.add_option("--config", args.config,
                 "Read options from this file: 'key = value' lines with the long option names, as flashmoe "
                 "tune writes them; the command line overrides it");
  // Without -m, the embedded default model; resolved once the command line is parsed.
  cmd.parse_complete_callback([&args, &cmd] {
    if (!args.config.empty()) apply_config_file(cmd, args);
    if (args.model.empty()) args.model = default_model_path().string();
  });
  cmd.add_option("-t,--threads", args.threads, "Compute threads (default: one per physical core)")
      ->check(CLI::NonNegativeNumber);
  cmd.add_option("--ctx", args.transformer.max_context, "Context length (KV cache size) in tokens")
      ->check(CLI::PositiveNumber);
  cmd.add_option("--batch", args.transformer.max_batch, "Prompt tokens per forward pass")
      ->check(CLI::PositiveNumber);
  // A flag function rather than a "!" flag, so that a configuration file's `no-repack = true` means
  // what it says (apply_config_file hands the value to the option as given).
  cmd.add_flag_function(
      "--no-repack", [&args](int64_t given) { args.transformer.repack = given <= 0; },
      "Keep resident weights in the file's layout (by default the CPU kernels' layout is made at load for "
      "Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL and MXFP4, a copy of those matrices)");
  cmd.add_option("--moe-top-k", args.transformer.experts_per_tok,
                 "Routed experts per token (default: the model's; fewer trade quality for speed)")
      ->check(CLI::PositiveNumber);

  auto* g = cmd.add_option_group("Expert streaming");
  g->add_flag("--stream", args.stream, "Read routed experts from disk into a RAM cache instead of mapping them");
  g->add_option_function<std::string>(
      "--mem-budget", [&args](const std::string& v) { args.mem_budget = parse_size(v, "--mem-budget"); },
      "Memory the process may use in all (e.g. 16G): dense weights + expert cache + KV cache + buffers");
  g->add_option_function<std::string>(
      "--expert-cache", [&args](const std::string& v) { args.expert_cache = parse_size(v, "--expert-cache"); },
      "RAM for cached experts (default: what --mem-budget leaves)");
  g->add_option("--io-threads", args.transformer.stream.io.threads, "Parallel expert reads")->check(CLI::Range(1, 256));
  g->add_option("--io-split", args.transformer.stream.io.split, "Pieces each expert read is split into")
      ->check(CLI::Range(1, 64));
  g->add_flag("--direct-io", args.transformer.stream.io.direct, "Read experts with O_DIRECT (no page cache)");
  g->add_option("--io-backend", args.io_backend, "pread or uring")->check(CLI::IsMember({"pread", "uring"}));
  g->add_option("--cache-policy", args.cache_policy, "Expert cache eviction: lfu (default: use counts per expert, decaying) or lru")
      ->check(CLI::IsMember({"lru", "lfu"}));
  g->add_option("--predict", args.predict,
                "Expert predictors to prefetch with: lookahead, temporal, both (comma-separated) or none");
}

uint64_t parse_size(const std::string& text, const char* what) {
  double v = 0;
  const char* begin = text.data();
  const auto [p, ec] = std::from_chars(begin, begin + text.size(), v);
  std::string unit(p, begin + text.size());
  for (char& ch : unit) ch = char(std::toupper(static_cast<unsigned char>(ch)));
  double scale = 0;
  if (unit.empty() || unit == "B") scale = 1;
  else if (unit == "K" || unit == "KB" || unit == "KIB") scale = 1024.0;
  else if (unit == "M" || unit == "MB" || unit == "MIB") scale = 1024.0 * 1024;
  else if (unit == "G" || unit == "GB" || unit == "GIB") scale = 1024.0 * 1024 * 1024;
  else if (unit == "T" || unit == "TB" || unit == "TIB") scale = 1024.0 * 1024 * 1024 * 1024;
  if (ec != std::errc() || p == begin || scale == 0 || v < 0 || v * scale > 1e19)
    fail("{}: '{}' is not a size (e.g. 512M, 16G)", what, text);
  return uint64_t(v * scale);
}

void resolve_streaming(EngineArgs& args, const Model& model) {
  TransformerOptions& t = args.transformer;
  t.stream_experts = args.stream || args.mem_budget > 0 || args.expert_cache > 0;
  if (!t.stream_experts) return;
  t.stream.io.backend = args.io_backend == "uring" ? io::Backend::Uring : io::Backend::Pread;
  t.stream.policy = args.cache_policy == "lfu" ? CachePolicy::Lfu : CachePolicy::Lru;
  t.predict_lookahead = t.predict_temporal = false;
  for (const std::string& p : split_list(args.predict)) {
    if (p == "lookahead") t.predict_lookahead = true;
    else if (p == "temporal") t.predict_temporal = true;
    else if (p == "both") t.predict_lookahead = t.predict_temporal = true;
    else if (p != "none") fail("--predict: unknown predictor '{}' (lookahead, temporal, both, none)", p);
  }
  const MemoryPlan plan = plan_memory(model, t, args.mem_budget, args.expert_cache);
  t.stream.cache_bytes = plan.expert_cache;
  std::fprintf(stderr,
               "stream: dense weights %.2f GB + KV/state %.2f GB + scratch %.2f GB + expert cache %.2f GB%s\n",
               double(plan.dense) / 1e9, double(plan.state) / 1e9, double(plan.scratch) / 1e9,
               double(plan.expert_cache) / 1e9,
               args.mem_budget ? fmt::format(" (budget {:.2f} GB)", double(args.mem_budget) / 1e9).c_str() : "");
}

// One thread per core, as llama.cpp defaults to: a second thread on an SMT sibling shares the core's
// load/store and vector units, which a matmul already keeps busy, and adds a thread to every barrier.
int resolve_threads(int requested) { return requested > 0 ? requested : physical_cores(); }

std::vector<int32_t> parse_id_list(const std::string& text, const char* what) {
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find(',', pos);
    if (end == std::string::npos) end = text.size();
    std::string item = text.substr(pos, end - pos);
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    while (!item.empty() && item.back() == ' ') item.pop_back();
    int64_t v = 0;
    const auto [p, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (item.empty() || ec != std::errc() || p != item.data() + item.size() || v < INT32_MIN || v > INT32_MAX)
      fail("{}: '{}' (entry {}) is not a token id", what, item, ids.size() + 1);
    ids.push_back(int32_t(v));
    pos = end + 1;
  }
  return ids;
}

}  // namespace fm::cli
