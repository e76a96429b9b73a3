// flashmoe run: generate from a prompt and report the speed.
#include <fmt/format.h>

#include <chrono>
#include <cstdio>

#include "cli/commands.h"
#include "cli/options.h"
#include "model/model.h"
#include "ops/cpu/cpu_backend.h"
#include "runtime/generate.h"
#include "util/error.h"
#include "util/npy.h"
#include "util/sysinfo.h"

namespace fm::cli {

namespace {

struct RunArgs {
  EngineArgs engine;
  std::string prompt;
  std::string prompt_ids;
  int n_predict = 32;
  SamplerOptions sampling;
  bool print_ids = false;
  std::string dump_logits;
};

void run(const RunArgs& a) {
  if (!a.prompt.empty())
    fail("text prompts need the tokenizer, which flashmoe does not have yet: pass token ids with --prompt-ids");
  if (a.prompt_ids.empty()) fail("no prompt: give --prompt-ids 1,2,3");
  const std::vector<int32_t> prompt = parse_id_list(a.prompt_ids, "--prompt-ids");
  validate(a.sampling);

  const auto t_load = std::chrono::steady_clock::now();
  const std::unique_ptr<Model> model = Model::load(a.engine.model);
  CpuBackend backend(resolve_threads(a.engine.threads));
  TransformerOptions topt = a.engine.transformer;
  const int needed = int(prompt.size()) + a.n_predict;
  if (needed > topt.max_context) fail("prompt ({} tokens) + -n {} exceed --ctx {}", prompt.size(), a.n_predict, topt.max_context);
  Transformer transformer(*model, backend, topt);
  SequenceState state = transformer.new_sequence();
  const double load_s = seconds_since(t_load);

  GenerateOptions gopt{.max_new_tokens = a.n_predict, .sampling = a.sampling, .stop_ids = {},
                       .keep_logits = !a.dump_logits.empty()};
  const uint64_t bytes0 = transformer.weight_bytes_read();
  const GenerateResult r = generate(transformer, state, prompt, gopt);
  const uint64_t bytes = transformer.weight_bytes_read() - bytes0;

  // Without a tokenizer the ids are the output.
  std::string ids;
  for (size_t i = 0; i < r.tokens.size(); ++i) ids += fmt::format("{}{}", i ? " " : "", r.tokens[i]);
  std::printf("%s\n", ids.c_str());
  std::fflush(stdout);

  if (!a.dump_logits.empty())
    write_npy(a.dump_logits, r.logits.data(), {r.logits_rows, int64_t(model->config.vocab_size)});

  const double prefill_tps = r.prefill_seconds > 0 ? r.n_prompt / r.prefill_seconds : 0.0;
  const double decode_tps = r.decode_seconds > 0 && r.decode_steps > 0 ? r.decode_steps / r.decode_seconds : 0.0;
  // Weights streamed per second while decoding: against the machine's read bandwidth (flashmoe bench)
  // this says how close decoding runs to the memory floor.
  const double decode_gbs = r.decode_seconds > 0 ? double(r.decode_weight_bytes) / r.decode_seconds / 1e9 : 0.0;
  std::fprintf(stderr,
               "load %.3f s | prefill %d tok, %.1f tok/s | decode %d tok, %.2f tok/s, %.2f GB/s of weights | weights "
               "read %.2f GB | %d threads | peak RSS %.1f MiB\n",
               load_s, r.n_prompt, prefill_tps, r.decode_steps, decode_tps, decode_gbs, double(bytes) / 1e9,
               backend.pool().size(), double(peak_rss_bytes()) / (1 << 20));
}

}  // namespace

void add_run(CLI::App& app) {
  auto args = std::make_shared<RunArgs>();
  CLI::App* cmd = app.add_subcommand("run", "Generate tokens from a prompt");
  add_engine_options(*cmd, args->engine);
  auto* text = cmd->add_option("-p,--prompt", args->prompt, "Prompt text (needs the tokenizer)");
  auto* ids = cmd->add_option("--prompt-ids", args->prompt_ids, "Prompt as token ids, comma-separated: 1,2,3");
  text->excludes(ids);
  cmd->add_option("-n,--n-predict", args->n_predict, "Tokens to generate")->check(CLI::NonNegativeNumber);
  cmd->add_option("--temp", args->sampling.temperature, "Sampling temperature (0: greedy)");
  cmd->add_option("--top-k", args->sampling.top_k, "Sample from the k most likely tokens (0: all)");
  cmd->add_option("--top-p", args->sampling.top_p, "Nucleus sampling threshold");
  cmd->add_option("--seed", args->sampling.seed, "Random seed");
  cmd->add_flag("--print-ids", args->print_ids,
                "Print the generated token ids on stdout, space-separated (what run prints in any case until "
                "the tokenizer exists)");
  cmd->add_option("--dump-logits", args->dump_logits,
                  "Write float32 logits [rows, vocab] to this .npy file: one row per prompt position, then one "
                  "per decoding step after the first");
  cmd->callback([args] { run(*args); });
}

}  // namespace fm::cli
