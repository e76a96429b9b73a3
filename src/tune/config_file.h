// Configuration files: what `flashmoe tune` writes and `run`, `chat`, `serve` and `bench` read with
// --config FILE. One option per line, named as its long command-line option without the dashes:
//
//   # flashmoe tune: best of 14 trials ...
//   threads = 2
//   moe-top-k = 3
//   stream = true
//   io-threads = 8
//
// '#' starts a comment line; blank lines are skipped; spaces around the key and the value are
// dropped, and a value may be written in double quotes ("a path with spaces"). Each key once.
// Options given on the command line override the file (cli/options.cpp applies it).
#pragma once
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "tune/setting.h"

namespace fm::tune {

struct ConfigEntry {
  std::string key;
  std::string value;
  int line = 0;  // 1-based, for error messages
};

// An fm::Error naming the file and line for a line that is not `key = value`, an empty key, a key
// given twice, or a file that cannot be read.
std::vector<ConfigEntry> read_config_file(const std::filesystem::path& path);

// Writes `entries` (after `comment`, each of its lines prefixed with "# ") atomically.
void write_config_file(const std::filesystem::path& path, std::string_view comment, const KeyValues& entries);

}  // namespace fm::tune
