// flashmoe: run Mixture-of-Experts language models larger than memory.
#include <cstdio>

#include "cli/commands.h"
#include "util/error.h"

int main(int argc, char** argv) {
  CLI::App app{"flashmoe: Mixture-of-Experts inference that streams experts from disk"};
  app.require_subcommand(1);
  fm::cli::add_run(app);
  fm::cli::add_bench(app);
  fm::cli::add_convert(app);
  fm::cli::add_tokenize(app);
  fm::cli::add_chat(app);
  fm::cli::add_serve(app);
  fm::cli::add_tune(app);
  fm::cli::add_perplexity(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const fm::Error& e) {
    std::fprintf(stderr, "flashmoe: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "flashmoe: error: out of memory\n");
    return 1;
  }
  return 0;
}
