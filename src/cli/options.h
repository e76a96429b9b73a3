// Options shared by the commands that load a model and run it.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "model/qwen_moe.h"

namespace fm::cli {

struct EngineArgs {
  std::string model;
  int threads = 0;  // 0: all hardware threads
  TransformerOptions transformer;
};

void add_engine_options(CLI::App& cmd, EngineArgs& args);
int resolve_threads(int requested);

// "1,2,3" -> ids; an entry that is not an integer is an fm::Error naming it.
std::vector<int32_t> parse_id_list(const std::string& text, const char* what);

}  // namespace fm::cli
