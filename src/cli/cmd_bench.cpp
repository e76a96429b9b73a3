// flashmoe bench: decode and prefill speed next to the memory-read floor measured in the same run,
// and flashmoe synth: checkpoints with real model shapes and random weights to run it on.
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <unordered_set>

#include "cli/commands.h"
#include "cli/options.h"
#include "convert/convert.h"
#include "model/model.h"
#include "model/synth.h"
#include "io/io_engine.h"
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
  int batch = 1;  // sequences decoded together, one token each per step (Transformer::decode_batch)
  std::string json;
  uint64_t seed = 1;
};

// Reads every page of a matrix once so the timed passes see RAM, not the disk.
void touch(const Mat& m, ThreadPool& pool, std::vector<uint64_t>& sink) {
  const int64_t pages = int64_t((m.nbytes() + 4095) / 4096);
  pool.parallel_for(pages, 64, [&](int64_t b, int64_t e, int thread) {
    for (int64_t p = b; p < e; ++p) sink[size_t(thread)] += uint64_t(m.data[uint64_t(p) * 4096]);
  });
}

void touch_all(const ModelWeights& weights, ThreadPool& pool) {
  std::vector<uint64_t> sink(size_t(pool.size()));
  for_each_matrix(weights, [&](const Mat& m) { touch(m, pool, sink); });
}

// The dense weights only: streamed experts must not be faulted in through the mapping.
void touch_dense(const ModelWeights& weights, ThreadPool& pool) {
  std::vector<uint64_t> sink(size_t(pool.size()));
  std::unordered_set<const std::byte*> experts;
  for (const LayerWeights& L : weights.layers)
    for (const FfnWeights& e : L.moe.experts) experts.insert({e.gate.data, e.up.data, e.down.data});
  for_each_matrix(weights, [&](const Mat& m) {
    if (!experts.contains(m.data)) touch(m, pool, sink);
  });
}

// The disk floor for what streaming read: the model file read with the same options and read sizes,
// before anything of it is cached, at the best of several concurrency levels.
io::DiskFloor measure_disk_floor(const Model& model, const TransformerOptions& t, uint64_t read_size) {
  std::string path;
  uint64_t offset = 0;
  if (!model.tensors->locate(model.weights.embed.data, &path, &offset)) return {};
  return io::measure_disk_floor(path, read_size, 1ull << 30, t.stream.io);
}

void bench(const BenchArgs& a) {
  const auto t_load = std::chrono::steady_clock::now();
  const std::unique_ptr<Model> model = Model::load(a.engine.model);
  CpuBackend backend(resolve_threads(a.engine.threads));
  EngineArgs engine = a.engine;
  engine.transformer.max_context = std::max(engine.transformer.max_context, a.prompt_len + a.n_decode + 1);
  engine.transformer.max_batch = std::max(engine.transformer.max_batch, a.batch);
  resolve_streaming(engine, *model);
  const TransformerOptions& topt = engine.transformer;
  const bool streaming = topt.stream_experts;
  const ModelConfig& c = model->config;

  // Streaming: the disk floor first, while nothing of the file is cached.
  uint64_t part_bytes = 0;
  for (const LayerWeights& L : model->weights.layers)
    if (L.is_moe) part_bytes = std::max(part_bytes, L.moe.experts[0].gate.nbytes());
  const io::DiskFloor disk_floor = streaming ? measure_disk_floor(*model, topt, part_bytes) : io::DiskFloor{};
  const double disk_bw = disk_floor.bytes_s;

  Transformer transformer(*model, backend, topt);
  const int B = a.batch;
  std::vector<SequenceState> states;
  for (int b = 0; b < B; ++b) states.push_back(transformer.new_sequence());
  const double load_s = seconds_since(t_load);

  // Before the weights are warmed, so that its buffer (smaller under a memory budget) does not
  // push them out of memory.
  const double bandwidth = measure_read_bandwidth(backend.pool(), streaming ? (256ull << 20) : (1ull << 30));
  if (!streaming) {
    std::fprintf(stderr, "bench: warming %.2f GB of weights into memory...\n",
                 double(model->weights.dense_bytes + model->weights.expert_bytes) / 1e9);
    touch_all(model->weights, backend.pool());
  } else {
    std::fprintf(stderr, "bench: warming %.2f GB of dense weights into memory...\n",
                 double(model->weights.dense_bytes) / 1e9);
    touch_dense(model->weights, backend.pool());
  }

  // Each sequence its own random prompt; with --batch N, N sequences decode together.
  std::mt19937 rng(uint32_t(a.seed));
  std::vector<int32_t> prompt(size_t(a.prompt_len));
  const int64_t V = c.vocab_size;
  std::vector<float> logits(size_t(B) * size_t(V));

  auto t0 = std::chrono::steady_clock::now();
  for (int b = 0; b < B; ++b) {
    for (int32_t& t : prompt) t = int32_t(rng() % uint32_t(c.vocab_size));
    transformer.forward(states[size_t(b)], prompt, logits.data() + b * V, false);
  }
  const double prefill_s = seconds_since(t0);
  const int64_t prefill_tokens = int64_t(a.prompt_len) * B;

  ExpertStore* store = transformer.expert_store();
  const uint64_t bytes0 = transformer.weight_bytes_read();
  const uint64_t io0 = store ? store->io_stats().bytes_read : 0;
  const ExpertStoreStats s0 = store ? store->stats() : ExpertStoreStats{};
  const PhaseTimes p0 = transformer.phase_times();
  const PredictorStats la0 = transformer.lookahead_stats(), tp0 = transformer.temporal_stats();
  std::vector<SequenceState*> batch;
  for (SequenceState& s : states) batch.push_back(&s);
  std::vector<int32_t> next(static_cast<size_t>(B));
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < a.n_decode; ++i) {
    for (int b = 0; b < B; ++b)
      next[size_t(b)] = int32_t(std::max_element(logits.begin() + b * V, logits.begin() + (b + 1) * V) -
                                (logits.begin() + b * V));
    if (B == 1)
      transformer.forward(states[0], next, logits.data(), false);
    else
      transformer.decode_batch(batch, next, logits.data());
  }
  const double decode_s = seconds_since(t0);
  const double n = double(a.n_decode) * B;  // tokens decoded, all sequences together
  const double bytes_per_token = double(transformer.weight_bytes_read() - bytes0) / n;
  const PhaseTimes& p1 = transformer.phase_times();
  const double ms = 1000.0 / n;

  const double decode_tps = n / decode_s;
  const double floor_tps = bandwidth / bytes_per_token;
  nlohmann::ordered_json j = {
      {"model", a.engine.model},
      {"threads", backend.pool().size()},
      {"matmul_isa", cpu::matmul_isa()},
      {"load_s", load_s},
      {"batch", B},
      {"prefill_tokens", prefill_tokens},
      {"prefill_tok_s", double(prefill_tokens) / prefill_s},
      {"decode_tokens", int64_t(a.n_decode) * B},
      {"decode_tok_s", decode_tps},
      {"decode_step_ms", 1000.0 * decode_s / a.n_decode},
      {"bytes_read_per_token", bytes_per_token},
      {"read_bandwidth_bytes_s", bandwidth},
      {"memory_floor_tok_s", floor_tps},
      {"fraction_of_floor", decode_tps / floor_tps},
      {"achieved_bytes_s", bytes_per_token * decode_tps},
      {"mixer_ms_per_token", (p1.mixer - p0.mixer) * ms},
      {"moe_ms_per_token", (p1.moe - p0.moe) * ms},
      {"head_ms_per_token", (p1.head - p0.head) * ms},
      {"peak_rss_bytes", peak_rss_bytes()},
  };
  std::string stream_line;
  if (store) {
    const ExpertStoreStats s1 = store->stats();
    const double disk_bytes = double(store->io_stats().bytes_read - io0) / n;
    const double wait_ms = (s1.wait_seconds - s0.wait_seconds) * ms;
    const double demanded = double(s1.demanded - s0.demanded);
    const double hits = double(s1.hits - s0.hits + s1.prefetch_hits - s0.prefetch_hits);
    const PredictorStats& la1 = transformer.lookahead_stats();
    const PredictorStats& tp1 = transformer.temporal_stats();
    const PredictorStats la{la1.predicted - la0.predicted, la1.correct - la0.correct, la1.used - la0.used};
    const PredictorStats tp{tp1.predicted - tp0.predicted, tp1.correct - tp0.correct, tp1.used - tp0.used};
    const bool use_la = topt.predict_lookahead, use_tp = topt.predict_temporal;
    const PredictorStats both{(use_la ? la.predicted : 0) + (use_tp ? tp.predicted : 0),
                              (use_la ? la.correct : 0) + (use_tp ? tp.correct : 0),
                              (use_la ? la.used : 0) + (use_tp ? tp.used : 0)};
    const double disk_floor_tps = disk_bytes > 0 ? disk_bw / disk_bytes : 0.0;
    j["streaming"] = true;
    j["io_backend"] = topt.stream.io.backend == io::Backend::Uring ? "uring" : "pread";
    j["io_threads"] = topt.stream.io.threads;
    j["io_split"] = topt.stream.io.split;
    j["direct_io"] = topt.stream.io.direct;
    j["expert_cache_bytes"] = uint64_t(store->slots()) * store->slot_bytes();
    j["expert_cache_slots"] = store->slots();
    j["disk_bytes_read_per_token"] = disk_bytes;
    j["disk_bandwidth_bytes_s"] = disk_bw;
    j["disk_floor_reads_in_flight"] = disk_floor.in_flight;
    j["disk_floor_tok_s"] = disk_floor_tps;
    j["fraction_of_disk_floor"] = disk_floor_tps > 0 ? decode_tps / disk_floor_tps : 0.0;
    j["io_wait_ms_per_token"] = wait_ms;
    j["compute_ms_per_token"] = (p1.total - p0.total) * ms - wait_ms;
    j["cache_hit_rate"] = demanded > 0 ? hits / demanded : 0.0;
    j["cache_hits_ready"] = s1.hits - s0.hits;
    j["cache_hits_prefetched"] = s1.prefetch_hits - s0.prefetch_hits;
    j["cache_misses"] = s1.misses - s0.misses;
    j["prefetches"] = s1.prefetched - s0.prefetched;
    j["prefetches_unused"] = s1.prefetch_unused - s0.prefetch_unused;
    j["prediction_precision"] = both.precision();
    j["prediction_recall"] = both.recall();
    j["lookahead_precision"] = la.precision();
    j["lookahead_recall"] = la.recall();
    j["temporal_precision"] = tp.precision();
    j["temporal_recall"] = tp.recall();
    stream_line = fmt::format(
        "\nstream: {:.1f} MB read per token at {:.2f} GB/s | disk floor {:.2f} tok/s ({:.2f} GB/s) | {:.0f}% of disk "
        "floor | io wait {:.1f} ms/token | cache hits {:.0f}% | prediction precision {:.0f}% recall {:.0f}%",
        disk_bytes / 1e6, disk_bytes * decode_tps / 1e9, disk_floor_tps, disk_bw / 1e9,
        disk_floor_tps > 0 ? 100.0 * decode_tps / disk_floor_tps : 0.0, wait_ms,
        demanded > 0 ? 100.0 * hits / demanded : 0.0, 100.0 * both.precision(), 100.0 * both.recall());
  } else {
    j["streaming"] = false;
  }
  j["peak_rss_bytes"] = peak_rss_bytes();
  std::printf("%s\n", j.dump(2).c_str());
  std::fprintf(stderr,
               "decode %.2f tok/s%s | %.1f MB of weights per token at %.2f GB/s | memory floor %.2f tok/s (read "
               "bandwidth %.2f GB/s) | %.0f%% of floor | prefill %.1f tok/s%s\n",
               decode_tps, B > 1 ? fmt::format(" ({} sequences together)", B).c_str() : "", bytes_per_token / 1e6, bytes_per_token * decode_tps / 1e9, floor_tps, bandwidth / 1e9,
               100.0 * decode_tps / floor_tps, double(prefill_tokens) / prefill_s, stream_line.c_str());
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
  // Not --batch: the engine options use it for the prompt tokens per forward pass.
  cmd->add_option("--sequences", args->batch,
                  "Sequences decoded together, one token each per step (one prompt each); tok/s counts them all")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--seed", args->seed, "Seed of the random prompt");
  cmd->add_option("--json", args->json, "Also write the results to this JSON file");
  cmd->callback([args] { bench(*args); });

  auto synth = std::make_shared<SynthOptions>();
  auto out = std::make_shared<std::string>();
  auto dtype = std::make_shared<std::string>("bf16");
  auto type = std::make_shared<std::string>();
  auto expert_type = std::make_shared<std::string>();
  CLI::App* s = app.add_subcommand("synth", "Write a model with a published model's shapes and random weights");
  s->add_option("-o,--output", *out, "Output: a .gguf file, or a folder for safetensors")->required();
  s->add_option("--like", synth->like, fmt::format("Model shape: {}", fmt::join(synth_presets(), ", ")))->required();
  s->add_option("--layers", synth->layers, "Decoder layers (default: the model's)")->check(CLI::PositiveNumber);
  s->add_option("--dtype", *dtype, "safetensors weight type: bf16, f16, f32")->check(CLI::IsMember({"bf16", "f16", "f32"}));
  s->add_option("--type", *type, "GGUF: type of the dense matrices (default BF16)");
  s->add_option("--expert-type", *expert_type, "GGUF: type of the routed experts (default: --type)");
  s->add_option("--seed", synth->seed, "Random seed");
  s->add_option("--tokenizer", synth->tokenizer, "GGUF: embed this tokenizer (model folder, tokenizer.json, .gguf)");
  s->callback([synth, out, dtype, type, expert_type] {
    uint64_t bytes = 0;
    if (out->ends_with(".gguf")) {
      synth->dtype = type->empty() ? DType::BF16 : parse_output_type(*type, "--type");
      synth->expert_dtype = expert_type->empty() ? synth->dtype : parse_output_type(*expert_type, "--expert-type");
      bytes = write_synthetic_gguf(*out, *synth);
    } else {
      if (!type->empty() || !expert_type->empty()) fail("synth: --type and --expert-type need a .gguf output");
      synth->dtype = *dtype == "f32" ? DType::F32 : *dtype == "f16" ? DType::F16 : DType::BF16;
      bytes = write_synthetic_model(*out, *synth);
    }
    std::fprintf(stderr, "synth: wrote %.2f GB to %s\n", double(bytes) / 1e9, out->c_str());
  });
}

}  // namespace fm::cli
