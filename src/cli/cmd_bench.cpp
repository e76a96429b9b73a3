// flashmoe bench: decode and prefill speed next to the memory-read floor measured in the same run,
// and flashmoe synth: checkpoints with real model shapes and random weights to run it on.
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "cli/commands.h"
#include "cli/options.h"
#include "model/model.h"
#include "model/synth.h"
#include "ops/cpu/bandwidth.h"
#include "ops/cpu/cpu_backend.h"
#include "ops/cpu/kernels.h"
#include "util/error.h"
#include "util/sysinfo.h"

namespace fm::cli {

namespace {

struct BenchArgs {
  EngineArgs engine;
  int n_decode = 16;
  int prompt_len = 64;
  std::string json;
  uint64_t seed = 1;
};

// Reads every mapped byte once so the timed passes see RAM, not the disk.
void touch_all(const ModelWeights& weights, ThreadPool& pool) {
  std::vector<uint64_t> sink(size_t(pool.size()));
  for_each_matrix(weights, [&](const Mat& m) {
    const int64_t pages = int64_t((m.nbytes() + 4095) / 4096);
    pool.parallel_for(pages, 64, [&](int64_t b, int64_t e, int thread) {
      for (int64_t p = b; p < e; ++p) sink[size_t(thread)] += uint64_t(m.data[uint64_t(p) * 4096]);
    });
  });
}

void bench(const BenchArgs& a) {
  const auto t_load = std::chrono::steady_clock::now();
  const std::unique_ptr<Model> model = Model::load(a.engine.model);
  CpuBackend backend(resolve_threads(a.engine.threads));
  TransformerOptions topt = a.engine.transformer;
  topt.max_context = std::max(topt.max_context, a.prompt_len + a.n_decode + 1);
  Transformer transformer(*model, backend, topt);
  SequenceState state = transformer.new_sequence();
  const double load_s = seconds_since(t_load);
  const ModelConfig& c = model->config;

  std::fprintf(stderr, "bench: warming %.2f GB of weights into memory...\n",
               double(model->weights.dense_bytes + model->weights.expert_bytes) / 1e9);
  touch_all(model->weights, backend.pool());
  const double bandwidth = measure_read_bandwidth(backend.pool());

  std::mt19937 rng(uint32_t(a.seed));
  std::vector<int32_t> prompt(size_t(a.prompt_len));
  for (int32_t& t : prompt) t = int32_t(rng() % uint32_t(c.vocab_size));
  std::vector<float> logits(size_t(c.vocab_size));

  auto t0 = std::chrono::steady_clock::now();
  transformer.forward(state, prompt, logits.data(), false);
  const double prefill_s = seconds_since(t0);

  const uint64_t bytes0 = transformer.weight_bytes_read();
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < a.n_decode; ++i) {
    const int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    transformer.forward(state, std::span<const int32_t>(&next, 1), logits.data(), false);
  }
  const double decode_s = seconds_since(t0);
  const double bytes_per_token = double(transformer.weight_bytes_read() - bytes0) / a.n_decode;

  const double decode_tps = a.n_decode / decode_s;
  const double floor_tps = bandwidth / bytes_per_token;
  nlohmann::ordered_json j = {
      {"model", a.engine.model},
      {"threads", backend.pool().size()},
      {"matmul_isa", cpu::matmul_isa()},
      {"load_s", load_s},
      {"prefill_tokens", a.prompt_len},
      {"prefill_tok_s", a.prompt_len / prefill_s},
      {"decode_tokens", a.n_decode},
      {"decode_tok_s", decode_tps},
      {"bytes_read_per_token", bytes_per_token},
      {"read_bandwidth_bytes_s", bandwidth},
      {"memory_floor_tok_s", floor_tps},
      {"fraction_of_floor", decode_tps / floor_tps},
      {"achieved_bytes_s", bytes_per_token * decode_tps},
      {"peak_rss_bytes", peak_rss_bytes()},
  };
  std::printf("%s\n", j.dump(2).c_str());
  std::fprintf(stderr,
               "decode %.2f tok/s | %.1f MB read per token at %.2f GB/s | memory floor %.2f tok/s (read bandwidth "
               "%.2f GB/s) | %.0f%% of floor | prefill %.1f tok/s\n",
               decode_tps, bytes_per_token / 1e6, bytes_per_token * decode_tps / 1e9, floor_tps, bandwidth / 1e9,
               100.0 * decode_tps / floor_tps, a.prompt_len / prefill_s);
  if (!a.json.empty()) {
    const std::string tmp = a.json + ".partial";
    std::ofstream f(tmp);
    f << j.dump(2) << "\n";
    f.close();
    if (!f) fail("{}: write failed", a.json);
    std::filesystem::rename(tmp, a.json);
  }
}

}  // namespace

void add_bench(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand("bench", "Measure decode and prefill speed against the memory-read floor");
  add_engine_options(*cmd, args->engine);
  cmd->add_option("-n,--n-decode", args->n_decode, "Decoding steps to time")->check(CLI::PositiveNumber);
  cmd->add_option("--prompt-len", args->prompt_len, "Prompt tokens (random ids) to prefill")->check(CLI::PositiveNumber);
  cmd->add_option("--seed", args->seed, "Seed of the random prompt");
  cmd->add_option("--json", args->json, "Also write the results to this JSON file");
  cmd->callback([args] { bench(*args); });

  auto synth = std::make_shared<SynthOptions>();
  auto out = std::make_shared<std::string>();
  auto dtype = std::make_shared<std::string>("bf16");
  CLI::App* s = app.add_subcommand("synth", "Write a checkpoint with a published model's shapes and random weights");
  s->add_option("-o,--output", *out, "Output folder")->required();
  s->add_option("--like", synth->like, fmt::format("Model shape: {}", fmt::join(synth_presets(), ", ")))->required();
  s->add_option("--layers", synth->layers, "Decoder layers (default: the model's)")->check(CLI::PositiveNumber);
  s->add_option("--dtype", *dtype, "Weight type: bf16, f16, f32")->check(CLI::IsMember({"bf16", "f16", "f32"}));
  s->add_option("--seed", synth->seed, "Random seed");
  s->callback([synth, out, dtype] {
    synth->dtype = *dtype == "f32" ? DType::F32 : *dtype == "f16" ? DType::F16 : DType::BF16;
    const uint64_t bytes = write_synthetic_model(*out, *synth);
    std::fprintf(stderr, "synth: wrote %.2f GB to %s\n", double(bytes) / 1e9, out->c_str());
  });
}

}  // namespace fm::cli
