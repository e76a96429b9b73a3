// One point of the space `flashmoe tune` searches: the engine options that `run`, `chat` and `serve`
// take, named as their long command-line options (without the dashes), so that a setting prints as
// "threads=2;moe-top-k=3" and is written as a configuration file those commands read (--config).
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "model/model.h"
#include "model/qwen_moe.h"

namespace fm::tune {

struct Setting {
  std::string model;          // checkpoint folder or .gguf file
  int threads = 1;            // compute threads
  int moe_top_k = 0;          // routed experts per token; 0: the model's
  bool stream = false;        // routed experts read from disk into a RAM cache
  uint64_t mem_budget = 0;    // bytes, 0: none (streaming only)
  uint64_t expert_cache = 0;  // bytes, 0: what the budget leaves (streaming only)
  int io_threads = 4;
  int io_split = 1;
  bool direct_io = false;
  std::string io_backend = "pread";            // pread or uring
  std::string cache_policy = "lfu";            // lfu or lru (the engine default: cli/options.h)
  std::string predict = "lookahead,temporal";  // comma-separated: lookahead, temporal; or none

  bool operator==(const Setting&) const = default;
};

using KeyValues = std::vector<std::pair<std::string, std::string>>;

// The setting as option names and values, in a fixed order. The streaming options appear only when
// stream is on; the model only when `with_model`.
KeyValues setting_entries(const Setting& s, bool with_model);
// "k=v;k=v;..." of setting_entries (model included, as its file name).
std::string describe(const Setting& s);
// The entries of `s` that differ from `base` ("k=v;..."), or "base" when none do.
std::string describe_change(const Setting& s, const Setting& base);

// The transformer options the setting stands for, on `model`, with the given context and batch: the
// predictors parsed (an fm::Error for an unknown name), the expert cache sized as the `run` command
// sizes it for a context of plan_context tokens (stream/memory_plan.h; an fm::Error when the budget is
// too small). plan_context 0: max_context.
TransformerOptions transformer_options(const Setting& s, const Model& model, int max_context, int max_batch,
                                       int plan_context = 0);

}  // namespace fm::tune
