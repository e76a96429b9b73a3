// Options shared by the commands that load a model and run it.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "model/qwen_moe.h"

namespace fm::cli {

struct EngineArgs {
  std::string model;
  int threads = 0;  // 0: one per physical core
  TransformerOptions transformer;
  // Expert streaming, as given on the command line (sizes in bytes, 0: not given).
  bool stream = false;
  uint64_t mem_budget = 0;
  uint64_t expert_cache = 0;
  std::string io_backend = "pread";
  std::string cache_policy = "lfu";  // measured: fewer bytes read per token than LRU (docs/benchmarks.md)
  std::string predict = "lookahead,temporal";
  // --config FILE (tune/config_file.h): its keys fill the options not given on the command line.
  std::string config;
  std::vector<std::string> from_config;  // the options that took their value from it
};

// Adds -m and the engine options; without -m, args.model becomes default_model_path() once parsed.
// --config FILE sets any of these options by their long names (`threads = 2`); the command line wins,
// an unknown key or a bad value is an fm::Error naming the file, line and key.
void add_engine_options(CLI::App& cmd, EngineArgs& args);
// The embedded default model (models/default/flashmoe-default.gguf): $FLASHMOE_DEFAULT_MODEL, else
// beside the executable (build/flashmoe -> ../models/default/...), else in the source tree it was built
// from. An fm::Error listing the places looked in when it is in none.
std::filesystem::path default_model_path();
// A file shipped with or made in the project tree (REL relative to its root), looked for beside the
// executable's tree (build/flashmoe -> ../REL), beside the executable, and in the source tree it was
// built from. Empty if none exists; `where` then lists the places tried.
std::filesystem::path find_project_file(const std::filesystem::path& rel, std::string& where);
// Settles the streaming options against the loaded model: streaming is on when --stream,
// --expert-cache or --mem-budget is given; the cache gets what the budget leaves after the dense
// weights, the KV cache and the scratch (an fm::Error with the breakdown when that is too little).
// Reports the plan on stderr.
void resolve_streaming(EngineArgs& args, const Model& model);

// "64G", "512M", "1.5GiB", "1000000" -> bytes; an fm::Error naming `what` otherwise.
uint64_t parse_size(const std::string& text, const char* what);
int resolve_threads(int requested);

// "1,2,3" -> ids; an entry that is not an integer is an fm::Error naming it.
std::vector<int32_t> parse_id_list(const std::string& text, const char* what);

}  // namespace fm::cli
