// flashmoe run: generate from a prompt and report the speed.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <optional>

#include "cli/commands.h"
#include "cli/options.h"
#include "model/model.h"
#include "ops/cpu/cpu_backend.h"
#include "chat/chat_template.h"
#include "runtime/generate.h"
#include "tokenizer/tokenizer.h"
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
  bool ignore_eos = false;
  std::vector<std::string> stop;  // text-level stop strings
  std::string dump_logits;
  bool chat = false;  // wrap -p in the chat template as a user message
};

// The model's tokenizer: required for a text prompt, --chat and --stop; else used when there is one.
std::optional<Tokenizer> load_tokenizer(const RunArgs& a) {
  const bool needed = !a.prompt.empty() || !a.stop.empty();
  try {
    return Tokenizer::load(a.engine.model);
  } catch (const Error& e) {
    if (needed)
      fail("{} needs the model's tokenizer, which failed to load: {} (pass token ids with --prompt-ids)",
           !a.prompt.empty() ? "a text prompt (-p)" : "--stop", e.what());
    return std::nullopt;
  }
}

void run(const RunArgs& a) {
  if (a.prompt.empty() && a.prompt_ids.empty()) fail("no prompt: give -p TEXT or --prompt-ids 1,2,3");
  if (a.chat && a.prompt.empty()) fail("--chat wraps a text prompt (-p) in the chat template");
  validate(a.sampling);
  const std::optional<Tokenizer> tokenizer = load_tokenizer(a);
  std::vector<int32_t> prompt;
  if (!a.prompt.empty()) {
    if (a.chat) {
      const ChatTemplate tmpl = ChatTemplate::from_model(a.engine.model);
      const jinja::Json messages = jinja::Json::array({{{"role", "user"}, {"content", a.prompt}}});
      prompt = tokenizer->encode(tmpl.render(messages, jinja::Json(), true, jinja::Json::object()));
    } else {
      prompt = tokenizer->encode(a.prompt);
      if (tokenizer->add_bos().value_or(false) && tokenizer->bos_id())
        prompt.insert(prompt.begin(), *tokenizer->bos_id());
    }
    if (prompt.empty()) fail("-p: the prompt encodes to no tokens");
  } else {
    prompt = parse_id_list(a.prompt_ids, "--prompt-ids");
  }

  const auto t_load = std::chrono::steady_clock::now();
  const std::unique_ptr<Model> model = Model::load(a.engine.model);
  CpuBackend backend(resolve_threads(a.engine.threads));
  EngineArgs engine = a.engine;
  resolve_streaming(engine, *model);
  TransformerOptions topt = engine.transformer;
  const int needed = int(prompt.size()) + a.n_predict;
  if (needed > topt.max_context) fail("prompt ({} tokens) + -n {} exceed --ctx {}", prompt.size(), a.n_predict, topt.max_context);
  Transformer transformer(*model, backend, topt);
  SequenceState state = transformer.new_sequence();
  const double load_s = seconds_since(t_load);

  std::vector<int32_t> eos;
  if (!a.ignore_eos) {
    for (int id : model->config.eos_token_ids) eos.push_back(int32_t(id));
    if (tokenizer)
      for (int32_t id : tokenizer->eos_ids())
        if (std::find(eos.begin(), eos.end(), id) == eos.end()) eos.push_back(id);
  }
  // Stop strings are matched on the decoded text; the text streams to stdout as it becomes final, unless
  // --print-ids (or there is no tokenizer): then the ids are the output.
  const bool text_out = tokenizer && !a.print_ids;
  GenerateOptions gopt{.max_new_tokens = a.n_predict, .sampling = a.sampling, .stop_ids = eos,
                       .keep_logits = !a.dump_logits.empty(), .stop_strings = a.stop};
  std::optional<StreamDecoder> decoder;
  if (tokenizer) {
    decoder.emplace(*tokenizer);
    gopt.decode = [&decoder](int32_t id) { return decoder->push(id); };
    gopt.on_text = [text_out](std::string_view piece) {
      if (text_out) {
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
      }
      return true;
    };
  }
  const uint64_t bytes0 = transformer.weight_bytes_read();
  const GenerateResult r = generate(transformer, state, prompt, gopt);
  const uint64_t bytes = transformer.weight_bytes_read() - bytes0;

  if (text_out) {
    if (r.finish_reason != FinishReason::StopString) {
      const std::string tail = decoder->flush();
      std::fwrite(tail.data(), 1, tail.size(), stdout);
    }
    std::printf("\n");
  } else {
    std::string ids;
    for (size_t i = 0; i < r.tokens.size(); ++i) ids += fmt::format("{}{}", i ? " " : "", r.tokens[i]);
    std::printf("%s\n", ids.c_str());
  }
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
  auto* text = cmd->add_option("-p,--prompt", args->prompt, "Prompt text, encoded with the model's tokenizer");
  auto* ids = cmd->add_option("--prompt-ids", args->prompt_ids, "Prompt as token ids, comma-separated: 1,2,3");
  text->excludes(ids);
  cmd->add_option("-n,--n-predict", args->n_predict, "Tokens to generate")->check(CLI::NonNegativeNumber);
  cmd->add_option("--temp", args->sampling.temperature, "Sampling temperature (0: greedy)");
  cmd->add_option("--top-k", args->sampling.top_k, "Sample from the k most likely tokens (0: all)");
  cmd->add_option("--top-p", args->sampling.top_p, "Nucleus sampling threshold");
  cmd->add_option("--min-p", args->sampling.min_p, "Drop tokens less likely than min-p times the top one (0: off)");
  cmd->add_option("--repeat-penalty", args->sampling.repetition_penalty,
                  "Repetition penalty on every token already seen, as transformers applies it (1: off)");
  cmd->add_option("--presence-penalty", args->sampling.presence_penalty,
                  "Subtract this from the logit of each token generated so far (OpenAI semantics; 0: off)");
  cmd->add_option("--frequency-penalty", args->sampling.frequency_penalty,
                  "Subtract this times its count from the logit of each generated token (0: off)");
  cmd->add_option("--stop", args->stop, "Stop when the generated text contains this string (repeatable)");
  cmd->add_flag("--ignore-eos", args->ignore_eos, "Do not stop at the model's end-of-sequence tokens");
  cmd->add_option("--seed", args->sampling.seed, "Random seed");
  cmd->add_flag("--print-ids", args->print_ids,
                "Print the generated token ids on stdout, space-separated, instead of the text (the output of a "
                "model without a tokenizer)");
  cmd->add_flag("--chat", args->chat,
                "Wrap the prompt in the model's chat template, as a user message followed by the generation prompt");
  cmd->add_option("--dump-logits", args->dump_logits,
                  "Write float32 logits [rows, vocab] to this .npy file: one row per prompt position, then one "
                  "per decoding step after the first");
  cmd->callback([args] { run(*args); });
}

}  // namespace fm::cli
