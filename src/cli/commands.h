// Each command registers itself as a CLI11 subcommand; its callback throws fm::Error for bad input,
// which main() turns into one line on stderr and exit status 1.
#pragma once
#include <CLI/CLI.hpp>

namespace fm::cli {

void add_run(CLI::App& app);
void add_bench(CLI::App& app);
void add_convert(CLI::App& app);
void add_tokenize(CLI::App& app);
void add_chat(CLI::App& app);
void add_serve(CLI::App& app);
void add_tune(CLI::App& app);
void add_perplexity(CLI::App& app);

}  // namespace fm::cli
