// flashmoe perplexity: perplexity of a model on a text, as llama.cpp's llama-perplexity computes it,
// and the KL divergence against a saved reference run (--save-logits / --kl-base).
#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>

#include "cli/commands.h"
#include "cli/options.h"
#include "eval/perplexity.h"
#include "model/model.h"
#include "ops/cpu/cpu_backend.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace fm::cli {

namespace {

struct PerplexityArgs {
  EngineArgs engine;
  std::string text_file;
  int chunks = -1;
  std::string save_logits;
  std::string kl_base;
  bool json = false;
  bool no_progress = false;
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("-f {}: cannot open the text", path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("-f {}: read failed", path);
  if (text.empty()) fail("-f {}: the text is empty", path);
  return text;
}

// A one-line bar on stderr, redrawn after each window.
void draw_progress(const PerplexityProgress& p, bool with_base) {
  constexpr int kWidth = 30;
  const int filled = p.chunks ? p.chunk * kWidth / p.chunks : kWidth;
  const double per = p.chunk ? p.seconds / p.chunk : 0.0;
  std::string bar(size_t(filled), '=');
  bar.resize(kWidth, ' ');
  std::string extra =
      with_base ? fmt::format(", KLD {:.5f}, same top {:.2f}%", p.kl_mean, 100 * p.top1_agree) : "";
  std::fprintf(stderr, "\r[%s] %d/%d  PPL %.4f%s  %.2f s/window, ETA %.0f s ", bar.c_str(), p.chunk, p.chunks,
               p.ppl, extra.c_str(), per, per * (p.chunks - p.chunk));
  if (p.chunk == p.chunks) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

void print_kl_report(const PerplexityResult& r) {
  std::printf("====== Perplexity statistics ======\n");
  std::printf("Mean PPL(Q)                   : %10.6f ± %10.6f\n", r.ppl, r.ppl_err);
  std::printf("Mean PPL(base)                : %10.6f ± %10.6f\n", r.base_ppl, r.base_ppl_err);
  std::printf("Mean ln(PPL(Q)/PPL(base))     : %10.6f ± %10.6f\n", r.ln_ppl_ratio, r.ln_ppl_ratio_err);
  std::printf("Mean PPL(Q)/PPL(base)         : %10.6f ± %10.6f\n", std::exp(r.ln_ppl_ratio),
              std::exp(r.ln_ppl_ratio) * r.ln_ppl_ratio_err);
  std::printf("\n====== KL divergence statistics ======\n");
  std::printf("Mean    KLD: %10.6f ± %10.6f\n", r.kl_mean, r.kl_err);
  std::printf("Maximum KLD: %10.6f\n", r.kl_max);
  std::printf("99.9%%   KLD: %10.6f\n", r.kl_p999);
  std::printf("99.0%%   KLD: %10.6f\n", r.kl_p99);
  std::printf("Median  KLD: %10.6f\n", r.kl_median);
  std::printf("\n====== Token probability statistics ======\n");
  std::printf("Mean    Δp: %6.3f ± %5.3f %%\n", 100 * r.dp_mean, 100 * r.dp_mean_err);
  std::printf("Max   |Δp|: %6.3f%%\n", 100 * r.dp_max);
  std::printf("RMS Δp    : %6.3f ± %5.3f %%\n", 100 * r.dp_rms, 100 * r.dp_rms_err);
  std::printf("Same top p: %6.3f ± %5.3f %%\n", 100 * r.top1_agree, 100 * r.top1_agree_err);
}

nlohmann::ordered_json to_json(const PerplexityResult& r, int ctx) {
  nlohmann::ordered_json j = {{"ctx", ctx},           {"chunks", r.chunks},   {"tokens", r.tokens},
                              {"nll", r.nll},         {"nll_err", r.nll_err}, {"ppl", r.ppl},
                              {"ppl_err", r.ppl_err}, {"seconds", r.seconds}};
  if (r.has_base) {
    j["base_ppl"] = r.base_ppl;
    j["base_ppl_err"] = r.base_ppl_err;
    j["ln_ppl_ratio"] = r.ln_ppl_ratio;
    j["ln_ppl_ratio_err"] = r.ln_ppl_ratio_err;
    j["kl_mean"] = r.kl_mean;
    j["kl_err"] = r.kl_err;
    j["kl_max"] = r.kl_max;
    j["kl_median"] = r.kl_median;
    j["kl_p99"] = r.kl_p99;
    j["kl_p999"] = r.kl_p999;
    j["top1_agree"] = r.top1_agree;
    j["top1_agree_err"] = r.top1_agree_err;
    j["dp_rms"] = r.dp_rms;
    j["dp_max"] = r.dp_max;
  }
  return j;
}

void run_perplexity(const PerplexityArgs& a) {
  const std::string text = read_text(a.text_file);
  // Load the base before the model: a bad file fails fast.
  std::optional<BaseLogProbs> base;
  if (!a.kl_base.empty()) base = BaseLogProbs::load(a.kl_base);

  const Tokenizer tokenizer = Tokenizer::load(a.engine.model);
  const std::vector<int32_t> tokens = eval_tokens(tokenizer, text);
  const std::unique_ptr<Model> model = Model::load(a.engine.model);
  CpuBackend backend(resolve_threads(a.engine.threads));
  EngineArgs engine = a.engine;
  resolve_streaming(engine, *model);
  Transformer transformer(*model, backend, engine.transformer);

  const int ctx = engine.transformer.max_context;
  const bool progress = !a.no_progress && isatty(STDERR_FILENO);
  PerplexityOptions opt{
      .ctx = ctx, .chunks = a.chunks, .bos = eval_bos(tokenizer), .text_hash = text_hash(text)};
  opt.on_chunk = [&](const PerplexityProgress& p) {
    if (progress) draw_progress(p, base.has_value());
  };
  std::fprintf(stderr, "perplexity: %zu tokens, windows of %d (%d scored each), %d experts per token\n",
               tokens.size(), ctx, ctx - 1 - ctx / 2,
               engine.transformer.experts_per_tok > 0 ? engine.transformer.experts_per_tok
                                                      : model->config.num_experts_per_tok);
  BaseLogProbs saved;
  const PerplexityResult r = evaluate_perplexity(transformer, tokens, opt, base ? &*base : nullptr,
                                                 a.save_logits.empty() ? nullptr : &saved);
  if (!a.save_logits.empty()) saved.save(a.save_logits);

  // With streamed experts, what the expert cache did over the whole evaluation: with --batch 1 every
  // token goes through the decode path, so this is the cache on real text, token by token.
  nlohmann::ordered_json stream_json;
  std::string stream_line;
  if (const ExpertStore* store = transformer.expert_store()) {
    const ExpertStoreStats s = store->stats();
    const double evaluated = double(r.chunks) * ctx;
    const double hits = double(s.hits + s.prefetch_hits);
    const double hit_rate = s.demanded > 0 ? hits / double(s.demanded) : 0.0;
    const double disk_per_token = evaluated > 0 ? double(store->io_stats().bytes_read) / evaluated : 0.0;
    stream_json = {{"expert_cache_slots", store->slots()},
                   {"cache_hit_rate", hit_rate},
                   {"cache_misses", s.misses},
                   {"disk_bytes_read_per_token", disk_per_token}};
    stream_line = fmt::format("stream: {} cache slots, hits {:.1f}%, {:.3f} MB read from disk per evaluated token",
                              store->slots(), 100 * hit_rate, disk_per_token / 1e6);
  }

  if (a.json) {
    nlohmann::ordered_json j = to_json(r, ctx);
    for (const auto& [k, v] : stream_json.items()) j[k] = v;
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::string running;
  for (size_t i = 0; i < r.chunk_ppl.size(); ++i)
    running += fmt::format("[{}]{:.4f},", i + 1, r.chunk_ppl[i]);
  std::printf("%s\n", running.c_str());
  std::printf("Final estimate: PPL = %.4f +/- %.5f\n", r.ppl, r.ppl_err);
  std::printf("%lld tokens scored in %d windows of %d, %.2f s (%.1f tokens/s evaluated)\n",
              (long long)r.tokens, r.chunks, ctx, r.seconds,
              r.seconds > 0 ? double(r.chunks) * ctx / r.seconds : 0.0);
  if (!stream_line.empty()) std::printf("%s\n", stream_line.c_str());
  if (r.has_base) {
    std::printf("\n");
    print_kl_report(r);
  }
}

}  // namespace

void add_perplexity(CLI::App& app) {
  auto args = std::make_shared<PerplexityArgs>();
  args->engine.transformer.max_context = 512;  // llama-perplexity's default window
  CLI::App* cmd = app.add_subcommand(
      "perplexity",
      "Perplexity on a text as llama.cpp's llama-perplexity computes it (windows of --ctx tokens, the second "
      "half of each scored), and KL divergence against a saved reference run");
  add_engine_options(*cmd, args->engine);
  cmd->add_option("-f,--file", args->text_file, "The text to evaluate (UTF-8)")->required();
  cmd->add_option("--chunks", args->chunks, "Windows to evaluate (default: all the text holds)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--save-logits", args->save_logits,
                  "Save this run's log-probabilities (scored positions) to FILE, as a base for --kl-base");
  cmd->add_option("--kl-base", args->kl_base,
                  "Compare with a base saved by --save-logits: KL divergence, same top token, PPL ratio");
  cmd->add_flag("--json", args->json, "Print the result as one JSON object");
  cmd->add_flag("--no-progress", args->no_progress, "No progress bar on stderr");
  cmd->callback([args] { run_perplexity(*args); });
}

}  // namespace fm::cli
