#include "cli/options.h"

#include <charconv>

#include "util/error.h"
#include "util/sysinfo.h"

namespace fm::cli {

void add_engine_options(CLI::App& cmd, EngineArgs& args) {
  cmd.add_option("-m,--model", args.model, "Model folder (Hugging Face config.json + safetensors)")->required();
  cmd.add_option("-t,--threads", args.threads, "Compute threads (default: all hardware threads)")
      ->check(CLI::NonNegativeNumber);
  cmd.add_option("--ctx", args.transformer.max_context, "Context length (KV cache size) in tokens")
      ->check(CLI::PositiveNumber);
  cmd.add_option("--batch", args.transformer.max_batch, "Prompt tokens per forward pass")
      ->check(CLI::PositiveNumber);
  cmd.add_option("--moe-top-k", args.transformer.experts_per_tok,
                 "Routed experts per token (default: the model's; fewer trade quality for speed)")
      ->check(CLI::PositiveNumber);
}

int resolve_threads(int requested) { return requested > 0 ? requested : hardware_threads(); }

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
